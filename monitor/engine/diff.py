"""Change detection: compare a job's previous snapshot with the new one and say what happened, as events.

What counts as a change:

* the job's phase (the first observation, with no previous snapshot, counts: ``previous_phase`` is ``None``);
* a new reason while the job stays ``Failed`` (the reason is what people read);
* a sub-job appearing, or changing phase — at any depth (sub-jobs may have sub-jobs).

A sub-job's event carries its own resource name (else its nearest ancestor's, else the job's) and, below a
node's job (``CreateNode`` ...), that node's id as soon as CCE fills it in (:func:`monitor.core.nodes.node_id_of`).

Sub-jobs are matched by id; a sub-job without an id is matched by its type and position. Sub-job events come
before the job's own event, so a receiver sees the last sub-job finish before the job does.

Each event id is derived from (project, job, sub-job, type, previous phase, phase): seeing the same transition
again — after a restart, say — produces the same id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from monitor.core.events import Event, EventType, event_id
from monitor.core.model import Job, Phase
from monitor.core.nodes import NODE_JOB_TYPES, node_id_of

__all__ = ["JobContext", "detect", "progressed"]


@dataclass(frozen=True, slots=True)
class JobContext:
    """What every event about one job carries besides the change itself."""

    project_id: str
    job_id: str
    labels: Mapping[str, str]


def _sub_key(sub: Job, parent_key: str, index: int) -> str:
    return sub.id or f"{parent_key}/{sub.type}#{index}"


def _index(job: Job, key: str = "") -> dict[str, Job]:
    """Every sub-job below ``job`` (whose own matching key is ``key``) by its matching key."""
    out: dict[str, Job] = {}
    stack: list[tuple[str, Job]] = [(key, job)]
    while stack:
        key, node = stack.pop()
        for i, sub in enumerate(node.sub_jobs):
            sub_key = _sub_key(sub, key, i)
            out[sub_key] = sub
            stack.append((sub_key, sub))
    return out


def progressed(previous: Job | None, current: Job) -> bool:
    """Whether the job moved at all: phase or ``updateTimestamp`` differ (used for stall detection)."""
    return previous is None or previous.phase != current.phase or previous.updated.raw != current.updated.raw


def _reason(job: Job) -> str | None:
    return job.reason or None


def _detail(job: Job) -> str | None:
    """``status.message`` and the billing order a job waits on, shown beside its reason."""
    parts = [job.message] if job.message else []
    if job.order_id:
        parts.append(f"order {job.order_id}")
    return "; ".join(parts) or None


def _node_context(job: Job, inherited: tuple[str, str]) -> tuple[str, str]:
    """(resource name, node id) that events about ``job`` carry: its own, else its nearest ancestor's."""
    name, node = inherited
    if job.type in NODE_JOB_TYPES:
        node = node_id_of(job) or node
    elif job.resource_id and job.type.endswith(("NodeVM", "InstallNode")):
        node = job.resource_id
    return job.resource_name or name, node


def _walk(top: Job, top_key: str, inherited: tuple[str, str]) -> list[tuple[str, Job, tuple[str, str]]]:
    """``top`` and every sub-job below it, each with its matching key and its (resource name, node id)."""
    out: list[tuple[str, Job, tuple[str, str]]] = []
    stack = [(top_key, top, _node_context(top, inherited))]
    while stack:
        key, node, context = stack.pop()
        out.append((key, node, context))
        for i, sub in enumerate(reversed(node.sub_jobs)):
            index = len(node.sub_jobs) - 1 - i
            sub_key = _sub_key(sub, key, index)
            stack.append((sub_key, sub, _node_context(sub, context)))
    return out


def detect(previous: Job | None, current: Job, ctx: JobContext, now: datetime) -> list[Event]:
    """The events that turn ``previous`` into ``current`` (empty when nothing that matters changed)."""
    events: list[Event] = []
    old_subs: dict[str, Job] | None = None  # built on first need
    old_tops = previous.sub_jobs if previous is not None else ()
    root = _node_context(current, ("", ""))
    for i, top in enumerate(current.sub_jobs if old_tops is not current.sub_jobs else ()):
        if i < len(old_tops) and old_tops[i] is top:
            continue  # the same snapshot (model.parse_job_reusing): nothing in this subtree changed
        if old_subs is None:
            old_subs = _index(previous) if previous is not None else {}
        for key, sub, (name, node) in _walk(top, _sub_key(top, "", i), ("", root[1])):
            before = old_subs.get(key)
            if before is not None and before.phase == sub.phase:
                continue
            prev_phase = before.phase.value if before is not None else None
            events.append(
                _event(
                    EventType.SUBJOB_PHASE_CHANGED,
                    ctx,
                    current,
                    now,
                    phase=sub.phase.value,
                    previous_phase=prev_phase,
                    reason=_reason(sub),
                    subjob=sub,
                    subjob_key=key,
                    resource_name=name or current.resource_name,
                    node_id=node,
                    detail=_detail(sub),
                )
            )
    job_changed = previous is None or previous.phase != current.phase
    reason_changed = previous is not None and current.phase is Phase.FAILED and previous.reason != current.reason
    if job_changed or reason_changed:
        events.append(
            _event(
                EventType.JOB_PHASE_CHANGED,
                ctx,
                current,
                now,
                phase=current.phase.value,
                previous_phase=previous.phase.value if previous is not None else None,
                reason=_reason(current),
                resource_name=current.resource_name,
                node_id=root[1],
                detail=_detail(current),
            )
        )
    return events


def _event(
    kind: EventType,
    ctx: JobContext,
    job: Job,
    now: datetime,
    *,
    phase: str,
    previous_phase: str | None,
    reason: str | None,
    subjob: Job | None = None,
    subjob_key: str | None = None,
    resource_name: str,
    node_id: str,
    detail: str | None = None,
) -> Event:
    # The reason is part of the id only for Failed: a changed failure reason is a new thing to report.
    id_reason = reason if phase == Phase.FAILED.value else None
    return Event(
        id=event_id(ctx.project_id, ctx.job_id, subjob_key, kind.value, previous_phase, phase, id_reason),
        type=kind,
        time=now,
        project_id=ctx.project_id,
        job_id=ctx.job_id,
        job_type=job.type or None,
        phase=phase,
        previous_phase=previous_phase,
        reason=reason,
        subjob_id=(subjob.id or subjob_key) if subjob is not None else None,
        subjob_type=(subjob.type or None) if subjob is not None else None,
        resource_name=resource_name or None,
        cluster_id=job.cluster_id or None,
        node_id=node_id or None,
        labels=ctx.labels,
        detail=detail,
        rollout=ctx.labels.get("rollout"),
    )
