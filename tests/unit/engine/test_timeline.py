"""Timelines from events (``monitor.engine.timeline``): rows per node or job, spans, ends and reasons."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.events import Event, EventType
from monitor.engine.timeline import build_timeline, rollouts_in
from monitor.testing import EVENT_TIME, make_event

T0 = EVENT_TIME


def at(seconds: float) -> Any:
    return T0 + timedelta(seconds=seconds)


def sub(job: str, subjob: str, phase: str, t: float, **extra: Any) -> Event:
    fields: dict[str, Any] = {"subjob_type": "CreateNode", "reason": None, "previous_phase": None, **extra}
    return make_event(
        type=EventType.SUBJOB_PHASE_CHANGED, job_id=job, subjob_id=subjob, phase=phase, time=at(t), **fields
    )


def job(job_id: str, phase: str, t: float, **extra: Any) -> Event:
    fields: dict[str, Any] = {"reason": None, "previous_phase": None, **extra}
    return make_event(job_id=job_id, phase=phase, time=at(t), **fields)


def test_a_scaleup_job_gives_a_row_per_node_with_the_deepest_reason() -> None:
    events = [
        job("scale", "Running", 0, job_type="ScaleupCluster"),
        sub("scale", "n1", "Running", 1, resource_name="node-1"),
        sub("scale", "n2", "Running", 1, resource_name="node-2"),
        sub("scale", "n3", "Running", 1, resource_name="node-3"),
        sub("scale", "n1", "Success", 10, node_id="id-1"),
        # node-2's InstallNode step fails with the real reason; its CreateNode says only something generic.
        sub(
            "scale",
            "s2",
            "Failed",
            11,
            subjob_type="InstallNode",
            resource_name="node-2",
            reason="Ecs.0319: The ECS quota is insufficient.",
        ),
        sub("scale", "n2", "Failed", 12, reason="recycle resource"),
        job("scale", "Failed", 13, reason="recycle resource"),  # node-3 was still creating: it ends with the job
        make_event(
            type=EventType.NODE_ACTIVE, job_id="scale", node_id="id-1", phase="Active", reason=None, time=at(20)
        ),
    ]
    timeline = build_timeline(events)
    rows = {r.name: r for r in timeline.rows}
    assert set(rows) == {"node-1", "node-2", "node-3"}, "the ScaleupCluster itself is no row"
    assert [(s.state, s.start, s.end) for s in rows["node-1"].spans] == [
        ("Running", at(1).timestamp(), at(10).timestamp()),
        ("Success", at(10).timestamp(), at(20).timestamp()),  # created, waiting to be Active
        ("Active", at(20).timestamp(), at(20).timestamp()),
    ]
    assert rows["node-1"].node_id == "id-1" and rows["node-1"].state == "Active" and not rows["node-1"].failed
    assert rows["node-2"].reason == "Ecs.0319: The ECS quota is insufficient.", "the step's, not the parent's"
    assert (rows["node-3"].state, rows["node-3"].reason, rows["node-3"].ended) == (
        "Failed",
        "recycle resource",
        at(13).timestamp(),
    )
    assert timeline.counts == {"Active": 1, "Failed": 2}
    assert [r.name for r in timeline.failures] == ["node-2", "node-3"], "the earliest failure first"


def test_without_the_node_check_a_created_node_ends_at_success() -> None:
    events = [sub("scale", "n1", "Running", 0), sub("scale", "n1", "Success", 5)]
    [row] = build_timeline(events, summary={"node_check": False}).rows
    assert row.state == "Success" and row.ended == at(5).timestamp()
    [row] = build_timeline(events, now=at(9).timestamp(), summary={"node_check": True}).rows
    assert row.state == "Success" and row.ended is None and row.spans[-1].end == at(9).timestamp()


def test_plain_jobs_and_a_job_the_monitor_gave_up_on() -> None:
    events = [
        job("a", "Running", 0, job_type="UpgradeCluster"),
        job("a", "Success", 30, job_type="UpgradeCluster"),
        job("b", "Running", 0),
        make_event(type=EventType.JOB_TIMED_OUT, job_id="b", time=at(40), reason=None, detail="no end after 40s"),
        make_event(type=EventType.ROLLOUT_PROGRESS, job_id=None, rollout="r", summary={"total": 2}, time=at(41)),
    ]
    timeline = build_timeline(events)
    rows = {r.key: r for r in timeline.rows}
    assert rows["a"].state == "Success" and rows["a"].ended == at(30).timestamp()
    assert rows["b"].state == "timed_out" and rows["b"].reason == "no end after 40s"
    assert timeline.summary == {"total": 2}, "the latest digest"


def test_rows_of_one_rollout_and_the_rollouts_named() -> None:
    events = [job("a", "Running", 0, rollout="r1"), job("b", "Running", 1, rollout="r2"), job("c", "Running", 2)]
    assert rollouts_in(events) == ["r1", "r2"]
    assert [r.key for r in build_timeline(events, rollout="r2").rows] == ["b"]
    assert build_timeline([]).rows == ()


PHASES = ["Initializing", "Running", "Success", "Failed"]


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    """Phase changes of a few jobs at distinct times, some through node sub-jobs."""
    events: list[Event] = []
    times = iter(draw(st.lists(st.integers(0, 10_000), min_size=60, max_size=60, unique=True)))
    for j in range(draw(st.integers(1, 4))):
        nodes = draw(st.integers(0, 3))
        for n in range(max(1, nodes)):
            for phase in draw(st.lists(st.sampled_from(PHASES), min_size=1, max_size=4)):
                t = next(times) / 10
                events.append(sub(f"j{j}", f"s{n}", phase, t) if nodes else job(f"j{j}", phase, t))
    return events


@settings(max_examples=150, deadline=None)
@given(histories(), st.randoms())
def test_spans_are_ordered_contiguous_and_within_the_timeline(events: list[Event], rnd: random.Random) -> None:
    timeline = build_timeline(events)
    for row in timeline.rows:
        assert row.spans, row
        for a, b in zip(row.spans, row.spans[1:], strict=False):
            assert a.end == b.start and a.state != b.state, row
        for span in row.spans:
            assert timeline.start <= span.start <= span.end <= timeline.end
        if row.ended is not None:
            assert row.spans[-1].start == row.spans[-1].end == row.ended
    assert sum(timeline.counts.values()) == len(timeline.rows)
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert build_timeline(shuffled).rows == timeline.rows, "the events' order of arrival does not matter"
