"""The ``feishu`` sink: rollout digests to a Feishu (Lark) group through a custom bot webhook.

Spec ``feishu:https://open.feishu.cn/open-apis/bot/v2/hook/<token>`` (Lark: ``open.larksuite.com``). The path's
last segment is the credential; names and logs show ``…/bot/v2/hook/***``. Options are those of every chat sink
(:mod:`monitor.sinks.chat`) and:

``secret``
    The bot's signing secret ("signature verification" in its security settings). Each request then carries
    ``"timestamp"`` (unix seconds, as a string) and ``"sign"`` in the JSON body: base64 of HMAC-SHA256 keyed
    with ``"{timestamp}\\n{secret}"`` over an empty message (see :func:`sign`). Feishu rejects timestamps more
    than an hour off, so the host clock must be right.
``format``
    ``post`` (rich text, default) or ``text``.

Rate defaults are Feishu's for custom bots: 5 a second and 100 a minute. A "keyword" security setting is met by
putting the keyword into option ``title``, which starts every message.

A ``post`` body (``text``: ``{"msg_type": "text", "content": {"text": …}}``); the request body stays under
19,500 UTF-8 bytes before the signature fields (Feishu's limit is 20 KB)::

    {"msg_type": "post", "content": {"post": {"zh_cn": {
        "title": "cce-monitor: 3 jobs failed · pool-a 255/300 finished",
        "content": [
          [{"tag": "text", "text": "Rollouts (1)"}],
          [{"tag": "text", "text": "• pool-a"},
           {"tag": "text", "text": ": 255/300 finished, 250 Success, 3 Failed, ETA 7m"}],
          [{"tag": "text", "text": "Failed jobs (3)"}],
          [{"tag": "text", "text": "• "}, {"tag": "a", "text": "node-7", "href": "https://console/jobs/0c1f…"},
           {"tag": "text", "text": " (job 0c1f…): Install node failed"}],
          [{"tag": "text", "text": "• … and 2 more"}]]}}},
     "timestamp": "1764312060", "sign": "…"}

The answer is JSON with ``code`` 0 (older answers: ``StatusCode`` 0). 11232 (frequency limited) and 9499 "too
many request" pause and retry (9499 is also Feishu's code for a malformed request — "Bad Request" — which is
final); 429 and 5xx retry, honouring ``Retry-After`` or ``x-ogw-ratelimit-reset``; 19021 (signature or
timestamp mismatch), 19022 (IP not allowed), 19024 (keyword missing) and every other code are final.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import orjson
from multidict import CIMultiDict
from yarl import URL

from monitor.sinks import register
from monitor.sinks.chat import (
    ChatSink,
    Message,
    Platform,
    Verdict,
    answer_code,
    answer_snippet,
    code_verdict,
    json_answer,
    more_text,
    parse_options,
    plain_text,
    status_verdict,
)

__all__ = ["PLATFORM", "FeishuSink", "make_feishu_sink", "sign"]

PLATFORM = Platform(
    kind="feishu",
    rate_per_minute=100,
    rate_per_second=5,
    formats=("post", "text"),
    signed=True,
    path_masked_after="hook",
    throttle_pause=10.0,
)

MAX_BYTES = 19_500
THROTTLE_CODES = (11232,)
TOO_MANY = 9499


def sign(secret: str, timestamp: int) -> str:
    """Feishu's custom bot signature: base64(HMAC-SHA256(key="{timestamp}\\n{secret}", msg=b""))."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def _text(text: str) -> dict[str, str]:
    return {"tag": "text", "text": text}


class FeishuSink(ChatSink):
    """Posts digests to one Feishu custom bot."""

    platform = PLATFORM
    __slots__ = ()

    def _render(self, message: Message) -> dict[str, Any]:
        if self.settings.format == "text":
            return {"msg_type": "text", "content": {"text": plain_text(message)}}
        rows: list[list[dict[str, str]]] = []
        for section in message.sections:
            rows.append([_text(section.heading)])
            for line in section.lines:
                if line.link and line.label:
                    row = [_text("• "), {"tag": "a", "text": line.label, "href": line.link}]
                else:
                    row = [_text("• " + line.label)]
                if line.text:
                    row.append(_text(line.text))
                rows.append(row)
            if section.more:
                rows.append([_text("• " + more_text(section.more))])
        return {"msg_type": "post", "content": {"post": {"zh_cn": {"title": message.title, "content": rows}}}}

    def _fits(self, body: dict[str, Any]) -> bool:
        return len(orjson.dumps(body)) <= MAX_BYTES

    def _request(self, body: dict[str, Any]) -> tuple[URL, bytes]:
        secret = self.settings.secret
        if secret is not None:
            timestamp = int(self._timing.wall())
            body = {**body, "timestamp": str(timestamp), "sign": sign(secret.reveal(), timestamp)}
        return self.settings.url, orjson.dumps(body)

    def _verdict(self, status: int, headers: Mapping[str, str], raw: bytes) -> Verdict:
        data = json_answer(raw)
        if data is None:
            if 200 <= status < 300:
                return Verdict(False, f"HTTP {status} with an answer that is not JSON: {answer_snippet(raw)}")
            return status_verdict(status, headers, answer_snippet(raw))
        code = answer_code(data["code"] if "code" in data else data.get("StatusCode"))
        message = str(data.get("msg") or data.get("StatusMessage") or "")[:200]
        hints = CIMultiDict(headers)
        if "Retry-After" not in hints and "x-ogw-ratelimit-reset" in hints:
            hints["Retry-After"] = hints["x-ogw-ratelimit-reset"]
        throttle = THROTTLE_CODES + ((TOO_MANY,) if "bad request" not in message.lower() else ())
        return code_verdict(status, hints, code, message, throttle_codes=throttle)


@register("feishu")
def make_feishu_sink(target: str | None, options: Mapping[str, object]) -> FeishuSink:
    """Factory for ``feishu:WEBHOOK_URL``."""
    return FeishuSink(parse_options(PLATFORM, target, options))
