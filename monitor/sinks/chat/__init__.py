"""Shared machinery of the chat sinks: ``slack``, ``teams``, ``feishu``, ``dingtalk`` and ``wecom``.

A chat sink tells a group chat what matters during a bulk rollout without flooding it. Each platform module
only says how a message looks on the wire, how a request is signed and how the bot's answer reads; everything
else is here:

* **Filter.** By default a chat sink takes ``rollout.progress``, ``rollout.finished``, ``job.phase_changed`` to
  ``Failed``, ``job.timed_out``, ``job.not_found``, ``job.stalled`` and ``monitor.auth_failed`` — not one message
  per job that succeeded. Option ``events`` replaces the list; an entry is ``TYPE`` or ``TYPE:PHASE``.
* **Digest.** ``send`` never touches the network: it adds the event to the sink's pending digest and returns.
  A flusher task (started on the first ``send`` in the running loop, owned and closed by the sink) sends when
  the destination's budget allows. Whatever arrives in between is merged into the next message: job events are
  listed by kind ("Failed jobs (12)": the first ``max_items`` and "… and 7 more"); the latest ``rollout.progress``
  of a rollout replaces older ones; a ``rollout.finished`` goes out as soon as the budget allows, as the
  rollout's complete summary carrying everything else pending (so nothing about the rollout trails it). At most
  ``max_pending`` job events wait; more are counted, not kept, and the count shows up as "and N more", so a
  digest's totals are always complete.
* **Budget.** Chat bots punish excess hard (DingTalk mutes a robot for ten minutes after its 21st message in a
  minute), so limits here are never exceeded, not merely enforced on average. :class:`Budget` keeps sliding
  windows — per second, per minute, and a ten-second window holding a sixth of the minute's budget, so a burst
  cannot spend a whole minute at once — and answers "may I send now, else in how long?" without waiting. The
  flusher uses that answer to keep merging events into the next message instead of queueing messages;
  :class:`monitor.cce.throttle.RateLimiter` could not serve: its ``acquire`` waits, it has one window, and it adapts
  its rate on the fly, where these limits are fixed. A request counts from the moment its answer arrives (or it
  fails), because the server saw it somewhere in between: that way no window at the server holds more than
  the limit, whatever the latency. Every attempt — retries too — takes a slot.
* **Messages.** A digest names the rollouts with their latest state ("pool-a: 255/300 finished, 250 Success,
  3 Failed, …, ETA 7m") and lists what failed and why (resource name, job id, reason), with a link where option
  ``link`` gives a template. Lists are cut to fit the platform's size limit (measured the way the platform
  measures: UTF-8 bytes, or UTF-16 units for Slack) with "… and N more": job lists first, rollout lines only
  when that is not enough, counts never.
* **Retries.** Like the webhook sink: exponential backoff with full jitter, ``Retry-After`` honoured, 429, 5xx,
  transport errors and the platform's rate-limit codes retried (a rate-limit code also pauses the whole
  budget); other errors are final. The bot's answer body is checked as well as the status. A message that
  still fails is logged with the number of events it carried, and those events go back into the pending
  digest (within ``max_pending``); the sink then pauses ``backoff_max`` seconds. After three final failures in a
  row that a retry cannot fix (a payload the bot refuses), the listed job events are reduced to counts so one
  bad line cannot block the chat forever.
* **Secrets.** Webhook URLs carry credentials (Slack and Feishu in the path, the others in the query) and
  signing secrets are credentials: names, reprs, log lines and errors show the URL without query and with
  the token part of the path masked, and scrub every token spelling from answers and exceptions.
* **Drain and close.** :meth:`ChatSink.drain` (``watch`` at its end, the daemon at shutdown) sends everything
  pending as one final message as soon as the budget allows, within ``final_wait`` seconds or a shorter deadline
  (a signal), and returns what it could not send by event kind. ``aclose`` stops the flusher, makes one attempt
  if nothing was drained and the budget allows it at once, logs what is left, and closes the session.
* **Acknowledgements.** ``on_delivered`` (set by the daemon's outbox deliverer) hears the ids of the events a
  delivered message carried, and of events the sink does not want, so the outbox marks rows only when their
  message arrived; what is pending at a stop is sent after the restart.

Options (all optional; the webhook URL is the spec's target, e.g. ``dingtalk:https://…?access_token=…``):

``events``
    Event types to send, ``TYPE`` or ``TYPE:PHASE`` (default: the list above, ``job.phase_changed:Failed``).
``title``
    Prefix of every message, one line (default ``cce-monitor``); also meets a bot's "keyword" security setting.
``link``
    URL template with ``{rollout}`` and/or ``{job_id}`` (values URL-encoded). A template with ``{job_id}`` links
    job lines, one with only ``{rollout}`` links rollout lines.
``rate_per_minute``, ``rate_per_second``
    Integers; the platform's defaults (see each module). ``rate_per_second: null`` drops the per-second window.
``coalesce``
    Seconds to gather events after the first of a quiet spell before a digest goes out (default 5).
``progress_every``
    Seconds between digests that carry nothing but rollout progress (default 60); digests with job events, and
    finished summaries, do not wait for it.
``max_items``
    Job lines listed per section before "… and N more" (default 10).
``max_pending``
    Job events kept while waiting (default 1000); more are counted only.
``final_wait``
    Seconds :meth:`ChatSink.drain` waits for the budget by default (75: DingTalk's 20 a minute).
``max_attempts``, ``backoff_initial``, ``backoff_max``, ``timeout``
    Tries per message (default 5); seconds: before retry *n* the sink sleeps ``uniform(0, min(backoff_max,
    backoff_initial * 2**n))`` or the ``Retry-After`` if longer (defaults 1 and 60); one request (default 10).
    After a message finally fails, the next waits ``backoff_max``.
``secret`` (feishu, dingtalk), ``format`` (feishu, dingtalk, wecom)
    See those modules.

Time is injectable (:class:`Timing`: a monotonic clock, a sleep, a wall clock for signatures and the jitter
source), so tests run a whole rollout on a fake clock.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import random
import re
import string
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from monitor.cce.tls import warn_plain_http
from monitor.core.errors import ConfigError, SinkError, parse_retry_after
from monitor.core.events import Event, EventType
from monitor.core.reason import readable_reason
from monitor.core.secret import Secret
from monitor.core.version import USER_AGENT

__all__ = [
    "DEFAULT_EVENTS",
    "OK",
    "Batch",
    "Budget",
    "ChatSettings",
    "ChatSink",
    "EventSelector",
    "Line",
    "Message",
    "Pending",
    "Platform",
    "RolloutEntry",
    "Section",
    "Timing",
    "Verdict",
    "answer_code",
    "answer_snippet",
    "budget_windows",
    "build_digest",
    "build_finished",
    "code_verdict",
    "duration",
    "fit",
    "json_answer",
    "markdown_text",
    "md_label",
    "more_text",
    "parse_options",
    "plain_text",
    "public_url",
    "rollout_state",
    "status_verdict",
    "utf16_len",
]

logger = logging.getLogger(__name__)

DEFAULT_EVENTS: tuple[str, ...] = (
    "rollout.progress",
    "rollout.finished",
    "job.phase_changed:Failed",
    "job.timed_out",
    "job.not_found",
    "job.stalled",
    "monitor.auth_failed",
)

_MIN_NAP = 0.001  # never park for less: a float rounding must not make the flusher spin
_MAX_ANSWER = 64 * 1024  # bytes of a bot's answer that are read
_STRIKES = 3  # final non-retryable failures in a row before listed job events are reduced to counts
_MAX_TITLE = 100
_MAX_REASON = 300
_MAX_NAME = 128

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------- time


async def _sleep(delay: float) -> None:
    await asyncio.sleep(delay)


@dataclass(frozen=True, slots=True)
class Timing:
    """Where a chat sink gets time from. Tests pass a fake clock and sleep that move together."""

    clock: Callable[[], float] = time.monotonic  # seconds, for budgets and pauses
    sleep: Callable[[float], Awaitable[None]] = _sleep
    wall: Callable[[], float] = time.time  # unix seconds, for signature timestamps
    jitter: Callable[[float, float], float] = random.uniform


# ------------------------------------------------------------------------------------------------- budget


class Budget:
    """Sliding-window request budgets over several windows at once, asked without waiting.

    ``Budget([(1, 1.0), (18, 60.0)])`` admits a request only while fewer than 1 stamp lies in the last second
    and fewer than 18 in the last minute. :meth:`delay` says how long until the next request may go (0: now);
    :meth:`record` stamps a request (call it when the answer arrived or the attempt failed); :meth:`hold` stops
    everything until a time (a rate-limit answer). Never more than ``count`` stamps in any half-open interval
    of ``period`` seconds: a stamp leaves its window exactly ``period`` seconds after it was made.
    """

    __slots__ = ("_hold_until", "_windows")

    def __init__(self, windows: Iterable[tuple[int, float]]) -> None:
        self._windows: tuple[tuple[int, float, deque[float]], ...] = tuple(
            (count, period, deque()) for count, period in windows
        )
        for count, period, _ in self._windows:
            if count < 1 or not period > 0:
                raise ValueError(f"a window needs a count of at least 1 and a positive period, got {count}/{period}")
        self._hold_until = -math.inf

    @property
    def windows(self) -> tuple[tuple[int, float], ...]:
        """``(count, period)`` of every window."""
        return tuple((count, period) for count, period, _ in self._windows)

    def delay(self, now: float) -> float:
        """Seconds until a request may be made; 0 when it may be made now."""
        wait = self._hold_until - now
        for count, period, stamps in self._windows:
            while stamps and stamps[0] <= now - period:
                stamps.popleft()
            if len(stamps) >= count:
                wait = max(wait, stamps[len(stamps) - count] + period - now)
        return max(0.0, wait)

    def record(self, now: float) -> None:
        """Count one request at ``now`` (times must not go backwards)."""
        for count, _period, stamps in self._windows:
            stamps.append(now)
            while len(stamps) > count:  # only the newest ``count`` stamps can ever block
                stamps.popleft()

    def hold(self, until: float) -> None:
        """Admit nothing before ``until``."""
        self._hold_until = max(self._hold_until, until)


def budget_windows(per_minute: int, per_second: int | None) -> list[tuple[int, float]]:
    """The windows of a destination: per second (if any), per minute, and a sixth of the minute per 10 s."""
    windows: list[tuple[int, float]] = []
    if per_second is not None:
        windows.append((per_second, 1.0))
    windows.append((per_minute, 60.0))
    burst = math.ceil(per_minute / 6)
    if burst < per_minute:
        windows.append((burst, 10.0))
    return windows


# ------------------------------------------------------------------------------------------------ options


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
    )


# ----------------------------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Line:
    """One listed thing: ``label`` (a rollout or job name, the part a link goes on) then ``text``.

    ``text`` carries its own leading punctuation (``": 255/300 finished"``, ``" (job …): reason"``).
    """

    label: str
    text: str = ""
    link: str | None = None


@dataclass(frozen=True, slots=True)
class Section:
    """A heading and its lines; ``more`` counts the lines not listed. ``rollouts`` marks the rollout list."""

    heading: str
    lines: tuple[Line, ...] = ()
    more: int = 0
    rollouts: bool = False


@dataclass(frozen=True, slots=True)
class Message:
    """A platform-neutral chat message; ``events`` is how many events it carries (for logs)."""

    title: str
    sections: tuple[Section, ...] = ()
    events: int = 0

    def limited(self, items: int, rollouts: int) -> Message:
        """At most ``items`` lines per job section and ``rollouts`` rollout lines; the rest become "more"."""
        sections = []
        for section in self.sections:
            cap = rollouts if section.rollouts else items
            if len(section.lines) > cap:
                cut = len(section.lines) - cap
                section = replace(section, lines=section.lines[:cap], more=section.more + cut)  # noqa: PLW2901
            sections.append(section)
        return replace(self, sections=tuple(sections))

    def longest(self, *, rollouts: bool) -> int:
        """The most lines in a job section (``rollouts=False``) or the rollout section."""
        return max((len(s.lines) for s in self.sections if s.rollouts == rollouts), default=0)


def more_text(count: int) -> str:
    """The line that stands for ``count`` unlisted lines."""
    return f"… and {count} more"


def plain_text(message: Message, *, bullet: str = "• ") -> str:
    """``message`` as plain text: title, then each section's heading and lines; links as bare URLs."""
    out = [message.title]
    for section in message.sections:
        out.append("")
        out.append(section.heading)
        for line in section.lines:
            out.append(bullet + line.label + line.text + (f" {line.link}" if line.link else ""))
        if section.more:
            out.append(bullet + more_text(section.more))
    return "\n".join(out)


def md_label(text: str) -> str:
    """``text`` safe inside a Markdown link's brackets."""
    return text.replace("[", "(").replace("]", ")")


def markdown_text(
    message: Message, *, title: str, heading: str, bullet: str, gap: str = "\n\n", after_heading: str = "\n"
) -> str:
    """``message`` as Markdown. ``title``/``heading`` are format strings with ``{}``; links are ``[label](url)``."""
    parts = [title.format(message.title)]
    for section in message.sections:
        lines = [heading.format(section.heading) + after_heading.removesuffix("\n")]
        for line in section.lines:
            label = f"[{md_label(line.label)}]({line.link})" if line.link and line.label else line.label
            lines.append(bullet + label + line.text)
        if section.more:
            lines.append(bullet + more_text(section.more))
        parts.append("\n".join(lines))
    return gap.join(parts)


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units (what Slack's character limits count)."""
    return len(text.encode("utf-16-le")) // 2


def _largest(lo: int, hi: int, attempt: Callable[[int], T | None]) -> T | None:
    """The result of ``attempt`` for the largest n in [lo, hi] where it is not None (attempt is monotone)."""
    best: T | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        result = attempt(mid)
        if result is None:
            hi = mid - 1
        else:
            best, lo = result, mid + 1
    return best


def fit(message: Message, render: Callable[[Message], T], fits: Callable[[T], bool], max_items: int) -> T:
    """Render ``message`` with as many listed lines as fit: job lists first cut to ``max_items``, then shorter,
    then the rollout list; a message that still does not fit becomes its title and the number of events."""

    def attempt(items: int, rollouts: int) -> T | None:
        body = render(message.limited(items, rollouts))
        return body if fits(body) else None

    items = min(max_items, message.longest(rollouts=False))
    rollouts = message.longest(rollouts=True)
    body = attempt(items, rollouts)
    if body is None:
        body = _largest(0, items - 1, lambda n: attempt(n, rollouts))
    if body is None:
        body = _largest(0, rollouts - 1, lambda n: attempt(0, n))
    if body is None:
        body = render(Message(_clip(message.title, 80), (Section(f"{message.events} events, too many to show"),)))
    return body


# -------------------------------------------------------------------------------------------------- notes

_SPACE_RE = re.compile(r"[\s\x00-\x1f\x7f\x85\u2028\u2029]+")
Category = Literal["failed", "timed_out", "not_found", "stalled", "auth", "other"]
_CATEGORIES: tuple[Category, ...] = ("failed", "timed_out", "not_found", "stalled", "auth", "other")
_HEADINGS: dict[Category, str] = {
    "failed": "Failed jobs",
    "timed_out": "Timed out",
    "not_found": "Not found",
    "stalled": "Stalled",
    "auth": "Authentication failures",
    "other": "Other updates",
}
_HEADLINE_WORDS: dict[Category, tuple[str, str]] = {
    "failed": ("job failed", "jobs failed"),
    "timed_out": ("timed out", "timed out"),
    "not_found": ("not found", "not found"),
    "stalled": ("stalled", "stalled"),
    "auth": ("authentication failure", "authentication failures"),
    "other": ("other update", "other updates"),
}
_TERMINAL_COUNTS = ("Success", "Failed", "timed_out", "not_found")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _clip(text: str, limit: int) -> str:
    """``text`` on one line, whitespace collapsed, at most ``limit`` characters."""
    text = _SPACE_RE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Note:
    """A job-level event, reduced to what a message shows."""

    seq: int
    category: Category
    job_id: str | None
    resource: str | None
    reason: str | None
    rollout: str | None
    label: str | None = None  # what happened, for "other" updates


def _note(event: Event, seq: int) -> Note:
    category: Category
    label = None
    if event.type is EventType.JOB_PHASE_CHANGED and event.phase == "Failed":
        category = "failed"
    elif event.type is EventType.JOB_TIMED_OUT:
        category = "timed_out"
    elif event.type is EventType.JOB_NOT_FOUND:
        category = "not_found"
    elif event.type is EventType.JOB_STALLED:
        category = "stalled"
    elif event.type is EventType.MONITOR_AUTH_FAILED:
        category = "auth"
    else:
        category = "other"
        label = event.type.value
        if event.subjob_id:
            label += f" subjob {event.subjob_id}"
        if event.phase:
            label += f" {event.previous_phase or '?'} → {event.phase}"
    return Note(
        seq=seq,
        category=category,
        job_id=_clip(event.job_id, _MAX_NAME) if event.job_id else None,
        resource=_clip(event.resource_name, _MAX_NAME) if event.resource_name else None,
        reason=_clip(readable_reason(event.reason) if event.reason else event.detail or "", _MAX_REASON) or None,
        rollout=_clip(event.rollout, _MAX_NAME) if event.rollout else None,
        label=_clip(label, _MAX_REASON) if label else None,
    )


def rollout_name(event: Event) -> str:
    """The rollout a ``rollout.*`` event is about."""
    name = event.rollout
    if not name and event.summary is not None:
        value = event.summary.get("rollout")
        name = value if isinstance(value, str) else None
    return _clip(name or "(unnamed rollout)", _MAX_NAME)


def event_kind(event: Event) -> str:
    """How an event is counted when a sink says what it did not send: its type, and the phase of a job's."""
    if event.type is EventType.JOB_PHASE_CHANGED and event.phase:
        return f"{event.type.value}:{event.phase}"
    return event.type.value


@dataclass(slots=True)
class Carried:
    """The events a part of the pending digest stands for: their ids (acknowledged once a message carrying them
    is delivered) and how many of each kind (said when they could not be sent)."""

    ids: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)

    def add(self, event: Event) -> None:
        self.ids.append(event.id)
        self.kinds[event_kind(event)] += 1

    def merge(self, other: Carried) -> None:
        self.ids.extend(other.ids)
        self.kinds.update(other.kinds)


@dataclass(slots=True)
class RolloutEntry:
    """The latest rollout event of a rollout, and how many events it stands for."""

    seq: int
    event: Event
    events: int = 1
    carried: Carried = field(default_factory=Carried)


@dataclass(slots=True)
class Batch:
    """What one message carries; put back into :class:`Pending` if the message fails."""

    notes: list[Note] = field(default_factory=list)
    overflow: Counter[str] = field(default_factory=Counter)
    rollouts: dict[str, RolloutEntry] = field(default_factory=dict)
    finished: list[RolloutEntry] = field(default_factory=list)
    first_at: float = math.inf
    carried: Carried = field(default_factory=Carried)  # the events of notes and overflow (entries carry their own)

    @property
    def events(self) -> int:
        total = len(self.notes) + sum(self.overflow.values()) + sum(e.events for e in self.rollouts.values())
        return total + sum(entry.events for entry in self.finished)

    def ids(self) -> list[str]:
        """Every event id this batch carries."""
        out = list(self.carried.ids)
        for entry in (*self.rollouts.values(), *self.finished):
            out.extend(entry.carried.ids)
        return out

    def kinds(self) -> Counter[str]:
        """How many events of each kind this batch carries."""
        out = Counter(self.carried.kinds)
        for entry in (*self.rollouts.values(), *self.finished):
            out.update(entry.carried.kinds)
        return out


class Pending:
    """The events waiting to be sent: a digest (job notes, overflow counts, latest progress per rollout) and a
    queue of finished rollouts. Bounded: at most ``limit`` notes; more are only counted."""

    __slots__ = ("_digest", "_finished", "_limit", "dropped")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._digest = Batch()
        self._finished: deque[RolloutEntry] = deque()
        self.dropped = 0  # job events counted instead of kept, over the sink's life

    @property
    def count(self) -> int:
        """Events waiting."""
        return self._digest.events + sum(entry.events for entry in self._finished)

    def kinds(self) -> Counter[str]:
        """Events waiting, by kind (``job.phase_changed:Failed``, ``rollout.finished``, …)."""
        out = self._digest.kinds()
        for entry in self._finished:
            out.update(entry.carried.kinds)
        return out

    @property
    def has_digest(self) -> bool:
        d = self._digest
        return bool(d.notes or d.overflow or d.rollouts)

    @property
    def progress_only(self) -> bool:
        """Whether the digest holds nothing but rollout progress."""
        return not (self._digest.notes or self._digest.overflow)

    @property
    def first_at(self) -> float:
        """When the digest last went from empty to not empty."""
        return self._digest.first_at

    def digest_seq(self) -> int:
        seqs = [n.seq for n in self._digest.notes[:1]] + [e.seq for e in self._digest.rollouts.values()]
        return min(seqs, default=-1)  # overflow only: older than anything listed

    def finished_seq(self) -> int | None:
        return self._finished[0].seq if self._finished else None

    def add(self, event: Event, seq: int, now: float) -> None:
        digest = self._digest
        if event.type in (EventType.ROLLOUT_PROGRESS, EventType.ROLLOUT_FINISHED):
            name = rollout_name(event)
            if event.type is EventType.ROLLOUT_FINISHED:
                entry = RolloutEntry(seq, event)
                superseded = digest.rollouts.pop(name, None)
                if superseded is not None:
                    entry.events += superseded.events
                    entry.carried.merge(superseded.carried)
                entry.carried.add(event)
                self._finished.append(entry)
                return
            for entry in self._finished:
                if rollout_name(entry.event) == name:  # progress after the end: nothing new
                    entry.events += 1
                    entry.carried.add(event)
                    return
            if not self.has_digest:
                digest.first_at = now
            latest = digest.rollouts.get(name)
            if latest is None:
                latest = digest.rollouts[name] = RolloutEntry(seq, event)
            else:
                latest.event, latest.events = event, latest.events + 1
            latest.carried.add(event)
            return
        if not self.has_digest:
            digest.first_at = now
        note = _note(event, seq)
        digest.carried.add(event)
        if len(digest.notes) >= self._limit:
            digest.overflow[note.category] += 1
            self.dropped += 1
        else:
            digest.notes.append(note)

    def take_digest(self) -> Batch:
        batch, self._digest = self._digest, Batch()
        return batch

    def take_finished(self) -> Batch:
        return Batch(finished=[self._finished.popleft()])

    def take_all(self) -> Batch:
        """Everything: the digest and every finished rollout (see :func:`build_final`)."""
        batch = self.take_digest()
        batch.finished.extend(self._finished)
        self._finished.clear()
        return batch

    def restore(self, batch: Batch, *, demote: bool = False) -> None:
        """Put a failed message's events back, older than what arrived since. ``demote`` turns its listed job
        events into counts and a finished summary into a rollout line (a payload the bot keeps refusing)."""
        digest = self._digest
        for entry in reversed(batch.finished):
            if demote:
                batch.rollouts[rollout_name(entry.event)] = entry
                continue
            late = digest.rollouts.pop(rollout_name(entry.event), None)  # progress after the end
            if late is not None:
                entry.events += late.events
                entry.carried.merge(late.carried)
            self._finished.appendleft(entry)
        notes = digest.notes
        if demote:
            for note in batch.notes:
                digest.overflow[note.category] += 1
            self.dropped += len(batch.notes)
        else:
            notes = batch.notes + notes
        digest.overflow.update(batch.overflow)
        digest.carried.merge(batch.carried)
        for note in notes[self._limit :]:
            digest.overflow[note.category] += 1
            self.dropped += 1
        digest.notes = notes[: self._limit]
        newer = digest.rollouts
        finished_names = {rollout_name(entry.event) for entry in self._finished}
        merged: dict[str, RolloutEntry] = {}
        for name, old in batch.rollouts.items():
            if name in finished_names:  # a finished summary arrived since: the old progress rides with it
                target = next(e for e in self._finished if rollout_name(e.event) == name)
                target.events += old.events
                target.carried.merge(old.carried)
            elif name not in newer:
                merged[name] = old
        for name, entry in newer.items():
            earlier = batch.rollouts.get(name)
            if earlier is not None:
                entry.events += earlier.events
                entry.seq = min(entry.seq, earlier.seq)
                entry.carried.merge(earlier.carried)
            merged[name] = entry
        digest.rollouts = merged
        digest.first_at = min(digest.first_at, batch.first_at)


# -------------------------------------------------------------------------------------------- formatting


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def duration(seconds: float) -> str:
    """``45s``, ``7m``, ``2h 5m``: short, rounded down."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m"
    hours, rest = divmod(whole, 3600)
    return f"{hours}h {rest // 60}m"


def _counts(summary: Mapping[str, Any]) -> dict[str, int]:
    raw = summary.get("counts")
    if not isinstance(raw, Mapping):
        return {}
    counts = {str(k): n for k, v in raw.items() if (n := _int(v)) is not None}
    ordered = {k: counts[k] for k in _TERMINAL_COUNTS if k in counts}
    ordered.update((k, v) for k, v in counts.items() if k not in ordered)
    return ordered


def rollout_state(summary: Mapping[str, Any] | None, *, finished: bool) -> str:
    """``255/300 finished, 250 Success, 3 Failed, 40 Running, subjobs 500/600, ETA 7m`` (zero counts left out)."""
    if not isinstance(summary, Mapping):
        return "finished" if finished else "in progress"
    parts: list[str] = []
    total, done = _int(summary.get("total")), _int(summary.get("finished"))
    if total is not None and done is not None:
        parts.append(f"{done}/{total} finished")
    elif finished:
        parts.append("finished")
    took = _seconds(summary.get("duration_s"))
    if finished and took is not None and parts:
        parts[0] += f" in {duration(took)}"
    parts += [f"{n} {_clip(key.replace('_', ' '), 40)}" for key, n in _counts(summary).items() if n]
    if not finished:
        sub_done, sub_total = _int(summary.get("subjobs_done")), _int(summary.get("subjobs_total"))
        if sub_done is not None and sub_total:
            parts.append(f"subjobs {sub_done}/{sub_total}")
        eta = _seconds(summary.get("eta_s"))
        if eta is not None:
            parts.append(f"ETA {duration(eta)}")
    return ", ".join(parts) or "in progress"


def _link(settings: ChatSettings, *, rollout: str | None, job_id: str | None) -> str | None:
    template = settings.link
    if template is None:
        return None
    uses_job = "{job_id}" in template
    if (uses_job and not job_id) or (not uses_job and job_id) or ("{rollout}" in template and not rollout):
        return None
    return template.format(rollout=quote(rollout or "", safe=""), job_id=quote(job_id or "", safe=""))


def _job_line(
    settings: ChatSettings,
    *,
    job_id: str | None,
    resource: str | None,
    reason: str | None,
    rollout: str | None,
    extra: str | None = None,
) -> Line:
    label = resource or job_id or ""
    text = f" (job {job_id})" if resource and job_id else ""
    if extra:
        text += f" {extra}"
    if reason:
        text += f": {reason}" if label or extra else reason
    return Line(label, text, _link(settings, rollout=rollout, job_id=job_id) if label else None)


def _prefix(settings: ChatSettings) -> str:
    return f"{settings.title}: " if settings.title else ""


def _rollout_line(settings: ChatSettings, name: str, event: Event) -> Line:
    state = rollout_state(event.summary, finished=event.type is EventType.ROLLOUT_FINISHED)
    return Line(name, f": {state}", _link(settings, rollout=name, job_id=None))


def _short_progress(entry: RolloutEntry) -> str:
    summary = entry.event.summary
    if isinstance(summary, Mapping):
        total, done = _int(summary.get("total")), _int(summary.get("finished"))
        if total is not None and done is not None:
            return f"{done}/{total} finished"
    return "finished" if entry.event.type is EventType.ROLLOUT_FINISHED else "in progress"


def build_digest(batch: Batch, settings: ChatSettings) -> Message:
    """The message for a digest batch: rollouts with their latest state, then job events by kind."""
    sections: list[Section] = []
    if batch.rollouts:
        lines = tuple(_rollout_line(settings, name, entry.event) for name, entry in batch.rollouts.items())
        sections.append(Section(f"Rollouts ({len(lines)})", lines, rollouts=True))
    grouped: dict[str, list[Note]] = {}
    for note in batch.notes:
        grouped.setdefault(note.category, []).append(note)
    several = len({n.rollout for n in batch.notes if n.rollout}) > 1
    totals: dict[Category, int] = {}
    for category in _CATEGORIES:
        notes = grouped.get(category, [])
        extra = batch.overflow.get(category, 0)
        if not notes and not extra:
            continue
        totals[category] = len(notes) + extra
        lines = tuple(
            _job_line(
                settings,
                job_id=n.job_id,
                resource=n.resource,
                reason=n.reason,
                rollout=n.rollout,
                extra=" ".join(filter(None, [n.label, f"[{n.rollout}]" if several and n.rollout else None])),
            )
            for n in notes
        )
        sections.append(Section(f"{_HEADINGS[category]} ({totals[category]})", lines, more=extra))
    parts = [f"{n} {_HEADLINE_WORDS[c][n != 1]}" for c, n in totals.items()]
    if len(batch.rollouts) == 1:
        [(name, entry)] = batch.rollouts.items()
        where = f"{name} {_short_progress(entry)}"
    else:
        where = f"{len(batch.rollouts)} rollouts" if batch.rollouts else ""
    headline = ", ".join(parts) + (" · " if parts and where else "") + where
    return Message(_prefix(settings) + (headline or "update"), tuple(sections), batch.events)


def build_finished(entry: RolloutEntry, settings: ChatSettings) -> Message:
    """The summary of a finished rollout: final counts and the jobs that did not succeed."""
    name = rollout_name(entry.event)
    summary = entry.event.summary if isinstance(entry.event.summary, Mapping) else {}
    counts = _counts(summary)
    listed = summary.get("failed")
    items = [item for item in listed if isinstance(item, Mapping)] if isinstance(listed, list) else []
    bad = max(
        len(items),
        _int(summary.get("failed_count")) or 0,  # the list may be cut short by the tracker
        sum(counts.get(k, 0) for k in ("Failed", "timed_out", "not_found")),
    )
    total = _int(summary.get("total"))
    headline = f"Rollout {name} finished"
    if total is not None:
        headline += f": {counts.get('Success', 0)}/{total} succeeded"
    if bad:
        headline += f"{',' if total is not None else ':'} {bad} did not"
    sections = [Section("Result", (_rollout_line(settings, name, entry.event),), rollouts=True)]
    if bad:
        lines = []
        for item in items:
            outcome = item.get("outcome")
            job_id, resource, reason = (item.get(k) for k in ("job_id", "resource_name", "reason"))
            lines.append(
                _job_line(
                    settings,
                    job_id=_clip(job_id, _MAX_NAME) if isinstance(job_id, str) and job_id else None,
                    resource=_clip(resource, _MAX_NAME) if isinstance(resource, str) and resource else None,
                    reason=_clip(readable_reason(reason), _MAX_REASON) if isinstance(reason, str) and reason else None,
                    rollout=name,
                    extra=f"[{_clip(outcome.replace('_', ' '), 40)}]"
                    if isinstance(outcome, str) and outcome not in ("", "Failed")
                    else None,
                )
            )
        sections.append(Section(f"Not successful ({bad})", tuple(lines), more=bad - len(lines)))
    return Message(_prefix(settings) + headline, tuple(sections), entry.events)


_SUMMARISED: frozenset[Category] = frozenset({"failed", "timed_out", "not_found"})  # a finished summary lists these


def build_final(batch: Batch, settings: ChatSettings) -> Message:
    """One message for everything pending when a sink closes: the complete summary of every finished rollout,
    then what else is pending (job events the summaries do not already list, progress of other rollouts)."""
    if not batch.finished:
        return build_digest(batch, settings)
    names = {rollout_name(entry.event) for entry in batch.finished}
    summaries = [build_finished(entry, settings) for entry in batch.finished]
    covered = {id(n) for n in batch.notes if n.rollout in names and n.category in _SUMMARISED}
    rest = Batch(
        notes=[n for n in batch.notes if id(n) not in covered],
        # Counted events cannot say their rollout; if every listed one belonged to a summary, so did they.
        overflow=Counter(
            {c: n for c, n in batch.overflow.items() if not (c in _SUMMARISED and len(covered) == len(batch.notes))}
        ),
        rollouts={name: entry for name, entry in batch.rollouts.items() if name not in names},
    )
    sections = [section for message in summaries for section in message.sections]
    if rest.notes or rest.overflow or rest.rollouts:
        sections.extend(build_digest(rest, settings).sections)
    title = summaries[0].title if len(summaries) == 1 else _prefix(settings) + f"{len(summaries)} rollouts finished"
    return Message(title, tuple(sections), batch.events)


# ------------------------------------------------------------------------------------------------ answers


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
    return _clip(raw.decode("utf-8", "replace"), 200) or "(empty body)"


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
    return _int(value)


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


# --------------------------------------------------------------------------------------------------- sink

_QUERY_IN_TEXT = re.compile(r"(https?://[^\s?#\"'<>]+)\?[^\s\"'<>]*")


class ChatSink(abc.ABC):
    """A chat bot sink; see the module docstring. Subclasses set :attr:`platform` and say how a message is
    rendered (:meth:`_render`, :meth:`_fits`), how a request is made (:meth:`_request`, for signing) and how an
    answer reads (:meth:`_verdict`)."""

    platform: ClassVar[Platform]

    durable: ClassVar[bool] = True  # the daemon feeds it from an outbox; rows are marked when acknowledged
    acknowledges: ClassVar[bool] = True

    __slots__ = (
        "_budget",
        "_closed",
        "_deadline",
        "_drained",
        "_in_flight",
        "_last_progress",
        "_notify",
        "_parked",
        "_pending",
        "_resume_at",
        "_scrub",
        "_seq",
        "_session",
        "_strikes",
        "_task",
        "_timing",
        "_wake",
        "failed_messages",
        "name",
        "on_delivered",
        "sent_messages",
        "settings",
    )

    def __init__(self, settings: ChatSettings, *, timing: Timing | None = None) -> None:
        self.settings = settings
        self.name = f"{self.platform.kind}:{settings.shown_url}"
        self._timing = timing or Timing()
        self._budget = Budget(budget_windows(settings.rate_per_minute, settings.rate_per_second))
        self._pending = Pending(settings.max_pending)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._parked: Literal["wait", "nap"] | None = None
        self._closed = False
        self._deadline: float | None = None  # set by drain(): send everything now, give up at this time
        self._drained = asyncio.Event()
        self._notify: Callable[[str], None] | None = None
        self.on_delivered: Callable[[Sequence[str]], Awaitable[None]] | None = None
        self._seq = 0
        self._in_flight = 0
        self._strikes = 0
        self._resume_at = -math.inf
        self._last_progress = -math.inf
        self.sent_messages = 0
        self.failed_messages = 0
        url = settings.url
        spellings = {str(url), url.human_repr()}
        parts = {url.raw_query_string, url.query_string, url.password or "", url.raw_password or ""}
        parts |= {v for v in url.query.values() if len(v) >= 4}
        parts |= {s for s in url.raw_path.split("/") if len(s) >= 4 and s not in settings.shown_url}
        if settings.secret is not None:
            parts.add(settings.secret.reveal())
        self._scrub = tuple(sorted(spellings, key=len, reverse=True)) + tuple(
            sorted((p for p in parts if p), key=len, reverse=True)
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, backlog={self.backlog}, settings={self.settings!r})"

    # ---- what a platform says

    @abc.abstractmethod
    def _render(self, message: Message) -> dict[str, Any]:
        """The request body for ``message`` (before signing)."""

    @abc.abstractmethod
    def _fits(self, body: dict[str, Any]) -> bool:
        """Whether ``body`` is within the platform's size limits."""

    @abc.abstractmethod
    def _verdict(self, status: int, headers: Mapping[str, str], raw: bytes) -> Verdict:
        """How to read the bot's answer."""

    def _request(self, body: dict[str, Any]) -> tuple[URL, bytes]:
        """URL and bytes of one attempt (signing platforms add their signature here, fresh per attempt)."""
        return self.settings.url, orjson.dumps(body)

    # ---- state, for metrics and tests

    @property
    def budget(self) -> Budget:
        """The destination's request budget."""
        return self._budget

    @property
    def backlog(self) -> int:
        """Events accepted and not yet delivered (pending or in a message being sent)."""
        return self._pending.count + self._in_flight

    @property
    def dropped_events(self) -> int:
        """Job events counted rather than kept because ``max_pending`` were already waiting."""
        return self._pending.dropped

    @property
    def idle(self) -> bool:
        """Whether the flusher is parked with nothing to do at once (no flusher counts as idle)."""
        task = self._task
        if task is None or task.done():
            return True
        if self._parked is None:
            return False
        return not (self._parked == "wait" and self._wake.is_set())

    def render(self, message: Message) -> dict[str, Any]:
        """``message`` as this platform's body, cut to its size limit."""
        return fit(message, self._render, self._fits, self.settings.max_items)

    # ---- intake

    def wants(self, event: Event) -> bool:
        """Whether this sink takes ``event`` (option ``events``); the daemon queues only those for it."""
        return self.settings.events(event)

    async def send(self, event: Event) -> None:
        """Take ``event`` into the pending digest if the sink wants it; never waits for the network."""
        if self._closed:
            raise SinkError(f"{self.name}: sink is closed", retryable=False)
        if not self.settings.events(event):
            await self._acknowledge([event.id])
            return
        self._seq += 1
        self._pending.add(event, self._seq, self._timing.clock())
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._guarded(), name=f"chat flusher {self.name}")
        self._wake.set()

    async def _acknowledge(self, ids: Sequence[str]) -> None:
        """Tell the owner (the daemon's outbox) that these events are delivered, or need no delivery."""
        if self.on_delivered is not None and ids:
            try:
                await self.on_delivered(ids)
            except Exception:
                logger.exception("%s: could not record %s as delivered", self.name, _plural(len(ids), "event"))

    # ---- the flusher

    async def _guarded(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception(
                "%s: flusher crashed with %d events pending; restarting at the next event",
                self.name,
                self._pending.count,
            )
            self._drained.set()
        else:  # pragma: no cover - _run never returns
            logger.error("%s: flusher finished unexpectedly", self.name)

    def _choose(self, now: float) -> tuple[Literal["digest", "finished", "final"] | None, float | None]:
        """What to send next and after how long; ``(None, None)`` when nothing is pending."""
        pending = self._pending
        common = max(self._budget.delay(now), self._resume_at - now)
        if self._deadline is not None:  # draining: everything in one message as soon as the budget allows
            return ("final", max(0.0, common)) if pending.count else (None, None)
        candidates: list[tuple[int, Literal["digest", "finished"], float]] = []
        finished = pending.finished_seq()
        if finished is not None:
            candidates.append((finished, "finished", 0.0))
        if pending.has_digest:
            gate = pending.first_at + self.settings.coalesce - now
            if pending.progress_only:
                gate = max(gate, self._last_progress + self.settings.progress_every - now)
            candidates.append((pending.digest_seq(), "digest", gate))
        if not candidates:
            return None, None
        ready = [c for c in candidates if c[2] <= 0]
        if ready:
            return min(ready)[1], max(0.0, common)
        return None, max(min(c[2] for c in candidates), common)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self._timing.clock()
            kind, wait = self._choose(now)
            if self._deadline is not None and (wait is None or now + wait > self._deadline):
                self._drained.set()  # all sent, or the rest cannot be sent in time: drain() reports it
                await self._park(None)
                continue
            if wait is None:
                await self._park(None)
                continue
            if kind is None or wait > 0:
                if kind == "final" and self._notify is not None and wait >= 1:
                    self._notify(
                        f"{self.name}: waiting {wait:.0f}s for the rate budget to send the final message "
                        f"({_plural(self._pending.count, 'event')})"
                    )
                await self._park(max(wait, _MIN_NAP))
                continue
            if kind in ("final", "finished"):  # a summary takes everything pending with it: nothing trails it
                batch = self._pending.take_all()
                message = build_final(batch, self.settings)
            else:
                batch = self._pending.take_digest()
                message = build_digest(batch, self.settings)
            self._in_flight = batch.events
            try:
                verdict = await self._deliver(message)
            except asyncio.CancelledError:
                self._pending.restore(batch)
                raise
            except Exception:  # a bug: drop this message rather than fail on it forever
                logger.exception("%s: dropped a message carrying %s", self.name, _plural(batch.events, "event"))
                await self._acknowledge(batch.ids())
                continue
            finally:
                self._in_flight = 0
            now = self._timing.clock()
            if verdict.ok:
                self._strikes = 0
                if batch.rollouts:
                    self._last_progress = now
                await self._acknowledge(batch.ids())
                continue
            self._strikes = 0 if verdict.retryable else self._strikes + 1
            demote = self._strikes >= _STRIKES
            if demote:
                self._strikes = 0
                logger.warning(
                    "%s: the bot refused %d messages in a row; listing their jobs as counts only", self.name, _STRIKES
                )
            self._pending.restore(batch, demote=demote)
            self._resume_at = now + self.settings.backoff_max

    async def _park(self, delay: float | None) -> None:
        """Wait for a new event, at most ``delay`` seconds (None: no limit)."""
        self._parked = "wait"
        try:
            if delay is None:
                await self._wake.wait()
                return
            waiter = asyncio.ensure_future(self._wake.wait())
            sleeper = asyncio.ensure_future(self._timing.sleep(delay))
            try:
                await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (waiter, sleeper):
                    task.cancel()
                await asyncio.gather(waiter, sleeper, return_exceptions=True)
        finally:
            self._parked = None

    async def _nap(self, delay: float) -> None:
        """Sleep ``delay`` seconds whatever arrives (backoff, or waiting for the budget in a retry)."""
        self._parked = "nap"
        try:
            await self._timing.sleep(max(delay, _MIN_NAP))
        finally:
            self._parked = None

    # ---- delivery

    def _backoff(self, attempt: int) -> float:
        cap = min(self.settings.backoff_max, self.settings.backoff_initial * 2 ** min(attempt, 64))
        return self._timing.jitter(0.0, cap)

    async def _deliver(self, message: Message, *, final: bool = False) -> Verdict:
        """Send ``message`` within the budget, retrying as the module docstring says; the last verdict."""
        body = self.render(message)
        attempts = 1 if final else self.settings.max_attempts
        verdict = Verdict(False, "no attempt made", retryable=True)
        attempt = 0
        while attempt < attempts:
            now = self._timing.clock()
            wait = self._budget.delay(now)
            if wait > 0:
                if final:
                    verdict = Verdict(False, "the rate budget is spent", retryable=True)
                    break
                if self._deadline is not None and now + wait > self._deadline:
                    verdict = Verdict(False, "the rate budget is spent until after the deadline", retryable=True)
                    break
                await self._nap(wait)
                continue
            attempt += 1
            verdict = await self._post(*self._request(body))
            if verdict.ok:
                self.sent_messages += 1
                return verdict
            if verdict.throttled:
                pause = verdict.retry_after if verdict.retry_after is not None else self.platform.throttle_pause
                self._budget.hold(self._timing.clock() + pause)
            if not verdict.retryable or attempt >= attempts:
                break
            delay = max(verdict.retry_after or 0.0, self._backoff(attempt - 1))
            if self._deadline is not None and self._timing.clock() + delay > self._deadline:
                break
            logger.debug(
                "%s: attempt %d/%d failed: %s; retrying in %.2fs", self.name, attempt, attempts, verdict.detail, delay
            )
            await self._nap(delay)
        self.failed_messages += 1
        logger.warning(
            "%s: a message carrying %s was not delivered after %s: %s%s",
            self.name,
            _plural(message.events, "event"),
            _plural(attempt, "attempt"),
            verdict.detail,
            "" if final else "; its events stay pending for the next digest",
        )
        return verdict

    def _session_for_send(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def _post(self, url: URL, data: bytes) -> Verdict:
        session = self._session_for_send()
        try:
            async with session.post(
                url,
                data=data,
                headers={"Content-Type": "application/json; charset=utf-8"},
                allow_redirects=False,
            ) as response:
                raw = b""
                while len(raw) < _MAX_ANSWER:
                    chunk = await response.content.read(_MAX_ANSWER - len(raw))
                    if not chunk:
                        break
                    raw += chunk
                verdict = self._verdict(response.status, response.headers, raw)
        except (aiohttp.ClientError, TimeoutError) as exc:
            verdict = Verdict(False, self._describe(exc), retryable=True)
        finally:
            self._budget.record(self._timing.clock())
        return replace(verdict, detail=self._clean(verdict.detail)) if not verdict.ok else verdict

    def _clean(self, text: str) -> str:
        for secret in self._scrub:
            text = text.replace(secret, self.settings.shown_url if "://" in secret else "***")
        return _QUERY_IN_TEXT.sub(r"\1?***", text)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError):
            return f"timed out after {self.settings.timeout:g}s"
        text = str(exc)
        return type(exc).__name__ + (f": {self._clean(text)}" if text else "")

    # ---- close

    def unsent(self) -> dict[str, int]:
        """Events accepted and not delivered, by kind (``rollout.finished``, ``job.phase_changed:Failed``, …)."""
        return dict(sorted(self._pending.kinds().items()))

    async def drain(
        self, within: float | None = None, *, notify: Callable[[str], None] | None = None
    ) -> dict[str, int]:
        """Send everything pending as one final message — a finished rollout's complete summary with whatever
        else waits — as soon as the budget allows, waiting at most ``within`` seconds (default: option
        ``final_wait``); return what could not be
        sent (see :meth:`unsent`). ``notify`` hears what the sink is waiting for. Calling it again (a signal
        during a long wait) can only bring the deadline forward."""
        if self._closed:
            return self.unsent()
        deadline = self._timing.clock() + max(0.0, self.settings.final_wait if within is None else within)
        self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)
        self._notify = notify or self._notify
        if not self._pending.count and self._in_flight == 0:
            return {}
        self._drained.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._guarded(), name=f"chat flusher {self.name}")
        self._wake.set()
        await self._drained.wait()
        return self.unsent()

    async def aclose(self) -> None:
        """Stop the flusher, send one final message if the budget allows it now, close the session.

        Without a :meth:`drain` before, that is one attempt and only if the budget allows it at once; after a
        drain, what it could not send is logged (the daemon's outbox keeps it for the next start)."""
        if self._closed:
            return
        self._closed = True
        try:
            task, self._task = self._task, None
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait((task,))
            now = self._timing.clock()
            if (
                self._pending.count
                and self._deadline is None
                and max(self._resume_at - now, self._budget.delay(now)) <= 0
            ):
                batch = self._pending.take_all()
                verdict = await self._deliver(build_final(batch, self.settings), final=True)  # logs a failure
                if verdict.ok:
                    await self._acknowledge(batch.ids())
                else:
                    self._pending.restore(batch)
            count = self._pending.count
            if count:
                kinds = ", ".join(f"{n} {kind}" for kind, n in self.unsent().items())
                logger.warning(
                    "%s: closing with %s not sent: the rate budget is spent (%s)",
                    self.name,
                    _plural(count, "event"),
                    kinds,
                )
        finally:
            session, self._session = self._session, None
            if session is not None:
                await session.close()
