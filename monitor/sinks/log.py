"""The ``log`` sink: one readable line per event on stdout or stderr (or any text stream).

Spec ``log`` or ``log:stderr``; options ``stream`` (``"stdout"``, the default, or ``"stderr"``; Python callers
may pass a text stream object instead) and ``format`` (``"text"``, the default, or ``"json"``). A text line::

    2026-11-28T06:41:00Z job.phase_changed 354331b2c-... CreateNode Running -> Failed reason="Install node failed"

Sub-job events add ``subjob=<id> <subjob_type>`` after the job; other event types show ``phase=<phase>``
instead of a transition. Every line is flushed at once and is always one line: free text is quoted with
newlines and control characters escaped.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import ClassVar, Literal, TextIO, cast

from monitor.core.errors import ConfigError, SinkError
from monitor.core.events import Event, EventType
from monitor.sinks import register

__all__ = ["LogSink", "LogSinkSettings", "format_text", "make_log_sink"]

Format = Literal["text", "json"]
StreamOption = Literal["stdout", "stderr"] | TextIO
_STREAM_NAMES = ("stdout", "stderr")
_FORMATS: tuple[Format, ...] = ("text", "json")
_TRANSITIONS = (EventType.JOB_PHASE_CHANGED, EventType.SUBJOB_PHASE_CHANGED)

# A bare token must be non-empty and hold nothing that could break the line or be misread as syntax.
_BARE = re.compile(r'[^\s"\\=\x00-\x1f\x7f\x85\u2028\u2029]+')
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NEEDS_ESCAPE = re.compile(r'[\\"\x00-\x1f\x7f\x85\u2028\u2029]')


def _quote(text: str) -> str:
    """``text`` in double quotes, with quotes, backslashes and every line-breaking character escaped."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        return _ESCAPES.get(char) or f"\\u{ord(char):04x}"

    return '"' + _NEEDS_ESCAPE.sub(escape, text) + '"'


def _token(text: str) -> str:
    """``text`` as it is when it is one safe word, else quoted."""
    return text if _BARE.fullmatch(text) else _quote(text)


def format_text(event: Event) -> str:
    """The one-line text form of ``event``, without the trailing newline."""
    stamp = event.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if event.job_id is None and event.nodepool_id is not None:  # news of a node pool
        line = f"{stamp} {_token(event.type.value)} nodepool={_token(event.nodepool_id)}"
        line += f" phase={_token(event.phase or '-')}"  # "-": the empty phase of a settled pool
        line += "".join(
            f" {key}={_quote(value)}" for key, value in (("detail", event.detail), ("reason", event.reason)) if value
        )
        return line
    if event.job_id is None:  # a rollout digest: its detail is the readable summary
        line = f"{stamp} {_token(event.type.value)} rollout={_token(event.rollout or '-')}"
        return line + (" detail=" + _quote(event.detail) if event.detail else "")
    parts = [stamp, _token(event.type.value), _token(event.job_id)]
    if event.job_type:
        parts.append(_token(event.job_type))
    if event.subjob_id is not None or event.subjob_type is not None:
        parts.append("subjob=" + _token(event.subjob_id or "-"))
        if event.subjob_type:
            parts.append(_token(event.subjob_type))
    if event.type in _TRANSITIONS:
        parts += [_token(event.previous_phase or "-"), "->", _token(event.phase or "-")]
    elif event.phase is not None:
        parts.append("phase=" + _token(event.phase))
    if event.node_id and event.type in (EventType.NODE_ACTIVE, EventType.NODE_FAILED):
        parts.append("node=" + _token(event.node_id))
        if event.resource_name:
            parts.append("name=" + _token(event.resource_name))
    if event.reason:
        parts.append("reason=" + _quote(event.reason))
    if event.detail:
        parts.append("detail=" + _quote(event.detail))
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class LogSinkSettings:
    """Parsed options of the ``log`` sink. ``stream`` is a name, resolved at each write, or a stream."""

    stream: StreamOption = "stdout"
    format: Format = "text"


class LogSink:
    """Writes each event as one line to a text stream and flushes it. Never closes the stream."""

    durable: ClassVar[bool] = False  # live from the bus: a terminal does not replay what it missed

    __slots__ = ("_closed", "name", "settings")

    def __init__(self, settings: LogSinkSettings | None = None) -> None:
        self.settings = settings or LogSinkSettings()
        stream = self.settings.stream
        label = stream if isinstance(stream, str) else str(getattr(stream, "name", type(stream).__name__))
        self.name = f"log:{label}"
        self._closed = False

    def __repr__(self) -> str:
        return f"LogSink(name={self.name!r}, format={self.settings.format!r})"

    def _stream(self) -> TextIO:
        stream = self.settings.stream
        if stream == "stdout":
            return sys.stdout
        if stream == "stderr":
            return sys.stderr
        assert not isinstance(stream, str)
        return stream

    async def send(self, event: Event) -> None:
        """Write and flush one line."""
        if self._closed:
            raise SinkError(f"{self.name}: sink is closed", retryable=False)
        line = event.to_json().decode() if self.settings.format == "json" else format_text(event)
        stream = self._stream()
        try:
            stream.write(line + "\n")
            stream.flush()
        except ValueError as exc:  # I/O on a closed stream: no retry will fix that
            raise SinkError(f"{self.name}: cannot write: {exc}", retryable=False) from exc
        except OSError as exc:
            raise SinkError(f"{self.name}: write failed: {exc.strerror or exc}", retryable=True) from exc

    async def aclose(self) -> None:
        """Flush the stream (it belongs to the caller, so it stays open)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError, OSError):
            self._stream().flush()


def _parse(target: str | None, options: Mapping[str, object]) -> LogSinkSettings:
    unknown = sorted(set(options) - {"stream", "format"})
    if unknown:
        raise ConfigError(f"log sink: unknown option {unknown[0]!r} (known: format, stream)")
    stream: object = options.get("stream", target or "stdout")
    if target and "stream" in options and options["stream"] != target:
        raise ConfigError(f"log sink: option 'stream' conflicts with the target {target!r}")
    if isinstance(stream, str):
        if stream not in _STREAM_NAMES:
            raise ConfigError(f"log sink: option 'stream' must be 'stdout' or 'stderr', got {stream!r}")
    elif not (callable(getattr(stream, "write", None)) and callable(getattr(stream, "flush", None))):
        raise ConfigError(
            f"log sink: option 'stream' must be 'stdout', 'stderr' or a text stream, got {type(stream).__name__}"
        )
    fmt = options.get("format", "text")
    if fmt not in _FORMATS:
        raise ConfigError(f"log sink: option 'format' must be 'text' or 'json', got {fmt!r}")
    return LogSinkSettings(stream=cast("StreamOption", stream), format=fmt)


@register("log")
def make_log_sink(target: str | None, options: Mapping[str, object]) -> LogSink:
    """Factory for ``log`` / ``log:stdout`` / ``log:stderr``."""
    return LogSink(_parse(target, options))
