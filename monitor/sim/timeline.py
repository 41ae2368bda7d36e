"""Planned timelines: each job's whole history, drawn up front, and the job JSON served from it.

:func:`plan_job` draws when the job and each sub-job goes Initializing → Running → Success | Failed and
records it as ground truth (:class:`Transition`). Each transition is snapped *up* to a randomly chosen
precision (0-9 fraction digits) and becomes visible exactly at the snapped instant, so the served
timestamp, the truth and the moment a poller can first see the change agree to the nanosecond.
:func:`render` only looks up which steps are at or before "now", so serving is cheap and any number of
pollers see one consistent history. Timestamps are printed as Go does (:func:`format_go_timestamp`).
"""

from __future__ import annotations

import bisect
import dataclasses
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from monitor.sim.shapes import GENERIC_FAILURE, PREPAID_MESSAGE, Shape, job_spec

__all__ = [
    "FAILED",
    "INITIALIZING",
    "NS",
    "RUNNING",
    "SUCCESS",
    "Job",
    "Node",
    "Step",
    "Transition",
    "format_go_timestamp",
    "plan_job",
    "render",
    "snap_up",
    "wall_time",
]

INITIALIZING, RUNNING, SUCCESS, FAILED = "Initializing", "Running", "Success", "Failed"
NS = 1_000_000_000
# Weights of 0..9 fraction digits before trailing zeros are trimmed: mostly nanoseconds, every length seen.
_DIGIT_WEIGHTS = (2, 3, 3, 5, 4, 5, 10, 8, 10, 50)


@dataclass(frozen=True, slots=True)
class Transition:
    """One phase change of a job or sub-job, at the true instant it became visible to pollers.

    ``job_id`` is the top-level job; ``uid`` the job or sub-job that changed (equal for the job itself).
    Every job and sub-job starts with an ``Initializing`` transition at its creation. ``at_ns`` is exact
    and equals the served timestamp; ``at`` is the same instant to the microsecond.
    """

    job_id: str
    uid: str
    job_type: str
    phase: str
    reason: str
    at: datetime
    at_ns: int

    @property
    def is_sub_job(self) -> bool:
        """Whether this is a sub-job's transition."""
        return self.uid != self.job_id


def format_go_timestamp(ns: int) -> str:
    """Nanoseconds since the epoch as Go's ``time.Time.String()`` in UTC, trailing zeros trimmed."""
    seconds, frac = divmod(ns, NS)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits} +0000 UTC" if digits else f"{base} +0000 UTC"


def wall_time(ns: int) -> datetime:
    """Nanoseconds since the epoch as an aware UTC datetime, to the microsecond (truncated)."""
    return datetime.fromtimestamp(ns // NS, UTC) + timedelta(microseconds=ns % NS // 1000)


def snap_up(rng: random.Random, ns: int) -> int:
    """``ns`` rounded *up* to a randomly drawn precision (0-9 fraction digits), as every planned transition is."""
    unit = int(10 ** (9 - rng.choices(range(10), weights=_DIGIT_WEIGHTS)[0]))
    return -(-ns // unit) * unit


@dataclass(frozen=True, slots=True)
class Step:
    at_ns: int
    phase: str
    reason: str


@dataclass(frozen=True, slots=True)
class Node:
    """A job or sub-job: its static spec and its planned steps (first step: Initializing at creation)."""

    uid: str
    spec: dict[str, Any]
    show_reason: bool
    steps: tuple[Step, ...]
    times: tuple[int, ...]
    waiting: str = ""  # status.message while Initializing (a prepaid job waiting on its order)

    def step_at(self, now_ns: int) -> Step:
        return self.steps[max(bisect.bisect_right(self.times, now_ns), 1) - 1]


@dataclass(frozen=True, slots=True)
class Job:
    root: Node
    subs: tuple[Node, ...]
    visible_ns: int
    truth: tuple[Transition, ...]
    own_timestamp: bool = False  # the root's updateTimestamp moves with its own phase only, not with its sub-jobs


def plan_job(
    rng: random.Random,
    uids: list[str],
    shapes: tuple[Shape, ...],
    context: dict[str, str],
    *,
    created: int,
    duration: float,
    start_delay: float,
    fail: bool | str,
    not_found_for: float,
    spread: float = 0.0,
) -> Job:
    """The job ``uids[0]`` of ``shapes[0]`` with sub-jobs ``uids[1:]`` of ``shapes[1:]``, created at ``created``
    (ns) and planned to the end; it answers 404 until ``not_found_for`` seconds after creation. ``spread`` > 0:
    each step lasts its nominal share of ``duration`` times a lognormal factor of that log spread, drawn on its
    own (the job's duration then varies with them); 0: the shares of exactly ``duration``, jittered +-30 %.
    ``fail`` as text: fail with that reason (CCE's reasons are outside text; tests give hostile ones)."""
    events = _plan(rng, created, duration, start_delay, fail, shapes[1:], spread, shapes[0].rollup)
    steps: list[list[Step]] = [[] for _ in uids]
    truth: list[Transition] = []
    digits = rng.choices(range(10), weights=_DIGIT_WEIGHTS)[0]
    unit = 10 ** (9 - digits)
    previous = created - created % unit  # creation is snapped down: the job exists from this instant
    for index, planned, phase, reason in [(i, created, INITIALIZING, "") for i in range(len(uids))] + events:
        if phase != INITIALIZING:
            digits = rng.choices(range(10), weights=_DIGIT_WEIGHTS)[0]
            unit = 10 ** (9 - digits)
            floor = max(planned, previous, steps[index][-1].at_ns + 1)
            previous = -(-floor // unit) * unit
        steps[index].append(Step(previous, phase, reason))
        truth.append(
            Transition(uids[0], uids[index], shapes[index].job_type, phase, reason, wall_time(previous), previous)
        )

    nodes = [
        Node(
            uid=uid,
            spec=job_spec(shape, context),
            show_reason=index == 0 or rng.random() < 0.5,
            steps=tuple(node_steps),
            times=tuple(s.at_ns for s in node_steps),
        )
        for index, (uid, shape, node_steps) in enumerate(zip(uids, shapes, steps, strict=True))
    ]
    if shapes[0].prepaid:
        nodes[0] = _prepaid(nodes[0], created)
    visible = created + round(not_found_for * NS)
    return Job(nodes[0], tuple(nodes[1:]), visible, tuple(truth), own_timestamp=shapes[0].own_timestamp)


def _prepaid(root: Node, created: int) -> Node:
    """``root`` as a yearly/monthly job: an ``extendParam.orderID`` (``CS`` + the order's minute + five
    characters, as CBC's order ids look: ``CS2009141523OQSEQ``) and a message while it waits on the order."""
    order = f"CS{wall_time(created):%y%m%d%H%M}{root.uid.replace('-', '')[-5:].upper()}"
    spec = {**root.spec, "extendParam": {**root.spec.get("extendParam", {}), "orderID": order}}
    return dataclasses.replace(root, spec=spec, waiting=PREPAID_MESSAGE)


def _plan(
    rng: random.Random,
    created: int,
    duration: float,
    start_delay: float,
    fail: bool | str,
    subs: tuple[Shape, ...],
    spread: float = 0.0,
    rollup: str | None = None,
) -> list[tuple[int, int, str, str]]:
    """Planned (node index, ns, phase, reason) events after creation, in time order (0 is the root)."""
    total = round(duration * NS)

    def factor() -> float:  # a step's own variation
        return rng.lognormvariate(0.0, spread) if spread > 0 else 1.0

    first = 0.05 * factor() if spread > 0 else rng.uniform(0.03, 0.08)
    start = created + round(start_delay * NS) + round(total * first)
    tail = total // 100
    events = [(0, start, RUNNING, "")]
    if not subs:
        end = created + round(start_delay * NS) + total
        if spread > 0:
            end = start + round(total * 0.95 * factor())
        given = fail if isinstance(fail, str) else GENERIC_FAILURE
        return [*events, (0, end, FAILED, given) if fail else (0, end, SUCCESS, "")]
    span = max(0, created + round(start_delay * NS) + total - tail - start)
    if spread > 0:
        span = round(total * 0.94)  # the steps' nominal sum; each step then varies on its own
        weights = [shape.weight * factor() for shape in subs]
        norm = sum(shape.weight for shape in subs)
    else:
        weights = [shape.weight * rng.uniform(0.7, 1.3) for shape in subs]
        norm = sum(weights)
    failing = rng.randrange(len(subs)) if fail else -1
    cursor = start
    for index, (shape, weight) in enumerate(zip(subs, weights, strict=True), start=1):
        part = round(span * weight / norm)
        events.append((index, cursor, RUNNING, ""))
        if index - 1 == failing:
            reason = fail if isinstance(fail, str) else rng.choice(shape.failures or (GENERIC_FAILURE,))
            end = cursor + round(part * rng.uniform(0.3, 1.0))
            events.append((index, end, FAILED, reason))
            events.append((0, end + total // 500, FAILED, rollup or reason))  # else CCE copies the sub-job's
            return events
        cursor += part
        events.append((index, cursor, SUCCESS, ""))
    events.append((0, cursor + tail, SUCCESS, ""))
    return events


def render(job: Job, now_ns: int, *, live_timestamps: bool = False) -> dict[str, Any]:
    """The ``Job`` document of ``job`` as served at ``now_ns``; with ``live_timestamps`` an unfinished job's
    ``updateTimestamp`` is ``now_ns``."""
    subs = [(node, node.step_at(now_ns)) for node in job.subs]
    root_step = job.root.step_at(now_ns)
    updated = root_step.at_ns if job.own_timestamp else max([root_step.at_ns, *(step.at_ns for _, step in subs)])
    if live_timestamps and root_step.phase in (INITIALIZING, RUNNING):
        updated = now_ns  # as a job reporting progress does: the answer changes at every poll
    document = _node_json(job.root, root_step, updated)
    document["spec"]["subJobs"] = [_node_json(node, step, step.at_ns) for node, step in subs]
    return document


def _node_json(node: Node, step: Step, updated_ns: int) -> dict[str, Any]:
    status = {"phase": step.phase}
    if node.show_reason or step.reason:
        status["reason"] = step.reason
    if node.waiting and step.phase == INITIALIZING:
        status["message"] = node.waiting
    return {
        "kind": "Job",
        "apiVersion": "v3",
        "metadata": {
            "uid": node.uid,
            "creationTimestamp": format_go_timestamp(node.steps[0].at_ns),
            "updateTimestamp": format_go_timestamp(updated_ns),
        },
        "spec": dict(node.spec),
        "status": status,
    }
