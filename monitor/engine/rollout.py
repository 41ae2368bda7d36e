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
from monitor.core.text import format_duration

__all__ = ["FINAL_STATES", "JOB_EVENT_TYPES", "Rollout", "RolloutTracker", "describe"]

logger = logging.getLogger(__name__)

FINAL_STATES = frozenset({"Success", "Failed", "timed_out", "not_found"})
_MAX_FAILED_LISTED = 50

Publish = Callable[[Event], Awaitable[None]]


@dataclass(slots=True)
class _Member:
    phase: str = "waiting"
    reason: str | None = None
    resource_name: str | None = None
    subjobs: dict[str, str] = field(default_factory=dict)
    ended: float | None = None


@dataclass(slots=True)
class Rollout:
    """One rollout's live aggregate. Times are Unix seconds."""

    name: str
    started: float
    members: dict[str, _Member] = field(default_factory=dict)
    ended: float | None = None
    dirty: bool = False
    last_progress: float = 0.0
    progress_seq: int = 0

    @property
    def finished(self) -> bool:
        return bool(self.members) and all(m.phase in FINAL_STATES for m in self.members.values())

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """The aggregate as plain JSON types (the ``summary`` of rollout events and of the API)."""
        now = time.time() if now is None else now
        counts: dict[str, int] = {}
        sub_done = sub_total = 0
        failed: list[dict[str, Any]] = []
        durations: list[float] = []
        for job_id, m in self.members.items():
            counts[m.phase] = counts.get(m.phase, 0) + 1
            sub_total += len(m.subjobs)
            sub_done += sum(1 for p in m.subjobs.values() if p == "Success")
            if m.phase in FINAL_STATES - {"Success"}:
                failed.append(
                    {"job_id": job_id, "resource_name": m.resource_name, "reason": m.reason, "outcome": m.phase}
                )
            if m.ended is not None and m.phase == "Success":  # failures end early and would skew the ETA
                durations.append(m.ended - self.started)
        finished = sum(counts.get(p, 0) for p in FINAL_STATES)
        eta: float | None = None
        if durations and finished < len(self.members):
            mean = sum(durations) / len(durations)
            eta = max(0.0, mean - (now - self.started))
        end = self.ended
        return {
            "rollout": self.name,
            "total": len(self.members),
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
        }


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def describe(summary: Mapping[str, Any]) -> str:
    """One readable line: ``pool-a: 255/300 finished (250 Success, 3 Failed, …), sub-jobs 500/600, ETA 7m``."""
    counts = summary.get("counts") or {}
    order = ["Success", "Failed", "timed_out", "not_found", "Running", "Initializing", "waiting"]
    parts = [f"{counts[k]} {k}" for k in order if counts.get(k)]
    parts += [f"{n} {k}" for k, n in sorted(counts.items()) if k not in order and n]
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
    return text


JOB_EVENT_TYPES = frozenset(
    {
        EventType.JOB_PHASE_CHANGED,
        EventType.SUBJOB_PHASE_CHANGED,
        EventType.JOB_TIMED_OUT,
        EventType.JOB_NOT_FOUND,
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
    ) -> None:
        self._publish = publish
        self.project_id = project_id
        self.interval = interval
        self._clock = clock
        self._rollouts: dict[str, Rollout] = {}
        self._job_rollout: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._finished_pending: list[str] = []

    def add(self, name: str, job_ids: Iterable[str], *, started: float | None = None) -> None:
        """Put jobs in rollout ``name`` (created on first use); ``started`` restores a start time."""
        rollout = self._rollouts.get(name)
        if rollout is None:
            rollout = self._rollouts[name] = Rollout(name, started if started is not None else self._clock())
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
        if rollout.finished:
            rollout.ended = max((m.ended or rollout.started) for m in rollout.members.values())
            rollout.dirty = False
            # Announce it (again): the process may have died before its digest was recorded. The id is the
            # same as the first time, so the daemon's digest log drops a repeat (see Daemon.publish_digest).
            if name not in self._finished_pending:
                self._finished_pending.append(name)
        elif name in self._finished_pending:
            self._finished_pending.remove(name)

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
        """Bus callback (subscribe it for job events)."""
        if event.type not in JOB_EVENT_TYPES or event.job_id is None:
            return
        name = self._job_rollout.get(event.job_id)
        if name is None:
            return
        rollout = self._rollouts[name]
        member = rollout.members[event.job_id]
        if event.resource_name:
            member.resource_name = event.resource_name
        if event.type is EventType.SUBJOB_PHASE_CHANGED:
            if event.subjob_id and event.phase:
                member.subjobs[event.subjob_id] = event.phase
        elif event.type is EventType.JOB_PHASE_CHANGED:
            member.phase = event.phase or member.phase
            member.reason = event.reason
        else:
            member.phase = event.type.value.removeprefix("job.")
            member.reason = event.detail
        if member.phase in FINAL_STATES and member.ended is None:
            member.ended = self._clock()
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
