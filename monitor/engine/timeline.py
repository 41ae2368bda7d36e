"""A rollout's timeline: one row per node (or per job), each a run of phase spans over time, from its events.

The same events make the same timeline wherever they come from — the daemon's stored history (``/ui/``) or the
file sink's JSONL (``cce-monitor report``) — so both pictures agree.

Rows. A job whose sub-jobs are per-node jobs (``ScaleupCluster`` with a ``CreateNode`` per node; see
:data:`~monitor.core.nodes.NODE_JOB_TYPES`) gives one row per such sub-job; any other job gives one row of its
own. A row's states are the phases of its (sub-)job — ``Initializing``, ``Running``, then ``Success`` or
``Failed`` — and, for a node, what the node check saw after that: ``Active`` (usable: the row ends), or
``Abnormal``/``Error``/``not_active`` (failed). While a created node waits to become ``Active`` the row shows
``Success`` (created) — when the node check is on (the digest's ``node_check``, else whether any node event
is there); without it ``Success`` ends the row. A job the monitor stopped following ends in ``timed_out`` or
``not_found``.

A failed row's reason is the deepest one known: a nested step's (``InstallNode``'s ``Ecs.0319: quota``) before its
parent's generic one (``recycle resource``), matched through the node id or resource name the events carry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.core.events import Event, EventType
from monitor.core.nodes import NODE_JOB_TYPES
from monitor.engine.rollout import FAILED_STATES

__all__ = ["ENDED", "FAILED", "Row", "Span", "Timeline", "build_timeline", "rollouts_in"]

FAILED = FAILED_STATES
"""States in which a row failed (it ends there): the rollout aggregate's."""
ENDED = FAILED | {"Active"}
"""States in which a row ends; ``Success`` ends a row that is no node (a node goes on to ``Active``)."""
_OPEN = frozenset({"Initializing", "Running"})


@dataclass(frozen=True, slots=True)
class Span:
    """``state`` from ``start`` to ``end`` (Unix seconds); the last span of a row that has not ended is open up
    to the timeline's end."""

    state: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Row:
    """One node (or job) of the timeline."""

    key: str
    """``job_id`` or ``job_id/subjob_id``: unique in the timeline."""
    job_id: str
    subjob_id: str | None
    name: str
    """The resource (node) name, else the node id, else the (sub-)job id."""
    node_id: str | None
    job_type: str | None
    spans: tuple[Span, ...]
    state: str
    """The last state seen."""
    reason: str | None
    """Why it failed (the deepest reason known), ``None`` unless it failed."""
    ended: float | None
    """When it reached a state it ends in, else ``None``."""

    @property
    def failed(self) -> bool:
        return self.state in FAILED


@dataclass(frozen=True, slots=True)
class Timeline:
    rollout: str | None
    start: float
    end: float
    rows: tuple[Row, ...]
    summary: dict[str, Any] | None = None
    """The rollout's latest digest (``rollout.*`` summary), if the events hold one."""
    counts: dict[str, int] = field(default_factory=dict)
    """Rows by last state."""

    @property
    def failures(self) -> list[Row]:
        """Failed rows, the earliest failure first."""
        return sorted((r for r in self.rows if r.failed), key=lambda r: (r.ended or self.end, r.key))


@dataclass(slots=True)
class _Draft:
    job_id: str
    subjob_id: str | None
    job_type: str | None = None
    name: str = ""
    node_id: str | None = None
    marks: list[tuple[float, int, str]] = field(default_factory=list)  # (time, arrival order, state)
    reason: str | None = None
    deep_reason: str | None = None  # a nested step's reason


def rollouts_in(events: Iterable[Event]) -> list[str]:
    """The rollout names the events mention, in the order they first appear."""
    return list(dict.fromkeys(e.rollout for e in events if e.rollout))


def _ts(event: Event) -> float:
    return event.time.timestamp()


def build_timeline(
    events: Sequence[Event],
    *,
    rollout: str | None = None,
    now: float | None = None,
    summary: Mapping[str, Any] | None = None,
    max_rows: int = 10_000,
) -> Timeline:
    """The timeline of ``events`` (of ``rollout`` only, when given), rows in order of their first event.

    ``now`` closes the spans still open (default: the last event's time). ``summary`` is the rollout's aggregate
    when the caller has it (the daemon), else the latest digest among the events. At most ``max_rows`` rows are
    kept (failed ones first, then the earliest), so a page stays drawable.
    """
    chosen = [e for e in events if rollout is None or e.rollout == rollout]
    chosen.sort(key=_ts)  # stable: same-time events keep their order
    given = dict(summary) if summary is not None else None
    digest: dict[str, Any] | None = None
    node_parents = {
        e.job_id
        for e in chosen
        if e.type is EventType.SUBJOB_PHASE_CHANGED and e.subjob_type in NODE_JOB_TYPES and e.job_id
    }
    drafts: dict[str, _Draft] = {}
    by_node: dict[tuple[str, str], _Draft] = {}  # (job id, node id or resource name) -> its node row
    nested: list[Event] = []
    for order, e in enumerate(chosen):
        if e.job_id is None:
            if e.summary is not None and e.type in (EventType.ROLLOUT_PROGRESS, EventType.ROLLOUT_FINISHED):
                digest = dict(e.summary)
            continue
        draft = _draft_for(e, drafts, node_parents)
        if draft is None:
            if e.type is EventType.SUBJOB_PHASE_CHANGED and e.phase == "Failed" and e.reason:
                nested.append(e)
            continue
        if e.resource_name and (draft.subjob_id is not None or e.type is not EventType.SUBJOB_PHASE_CHANGED):
            draft.name = e.resource_name
        draft.node_id = e.node_id or draft.node_id
        draft.job_type = (e.subjob_type if draft.subjob_id is not None else e.job_type) or draft.job_type
        for key in (draft.node_id, draft.name):
            if key:
                by_node[(draft.job_id, key)] = draft
        state = _state_of(e)
        if state is None:
            if e.type is EventType.SUBJOB_PHASE_CHANGED and e.phase == "Failed" and e.reason:
                nested.append(e)  # a step of a one-node job
            continue
        draft.marks.append((_ts(e), order, state))
        if state in FAILED:
            draft.reason = e.reason or e.detail or draft.reason
    for e in nested:  # the deepest failure known for each row: later (deeper) steps fail last
        target = drafts.get(e.job_id or "") if e.job_id not in node_parents else None
        if target is None:
            job = e.job_id or ""
            target = by_node.get((job, e.node_id or "")) or by_node.get((job, e.resource_name or ""))
        if target is not None:
            target.deep_reason = e.reason
    aggregate = given if given is not None else digest
    if aggregate is not None and "node_check" in aggregate:
        node_check = bool(aggregate["node_check"])
    else:
        node_check = any(e.type in (EventType.NODE_ACTIVE, EventType.NODE_FAILED) for e in chosen)
    last = _ts(chosen[-1]) if chosen else 0.0
    end = max(last, now) if now is not None else last
    start = _ts(chosen[0]) if chosen else end
    rows = [_finish(key, d, end, node_check) for key, d in drafts.items() if d.marks]
    if len(rows) > max_rows:
        keep = sorted(rows, key=lambda r: (not r.failed, r.spans[0].start if r.spans else end))[:max_rows]
        kept = {r.key for r in keep}
        rows = [r for r in rows if r.key in kept]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    return Timeline(rollout, start, end, tuple(rows), aggregate, counts)


def _draft_for(e: Event, drafts: dict[str, _Draft], node_parents: set[str]) -> _Draft | None:
    """The row an event is about, created on first sight; ``None`` for a nested step's event."""
    job_id = e.job_id or ""
    if job_id in node_parents:
        if e.type is EventType.SUBJOB_PHASE_CHANGED:
            if e.subjob_type not in NODE_JOB_TYPES or not e.subjob_id:
                return None
            key = f"{job_id}/{e.subjob_id}"
            if key not in drafts:
                drafts[key] = _Draft(job_id, e.subjob_id)
            return drafts[key]
        if e.type in (EventType.NODE_ACTIVE, EventType.NODE_FAILED):
            for d in drafts.values():
                if (
                    d.job_id == job_id
                    and d.subjob_id is not None
                    and ((e.subjob_id and d.subjob_id == e.subjob_id) or (e.node_id and d.node_id == e.node_id))
                ):
                    return d
            return None
        # The parent's own end: every node row still creating its node ends with it.
        if e.type in (EventType.JOB_TIMED_OUT, EventType.JOB_NOT_FOUND) or (
            e.type is EventType.JOB_PHASE_CHANGED and e.phase == "Failed"
        ):
            state = e.type.value.removeprefix("job.") if e.type is not EventType.JOB_PHASE_CHANGED else "Failed"
            for d in drafts.values():  # a node created already (Success) goes on to its node check
                if d.job_id == job_id and d.subjob_id is not None and d.marks and d.marks[-1][2] in _OPEN:
                    d.marks.append((_ts(e), len(d.marks), state))
                    d.reason = d.reason or e.reason or e.detail
        return None
    if job_id not in drafts:
        drafts[job_id] = _Draft(job_id, None)
    if e.type is EventType.SUBJOB_PHASE_CHANGED:
        return None  # a step of the job: only its failure's reason is kept
    return drafts[job_id]


def _state_of(e: Event) -> str | None:
    if e.type in (EventType.JOB_PHASE_CHANGED, EventType.SUBJOB_PHASE_CHANGED):
        return e.phase or None
    if e.type is EventType.NODE_ACTIVE:
        return "Active"
    if e.type is EventType.NODE_FAILED:
        return e.phase if e.phase in FAILED else "not_active"
    if e.type in (EventType.JOB_TIMED_OUT, EventType.JOB_NOT_FOUND):
        return e.type.value.removeprefix("job.")
    return None


def _finish(key: str, d: _Draft, end: float, node_check: bool) -> Row:
    marks = sorted(d.marks)
    spans: list[Span] = []
    ended: float | None = None
    state = marks[-1][2]
    # A created node waits (in Success) until the node check sees it Active; without the check, Success ends it.
    waits = node_check and (d.subjob_id is not None or d.job_type in NODE_JOB_TYPES)
    for i, (at, _, st) in enumerate(marks):
        if st in ENDED or (st == "Success" and not waits):
            ended, state = at, st
            spans.append(Span(st, at, at))
            break
        until = marks[i + 1][0] if i + 1 < len(marks) else end
        if spans and spans[-1].state == st:
            spans[-1] = Span(st, spans[-1].start, until)
        else:
            spans.append(Span(st, at, until))
        state = st
    reason = (d.deep_reason or d.reason) if state in FAILED else None
    name = d.name or d.node_id or d.subjob_id or d.job_id
    return Row(key, d.job_id, d.subjob_id, name, d.node_id, d.job_type, tuple(spans), state, reason, ended)
