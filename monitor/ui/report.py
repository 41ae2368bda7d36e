"""``cce-monitor report``: a rollout's summary, timeline and failures as one self-contained HTML file.

The input is what the file sink writes: one event per line (``Event.to_json()``). The output needs nothing but
itself — styles inline, pictures as inline SVG, no script, no font or image from elsewhere — so it can be
attached to a ticket or a post-mortem and read offline years later.

A line that is not an event (not JSON, not an object, an unknown ``type``, a bad ``time``) is skipped and
counted; the report names the first few by line number, so nothing is dropped silently. Fields a newer version
added to an event are ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from monitor.core.events import Event, EventType
from monitor.core.reason import readable_reason
from monitor.core.version import __version__
from monitor.engine.rollout import describe
from monitor.engine.timeline import Timeline, build_timeline, rollouts_in
from monitor.ui.svg import COLOURS, esc, progress_svg, timeline_svg

__all__ = ["ReadResult", "parse_events", "render_report"]

_FIELDS = frozenset(f.name for f in dataclasses.fields(Event))
_LISTED_PROBLEMS = 5
_LISTED_FAILURES = 500

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#111827;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-top:1px solid #e5e7eb;padding-top:14px}
.meta{color:#6b7280;font-size:12px}.line{margin:6px 0 8px;font-weight:600}
table{border-collapse:collapse;margin-top:8px;font-size:13px}th,td{text-align:left;padding:3px 10px 3px 0;
vertical-align:top}th{color:#4b5563;font-weight:600;border-bottom:1px solid #e5e7eb}
td.reason{max-width:620px;overflow-wrap:anywhere}.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px}
.scroll{overflow-x:auto}.warn{color:#92400e;background:#fef3c7;padding:6px 10px;border-radius:4px}
"""


@dataclasses.dataclass(frozen=True, slots=True)
class ReadResult:
    events: list[Event]
    skipped: int
    problems: list[str]
    """The first few skipped lines, as ``line N: why``."""


def _event_of(raw: bytes) -> Event:
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    kept = {k: v for k, v in data.items() if k in _FIELDS}
    try:
        kept["type"] = EventType(kept["type"])
        kept["time"] = datetime.fromisoformat(kept["time"])
        return Event(**kept)
    except KeyError as exc:
        raise ValueError(f"no {exc.args[0]!r}") from None
    except TypeError as exc:  # a field missing or of the wrong kind
        raise ValueError(f"not an event: {exc}") from None


def parse_events(lines: Iterable[bytes]) -> ReadResult:
    """Events from JSONL lines; blank lines are ignored, bad ones skipped and counted."""
    events: list[Event] = []
    problems: list[str] = []
    skipped = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(_event_of(line))
        except (ValueError, orjson.JSONDecodeError) as exc:
            skipped += 1
            if len(problems) < _LISTED_PROBLEMS:
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                problems.append(f"line {number}: {why[:120]}")
    return ReadResult(events, skipped, problems)


def _legend() -> str:
    shown = ("Initializing", "Running", "Success", "Active", "Failed", "timed_out")
    words = {"Success": "created, not yet Active", "Active": "Active (usable)"}
    items = "".join(f'<span><i style="background:{COLOURS[s]}"></i>{esc(words.get(s, s))}</span>' for s in shown)
    return f'<div class="legend">{items}</div>'


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _section(timeline: Timeline) -> str:
    summary = timeline.summary
    line = describe(summary) if summary else _counts_line(timeline)
    parts = [
        f"<h2>{esc(timeline.rollout or 'jobs without a rollout')}</h2>",
        f'<div class="line">{esc(line, 1000)}</div>',
        f'<div class="meta">{len(timeline.rows)} rows · {_when(timeline.start)} to {_when(timeline.end)}</div>',
        progress_svg(timeline.counts),
        _legend(),
        f'<div class="scroll">{timeline_svg(timeline)}</div>',
    ]
    failures = timeline.failures
    if failures:
        parts.append(f"<h3>Failures ({len(failures)})</h3><table><tr><th>when</th><th>node / job</th>")
        parts.append("<th>node id</th><th>job</th><th>state</th><th>reason</th></tr>")
        for row in failures[:_LISTED_FAILURES]:
            reason = readable_reason(row.reason) if row.reason else ""
            parts.append(
                f"<tr><td>{_when(row.ended) if row.ended else ''}</td><td>{esc(row.name)}</td>"
                f"<td>{esc(row.node_id or '')}</td><td>{esc(row.subjob_id or row.job_id)}</td>"
                f'<td>{esc(row.state)}</td><td class="reason">{esc(reason, 2000)}</td></tr>'
            )
        parts.append("</table>")
        if len(failures) > _LISTED_FAILURES:
            parts.append(f'<p class="meta">… and {len(failures) - _LISTED_FAILURES} more failures</p>')
    return "".join(parts)


def _counts_line(timeline: Timeline) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(timeline.counts.items(), key=lambda kv: -kv[1]))
    return f"{timeline.rollout or 'jobs'}: {len(timeline.rows)} rows ({counts or 'no phases seen'})"


def render_report(read: ReadResult, *, rollout: str | None = None, source: str = "", now: float | None = None) -> str:
    """The HTML report: one section per rollout in the events (only ``rollout`` when given), then the jobs of no
    rollout if there are any. Raises ``LookupError`` when ``rollout`` is not in the events."""
    events = read.events
    names = rollouts_in(events)
    if rollout is not None and rollout not in names:
        known = ", ".join(names[:10]) or "none"
        raise LookupError(f"rollout {rollout!r} is not in the events; rollouts there: {known}")
    chosen: Sequence[str | None] = [rollout] if rollout is not None else names
    sections = [build_timeline(events, rollout=name) for name in chosen]
    if rollout is None:
        loose = [e for e in events if not e.rollout]
        if any(e.job_id for e in loose) or not sections:
            sections.append(build_timeline(loose))
    made = now if now is not None else datetime.now(UTC).timestamp()
    title = f"cce-monitor report: {rollout}" if rollout else "cce-monitor report"
    head: list[Any] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<div class="meta">{len(events)} events from {esc(source or "stdin")} · made {_when(made)} by '
        f"cce-monitor {esc(__version__)}</div>",
    ]
    if read.skipped:
        listed = "; ".join(read.problems)
        head.append(f'<p class="warn">{read.skipped} lines were not events and were skipped ({esc(listed, 800)})</p>')
    body = [_section(t) for t in sections]
    return "".join([*head, *body, "</body></html>\n"])
