"""How a bot's answer reads: a :class:`Verdict` (delivered, retryable, throttled) and the helpers the platform
modules read their answers with.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from monitor.core.errors import parse_retry_after
from monitor.sinks.chat.render import clip, json_int

__all__ = [
    "OK",
    "Verdict",
    "answer_code",
    "answer_snippet",
    "code_verdict",
    "errcode_verdict",
    "json_answer",
    "status_verdict",
]


@dataclass(frozen=True, slots=True)
class Verdict:
    """How a bot answered one request."""

    ok: bool
    detail: str = ""
    retryable: bool = False
    throttled: bool = False  # a rate-limit answer: pause every request, not just this message
    retry_after: float | None = None


OK = Verdict(True, "ok")


def answer_snippet(raw: bytes) -> str:
    """A short, one-line rendering of an answer body."""
    return clip(raw.decode("utf-8", "replace"), 200) or "(empty body)"


def json_answer(raw: bytes) -> dict[str, Any] | None:
    """The answer as a JSON object, or None."""
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def answer_code(value: object) -> int | None:
    """An integer error code from an answer field (numbers, or strings of digits)."""
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,12}", value.strip()):
        return int(value)
    return json_int(value)


def status_verdict(status: int, headers: Mapping[str, str], detail: str) -> Verdict:
    """The verdict for an HTTP status that is not a success: 429 and 5xx retry, the rest do not."""
    retry_after = parse_retry_after(headers.get("Retry-After"))
    text = f"HTTP {status}: {detail}"
    if status == 429:
        return Verdict(False, text, retryable=True, throttled=True, retry_after=retry_after)
    if status >= 500:
        return Verdict(False, text, retryable=True, retry_after=retry_after)
    return Verdict(False, text)


def code_verdict(
    status: int,
    headers: Mapping[str, str],
    code: int | None,
    message: str,
    *,
    throttle_codes: Iterable[int] = (),
    retry_codes: Iterable[int] = (),
) -> Verdict:
    """The verdict for an answer that carries an error code in its body (0: success, when the status is 2xx)."""
    if code == 0 and 200 <= status < 300:
        return OK
    if status == 429 or status >= 500:
        return status_verdict(status, headers, f"code {code}: {message}" if code is not None else message)
    detail = f"code {code}: {message}" if code is not None else f"HTTP {status}: {message}"
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if code is not None and code in set(throttle_codes):
        return Verdict(False, detail, retryable=True, throttled=True, retry_after=retry_after)
    if code is not None and code in set(retry_codes):
        return Verdict(False, detail, retryable=True, retry_after=retry_after)
    return Verdict(False, detail)


def errcode_verdict(
    status: int,
    headers: Mapping[str, str],
    raw: bytes,
    *,
    throttle_codes: Iterable[int] = (),
    retry_codes: Iterable[int] = (),
) -> Verdict:
    """The verdict for a bot that answers ``{"errcode": N, "errmsg": "..."}`` (DingTalk, WeCom)."""
    data = json_answer(raw)
    if data is None:
        if 200 <= status < 300:
            return Verdict(False, f"HTTP {status} with an answer that is not JSON: {answer_snippet(raw)}")
        return status_verdict(status, headers, answer_snippet(raw))
    code = answer_code(data.get("errcode"))
    message = str(data.get("errmsg") or "")[:200]
    return code_verdict(status, headers, code, message, throttle_codes=throttle_codes, retry_codes=retry_codes)
