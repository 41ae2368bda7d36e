"""The live terminal view of ``cce-monitor watch``: every job's phase and sub-job progress, drawn with rich.

The view is just another bus subscriber: it keeps a small row per job from the events it receives and redraws
from an asyncio task four times a second (rich's own refresh thread is not used, so nothing touches the view
off the event loop). Notable events — a job finishing or failing, polls failing, auth failing, stalls — are also
printed above the table, so the scrollback keeps a record after the view closes.

On top: one line per rollout — a bar and its progress text (from its latest digest); only while no rollout is
known, one such line counting the view's own jobs instead. Rows show the job id next to its resource (node) name;
a job that rolls out nodes (``ScaleupCluster`` with a ``CreateNode`` per node) gets a row per node below it, with
the node's name and id (once CCE names it) and its phase through to ``Active``. Reasons go through
:func:`~monitor.core.reason.readable_reason` (``Ecs.0319: The ECS quota is insufficient.``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from monitor.core.events import Event, EventType
from monitor.core.nodes import NODE_JOB_TYPES
from monitor.core.reason import readable_reason
from monitor.core.text import printable
from monitor.engine.rollout import describe

__all__ = ["LiveView"]

_BAR_WIDTH = 30


def _bar(total: int, completed: int) -> RenderableType:
    return ProgressBar(total=max(1, total), completed=completed, width=_BAR_WIDTH)


_STYLES = {
    "Success": "green",
    "Active": "bold green",
    "Failed": "bold red",
    "Abnormal": "bold red",
    "Error": "bold red",
    "Running": "cyan",
    "Initializing": "yellow",
}
_ORDER = {"Failed": 0, "Abnormal": 0, "Error": 0, "Running": 1, "Initializing": 2}
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
    job_id: str  # the job's id, or for a node row the node id (else the sub-job id) under its job
    job_type: str = ""
    resource_name: str = ""
    phase: str = "waiting"
    note: str = ""
    sub_phases: dict[str, str] = field(default_factory=dict)
    seq: int = 0
    parent: str | None = None  # a node row: its job's id


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
                self._deepest(event.summary.get("failed"))
            return
        if event.type in (EventType.NODE_ACTIVE, EventType.NODE_FAILED):  # about one node of the job
            node = self._node_row(event)
            if node is not None:
                node.phase = event.phase or ("Active" if event.type is EventType.NODE_ACTIVE else "not_active")
                node.note = readable_reason(event.reason or "") if event.type is EventType.NODE_FAILED else ""
            if event.type is EventType.NODE_FAILED:
                self._print(event)
            return
        if event.type is EventType.SUBJOB_PHASE_CHANGED and event.subjob_type in NODE_JOB_TYPES:
            node = self._node_row(event, create=True)
            if node is not None and event.phase:
                node.phase = event.phase
                node.note = readable_reason(event.reason or "") if event.phase == "Failed" else ""
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

    def _deepest(self, failed: object) -> None:
        """A rollout digest names each failed job or node with its deepest failed step's reason (a node job's
        own is often generic): that is the note of its row."""
        for item in failed if isinstance(failed, list) else ():
            if not isinstance(item, dict) or not isinstance(item.get("reason"), str) or not item["reason"]:
                continue
            key = f"{item.get('job_id')}/{item['subjob_id']}" if item.get("subjob_id") else str(item.get("job_id"))
            row = self._rows.get(key)
            if row is not None and row.phase in ("Failed", "Error"):
                row.note = readable_reason(item["reason"])

    def _node_row(self, event: Event, *, create: bool = False) -> _Row | None:
        """The row of the node an event is about (a sub-job of a job that rolls out nodes), keyed by sub-job."""
        key = f"{event.job_id}/{event.subjob_id}" if event.subjob_id else None
        row = self._rows.get(key) if key else None
        if row is None and event.node_id:  # node.* events name the node; find its row by node id
            row = next((r for r in self._rows.values() if r.parent == event.job_id and r.job_id == event.node_id), None)
        if row is None and create and key is not None:
            row = self._rows[key] = _Row(event.subjob_id or "", parent=event.job_id)
        if row is not None:
            if event.node_id:
                row.job_id = event.node_id
            if event.resource_name:
                row.resource_name = event.resource_name
            row.job_type = event.subjob_type or row.job_type
            self._seq += 1
            row.seq = self._seq
        return row

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

    def _ordered(self) -> list[_Row]:
        """Jobs by phase (failed first, then running), the latest change first; each job's node rows under it."""
        key = lambda r: (_ORDER.get(r.phase, 3), -r.seq)  # noqa: E731
        nodes: dict[str, list[_Row]] = {}
        for row in self._rows.values():
            if row.parent is not None:
                nodes.setdefault(row.parent, []).append(row)
        out: list[_Row] = []
        for job in sorted((r for r in self._rows.values() if r.parent is None), key=key):
            out.append(job)
            out += sorted(nodes.get(job.job_id, ()), key=key)
        return out

    def render(self) -> RenderableType:
        jobs = [r for r in self._rows.values() if r.parent is None]
        counts = Counter(r.phase for r in jobs)
        done = sum(counts[p] for p in ("Success", "Failed", "timed_out", "not_found"))
        table = Table(expand=True, show_edge=False, pad_edge=False)
        table.add_column("job / node id", no_wrap=True)
        table.add_column("name", no_wrap=True, overflow="ellipsis", max_width=40)
        table.add_column("type", no_wrap=True)
        table.add_column("phase", no_wrap=True)
        table.add_column("sub-jobs", no_wrap=True)
        table.add_column("reason / detail", overflow="ellipsis", no_wrap=True, ratio=1)
        # A line per rollout (or the view's own), table header (2), "and N more", a spare.
        limit = max(5, self.console.size.height - 5 - max(1, len(self._rollouts)))
        ordered = self._ordered()
        for row in ordered[:limit]:
            subs = row.sub_phases.values()
            sub_done = sum(1 for p in subs if p == "Success")
            sub_text = f"{sub_done}/{len(row.sub_phases)}" if row.sub_phases else ""
            ident = Text(("  └ " if row.parent is not None else "") + _safe(row.job_id))
            # Text objects, not str: rich would read "[...]" in a reason from CCE as console markup.
            table.add_row(
                ident,
                Text(_safe(row.resource_name)),
                Text(_safe(row.job_type)),
                Text(_safe(row.phase), style=_STYLES.get(row.phase, "magenta")),
                Text(sub_text),
                Text(_safe(row.note)),
            )
        hidden = len(ordered) - limit
        lines = Table.grid(padding=(0, 1))
        lines.add_column(no_wrap=True)
        lines.add_column(overflow="ellipsis", no_wrap=True, ratio=1)
        for info in self._rollouts.values():  # one line per rollout: its bar and its progress, from its digest
            bar = _bar(int(info.get("total", 0)), int(info.get("finished", 0)))
            lines.add_row(bar, Text(_safe(describe(info)), style="bold cyan"))
        if not self._rollouts:  # no digest yet (or no rollout at all): count the view's own jobs
            summary = Text(f"{self.title}  {done}/{len(jobs)} finished  ", style="bold")
            for phase, n in sorted(counts.items()):
                summary.append(f"{_safe(phase)} {n}  ", style=_STYLES.get(phase, "magenta"))
            lines.add_row(_bar(len(jobs), done), summary)
        parts: list[RenderableType] = [lines, table]
        if hidden > 0:
            parts.append(Text(f"… and {hidden} more rows", style="dim"))
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
