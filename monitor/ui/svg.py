"""Pictures as SVG text: a rollout's timeline and a progress bar by state, for the page and the report alike.

Everything from outside (names, ids, reasons) goes through :func:`esc`: XML-escaped and stripped of characters
XML cannot hold, so the result always parses as XML (the page parses it with ``DOMParser`` as
``image/svg+xml`` and would refuse anything else) and a reason holding ``<script>`` shows as text. Colours are
presentation attributes, never ``style``, so a Content-Security-Policy without ``'unsafe-inline'`` shows them.

Hover: every bar and marker has a ``<title>`` (browsers show it as a tooltip, with no script). The page also
reads ``data-key`` on a row's group to show the row's details on click.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from monitor.core.text import format_duration, printable
from monitor.engine.timeline import FAILED, Row, Timeline

__all__ = ["COLOURS", "STATE_ORDER", "esc", "progress_svg", "timeline_svg"]

COLOURS: Mapping[str, str] = {
    "waiting": "#cbd5e1",
    "Initializing": "#f2b705",
    "Running": "#2f7fd8",
    "Success": "#8fd19e",  # created, waiting to be Active (a job's Success ends its row: a marker)
    "Active": "#1d8f3a",
    "Failed": "#d62f2f",
    "Abnormal": "#b3261e",
    "Error": "#b3261e",
    "not_active": "#b3261e",
    "timed_out": "#8a4fbf",
    "not_found": "#6b7280",
}
STATE_ORDER = ("Active", "Success", "Running", "Initializing", "waiting", *sorted(FAILED))
_OTHER = "#9ca3af"
# Characters XML 1.0 cannot hold at all (besides the controls printable() replaces).
_NOT_XML = re.compile("[\ufffe\uffff]")
_ROW_H = 18
_BAR_H = 12
_LABEL_W = 230
_AXIS_H = 26
_MARK = 5


def esc(text: object, limit: int = 300) -> str:
    """``text`` ready for XML text or an attribute value: shortened, no control characters, escaped."""
    value = printable(str(text), " ")
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return html.escape(_NOT_XML.sub(" ", value), quote=True)


def _colour(state: str) -> str:
    return COLOURS.get(state, _OTHER)


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def _step(span: float) -> float:
    """A tick step giving 4-10 ticks over ``span`` seconds."""
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600, 43200, 86400):
        if span / step <= 10:
            return float(step)
    return 86400.0 * max(1, round(span / 86400 / 10))


def _row_title(row: Row) -> str:
    parts = [row.name]
    if row.node_id and row.node_id != row.name:
        parts.append(f"node {row.node_id}")
    parts.append(row.state)
    if row.reason:
        parts.append(row.reason)
    return " · ".join(parts)


def timeline_svg(timeline: Timeline, *, width: int = 1100, max_rows: int = 2000) -> str:
    """The timeline as one ``<svg>``: a row per node or job (failed rows first when there are more than
    ``max_rows``), bars coloured by state, a marker where a row ended, ticks in UTC along the top."""
    rows = list(timeline.rows)
    hidden = 0
    if len(rows) > max_rows:
        rows = sorted(rows, key=lambda r: not r.failed)[:max_rows]
        hidden = len(timeline.rows) - max_rows
    start, end = timeline.start, max(timeline.end, timeline.start + 1.0)
    plot_w = max(100, width - _LABEL_W - 20)
    height = _AXIS_H + _ROW_H * max(1, len(rows)) + (_ROW_H if hidden else 0) + 6

    def x(ts: float) -> float:
        return round(_LABEL_W + (ts - start) / (end - start) * plot_w, 1)

    caption = esc(f"timeline of {timeline.rollout or 'jobs'}: {len(timeline.rows)} rows")
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img" aria-label="{caption}">',
        f"<title>{caption}</title>",
    ]
    step = _step(end - start)
    tick = start - start % step + step if start % step else start
    while tick <= end:
        out.append(
            f'<line x1="{x(tick)}" y1="{_AXIS_H - 6}" x2="{x(tick)}" y2="{height}" stroke="#e5e7eb"/>'
            f'<text x="{x(tick)}" y="{_AXIS_H - 10}" text-anchor="middle" fill="#4b5563">{_clock(tick)}</text>'
        )
        tick += step
    out.append(f'<text x="4" y="{_AXIS_H - 10}" fill="#4b5563">UTC, {format_duration(end - start)} shown</text>')
    for i, row in enumerate(rows):
        top = _AXIS_H + i * _ROW_H
        mid = top + _ROW_H / 2
        cls = "row failed" if row.failed else "row"
        out.append(f'<g class="{cls}" data-key="{esc(row.key, 400)}" data-state="{esc(row.state)}">')
        out.append(f"<title>{esc(_row_title(row), 600)}</title>")
        # The whole row takes the pointer (hover, click), not only its bars.
        out.append(
            f'<rect class="hit" x="0" y="{top}" width="{width}" height="{_ROW_H}" fill="#000" fill-opacity="0"/>'
        )
        label = row.name if len(row.name) <= 34 else row.name[:33] + "…"
        out.append(f'<text x="4" y="{mid + 4}" fill="#111827">{esc(label)}</text>')
        for span in row.spans:
            if span.end > span.start:
                w = max(1.0, x(span.end) - x(span.start))
                out.append(
                    f'<rect x="{x(span.start)}" y="{top + (_ROW_H - _BAR_H) / 2}" width="{round(w, 1)}" '
                    f'height="{_BAR_H}" fill="{_colour(span.state)}">'
                    f"<title>{esc(row.name)}: {esc(span.state)} {_clock(span.start)}-{_clock(span.end)} "
                    f"({format_duration(span.end - span.start)})</title></rect>"
                )
        if row.ended is not None:
            cx = x(row.ended)
            what = f"{esc(row.name)}: {esc(row.state)} at {_clock(row.ended)}"
            if row.reason:
                what += f" — {esc(row.reason, 600)}"
            if row.failed:  # a cross: failures stand out, and cluster visibly when they come together
                out.append(
                    f'<path class="failure" d="M{cx - _MARK},{mid - _MARK}L{cx + _MARK},{mid + _MARK}'
                    f'M{cx - _MARK},{mid + _MARK}L{cx + _MARK},{mid - _MARK}" stroke="{_colour(row.state)}" '
                    f'stroke-width="2.5"><title>{what}</title></path>'
                )
            else:
                out.append(
                    f'<circle cx="{cx}" cy="{mid}" r="{_MARK - 1}" fill="{_colour(row.state)}"><title>{what}</title>'
                    "</circle>"
                )
        out.append("</g>")
    if not rows:
        out.append(f'<text x="{_LABEL_W}" y="{_AXIS_H + 12}" fill="#6b7280">no events yet</text>')
    if hidden:
        y = _AXIS_H + len(rows) * _ROW_H + 13
        out.append(f'<text x="4" y="{y}" fill="#6b7280">… and {hidden} more rows</text>')
    out.append("</svg>")
    return "".join(out)


def progress_svg(counts: Mapping[str, int], *, width: int = 600, height: int = 14) -> str:
    """A bar split by state (``{"Active": 37, "Running": 61, "Failed": 2}``), each part with its count as title."""
    total = sum(n for n in counts.values() if n > 0)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="progress" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(_counts_text(counts))}">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#eef0f3"/>',
    ]
    left = 0.0
    order = [s for s in STATE_ORDER if counts.get(s)] + sorted(s for s in counts if s not in STATE_ORDER)
    for state in order:
        n = counts.get(state, 0)
        if n <= 0 or total == 0:
            continue
        w = n / total * width
        out.append(
            f'<rect x="{round(left, 1)}" y="0" width="{round(w, 1)}" height="{height}" fill="{_colour(state)}">'
            f"<title>{esc(state)}: {n}</title></rect>"
        )
        left += w
    out.append("</svg>")
    return "".join(out)


def _counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "nothing yet"
