"""The one exception tree of cce-monitor, and the reader of CCE error bodies.

Every error says whether retrying the same operation can help (``retryable``) and, where the server said so,
after how long (``retry_after``). API errors carry the HTTP status, the error code and message from the body,
and the ``X-Request-Id`` — never a credential: nothing here is built from request headers, and the text of a
transport failure goes through :func:`transport_detail`, which drops what a parser quoted from the wire and
masks the secrets in play.

::

    MonitorError                      (retryable=False)
    ├── ConfigError                   bad configuration or usage; fix it and start again
    ├── InvalidIdError                a job/project id that cannot go into a URL path (also a ValueError)
    ├── APIError                      the CCE/IAM API answered with an error status
    │   ├── AuthError                 401 / 403: credentials wrong, expired or not allowed
    │   ├── NotFoundError             404: no such job (yet: a new job may 404 briefly)
    │   │   └── EndpointError         404 APIGW.0101: no such API at this endpoint (wrong path): configuration
    │   ├── ThrottledError            429: APIGW.0308 / APIG.0308 / CCE.02429001; retryable, retry_after and the
    │   │                             gateway's budget (``limit:NN,time:1 minute``) when sent
    │   ├── LockedError               429 CCE.01429002: the job's resource is locked by another request; retryable
    │   ├── ServerError               5xx: retryable
    │   └── RequestError              any other 4xx: the request itself is wrong
    ├── TransportError                no usable HTTP answer; retryable
    │   ├── ConnectError              could not connect / connection dropped
    │   └── RequestTimeoutError       connect or total timeout passed
    ├── MalformedResponseError        a 2xx body that is not a job (bad JSON, wrong shape); retryable
    └── SinkError                     a sink could not deliver; ``retryable`` says if another try may work
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import orjson

from monitor.core.secret import Secret, redact
from monitor.core.text import printable

__all__ = [
    "APIError",
    "AuthError",
    "ConfigError",
    "ConnectError",
    "EndpointError",
    "InvalidIdError",
    "LockedError",
    "MalformedResponseError",
    "MonitorError",
    "NotFoundError",
    "NotOwnerError",
    "RequestError",
    "RequestTimeoutError",
    "ServerError",
    "SinkError",
    "StateError",
    "ThrottledError",
    "TransportError",
    "api_error",
    "parse_budget",
    "parse_error_body",
    "parse_retry_after",
    "transport_detail",
]

_MAX_MESSAGE = 300


class MonitorError(Exception):
    """Root of every error cce-monitor raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class ConfigError(MonitorError):
    """Configuration or usage is wrong; the message names the key or option."""


class InvalidIdError(MonitorError, ValueError):
    """A job or project id that is not safe to put into a URL path."""


class APIError(MonitorError):
    """The API answered with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.code = code
        self.request_id = request_id

    def __str__(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.code:
            parts.append(self.code)
        text = " ".join(parts) + f": {self.message}"
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, code={self.code!r}, "
            f"message={self.message!r}, request_id={self.request_id!r})"
        )


class AuthError(APIError):
    """401 or 403: the credentials are wrong, expired or lack permission."""


class NotFoundError(APIError):
    """404: the job (or project) does not exist, or does not exist yet."""


class EndpointError(NotFoundError):
    """404 ``APIGW.0101`` ("The API does not exist or has not been published in the environment", as the vendor
    SDKs report it): the gateway knows no such API, so the endpoint (or a path in it) is wrong — not the job."""


class ThrottledError(APIError):
    """429 from the API gateway (``APIGW.0308``, or ``APIG.0308``) or CCE (``CCE.02429001``). ``budget`` is
    the gateway's own limit when its message names it: ``(requests, per seconds)``."""

    retryable = True

    def __init__(self, message: str, *, budget: tuple[int, float] | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.budget = budget


class LockedError(APIError):
    """429 ``CCE.01429002`` ("Resource locked by other requests"): not throttling — this job's resource is busy;
    retry this job later, without slowing every other request (the CCE error code list; e.g.
    cluster-api-provider-cce's ``ErrCodeResourceLocked``)."""

    retryable = True


class ServerError(APIError):
    """5xx: the service failed; trying again later may work."""

    retryable = True


class RequestError(APIError):
    """Another 4xx: the request is wrong and repeating it will not help."""


class TransportError(MonitorError):
    """No usable HTTP answer arrived."""

    retryable = True


class ConnectError(TransportError):
    """The connection could not be made or was dropped."""


class RequestTimeoutError(TransportError):
    """The connect or total timeout passed."""


class MalformedResponseError(MonitorError):
    """A success status with a body that is not a job; usually a truncated or garbled answer."""

    retryable = True

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id

    def __str__(self) -> str:
        return self.message + (f" (request id {self.request_id})" if self.request_id else "")


class SinkError(MonitorError):
    """A sink could not deliver an event."""

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retryable = retryable


class StateError(MonitorError):
    """The state database failed an operation (PostgreSQL down, a lost connection); the message names where, never
    a password."""


class NotOwnerError(StateError):
    """A write for a job refused because this replica no longer owns it (another replica claimed it after this
    one's membership lapsed, or it was handed over): the poll's news is dropped — the new owner detects it
    again, with the same event ids."""


_CODE_KEYS = ("errorCode", "error_code", "code")
_MESSAGE_KEYS = ("errorMessage", "error_msg", "message", "msg", "title")
_TAG_RE = re.compile(r"<[^<>]*>")  # not "[^>]": that rescans to the end from every unclosed "<"
_SPACE_RE = re.compile(r"\s+")


_SCAN_LIMIT = 64 * 1024


def _clip(text: str) -> str:
    # Messages end up in logs and terminals: no control characters, escape sequences or bidi overrides.
    text = printable(text[: _MAX_MESSAGE * 4])
    text = _SPACE_RE.sub(" ", text).strip()
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _pick(obj: Mapping[str, object], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = obj.get(key)
        # Only strings count: a Kubernetes Status "code" is the HTTP status as a number.
        if isinstance(value, str) and value.strip():
            return value
    return None


def _html_title(text: str) -> str | None:
    """The first ``<title>`` of a page, found in linear time (a lazy regex rescans on pathological pages)."""
    lower = text.lower()
    start = lower.find("<title")
    if start < 0:
        return None
    open_end = lower.find(">", start)
    close = lower.find("</title", open_end + 1) if open_end >= 0 else -1
    if close < 0:
        return None
    return text[open_end + 1 : close]


def parse_error_body(body: bytes, content_type: str = "") -> tuple[str | None, str]:
    """Read ``(code, message)`` from an error body in any style CCE and its gateway use.

    Styles: ``{"errorCode","errorMessage"}`` (CCE), ``{"error_code","error_msg"}`` (API gateway),
    ``{"code","message"}``, Kubernetes ``Status`` bodies carrying several of these, IAM's
    ``{"error": {"code", "title", "message"}}``, HTML pages (their ``<title>``) and plain text. Never raises.
    """
    # Only the start of a body is read for the message: an error page can be large, and the regular
    # expressions below must not be handed megabytes.
    text = body[:_SCAN_LIMIT].decode("utf-8", "replace")
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        nested = data.get("error")
        if isinstance(nested, dict):
            data = {**data, **nested}
        code = _pick(data, _CODE_KEYS)
        message = _pick(data, _MESSAGE_KEYS)
        detail = _pick(data, ("message",))
        if message and detail:
            # Two messages (the gateway's "Request body invalid" and CCE's "invalid primary fixedIp"): both,
            # unless one already says the other (compared as a reader would: spacing and case aside).
            first, second = (" ".join(t.split()).casefold() for t in (message, detail))
            if first != second and first in second:
                message = detail  # the detail says it all, and more
            elif second not in first:
                message = f"{message}: {detail}"
        clean_code = _clip(code) if code else ""
        clean_message = (_clip(message) if message else "") or clean_code
        if clean_code or clean_message:
            return clean_code or None, clean_message
    if "html" in content_type.lower() or text.lstrip()[:15].lower().startswith(("<!doctype", "<html")):
        title = _html_title(text)
        return None, _clip(title if title is not None else _TAG_RE.sub(" ", text)) or "HTML error page"
    return None, _clip(text) or "(empty body)"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds; ``None`` when absent or not a number.

    HTTP dates are accepted by the RFC but not sent by these APIs; they count as absent.
    """
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if math.isnan(seconds) or seconds < 0:
        return None
    return min(seconds, 3600.0)


def api_error(
    status: int,
    body: bytes,
    *,
    content_type: str = "",
    request_id: str | None = None,
    retry_after: str | None = None,
    secrets: Iterable[Secret | str] = (),
) -> APIError:
    """Map an error response to the right :class:`APIError` subclass; ``secrets`` are masked if echoed."""
    code, message = parse_error_body(body, content_type)
    message = redact(message, secrets)
    common: dict[str, object] = {
        "status": status,
        "code": code,
        "request_id": request_id,
        "retry_after": parse_retry_after(retry_after),
    }
    if code == _LOCKED:
        return LockedError(message, **common)  # type: ignore[arg-type]
    if status == 429 or code in _THROTTLED:
        return ThrottledError(message, budget=parse_budget(message), **common)
    cls: type[APIError]
    if status in (401, 403):
        cls = AuthError
    elif status == 404:
        cls = EndpointError if code == _NO_SUCH_API else NotFoundError
    elif status >= 500:
        cls = ServerError
    else:
        cls = RequestError
    return cls(message, **common)  # type: ignore[arg-type]


_THROTTLED = frozenset({"APIGW.0308", "APIG.0308", "CCE.02429001"})
_LOCKED = "CCE.01429002"
_NO_SUCH_API = "APIGW.0101"
_BUDGET_RE = re.compile(r"limit\s*:\s*(\d+)\s*,\s*time\s*:\s*(\d+(?:\.\d+)?)?\s*(second|minute|hour|day)", re.I)
_UNIT_SECONDS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def parse_budget(message: str) -> tuple[int, float] | None:
    """The gateway's limit named in a throttle message (``... limit:200,time:1 minute``), as
    ``(requests, seconds)``; ``None`` when the message names none (or an absurd one)."""
    match = _BUDGET_RE.search(message)
    if match is None:
        return None
    count = int(match.group(1))
    seconds = float(match.group(2) or 1) * _UNIT_SECONDS[match.group(3).lower()]
    return (count, seconds) if count > 0 and seconds > 0 else None


# A quoted literal as a parser's message shows it (``b'...'``, ``'...'``, ``"..."``), closed or cut off.
_QUOTED_RE = re.compile(r"""b?'[^']*(?:'|$)|b?"[^"]*(?:"|$)""")
_CARET_RE = re.compile(r"^\s*\^+\s*$", re.MULTILINE)  # the llhttp parser's pointer under the quoted line


def _from_the_wire(exc: BaseException) -> bool:
    """Whether ``exc`` is a parser's complaint about what a server sent (its text may quote header bytes).

    aiohttp raises ``ClientResponseError`` (carrying ``request_info``) for a response it could not parse and
    ``ClientPayloadError`` for a broken body, both built from an ``HttpProcessingError``; duck-typed, so the
    core does not import aiohttp.
    """
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        names = {cls.__name__ for cls in type(current).__mro__}
        if names & {"ClientResponseError", "ClientPayloadError", "HttpProcessingError"}:
            return True
        current, seen = current.__cause__ or current.__context__, seen + 1
    return False


def transport_detail(exc: BaseException, secrets: Iterable[Secret | str] = ()) -> str:
    """A one-line text for a failed HTTP exchange (an aiohttp exception), safe for logs, events and terminals.

    When the exception comes from parsing the answer, every quoted literal in its text is replaced by ``…``:
    aiohttp quotes the start of a header line it refuses (``Got more than 8190 bytes when reading: b'MII…'``),
    and that header may be a token. Then every secret in ``secrets``, or a piece of one, is masked
    (:func:`monitor.core.secret.redact`), control characters go and the text is clipped.
    """
    text = str(exc)
    status = getattr(exc, "status", None)
    message = getattr(exc, "message", None)
    if _from_the_wire(exc):
        # ClientResponseError's str() adds the URL and repeats the message; its parts are enough.
        if isinstance(message, str):
            text = f"{status}, {message}" if isinstance(status, int) and status else message
        text = _CARET_RE.sub("", _QUOTED_RE.sub("…", text))
    text = redact(text, secrets)
    name = type(exc).__name__
    return _clip(f"{name}: {text}" if text else name)
