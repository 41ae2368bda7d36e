"""The control API's replies and input checks, shared by its route modules (:mod:`monitor.daemon.api`,
:mod:`monitor.daemon.api_deliveries`): JSON bodies, one-line errors (:class:`Reject`, answered by the API's
error middleware), and the checks of ids, labels and times as the API shows them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import orjson
from aiohttp import web

from monitor.core.errors import InvalidIdError
from monitor.core.model import validate_id, validate_label

__all__ = [
    "Reject",
    "check_id",
    "check_label",
    "check_limit",
    "error_reply",
    "json_reply",
    "json_type",
    "one_line",
    "rfc3339",
    "shown",
    "single",
]


class Reject(Exception):
    """A request we answer with a JSON error; the message is shown to the client, so it holds no secret."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def json_reply(data: object, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers, content_type="application/json")


def error_reply(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_reply({"error": message}, status, headers)


def shown(value: object, limit: int = 60) -> str:
    """``repr`` clipped: escapes control characters, so the text stays on one line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_label(key: str, value: str) -> None:
    try:
        validate_label(key, value)
    except InvalidIdError as exc:
        raise Reject(400, exc.message) from None


def check_id(value: str, what: str, where: str = "") -> str:
    try:
        return validate_id(value, what)
    except InvalidIdError as exc:
        raise Reject(400, where + exc.message) from None


def check_limit(raw: str | None, default: int, maximum: int) -> int:
    """A ``limit`` query parameter: a whole number from 1 to ``maximum`` (``default`` when not given)."""
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > len(str(maximum)) or not 1 <= int(raw) <= maximum:
        raise Reject(400, f"invalid limit {shown(raw)}: use a whole number from 1 to {maximum}")
    return int(raw)


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def single(request: web.Request, name: str) -> str | None:
    """The query parameter ``name`` given at most once (``None``: not given); a repeat is a 400."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise Reject(400, f"query parameter {name} given more than once")
    return values[0] if values else None
