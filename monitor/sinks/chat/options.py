"""A chat sink's options: the :class:`Platform` facts, :class:`EventSelector` (option ``events``) and
:func:`parse_options`, which validates a spec's URL and options into :class:`ChatSettings`.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from yarl import URL

from monitor.cce.tls import ca_bundle_option, warn_plain_http
from monitor.core.errors import ConfigError
from monitor.core.events import Event, EventType
from monitor.core.secret import Secret

__all__ = ["DEFAULT_EVENTS", "ChatSettings", "EventSelector", "Platform", "parse_options", "public_url"]

DEFAULT_EVENTS: tuple[str, ...] = (
    "rollout.progress",
    "rollout.finished",
    "job.phase_changed:Failed",
    "job.timed_out",
    "job.not_found",
    "job.stalled",
    "node.failed",
    "nodepool.settled",
    "monitor.auth_failed",
)
_MAX_TITLE = 100


@dataclass(frozen=True, slots=True)
class Platform:
    """What differs between the chat platforms, besides rendering and answers."""

    kind: str
    rate_per_minute: int
    rate_per_second: int | None
    formats: tuple[str, ...] = ()  # accepted values of option ``format``; the first is the default
    signed: bool = False  # accepts option ``secret``
    query_key: str | None = None  # query parameter that must hold the bot's token
    path_masked_after: str | None = None  # path segments after this one are the token
    throttle_pause: float = 10.0  # seconds to pause after a rate-limit answer without Retry-After


@dataclass(frozen=True, slots=True)
class EventSelector:
    """Which events a chat sink takes: ``(type, None)`` takes every event of a type, ``(type, phase)`` one phase."""

    rules: frozenset[tuple[EventType, str | None]]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> EventSelector:
        """From ``TYPE`` / ``TYPE:PHASE`` strings; raises ValueError naming a bad entry."""
        rules: set[tuple[EventType, str | None]] = set()
        for entry in entries:
            kind, sep, phase = entry.partition(":")
            try:
                event_type = EventType(kind.strip())
            except ValueError:
                raise ValueError(f"unknown event type {kind.strip()!r}") from None
            if sep and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", phase.strip()):
                raise ValueError(f"bad phase in {entry!r}")
            rules.add((event_type, phase.strip() if sep else None))
        return cls(frozenset(rules))

    def __call__(self, event: Event) -> bool:
        return (event.type, None) in self.rules or (event.type, event.phase) in self.rules


@dataclass(frozen=True, slots=True, repr=False)
class ChatSettings:
    """Parsed options of a chat sink (see :func:`parse_options`). The repr hides the URL's token and the secret."""

    url: URL
    shown_url: str  # the URL as names and messages show it
    secret: Secret | None = None
    events: EventSelector = field(default_factory=lambda: EventSelector.parse(DEFAULT_EVENTS))
    title: str = "cce-monitor"
    link: str | None = None
    rate_per_minute: int = 18
    rate_per_second: int | None = None
    format: str = ""
    max_attempts: int = 5
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    timeout: float = 10.0
    max_pending: int = 1000
    max_items: int = 10
    coalesce: float = 5.0
    progress_every: float = 60.0
    final_wait: float = 75.0
    ca_bundle: str | None = None
    """Extra CA file (PEM) trusted for the bot's endpoint; verification itself is always on."""

    def __repr__(self) -> str:
        return (
            f"ChatSettings(url={self.shown_url!r}, secret={'set' if self.secret else None}, "
            f"title={self.title!r}, link={self.link!r}, rate_per_minute={self.rate_per_minute}, "
            f"rate_per_second={self.rate_per_second}, format={self.format!r}, max_attempts={self.max_attempts}, "
            f"max_pending={self.max_pending}, max_items={self.max_items})"
        )


_COMMON_OPTIONS = (
    "backoff_initial",
    "backoff_max",
    "ca_bundle",
    "coalesce",
    "events",
    "final_wait",
    "link",
    "max_attempts",
    "max_items",
    "max_pending",
    "progress_every",
    "rate_per_minute",
    "rate_per_second",
    "timeout",
    "title",
)
_LINK_FIELDS = frozenset({"rollout", "job_id"})


def public_url(url: URL, platform: Platform) -> str:
    """``url`` as it may be shown: no userinfo, query or fragment, and the path's token masked."""
    base = url.with_user(None).with_query(None).with_fragment(None)
    if platform.path_masked_after is None:
        return str(base)
    segments = base.raw_path.split("/")
    if platform.path_masked_after in segments:
        keep = segments[: segments.index(platform.path_masked_after) + 1]
        masked = "/".join(keep) + ("/***" if len(segments) > len(keep) else "")
    else:
        masked = "/***"
    return str(base.with_path(masked, encoded=True))


def _number(kind: str, options: Mapping[str, object], key: str, default: float, *, positive: bool) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{kind} sink: option {key!r} must be a number, got {value!r}")
    if value < 0 or (positive and value == 0):
        raise ConfigError(f"{kind} sink: option {key!r} must be {'positive' if positive else 'at least 0'}")
    return float(value)


def _integer(kind: str, options: Mapping[str, object], key: str, default: int | None) -> int | None:
    value = options.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{kind} sink: option {key!r} must be an integer of at least 1, got {value!r}")
    return value


def _required_integer(kind: str, options: Mapping[str, object], key: str, default: int) -> int:
    value = _integer(kind, options, key, default)
    if value is None:
        raise ConfigError(f"{kind} sink: option {key!r} must be an integer of at least 1, got None")
    return value


def _one_line_option(kind: str, value: object, key: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{kind} sink: option {key!r} must be a string, got {type(value).__name__}")
    if len(value) > limit or any(ch in value for ch in "\r\n\t") or not value.isprintable():
        raise ConfigError(f"{kind} sink: option {key!r} must be one printable line of at most {limit} characters")
    return value


def _link_template(kind: str, value: object) -> str:
    template = _one_line_option(kind, value, "link", 2000)
    if not template.startswith(("https://", "http://")) or any(ch in template for ch in ' <>|"'):
        raise ConfigError(f"{kind} sink: option 'link' must be an http(s) URL template without spaces, <, >, |, \"")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        raise ConfigError(f"{kind} sink: option 'link' is not a valid template (unbalanced braces?)") from None
    for _text, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in _LINK_FIELDS or spec or conversion:
            raise ConfigError(f"{kind} sink: option 'link' may only use {{rollout}} and {{job_id}}, found {{{name}}}")
    return template


def parse_options(platform: Platform, target: str | None, options: Mapping[str, object]) -> ChatSettings:
    """Validate a chat sink's URL and options into :class:`ChatSettings`; raise ConfigError with one line."""
    kind = platform.kind
    known = set(_COMMON_OPTIONS)
    known |= {"secret"} if platform.signed else set()
    known |= {"format"} if platform.formats else set()
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"{kind} sink: unknown option {unknown[0]!r} (known: {', '.join(sorted(known))})")
    if not target or not target.strip():
        raise ConfigError(f"{kind} sink: the bot's webhook URL is required, e.g. {kind}:https://...")
    try:
        url = URL(target.strip())
    except (ValueError, TypeError):
        raise ConfigError(f"{kind} sink: the webhook URL cannot be parsed") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{kind} sink: the webhook URL must be an http:// or https:// URL with a host")
    url = url.with_fragment(None)
    shown = public_url(url, platform)
    warn_plain_http(url, f"{kind} sink", shown)
    if platform.query_key is not None and not url.query.get(platform.query_key):
        raise ConfigError(f"{kind} sink: the webhook URL {shown} lacks its {platform.query_key}= query parameter")

    secret: Secret | None = None
    if "secret" in options:
        raw = options["secret"]
        if not isinstance(raw, str) or not raw.strip():  # say what is wrong, never what it holds
            raise ConfigError(f"{kind} sink: option 'secret' must be a non-empty string")
        secret = Secret(raw.strip())

    events_option = options.get("events", DEFAULT_EVENTS)
    if isinstance(events_option, str) or not isinstance(events_option, Sequence) or not events_option:
        raise ConfigError(f"{kind} sink: option 'events' must be a non-empty list of event types")
    if not all(isinstance(entry, str) for entry in events_option):
        raise ConfigError(f"{kind} sink: option 'events' must list strings such as 'job.phase_changed:Failed'")
    try:
        selector = EventSelector.parse(str(entry) for entry in events_option)
    except ValueError as exc:
        raise ConfigError(f"{kind} sink: option 'events': {exc}") from None

    fmt = options.get("format", platform.formats[0] if platform.formats else "")
    if platform.formats and fmt not in platform.formats:
        raise ConfigError(f"{kind} sink: option 'format' must be one of {', '.join(platform.formats)}, got {fmt!r}")

    backoff_initial = _number(kind, options, "backoff_initial", 1.0, positive=False)
    backoff_max = _number(kind, options, "backoff_max", 60.0, positive=False)
    if backoff_max < backoff_initial:
        raise ConfigError(f"{kind} sink: option 'backoff_max' must be at least 'backoff_initial'")
    link = options.get("link")
    ca_bundle = ca_bundle_option(options.get("ca_bundle"), f"{kind} sink: option 'ca_bundle'")  # fail at start-up
    return ChatSettings(
        url=url,
        shown_url=shown,
        secret=secret,
        events=selector,
        title=_one_line_option(kind, options.get("title", "cce-monitor"), "title", _MAX_TITLE),
        link=_link_template(kind, link) if link is not None else None,
        rate_per_minute=_required_integer(kind, options, "rate_per_minute", platform.rate_per_minute),
        rate_per_second=_integer(kind, options, "rate_per_second", platform.rate_per_second),
        format=str(fmt),
        max_attempts=_required_integer(kind, options, "max_attempts", 5),
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        timeout=_number(kind, options, "timeout", 10.0, positive=True),
        max_pending=_required_integer(kind, options, "max_pending", 1000),
        max_items=_required_integer(kind, options, "max_items", 10),
        coalesce=_number(kind, options, "coalesce", 5.0, positive=False),
        progress_every=_number(kind, options, "progress_every", 60.0, positive=False),
        final_wait=_number(kind, options, "final_wait", 75.0, positive=False),
        ca_bundle=ca_bundle,
    )
