"""The ``webhook`` sink: each event POSTed as JSON, signed per Standard Webhooks, retried with backoff.

Spec ``webhook:URL`` (http or https). Options (all optional):

``secret``
    Signing secret. ``whsec_<base64>`` as the Standard Webhooks spec writes it: the key is the base64-decoded
    part after the prefix. Any other string is used as it is: its UTF-8 bytes are the key (what most
    receivers do with a plain shared secret). Never logged, never in an error, a repr or the sink's name.
``timeout``
    Seconds for one whole request (default 10).
``max_attempts``
    Tries per event, the first included (default 8; the daemon's outbox retries on its own, without end).
``backoff_initial``, ``backoff_max``
    Seconds. Before retry *n* (0-based) the sink sleeps ``uniform(0, min(backoff_max, backoff_initial * 2**n))``
    (full jitter), or the server's ``Retry-After`` if that is longer (defaults 1 and 30). The daemon's outbox
    calls :meth:`WebhookSink.send_once` instead: one request per try, its own backoff between them.
``rate``
    Requests per second to this endpoint, through :class:`monitor.cce.throttle.RateLimiter`, retries included
    (default: none — what bounds a receiver by default is the requests in flight: one at a time from ``watch``,
    up to ``delivery.concurrency`` from the daemon; set it for a receiver with a published limit).
``headers``
    Extra static headers, e.g. ``Authorization``; their values are treated like the secret.
``ca_bundle``
    Extra CA file (PEM) trusted for this endpoint (:mod:`monitor.cce.tls`); verification itself is always on.

Every request carries ``webhook-id`` (the event id, stable across retries and restarts, so receivers can
dedupe) and ``webhook-timestamp`` (unix seconds of that attempt); with a secret also
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}." + body>``.

Outcomes: 2xx delivers. 5xx, 429, timeouts and connection errors are retried; a 429 also slows the rate
limiter. Other 4xx, and 3xx (redirects are not followed: a signed POST should not wander), fail at once with
a non-retryable :class:`SinkError`. 410 Gone disables the sink: one warning, then every ``send`` fails at once
without a request. After ``max_attempts`` failures the error is retryable, carrying the last status or error.
The sink's name and messages show the URL without userinfo, query or fragment, which may hold credentials.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

import aiohttp
from yarl import URL

from monitor.cce.throttle import RateLimiter
from monitor.cce.tls import ca_bundle_option, ssl_context, warn_plain_http
from monitor.core.backoff import full_jitter
from monitor.core.errors import ConfigError, SinkError, parse_error_body, parse_retry_after
from monitor.core.events import Event
from monitor.core.secret import Secret
from monitor.core.version import USER_AGENT
from monitor.sinks import register

__all__ = ["SigningKey", "WebhookSink", "WebhookSinkSettings", "make_webhook_sink", "sign"]

logger = logging.getLogger(__name__)

_PREFIX = "whsec_"
_MAX_DETAIL_BYTES = 4096
_RESERVED_HEADERS = frozenset(
    {
        "content-length",
        "content-type",
        "host",
        "transfer-encoding",
        "webhook-id",
        "webhook-signature",
        "webhook-timestamp",
    }
)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A webhook signing key. It is held as a :class:`monitor.core.secret.Secret` of the key's base64, so its
    repr is masked and it compares in constant time (two spellings of one key are equal) as every secret does."""

    secret: Secret

    @classmethod
    def parse(cls, text: str) -> SigningKey:
        """``whsec_<base64>`` → the decoded bytes; anything else → its UTF-8 bytes. Raises ConfigError."""
        if text.startswith(_PREFIX):
            try:
                key = base64.b64decode(text[len(_PREFIX) :], validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(
                    "webhook sink: option 'secret' starts with 'whsec_' but the rest is not valid base64"
                ) from None
        else:
            key = text.encode()
        if not key:
            raise ConfigError("webhook sink: option 'secret' is empty")
        return cls(Secret(base64.b64encode(key).decode()))

    @property
    def key(self) -> bytes:
        """The raw HMAC key; read it only to sign."""
        return base64.b64decode(self.secret.reveal())


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` value (one ``v1`` signature)."""
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def redact_url(url: URL) -> URL:
    """``url`` without userinfo, query and fragment."""
    return url.with_user(None).with_query(None).with_fragment(None)


@dataclass(frozen=True, slots=True, repr=False)
class WebhookSinkSettings:
    """Parsed options of the ``webhook`` sink. The repr hides the secret, header values and the query."""

    url: URL
    secret: SigningKey | None = None
    timeout: float = 10.0
    max_attempts: int = 8
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    rate: float | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    ca_bundle: str | None = None
    """Extra CA file (PEM) trusted for this endpoint; verification itself is always on."""

    def __repr__(self) -> str:
        return (
            f"WebhookSinkSettings(url={str(redact_url(self.url))!r}, "
            f"secret={'set' if self.secret else None}, timeout={self.timeout}, "
            f"max_attempts={self.max_attempts}, backoff_initial={self.backoff_initial}, "
            f"backoff_max={self.backoff_max}, rate={self.rate}, headers={sorted(self.headers)})"
        )


class WebhookSink:
    """POSTs events to one URL. One aiohttp session, made on first use inside the running loop."""

    durable: ClassVar[bool] = True  # fed from the daemon's outbox; receivers dedupe by webhook-id

    __slots__ = ("_closed", "_gone", "_limiter", "_scrub", "_session", "_url_text", "name", "settings")

    def __init__(self, settings: WebhookSinkSettings) -> None:
        self.settings = settings
        public = redact_url(settings.url)
        self._url_text = str(public)
        self.name = f"webhook:{public}"
        self._limiter = RateLimiter(settings.rate) if settings.rate is not None else None
        self._session: aiohttp.ClientSession | None = None
        self._gone = False
        self._closed = False
        # Substrings that must not reach a message: the full URL in its spellings, its query and password,
        # and the header values. (The key itself is never put into any text.)
        url = settings.url
        full = {str(url), url.human_repr()} - {self._url_text, public.human_repr()}
        parts = {url.raw_query_string, url.query_string, url.password or "", url.raw_password or ""}
        parts |= {v for v in url.query.values() if len(v) >= 4}
        parts |= {v for v in settings.headers.values() if len(v) >= 4}
        # ... and each word of them: a receiver may quote just the token of "Authorization: Bearer <token>".
        parts |= {w for v in settings.headers.values() for w in v.split() if len(w) >= 8}
        self._scrub = tuple(sorted(full, key=len, reverse=True)) + tuple(
            sorted((p for p in parts if p), key=len, reverse=True)
        )

    def __repr__(self) -> str:
        return f"WebhookSink(name={self.name!r}, gone={self._gone}, settings={self.settings!r})"

    @property
    def limiter(self) -> RateLimiter | None:
        """This endpoint's rate limiter (for statistics), if it has a ``rate``."""
        return self._limiter

    @property
    def disabled(self) -> bool:
        """Whether the endpoint answered 410 Gone and the sink no longer sends."""
        return self._gone

    def _clean(self, text: str) -> str:
        for secret in self._scrub:
            text = text.replace(secret, self._url_text if "://" in secret else "***")
        return text

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError):
            return f"timed out after {self.settings.timeout:g}s"
        text = str(exc)
        return type(exc).__name__ + (f": {self._clean(text)}" if text else "")

    def _session_for_send(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl_context(self.settings.ca_bundle)),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    def _headers(self, event_id: str, body: bytes) -> dict[str, str]:
        timestamp = int(time.time())
        headers = dict(self.settings.headers)
        headers["Content-Type"] = "application/json"
        headers["webhook-id"] = event_id
        headers["webhook-timestamp"] = str(timestamp)
        if self.settings.secret is not None:
            headers["webhook-signature"] = sign(self.settings.secret.key, event_id, timestamp, body)
        return headers

    def _backoff(self, attempt: int) -> float:
        return full_jitter(attempt, self.settings.backoff_initial, self.settings.backoff_max)

    async def send(self, event: Event) -> None:
        """Deliver ``event``, retrying as the module docstring describes; raise :class:`SinkError` if not."""
        session, body = self._prepare(event)
        attempts = self.settings.max_attempts
        last, retry_after = "no attempt made", None
        for attempt in range(attempts):
            failed = await self._try(session, event, body)
            if failed is None:
                return
            last, retry_after = failed
            if attempt + 1 >= attempts:
                break
            delay = max(retry_after or 0.0, self._backoff(attempt))
            logger.debug(
                "%s: attempt %d/%d for event %s (job %s) failed: %s; retrying in %.2fs",
                self.name,
                attempt + 1,
                attempts,
                event.id,
                event.job_id,
                last,
                delay,
            )
            await asyncio.sleep(delay)
        raise SinkError(
            f"{self.name}: gave up after {attempts} attempt{'s' if attempts != 1 else ''}; last: {last}",
            retryable=True,
            retry_after=retry_after,
        )

    async def send_once(self, event: Event) -> None:
        """One request, no retries of its own: the daemon's outbox, which retries each event itself (without
        holding a delivery slot while it waits), calls this. Raises :class:`SinkError` as :meth:`send` does,
        retryable (with the server's ``Retry-After``) for 5xx, 429, timeouts and connection errors."""
        session, body = self._prepare(event)
        failed = await self._try(session, event, body)
        if failed is not None:
            last, retry_after = failed
            raise SinkError(f"{self.name}: {last}", retryable=True, retry_after=retry_after)

    def _prepare(self, event: Event) -> tuple[aiohttp.ClientSession, bytes]:
        if self._closed:
            raise SinkError(f"{self.name}: sink is closed", retryable=False)
        if self._gone:
            raise SinkError(f"{self.name}: endpoint is gone (HTTP 410); event {event.id} dropped", retryable=False)
        return self._session_for_send(), event.to_json()

    async def _try(self, session: aiohttp.ClientSession, event: Event, body: bytes) -> tuple[str, float | None] | None:
        """One request: ``None`` if delivered, ``(what went wrong, Retry-After)`` if worth trying again; raises
        a non-retryable :class:`SinkError` for an answer that will not change (4xx but 429, 3xx, 410)."""
        limiter = self._limiter
        if limiter is not None:
            await limiter.acquire()
        try:
            async with session.post(
                self.settings.url, data=body, headers=self._headers(event.id, body), allow_redirects=False
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    if limiter is not None:
                        limiter.succeeded()
                    return None
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                detail = await self._detail(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return self._describe(exc), None
        last = f"HTTP {status}: {detail}"
        if status == 410:
            self._gone = True
            logger.warning(
                "%s: endpoint answered 410 Gone; disabling it, later events are dropped (job %s)",
                self.name,
                event.job_id,
            )
            raise SinkError(f"{self.name}: {last}; endpoint disabled", retryable=False)
        if status == 429:
            if limiter is not None:
                limiter.throttled(retry_after)
        elif status < 500:
            raise SinkError(f"{self.name}: {last}", retryable=False)
        return last, retry_after

    async def _detail(self, response: aiohttp.ClientResponse) -> str:
        """A short description of an error response's body; never fails."""
        try:
            body = await response.content.read(_MAX_DETAIL_BYTES)
        except (aiohttp.ClientError, TimeoutError):
            return response.reason or "(no body)"
        _code, message = parse_error_body(body, response.headers.get("Content-Type", ""))
        return self._clean(message)

    async def aclose(self) -> None:
        """Close the HTTP session; later sends fail."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _number(options: Mapping[str, object], key: str, default: float, *, minimum: float, strict: bool) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"webhook sink: option {key!r} must be a number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        bound = "greater than" if strict else "at least"
        raise ConfigError(f"webhook sink: option {key!r} must be {bound} {minimum:g}, got {value!r}")
    return float(value)


def _headers(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"webhook sink: option 'headers' must be a mapping, got {type(value).__name__}")
    headers: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name or any(c in name for c in " :\r\n\t"):
            raise ConfigError(f"webhook sink: option 'headers' has an invalid header name {name!r}")
        # The value may be a credential: say which header is wrong, never what it holds.
        if not isinstance(item, str) or "\r" in item or "\n" in item:
            raise ConfigError(f"webhook sink: option 'headers': {name} must be a one-line string")
        if name.lower() in _RESERVED_HEADERS:
            raise ConfigError(f"webhook sink: option 'headers': {name} is set by the sink and cannot be overridden")
        headers[name] = item
    return MappingProxyType(headers)


_KNOWN = ("backoff_initial", "backoff_max", "ca_bundle", "headers", "max_attempts", "rate", "secret", "timeout")


def _parse(target: str | None, options: Mapping[str, object]) -> WebhookSinkSettings:
    unknown = sorted(set(options) - set(_KNOWN))
    if unknown:
        raise ConfigError(f"webhook sink: unknown option {unknown[0]!r} (known: {', '.join(_KNOWN)})")
    if not target or not target.strip():
        raise ConfigError("webhook sink: a URL is required, e.g. webhook:https://example.com/hook")
    try:
        url = URL(target.strip())
    except (ValueError, TypeError):
        raise ConfigError("webhook sink: the URL cannot be parsed") from None
    if url.scheme not in ("http", "https") or not url.host:
        shown = str(redact_url(url)) if url.host else "the URL"
        raise ConfigError(f"webhook sink: {shown} must be an http:// or https:// URL with a host")
    secret_text = options.get("secret")
    if secret_text is not None and not isinstance(secret_text, str):
        raise ConfigError(f"webhook sink: option 'secret' must be a string, got {type(secret_text).__name__}")
    max_attempts = options.get("max_attempts", 8)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ConfigError(f"webhook sink: option 'max_attempts' must be an integer of at least 1, got {max_attempts!r}")
    backoff_initial = _number(options, "backoff_initial", 1.0, minimum=0, strict=False)
    backoff_max = _number(options, "backoff_max", 30.0, minimum=0, strict=False)
    if backoff_max < backoff_initial:
        raise ConfigError("webhook sink: option 'backoff_max' must be at least 'backoff_initial'")
    headers = _headers(options.get("headers", {}))
    ca_bundle = ca_bundle_option(options.get("ca_bundle"), "webhook sink: option 'ca_bundle'")  # fail at start-up
    warn_plain_http(url, "webhook sink")
    if url.user is not None and any(name.lower() == "authorization" for name in headers):
        raise ConfigError("webhook sink: credentials in the URL and an Authorization header cannot be combined")
    return WebhookSinkSettings(
        url=url,
        secret=SigningKey.parse(secret_text) if secret_text is not None else None,
        timeout=_number(options, "timeout", 10.0, minimum=0, strict=True),
        max_attempts=max_attempts,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        rate=None if options.get("rate") is None else _number(options, "rate", 0.0, minimum=0, strict=True),
        headers=headers,
        ca_bundle=ca_bundle,
    )


@register("webhook")
def make_webhook_sink(target: str | None, options: Mapping[str, object]) -> WebhookSink:
    """Factory for ``webhook:URL``."""
    return WebhookSink(_parse(target, options))
