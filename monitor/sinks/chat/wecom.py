"""The ``wecom`` sink: rollout digests to a WeCom (企业微信) group through a group robot.

Spec ``wecom:https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=<key>``; the ``key`` is the credential and
names and logs show the URL without query. Options are those of every chat sink (:mod:`monitor.sinks.chat`) and
``format``: ``markdown`` (default) or ``text``.

Rate default: 18 a minute. WeCom allows a group robot 20 messages a minute; the default stays below it.

WeCom limits the content, in UTF-8 bytes: 4,096 for ``markdown``, 2,048 for ``text``; lists are cut to fit. A
``markdown`` body (``text``: ``{"msgtype": "text", "text": {"content": …}}``)::

    {"msgtype": "markdown", "markdown": {"content":
        "**cce-monitor: 3 jobs failed · pool-a 255/300 finished**\\n\\n**Rollouts (1)**\\n• pool-a: 255/300 finished,
         250 Success, 3 Failed, ETA 7m\\n\\n**Failed jobs (3)**\\n• [node-7](https://console/jobs/0c1f…) (job 0c1f…):
         Install node failed\\n• … and 2 more"}}

The answer is JSON with ``errcode`` 0. 45009 (frequency limit) pauses every request for a minute (or
``Retry-After``) and retries; -1 (system busy), 429 and 5xx retry; 93000 (bad webhook key), 40058 and every other
code are final.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monitor.sinks import register
from monitor.sinks.chat import (
    ChatSink,
    Message,
    Platform,
    Verdict,
    errcode_verdict,
    markdown_text,
    parse_options,
    plain_text,
)

__all__ = ["PLATFORM", "WeComSink", "make_wecom_sink"]

PLATFORM = Platform(
    kind="wecom",
    rate_per_minute=18,
    rate_per_second=None,
    formats=("markdown", "text"),
    query_key="key",
    throttle_pause=60.0,
)

MAX_MARKDOWN_BYTES = 4096
MAX_TEXT_BYTES = 2048
THROTTLE_CODES = (45009,)
RETRY_CODES = (-1,)


class WeComSink(ChatSink):
    """Posts digests to one WeCom group robot."""

    platform = PLATFORM
    __slots__ = ()

    def _render(self, message: Message) -> dict[str, Any]:
        if self.settings.format == "text":
            return {"msgtype": "text", "text": {"content": plain_text(message)}}
        content = markdown_text(message, title="**{}**", heading="**{}**", bullet="• ")
        return {"msgtype": "markdown", "markdown": {"content": content}}

    def _fits(self, body: dict[str, Any]) -> bool:
        if body["msgtype"] == "text":
            return len(body["text"]["content"].encode()) <= MAX_TEXT_BYTES
        return len(body["markdown"]["content"].encode()) <= MAX_MARKDOWN_BYTES

    def _verdict(self, status: int, headers: Mapping[str, str], raw: bytes) -> Verdict:
        return errcode_verdict(status, headers, raw, throttle_codes=THROTTLE_CODES, retry_codes=RETRY_CODES)


@register("wecom")
def make_wecom_sink(target: str | None, options: Mapping[str, object]) -> WeComSink:
    """Factory for ``wecom:WEBHOOK_URL``."""
    return WeComSink(parse_options(PLATFORM, target, options))
