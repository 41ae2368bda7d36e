"""Failure reasons made readable: a JSON error object embedded in a reason becomes ``code: message``.

CCE passes on what the service below it said, so a reason often ends in a raw error body::

    Create node vm failed: {"error":{"code":"Ecs.0319","message":"The ECS quota is insufficient."}}
    → Create node vm failed: Ecs.0319: The ECS quota is insufficient.

The text before the object is kept (it says which step failed), and so is any text after it. Understood
objects: ``{"error": {"code", "message"}}``, ``{"errorCode", "errorMessage"}``, ``{"error_code", "error_msg"}``
and ``{"code", "message"}``; a message that embeds another such object is read the same way (a few levels
deep). Anything else — broken or truncated JSON, an object without a message, text without ``{`` — is left as
it is. This is for display only (the live view, chat digests, ``cce-monitor status``): events keep the raw
reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["readable_reason"]

_CODE_KEYS = ("errorCode", "error_code", "code")
_MESSAGE_KEYS = ("errorMessage", "error_msg", "message", "msg")
_MAX_TRIES = 16  # "{" positions tried per text: a reason full of braces must not cost quadratic time
_MAX_DEPTH = 3
_MAX_LENGTH = 64 * 1024
_DECODER = json.JSONDecoder()


def _pick(obj: Mapping[str, object], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, str) and value.strip():  # a numeric "code" is an HTTP status: not shown
            return value.strip()
    return None


def _readable(obj: object, depth: int) -> str | None:
    if not isinstance(obj, dict):
        return None
    nested = obj.get("error")
    if isinstance(nested, dict):
        obj = {**obj, **nested}
    message = _pick(obj, _MESSAGE_KEYS)
    if message is None:
        return None
    code = _pick(obj, _CODE_KEYS)
    message = _expand(message, depth + 1)
    if code is None or message.startswith(code):
        return message
    return f"{code}: {message}"


def _expand(text: str, depth: int) -> str:
    if "{" not in text or depth >= _MAX_DEPTH or len(text) > _MAX_LENGTH:
        return text
    start = text.find("{")
    for _ in range(_MAX_TRIES):
        if start < 0:
            break
        try:
            obj, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):  # not JSON here, cut off, or nested too deep
            obj, end = None, start
        readable = _readable(obj, depth)
        if readable is not None:
            before, after = text[:start].rstrip(), text[end:]
            return (f"{before} {readable}" if before else readable) + after
        start = text.find("{", start + 1)
    return text


def readable_reason(reason: str) -> str:
    """``reason`` with an embedded JSON error object shown as ``code: message``; otherwise unchanged.

    Never raises; text without ``{`` is returned as it is.
    """
    return _expand(reason, 0)
