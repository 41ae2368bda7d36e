"""The live terminal view of ``cce-monitor watch``: every job's phase and sub-job progress, drawn with rich.

The view is just another bus subscriber: it keeps a small row per job from the events it receives and redraws
from an asyncio task four times a second (rich's own refresh thread is not used, so nothing touches the view
off the event loop). Notable events — a job finishing or failing, polls failing, auth failing, stalls — are also
printed above the table, so the scrollback keeps a record after the view closes.

On top: one progress line and one bar per rollout (from its latest digest); only while no rollout is known, a
line and a bar counting the view's own jobs instead. Rows show the job id next to its resource (node) name, and
reasons through :func:`~monitor.core.reason.readable_reason` (``Ecs.0319: The ECS quota is insufficient.``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.padding import Padding
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from monitor.core.events import Event, EventType
from monitor.core.reason import readable_reason
from monitor.core.text import printable
from monitor.engine.rollout import describe

__all__ = ["LiveView"]

_BAR_WIDTH = 60


def _bar(total: int, completed: int) -> RenderableType:
    # ProgressBar renders without a line break of its own; in a Group the next line would run on after it.
    return Padding(ProgressBar(total=max(1, total), completed=completed, width=_BAR_WIDTH), 0)


_STYLES = {"Success": "green", "Failed": "bold red", "Running": "cyan", "Initializing": "yellow"}
_ORDER = {"Failed": 0, "Running": 1, "Initializing": 2}
_NOTABLE = {
    EventType.JOB_TIMED_OUT,
    EventType.JOB_STALLED,
    EventType.JOB_NOT_FOUND,
    EventType.JOB_POLL_FAILED,
    EventType.JOB_RECOVERED,
    EventType.MONITOR_AUTH_FAILED,
}


@dataclass(slots=True)
class _Row:
    job_id: str
    job_type: str = ""
    resource_name: str = ""
    phase: str = "waiting"
    note: str = ""
    sub_phases: dict[str, str] = field(default_factory=dict)
    seq: int = 0


def _safe(text: str) -> str:
    """Text from CCE, shown on a terminal: no escape sequences, control characters or bidi overrides."""
    return printable(text, "\ufffd")


class LiveView:
    """Use as ``async with LiveView(job_ids) as view:`` and subscribe ``view.on_event`` to the bus."""

    def __init__(self, job_ids: list[str], *, console: Console | None = None, title: str = "cce-monitor") -> None:
        self.console = console or Console()
        self.title = title
        self._rows: dict[str, _Row] = {job_id: _Row(job_id) for job_id in job_ids}
        self._rollouts: dict[str, dict[str, Any]] = {}
        self._seq = 0
        self._live: Live | None = None
        self._task: asyncio.Task[None] | None = None

    def on_event(self, event: Event) -> None:
        """Bus callback: update the job's row, print notable events above the table."""
        if event.job_id is None:  # a rollout digest, or news of a node pool
            if event.type in (EventType.NODEPOOL_PHASE_CHANGED, EventType.NODEPOOL_SETTLED):
                self._print(event)
            elif event.rollout and event.summary is not None:
                self._rollouts[event.rollout] = dict(event.summary)
            return
        if event.type is EventType.NODE_FAILED:  # about one node of the job, not the job's row
            self._print(event)
            return
        if event.type is EventType.NODE_ACTIVE:
            return
        row = self._rows.setdefault(event.job_id, _Row(event.job_id))
        self._seq += 1
        row.seq = self._seq
        if event.job_type:
            row.job_type = event.job_type
        if event.resource_name and event.type is not EventType.SUBJOB_PHASE_CHANGED:  # a sub-job names its own
            row.resource_name = event.resource_name
        if event.type is EventType.SUBJOB_PHASE_CHANGED and event.subjob_id and event.phase:
            row.sub_phases[event.subjob_id] = event.phase
        elif event.type is EventType.JOB_PHASE_CHANGED and event.phase:
            row.phase = event.phase
            row.note = readable_reason(event.reason or "")
            if event.phase in ("Success", "Failed"):
                self._print(event)
        elif event.type in _NOTABLE:
            if event.type in (EventType.JOB_TIMED_OUT, EventType.JOB_NOT_FOUND):
                row.phase = event.type.value.removeprefix("job.")
            row.note = event.detail or ""
            self._print(event)

    def note(self, text: str) -> None:
        """Print a line of the monitor's own above the table (what it is waiting for at the end)."""
        self.console.print(Text(_safe(text), style="yellow"))

    def _print(self, event: Event) -> None:
        style = _STYLES.get(event.phase or "", "magenta") if event.type is EventType.JOB_PHASE_CHANGED else "magenta"
        what = event.phase if event.type is EventType.JOB_PHASE_CHANGED else event.type.value
        if event.type is not EventType.JOB_PHASE_CHANGED and event.phase:
            what = f"{what} {event.phase}"
        text = Text.assemble(
            (event.time.strftime("%H:%M:%S "), "dim"),
            (f"{_safe(event.job_id or event.nodepool_id or '')} ", "bold"),
        )
        row = self._rows.get(event.job_id or "")
        name = event.resource_name or (row.resource_name if row is not None else "")
        if name:
            text.append(f"{_safe(name)} ")
        text.append(_safe(what or ""), style=style)
        extra = readable_reason(event.reason) if event.reason else event.detail
        if extra:
            text.append(f"  {_safe(extra)}", style="dim")
        self.console.print(text)

    def render(self) -> RenderableType:
        rows = list(self._rows.values())
        counts = Counter(r.phase for r in rows)
        done = sum(counts[p] for p in ("Success", "Failed", "timed_out", "not_found"))
        table = Table(expand=True, show_edge=False, pad_edge=False)
        table.add_column("job", no_wrap=True)
        table.add_column("name", no_wrap=True, overflow="ellipsis", max_width=40)
        table.add_column("type", no_wrap=True)
        table.add_column("phase", no_wrap=True)
        table.add_column("sub-jobs", no_wrap=True)
        table.add_column("reason / detail", overflow="ellipsis", no_wrap=True, ratio=1)
        # A line and a bar per rollout (or the view's own two), table header (2), "and N more", a spare.
        limit = max(5, self.console.size.height - 5 - 2 * max(1, len(self._rollouts)))
        ordered = sorted(rows, key=lambda r: (_ORDER.get(r.phase, 3), -r.seq))
        for row in ordered[:limit]:
            subs = row.sub_phases.values()
            sub_done = sum(1 for p in subs if p == "Success")
            sub_text = f"{sub_done}/{len(row.sub_phases)}" if row.sub_phases else ""
            # Text objects, not str: rich would read "[...]" in a reason from CCE as console markup.
            table.add_row(
                Text(_safe(row.job_id)),
                Text(_safe(row.resource_name)),
                Text(_safe(row.job_type)),
                Text(_safe(row.phase), style=_STYLES.get(row.phase, "magenta")),
                Text(sub_text),
                Text(_safe(row.note)),
            )
        hidden = len(ordered) - limit
        parts: list[RenderableType] = []
        for info in self._rollouts.values():  # one line and bar per rollout, from its latest digest
            parts.append(Text(_safe(describe(info)), style="bold cyan"))
            parts.append(_bar(int(info.get("total", 0)), int(info.get("finished", 0))))
        if not self._rollouts:  # no digest yet (or no rollout at all): count the view's own jobs
            summary = Text(f"{self.title}  {done}/{len(rows)} finished  ", style="bold")
            for phase, n in sorted(counts.items()):
                summary.append(f"{_safe(phase)} {n}  ", style=_STYLES.get(phase, "magenta"))
            parts += [summary, _bar(len(rows), done)]
        parts.append(table)
        if hidden > 0:
            parts.append(Text(f"… and {hidden} more jobs", style="dim"))
        return Group(*parts)

    async def _refresh(self) -> None:
        assert self._live is not None
        while True:
            self._live.update(self.render(), refresh=True)
            await asyncio.sleep(0.25)

    async def __aenter__(self) -> LiveView:
        self._live = Live(self.render(), console=self.console, auto_refresh=False, transient=False)
        self._live.start()
        self._task = asyncio.create_task(self._refresh(), name="live-view")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # never swallow a cancellation of our own caller
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            self._live.stop()
