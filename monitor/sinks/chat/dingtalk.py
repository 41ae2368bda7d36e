"""The ``dingtalk`` sink: rollout digests to a DingTalk group through a custom robot.

Spec ``dingtalk:https://oapi.dingtalk.com/robot/send?access_token=<token>``; the ``access_token`` is the
credential and names and logs show the URL without query. Options are those of every chat sink
(:mod:`monitor.sinks.chat`) and:

``secret``
    The robot's signing secret (``SEC…``, "加签" in its security settings). Each request then carries the query
    parameters ``timestamp`` (unix milliseconds) and ``sign``: the URL-encoded base64 of HMAC-SHA256 keyed with
    the secret over ``"{timestamp}\\n{secret}"`` (see :func:`sign`). DingTalk rejects timestamps more than an hour
    off. (Feishu signs differently: there the string is the key and the message is empty.)
``format``
    ``markdown`` (default) or ``text``.

Rate default: 18 a minute. DingTalk allows 20 messages a minute per robot and mutes a robot that sends more for
ten minutes, so the default stays strictly below. A "keyword" security setting is met by putting the keyword
into option ``title``, which starts every message.

A ``markdown`` body (``text``: ``{"msgtype": "text", "text": {"content": …}}``); the whole body stays under
20,000 UTF-8 bytes::

    {"msgtype": "markdown", "markdown": {
        "title": "cce-monitor: 3 jobs failed · pool-a 255/300 finished",
        "text": "### cce-monitor: 3 jobs failed · pool-a 255/300 finished\\n\\n**Rollouts (1)**\\n\\n- pool-a: 255/300
                 finished, 250 Success, 3 Failed, ETA 7m\\n\\n**Failed jobs (3)**\\n\\n- [node-7](https://console/jobs/0c1f…)
                 (job 0c1f…): Install node failed\\n- … and 2 more"}}

The answer is JSON with ``errcode`` 0. 130101 (sending too fast) pauses every request for a minute (or
``Retry-After``) and retries; 410100 (more than 20 messages in a minute: the robot is muted for ten minutes)
pauses it for ten minutes; -1 (system busy), 429 and 5xx retry; 310000 (keyword, signature or IP setting not
met), 300001 (bad token) and every other code are final.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import quote_plus

import orjson
from yarl import URL

from monitor.sinks import register
from monitor.sinks.chat import (
    ChatSink,
    Message,
    Platform,
    Verdict,
    answer_code,
    errcode_verdict,
    json_answer,
    markdown_text,
    parse_options,
    plain_text,
)

__all__ = ["PLATFORM", "DingTalkSink", "make_dingtalk_sink", "sign"]

PLATFORM = Platform(
    kind="dingtalk",
    rate_per_minute=18,
    rate_per_second=None,
    formats=("markdown", "text"),
    signed=True,
    query_key="access_token",
    throttle_pause=60.0,
)

MAX_BYTES = 20_000
# More than 20 messages in a minute: the robot is muted ("限流") for ten minutes and answers 410100 meanwhile.
MUTED = 410100
MUTE_SECONDS = 600.0
THROTTLE_CODES = (130101, MUTED)
RETRY_CODES = (-1,)


def sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's robot signature before URL encoding: base64(HMAC-SHA256(key=secret, "{timestamp}\\n{secret}"))."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _errcode(raw: bytes) -> object:
    answer = json_answer(raw)
    return answer.get("errcode") if answer else None


class DingTalkSink(ChatSink):
    """Posts digests to one DingTalk custom robot."""

    platform = PLATFORM
    __slots__ = ()

    def _render(self, message: Message) -> dict[str, Any]:
        if self.settings.format == "text":
            return {"msgtype": "text", "text": {"content": plain_text(message)}}
        text = markdown_text(message, title="### {}", heading="**{}**", bullet="- ", after_heading="\n\n")
        return {"msgtype": "markdown", "markdown": {"title": message.title, "text": text}}

    def _fits(self, body: dict[str, Any]) -> bool:
        return len(orjson.dumps(body)) <= MAX_BYTES

    def _request(self, body: dict[str, Any]) -> tuple[URL, bytes]:
        url = self.settings.url
        secret = self.settings.secret
        if secret is not None:
            timestamp = int(self._timing.wall() * 1000)
            query = f"timestamp={timestamp}&sign={quote_plus(sign(secret.reveal(), timestamp))}"
            url = URL(f"{url}{'&' if url.raw_query_string else '?'}{query}", encoded=True)
        return url, orjson.dumps(body)

    def _verdict(self, status: int, headers: Mapping[str, str], raw: bytes) -> Verdict:
        verdict = errcode_verdict(status, headers, raw, throttle_codes=THROTTLE_CODES, retry_codes=RETRY_CODES)
        if verdict.throttled and verdict.retry_after is None and answer_code(_errcode(raw)) == MUTED:
            return replace(verdict, retry_after=MUTE_SECONDS)  # asking again sooner only prolongs the mute
        return verdict


@register("dingtalk")
def make_dingtalk_sink(target: str | None, options: Mapping[str, object]) -> DingTalkSink:
    """Factory for ``dingtalk:WEBHOOK_URL``."""
    return DingTalkSink(parse_options(PLATFORM, target, options))
