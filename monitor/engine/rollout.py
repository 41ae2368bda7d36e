"""Rollouts: named groups of jobs (a bulk node rollout), their aggregate, and digest events.

A :class:`RolloutTracker` is a bus subscriber. It learns membership from :meth:`RolloutTracker.add` (the API's
``rollout`` field, ``cce-monitor add --rollout``, or one rollout per ``watch`` run) and keeps, per rollout: counts
by phase, sub-job progress, failures with reasons, start, end and an ETA. It publishes:

* ``rollout.progress`` — at most one per rollout per ``interval`` (default 30 s), and only when something changed;
* ``rollout.finished`` — once, when every job of the rollout has an outcome: the summary.

ETA: the mean duration of the rollout's succeeded jobs (from the rollout's start to their final event) minus how
long the rollout has run; ``None`` until a job has succeeded. Jobs of a rollout run in parallel, so this is the
time until the typical job is done, not a sum.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from monitor.core.events import Event, EventType, event_id
from monitor.core.model import Job, Phase
from monitor.core.nodes import deepest_failure, node_id_of, node_jobs
from monitor.core.text import format_duration

__all__ = ["FAILED_STATES", "FINAL_STATES", "JOB_EVENT_TYPES", "Rollout", "RolloutTracker", "describe"]

logger = logging.getLogger(__name__)

FINAL_STATES = frozenset({"Success", "Failed", "timed_out", "not_found"})
WAITING_ACTIVE = "waiting_active"
# What a job or a node can end as: its job's final phase, or (nodes) its readiness.
FAILED_STATES = frozenset({"Failed", "timed_out", "not_found", "Abnormal", "Error", "not_active"})
"""States in which a job or node failed (counted as finished, and listed by name)."""
_DONE_STATES = FAILED_STATES | {"Success", "Active"}
_MAX_FAILED_LISTED = 50

Publish = Callable[[Event], Awaitable[None]]


@dataclass(slots=True)
class _NodeEntry:
    """One node of a rollout: its job's phase (a sub-job's, in a ``ScaleupCluster``), then its readiness."""

    name: str | None = None
    node_id: str | None = None
    phase: str = "waiting"
    reason: str | None = None
    ready: str | None = None  # "Active", or the phase it failed in ("Abnormal", "Error", "timed_out")
    ended: float | None = None
    confirm: bool = True  # False for a node being deleted: its job's Success is the end

    def state(self, node_check: bool) -> str:
        """What the node counts as: its readiness once known, ``waiting_active`` while its job succeeded and
        the node is not yet confirmed ``Active`` (with ``node_check``), else its job's phase."""
        if self.ready is not None:
            return self.ready
        if self.phase == "Success" and node_check and self.confirm:
            return WAITING_ACTIVE
        return self.phase


@dataclass(slots=True)
class _Member:
    phase: str = "waiting"
    reason: str | None = None
    resource_name: str | None = None
    subjobs: dict[str, str] = field(default_factory=dict)
    ended: float | None = None
    # A node pool's node job (``CreateNode``) is that node; a job of per-node sub-jobs (``ScaleupCluster``)
    # has one entry per node job, by sub-job id. A rollout of other jobs counts jobs, as it always did.
    node: _NodeEntry | None = None
    nodes: dict[str, _NodeEntry] | None = None
    owner: str = ""  # spec.ownerJob: a sub-job tracked by its own id, counted through its parent if it is here
    deepest: str | None = None  # a failed node job's deepest failed step's reason (its own is often generic)

    def entries(self) -> list[tuple[str | None, _NodeEntry]]:
        if self.nodes is not None:
            return list(self.nodes.items())
        return [(None, self.node)] if self.node is not None else []


@dataclass(slots=True)
class Rollout:
    """One rollout's live aggregate. Times are Unix seconds.

    A rollout counts jobs, or — once one of its jobs is a job of per-node sub-jobs — nodes (``unit``).
    """

    name: str
    started: float
    members: dict[str, _Member] = field(default_factory=dict)
    ended: float | None = None
    dirty: bool = False
    last_progress: float = 0.0
    progress_seq: int = 0
    node_check: bool = False
    pools: set[str] = field(default_factory=set)  # node pools followed for it that have not settled yet
    eta_source: Callable[[list[str]], tuple[float, float] | None] | None = None
    """Learned ETAs of unfinished members (seconds: median, 90th percentile), from the scheduler."""

    @property
    def unit(self) -> str:
        nodes = any(m.nodes is not None or m.node is not None for m in self.members.values())
        return "nodes" if nodes else "jobs"

    @property
    def finished(self) -> bool:
        if self.pools or not self.members or not all(m.phase in FINAL_STATES for m in self.members.values()):
            return False
        # With the node check, a node whose job succeeded is not done until it is seen Active (or failing).
        return not self.node_check or all(
            e.state(True) != WAITING_ACTIVE for m in self.members.values() for _, e in m.entries()
        )

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """The aggregate as plain JSON types (the ``summary`` of rollout events and of the API)."""
        now = time.time() if now is None else now
        if self.unit == "nodes":
            counts, failed, durations = self._count_nodes()
        else:
            counts, failed, durations = self._count_jobs()
        sub_done = sub_total = 0
        for m in self.members.values():
            sub_total += len(m.subjobs)
            sub_done += sum(1 for p in m.subjobs.values() if p == "Success")
        finished = sum(n for state, n in counts.items() if state in _DONE_STATES)
        total = sum(counts.values())
        eta: float | None = None
        eta_p90: float | None = None
        learned = None
        if finished < total and self.eta_source is not None:
            learned = self.eta_source([j for j, m in self.members.items() if m.phase not in FINAL_STATES])
        if learned is not None:
            eta, eta_p90 = learned
        elif durations and finished < total:  # nothing learned yet: the typical succeeded member's duration
            mean = sum(durations) / len(durations)
            eta = max(0.0, mean - (now - self.started))
        end = self.ended
        return {
            "rollout": self.name,
            "total": total,
            "counts": counts,
            "finished": finished,
            "subjobs_done": sub_done,
            "subjobs_total": sub_total,
            "failed_count": len(failed),
            "failed": failed[:_MAX_FAILED_LISTED],
            "started": _rfc3339(self.started),
            "ended": _rfc3339(end) if end is not None else None,
            "duration_s": round((end if end is not None else now) - self.started, 3),
            "eta_s": round(eta, 1) if eta is not None else None,
            "eta_p90_s": round(eta_p90, 1) if eta_p90 is not None else None,
            "unit": self.unit,
            "node_check": self.node_check,
        }

    def _counted(self) -> list[tuple[str, _Member]]:
        """The members, but a sub-job tracked by its own id whose parent is a member too: the same node (or
        step) is never counted twice."""
        return [(job_id, m) for job_id, m in self.members.items() if not (m.owner and m.owner in self.members)]

    def _count_jobs(self) -> tuple[dict[str, int], list[dict[str, Any]], list[float]]:
        counts: dict[str, int] = {}
        failed: list[dict[str, Any]] = []
        durations: list[float] = []
        for job_id, m in self._counted():
            counts[m.phase] = counts.get(m.phase, 0) + 1
            if m.phase in FAILED_STATES:
                failed.append(
                    {
                        "job_id": job_id,
                        "resource_name": m.resource_name,
                        "reason": m.deepest or m.reason,
                        "outcome": m.phase,
                    }
                )
            if m.ended is not None and m.phase == "Success":  # failures end early and would skew the ETA
                durations.append(m.ended - self.started)
        return counts, failed, durations

    def _count_nodes(self) -> tuple[dict[str, int], list[dict[str, Any]], list[float]]:
        counts: dict[str, int] = {}
        failed: list[dict[str, Any]] = []
        durations: list[float] = []
        for job_id, m in self._counted():
            entries = m.entries()
            if not entries and m.phase in FINAL_STATES - {"Success"}:
                # A job that ended before it named its nodes (not found, timed out, failed early).
                entries = [(None, _NodeEntry(m.resource_name, None, m.phase, m.deepest or m.reason))]
            for key, e in entries:
                state = e.state(self.node_check)
                if m.phase in FINAL_STATES and e.phase not in FINAL_STATES and e.ready is None:
                    state, e.reason = m.phase, e.reason or m.deepest or m.reason  # its job ended without it
                counts[state] = counts.get(state, 0) + 1
                if state in FAILED_STATES:
                    failed.append(
                        {
                            "job_id": job_id,
                            "subjob_id": key,
                            "node_id": e.node_id,
                            "resource_name": e.name or e.node_id or key or m.resource_name,
                            "reason": e.reason,
                            "outcome": state,
                        }
                    )
                if e.ended is not None and state in ("Success", "Active"):
                    durations.append(e.ended - self.started)
        return counts, failed, durations


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_JOB_ORDER = ["Success", "Failed", "timed_out", "not_found", "Running", "Initializing", "waiting"]
_NODE_ORDER = ["Failed", "Abnormal", "Error", "not_active", "timed_out", "not_found", "waiting_active", "Success"]
_NODE_ORDER += ["Running", "Initializing", "waiting"]


def describe(summary: Mapping[str, Any]) -> str:
    """One readable line: ``pool-a: 255/300 finished (250 Success, 3 Failed, …), sub-jobs 500/600, ETA 7m``;
    for a rollout of nodes ``pool-a: 37/100 nodes Active, 2 Failed, 61 Running, ETA 7m``."""
    counts = summary.get("counts") or {}
    nodes = summary.get("unit") == "nodes"
    order = _NODE_ORDER if nodes else _JOB_ORDER
    parts = [f"{counts[k]} {k}" for k in order if counts.get(k)]
    parts += [f"{n} {k}" for k, n in sorted(counts.items()) if k not in order and k != "Active" and n]
    if nodes:
        # Without the node check a node is done when its job succeeded: nobody confirmed it Active.
        head, word = ("Active", "Active") if summary.get("node_check") else ("Success", "created")
        parts = [p for p in parts if not p.endswith(f" {head}")]
        text = f"{summary.get('rollout')}: {counts.get(head, 0)}/{summary.get('total', 0)} nodes {word}"
        text += "".join(f", {part}" for part in parts)
    else:
        text = f"{summary.get('rollout')}: {summary.get('finished', 0)}/{summary.get('total', 0)} finished"
        if parts:
            text += " (" + ", ".join(parts) + ")"
    if summary.get("subjobs_total"):
        text += f", sub-jobs {summary.get('subjobs_done', 0)}/{summary['subjobs_total']}"
    eta = summary.get("eta_s")
    if summary.get("ended"):
        text += f", took {format_duration(float(summary.get('duration_s') or 0))}"
    elif eta is not None:
        text += f", ETA {format_duration(float(eta))}"
        if summary.get("eta_p90_s") is not None:
            text += f" (p90 {format_duration(float(summary['eta_p90_s']))})"
    return text


JOB_EVENT_TYPES = frozenset(
    {
        EventType.JOB_PHASE_CHANGED,
        EventType.SUBJOB_PHASE_CHANGED,
        EventType.JOB_TIMED_OUT,
        EventType.JOB_NOT_FOUND,
        EventType.NODE_ACTIVE,
        EventType.NODE_FAILED,
    }
)
"""The events a rollout aggregate is built from (subscribe the tracker with this filter)."""


class RolloutTracker:
    """Aggregates rollouts from job events and publishes ``rollout.*`` events. Run :meth:`run` as a task."""

    def __init__(
        self,
        publish: Publish,
        *,
        project_id: str,
        interval: float = 30.0,
        clock: Callable[[], float] = time.time,
        node_check: bool = False,
    ) -> None:
        """``node_check``: a node whose job succeeded counts as done only once ``node.active`` says so."""
        self._publish = publish
        self.project_id = project_id
        self.interval = interval
        self._clock = clock
        self._rollouts: dict[str, Rollout] = {}
        self._job_rollout: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._finished_pending: list[str] = []
        self.node_check = node_check
        self.eta_source: Callable[[list[str]], tuple[float, float] | None] | None = None
        """Learned ETAs (the pipeline sets the scheduler's): else a rollout's ETA is its members' typical duration."""

    def _eta(self, job_ids: list[str]) -> tuple[float, float] | None:
        return self.eta_source(job_ids) if self.eta_source is not None else None

    def add(self, name: str, job_ids: Iterable[str], *, started: float | None = None) -> None:
        """Put jobs in rollout ``name`` (created on first use); ``started`` restores a start time."""
        rollout = self._rollouts.get(name)
        if rollout is None:
            rollout = self._rollouts[name] = Rollout(
                name, started if started is not None else self._clock(), eta_source=self._eta
            )
            rollout.node_check = self.node_check
        for job_id in job_ids:
            if job_id not in rollout.members:
                rollout.members[job_id] = _Member()
                self._job_rollout[job_id] = name
        rollout.ended = None
        rollout.dirty = True

    def restore(
        self,
        name: str,
        job_id: str,
        *,
        phase: str | None,
        ended: float | None,
        reason: str | None = None,
        resource_name: str | None = None,
        subjobs: Mapping[str, str] | None = None,
    ) -> None:
        """Set a member's state from the database after a restart (no events are published for it)."""
        rollout = self._rollouts.get(name)
        if rollout is None or job_id not in rollout.members:
            return
        member = rollout.members[job_id]
        member.phase = phase or "waiting"
        member.ended = ended
        member.reason = reason
        member.resource_name = resource_name
        member.subjobs = dict(subjobs or {})
        self.recheck(name)

    def merge(
        self,
        name: str,
        job_id: str,
        *,
        added_at: float,
        phase: str | None,
        ended: float | None,
        snapshot: Job | None,
    ) -> None:
        """A member's state as another replica recorded it (replicas sharing jobs): joins the rollout if new,
        takes the recorded phase (an outcome such as ``timed_out`` included) and the nodes of its snapshot."""
        rollout = self._rollouts.get(name)
        if rollout is None or job_id not in rollout.members:
            self.add(name, [job_id], started=added_at if rollout is None else None)
            rollout = self._rollouts[name]
        member = rollout.members[job_id]
        if snapshot is not None:
            self.on_snapshot(job_id, snapshot)
            member.reason = snapshot.reason or None
            member.resource_name = snapshot.resource_name or member.resource_name
            member.subjobs = {s.id: s.phase.value for s in snapshot.walk()}
        member.phase = phase or "waiting"
        member.ended = ended
        if member.node is not None and member.nodes is None:
            self._follow(member.node, member.phase, member.deepest or member.reason, member.resource_name)
        self._changed(name, rollout)

    def recheck(self, name: str) -> None:
        """After restoring a rollout (its members, nodes, node events, pools): whether it has finished."""
        rollout = self._rollouts.get(name)
        if rollout is None:
            return
        if rollout.finished:
            rollout.ended = max((m.ended or rollout.started) for m in rollout.members.values())
            rollout.dirty = False
            # Announce it (again): the process may have died before its digest was recorded. The id is the
            # same as the first time, so the daemon's digest log drops a repeat (see Daemon.publish_digest).
            if name not in self._finished_pending:
                self._finished_pending.append(name)
        else:
            rollout.ended = None
            if name in self._finished_pending:
                self._finished_pending.remove(name)

    def add_pool(self, name: str, nodepool_id: str) -> None:
        """A node pool followed for rollout ``name``: the rollout is not finished before the pool settles."""
        rollout = self._rollouts.get(name)
        if rollout is None:
            rollout = self._rollouts[name] = Rollout(name, self._clock(), eta_source=self._eta)
            rollout.node_check = self.node_check
        rollout.pools.add(nodepool_id)
        rollout.ended = None

    def pool_state(self, name: str, nodepool_id: str, *, settled: bool) -> None:
        """A pool of rollout ``name`` as another replica follows it: open (the rollout waits for it) or settled."""
        rollout = self._rollouts.get(name)
        if not settled:
            if rollout is None or nodepool_id not in rollout.pools:
                self.add_pool(name, nodepool_id)
        elif rollout is not None and nodepool_id in rollout.pools:
            rollout.pools.discard(nodepool_id)
            self._changed(name, rollout)

    def get(self, name: str) -> Rollout | None:
        return self._rollouts.get(name)

    def rollouts(self) -> list[Rollout]:
        return list(self._rollouts.values())

    def forget(self, job_id: str) -> None:
        """A job was removed from monitoring: drop it from its rollout."""
        name = self._job_rollout.pop(job_id, None)
        if name is not None and name in self._rollouts:
            self._rollouts[name].members.pop(job_id, None)
            self._rollouts[name].dirty = True

    def on_event(self, event: Event) -> None:
        """Bus callback (subscribe it for job, node and node pool events)."""
        if event.type is EventType.NODEPOOL_SETTLED and event.rollout in self._rollouts:
            rollout = self._rollouts[event.rollout]
            rollout.pools.discard(event.nodepool_id or "")
            self._changed(event.rollout, rollout)
            return
        if event.type not in JOB_EVENT_TYPES or event.job_id is None:
            return
        name = self._job_rollout.get(event.job_id)
        if name is None:
            return
        rollout = self._rollouts[name]
        member = rollout.members[event.job_id]
        if event.type in (EventType.NODE_ACTIVE, EventType.NODE_FAILED):
            entry = self._entry(member, event)
            if entry is None:
                return
            entry.node_id = event.node_id or entry.node_id
            entry.ready = "Active" if event.type is EventType.NODE_ACTIVE else (event.phase or "not_active")
            entry.reason = event.reason or event.detail if entry.ready != "Active" else entry.reason
            entry.ended = self._clock()
        elif event.type is EventType.SUBJOB_PHASE_CHANGED:
            if event.subjob_id and event.phase:
                member.subjobs[event.subjob_id] = event.phase
        else:  # the job's own events: a sub-job's carry its own resource name, not the job's
            if event.resource_name:
                member.resource_name = event.resource_name
            if event.type is EventType.JOB_PHASE_CHANGED:
                member.phase = event.phase or member.phase
                member.reason = event.reason
            else:
                member.phase = event.type.value.removeprefix("job.")
                member.reason = event.detail
        if member.phase in FINAL_STATES and member.ended is None:
            member.ended = self._clock()
        if member.node is not None and member.nodes is None and event.type is EventType.JOB_PHASE_CHANGED:
            self._follow(member.node, member.phase, member.deepest or member.reason, member.resource_name)
        self._changed(name, rollout)

    @staticmethod
    def _entry(member: _Member, event: Event) -> _NodeEntry | None:
        if member.nodes is not None:
            found = member.nodes.get(event.subjob_id or "")
            if found is None and event.node_id:
                found = next((e for e in member.nodes.values() if e.node_id == event.node_id), None)
            return found
        return member.node

    def _follow(self, entry: _NodeEntry, phase: str, reason: str | None, name: str | None) -> None:
        entry.phase = phase
        entry.name = name or entry.name
        if phase == "Failed":
            entry.reason = reason
        if phase in FINAL_STATES and entry.ended is None:
            entry.ended = self._clock()

    def on_snapshot(self, job_id: str, job: Job) -> None:
        """A tracked job changed (called before its events): a job of per-node sub-jobs (``ScaleupCluster``)
        makes its rollout count those nodes, each with its name, node id and deepest failure reason."""
        name = self._job_rollout.get(job_id)
        if name is None:
            return
        member = self._rollouts[name].members[job_id]
        member.owner = job.owner_job
        member.deepest = deepest_failure(job) if job.phase is Phase.FAILED and job.sub_jobs else None
        per_node = node_jobs(job)
        if not per_node:
            return
        if member.nodes is None:
            member.nodes = {}
        for index, sub in enumerate(per_node):
            key = sub.id or f"{sub.type}#{index}"
            entry = member.nodes.get(key)
            if entry is None:  # only a created node is awaited Active: a deleted one is done with its job
                entry = member.nodes[key] = _NodeEntry(confirm=sub.type == "CreateNode")
            entry.node_id = node_id_of(sub) or entry.node_id
            reason = deepest_failure(sub) if sub.phase is Phase.FAILED else None
            self._follow(entry, sub.phase.value, reason, sub.resource_name)
        self._changed(name, self._rollouts[name])

    def add_node(
        self, name: str, job_id: str, *, node_id: str, node_name: str | None = None, deleting: bool = False
    ) -> None:
        """A node pool's node, followed through its own job ``job_id`` (already in rollout ``name``); a node
        being deleted is done when its job is."""
        rollout = self._rollouts.get(name)
        member = rollout.members.get(job_id) if rollout is not None else None
        if rollout is None or member is None:
            return
        rollout.node_check = rollout.node_check or self.node_check
        if member.node is None:
            member.node = _NodeEntry(node_name, node_id, confirm=not deleting)
            if member.phase != "waiting":  # restored after a restart: the job's phase is known already
                self._follow(member.node, member.phase, member.deepest or member.reason, member.resource_name)
                member.node.ended = member.ended
        member.node.node_id = member.node.node_id or node_id
        member.node.name = member.node.name or node_name
        self._changed(name, rollout)

    def _changed(self, name: str, rollout: Rollout) -> None:
        rollout.dirty = True
        if rollout.finished and rollout.ended is None:
            rollout.ended = self._clock()
            self._finished_pending.append(name)
        self._wake.set()

    def _event(self, rollout: Rollout, kind: EventType, key: str | None) -> Event:
        summary = rollout.summary(self._clock())
        if key is None:
            # A progress digest is keyed by the state it reports (the rollout's start, each member's phase
            # and sub-job phases), not by when it was sent: the same state reported twice (a daemon restarted,
            # a replica taking over) is the same event to a receiver that deduplicates, and a new state is a
            # new id. Its duration and ETA are of the moment; redeliveries repeat the stored body and id.
            key = f"progress@{summary['started']}:" + ";".join(
                f"{job_id}={m.phase}:" + ",".join(sorted(m.subjobs.values()))
                for job_id, m in sorted(rollout.members.items())
            )
        return Event(
            id=event_id(self.project_id, None, None, kind.value, rollout.name, key),
            type=kind,
            project_id=self.project_id,
            job_id=None,
            rollout=rollout.name,
            labels={"rollout": rollout.name},
            summary=summary,
            detail=describe(summary),
        )

    async def flush(self, *, force: bool = False) -> None:
        """Publish due events now (``force``: progress for every changed rollout regardless of interval)."""
        now = self._clock()
        finished, self._finished_pending = self._finished_pending, []
        for name in finished:
            rollout = self._rollouts[name]
            rollout.dirty = False
            # Keyed by size: a rollout that gets more jobs after finishing finishes again, as a new event.
            await self._publish(self._event(rollout, EventType.ROLLOUT_FINISHED, f"finished:{len(rollout.members)}"))
        for rollout in list(self._rollouts.values()):
            if not rollout.dirty or rollout.ended is not None:
                continue
            if force or now - rollout.last_progress >= self.interval:
                rollout.dirty = False
                rollout.last_progress = now
                rollout.progress_seq += 1
                await self._publish(self._event(rollout, EventType.ROLLOUT_PROGRESS, None))

    async def run(self) -> None:
        """Publish progress at most every ``interval`` per rollout, and ``finished`` as soon as it happens."""
        while True:
            self._wake.clear()
            await self.flush()
            try:
                async with asyncio.timeout(min(self.interval, 5.0)):
                    await self._wake.wait()
            except TimeoutError:
                pass
