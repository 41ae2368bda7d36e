"""Rollout aggregates and digests: counts, sub-job progress, failures, ETA, at most one progress per interval."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from monitor.core.events import Event, EventType, event_id
from monitor.core.model import Job, parse_job
from monitor.engine.pipeline import SinkBinding, watch
from monitor.engine.rollout import RolloutTracker, describe
from monitor.engine.scheduler import SchedulerSettings
from monitor.sim import Simulator
from monitor.sinks import create_sink
from monitor.testing import create_node_body
from tests.conftest import Recorder, client_for


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def job_event(job: str, phase: str, *, kind: EventType = EventType.JOB_PHASE_CHANGED, **extra: str) -> Event:
    return Event(
        id=event_id(job, phase, kind.value, extra.get("subjob_id")),
        type=kind,
        project_id="p",
        job_id=job,
        phase=phase,
        **extra,  # type: ignore[arg-type]
    )


async def test_aggregate_counts_subjobs_failures_and_eta() -> None:
    clock = Clock()
    published = Recorder()
    tracker = RolloutTracker(published, project_id="p", interval=30.0, clock=clock)
    tracker.add("pool-a", ["j1", "j2", "j3", "j4"])
    tracker.on_event(job_event("j1", "Running", resource_name="node-1"))
    tracker.on_event(job_event("j1", "Success", kind=EventType.SUBJOB_PHASE_CHANGED, subjob_id="s1"))
    tracker.on_event(job_event("j1", "Running", kind=EventType.SUBJOB_PHASE_CHANGED, subjob_id="s2"))
    clock.now += 100
    tracker.on_event(job_event("j2", "Success"))
    tracker.on_event(job_event("j3", "Failed", reason="Ecs.0319 quota", resource_name="node-3"))
    clock.now += 20
    tracker.on_event(
        Event(id="t", type=EventType.JOB_TIMED_OUT, project_id="p", job_id="j4", detail="not finished after 60s")
    )
    rollout = tracker.get("pool-a")
    assert rollout is not None
    summary = rollout.summary(clock.now)
    assert summary["total"] == 4 and summary["finished"] == 3
    assert summary["counts"] == {"Running": 1, "Success": 1, "Failed": 1, "timed_out": 1}
    assert (summary["subjobs_done"], summary["subjobs_total"]) == (1, 2)
    assert summary["failed_count"] == 2
    assert {f["job_id"]: (f["outcome"], f["reason"]) for f in summary["failed"]} == {
        "j3": ("Failed", "Ecs.0319 quota"),
        "j4": ("timed_out", "not finished after 60s"),
    }
    # One job succeeded after 100 s; the rollout has run 120 s: the typical job should be done already.
    assert summary["eta_s"] == 0.0
    assert summary["ended"] is None
    assert describe(summary) == (
        "pool-a: 3/4 finished (1 Success, 1 Failed, 1 timed_out, 1 Running), sub-jobs 1/2, ETA 0s"
    )


async def test_progress_at_most_once_per_interval_and_only_on_change_then_finished_once() -> None:
    clock = Clock()
    published = Recorder()
    tracker = RolloutTracker(published, project_id="p", interval=30.0, clock=clock)
    tracker.add("r", ["a", "b"])
    await tracker.flush()
    assert [e.type for e in published.events] == ["rollout.progress"]
    tracker.on_event(job_event("a", "Running"))
    await tracker.flush()
    assert len(published.events) == 1, "within the interval: no second progress"
    clock.now += 31
    await tracker.flush()
    assert len(published.events) == 2
    clock.now += 31
    await tracker.flush()
    assert len(published.events) == 2, "nothing changed: no progress"
    tracker.on_event(job_event("a", "Success"))
    tracker.on_event(job_event("b", "Failed", reason="boom"))
    await tracker.flush()
    finished = published.events[-1]
    assert finished.type is EventType.ROLLOUT_FINISHED
    assert finished.job_id is None and finished.rollout == "r" and finished.labels == {"rollout": "r"}
    assert finished.summary is not None and finished.summary["finished"] == 2
    assert finished.summary["ended"] is not None
    assert finished.detail and "took" in finished.detail
    clock.now += 100
    await tracker.flush(force=True)
    assert sum(e.type is EventType.ROLLOUT_FINISHED for e in published.events) == 1
    assert len({e.id for e in published.events}) == len(published.events)


async def test_jobs_outside_any_rollout_are_ignored() -> None:
    published = Recorder()
    tracker = RolloutTracker(published, project_id="p")
    tracker.on_event(job_event("stranger", "Success"))
    await tracker.flush()
    assert published.events == []
    assert tracker.rollouts() == []


async def test_watch_emits_rollout_digests_to_sinks(sim: Simulator, tmp_path: Path) -> None:
    jobs = sim.start_rollout(6, fail_ratio=0.2, duration=1.0)
    out = tmp_path / "events.jsonl"
    settings = SchedulerSettings(rate=100, interval=0.1, min_interval=0.05, max_interval=0.2, job_timeout=20)
    async with client_for(sim) as client:
        result = await asyncio.wait_for(
            watch(
                jobs,
                client=client,
                settings=settings,
                sinks=[SinkBinding(create_sink(f"file:{out}"))],
                rollout="pool-b",
                rollout_interval=0.3,
            ),
            20,
        )
    assert result.exit_code == 1
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    digests = [e for e in events if e["type"].startswith("rollout.")]
    assert digests[-1]["type"] == "rollout.finished"
    summary = digests[-1]["summary"]
    assert summary["total"] == 6 and summary["finished"] == 6
    assert summary["counts"] == {"Success": 5, "Failed": 1}
    assert summary["failed_count"] == 1 and summary["failed"][0]["reason"]
    assert any(e["type"] == "rollout.progress" for e in digests)
    assert all(e["rollout"] == "pool-b" for e in events), "every job event names its rollout"


def test_live_view_draws_each_rollout_as_one_line_of_bar_and_text() -> None:
    """One line per rollout (its bar, then its progress); the table starts on a line of its own after it."""
    import io  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415

    from monitor.cli.view import LiveView  # noqa: PLC0415

    console = Console(file=io.StringIO(), width=100, height=30, force_terminal=True, color_system=None)
    view = LiveView(["j1", "j2"], console=console)
    view.on_event(job_event("j1", "Running", job_type="CreateNode"))
    summary = {"rollout": "demo", "total": 2, "finished": 1, "counts": {"Success": 1, "Running": 1}}
    view.on_event(
        Event(id="r", type=EventType.ROLLOUT_PROGRESS, project_id="p", job_id=None, rollout="demo", summary=summary)
    )
    console.print(view.render())
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert any(line.startswith("job ") for line in lines), lines
    bars = [line for line in lines if "━" in line and "╇" not in line]  # ╇: the table's header rule
    assert len(bars) == 1 and "job" not in bars[0], lines
    assert bars[0].rstrip().endswith("demo: 1/2 finished (1 Success, 1 Running)"), lines


async def test_progress_ids_follow_the_state_not_the_clock() -> None:
    """A digest's id names the state it reports: a tracker rebuilt later (a restarted daemon, another replica)
    reporting the same state gives the same id, and every change of a member or sub-job gives a new one."""

    async def digest_ids(steps: list[list[Event]], clock: Clock) -> list[str]:
        published = Recorder()
        tracker = RolloutTracker(published, project_id="p", interval=30.0, clock=clock)
        tracker.add("pool-a", ["j1", "j2"], started=1_700_000_000.0)
        for events in steps:
            for event in events:
                tracker.on_event(event)
            clock.now += 1
            await tracker.flush(force=True)
        return [e.id for e in published.of("rollout.progress")]

    steps = [
        [job_event("j1", "Running")],
        [job_event("j1", "Running", kind=EventType.SUBJOB_PHASE_CHANGED, subjob_id="s1")],
        [job_event("j1", "Success", kind=EventType.SUBJOB_PHASE_CHANGED, subjob_id="s1")],
        [job_event("j2", "Running")],
    ]
    first = await digest_ids(steps, Clock())
    later = Clock()
    later.now += 86_400.123
    again = await digest_ids(steps, later)
    assert len(first) == 4 and len(set(first)) == 4, "each new state is a new event"
    assert again == first, "the same states reported at other times are the same events"
    swapped = [[job_event("j2", "Running")], *steps[1:3], [job_event("j1", "Running")]]
    assert (await digest_ids(swapped, Clock()))[0] != first[0], "which member moved matters, not only the counts"


def _snapshot(phases: dict[str, tuple[str, str]]) -> Job:
    """A ScaleupCluster-like job whose sub-jobs are ``{uid: (type, phase)}``."""
    subs = [{"metadata": {"uid": uid}, "spec": {"type": t}, "status": {"phase": p}} for uid, (t, p) in phases.items()]
    return parse_job(orjson.dumps({"metadata": {"uid": "job"}, "spec": {"type": "X", "subJobs": subs}}))


async def test_deleted_nodes_are_done_with_their_job_and_a_pool_holds_its_rollout_open() -> None:
    clock = Clock()
    tracker = RolloutTracker(Recorder(), project_id="p", interval=30.0, clock=clock, node_check=True)
    tracker.add("down", ["job"])
    tracker.on_snapshot("job", _snapshot({"d1": ("DeleteNode", "Success"), "d2": ("DeleteNode", "Success")}))
    tracker.on_event(job_event("job", "Success"))
    rollout = tracker.get("down")
    assert rollout is not None and rollout.finished, "nothing to await for a deleted node"
    assert rollout.summary(clock.now)["counts"] == {"Success": 2}

    tracker.add_pool("down", "pool-1")
    assert not rollout.finished, "a followed pool that has not settled keeps its rollout open"
    settled = Event(
        id="s", type=EventType.NODEPOOL_SETTLED, project_id="p", job_id=None, rollout="down", nodepool_id="pool-1"
    )
    tracker.on_event(settled)
    assert rollout.finished


async def test_created_nodes_wait_for_active() -> None:
    tracker = RolloutTracker(Recorder(), project_id="p", interval=30.0, clock=Clock(), node_check=True)
    tracker.add("up", ["job"])
    tracker.on_snapshot("job", _snapshot({"c1": ("CreateNode", "Success")}))
    tracker.on_event(job_event("job", "Success"))
    rollout = tracker.get("up")
    assert rollout is not None and not rollout.finished
    tracker.on_event(job_event("job", "Active", kind=EventType.NODE_ACTIVE, subjob_id="c1"))
    assert rollout.finished and rollout.summary()["counts"] == {"Active": 1}


async def test_a_failed_node_is_named_by_its_name_else_its_node_id_else_its_sub_job() -> None:
    """What a failure list shows for a node: its resource name, else its node id, else the sub-job's id; and
    the reason of its deepest failed step, not its own generic one."""

    subs = [
        create_node_body(uid, "Failed", name=name, node_id=node_id, reason=f"Ecs.0000 for {uid}")
        for uid, name, node_id in (("s1", "node-a", "n-1"), ("s2", "", "n-2"), ("s3", "", ""))
    ]
    body = {"metadata": {"uid": "job"}, "spec": {"type": "ScaleupCluster", "subJobs": subs},
            "status": {"phase": "Failed", "reason": "recycle resource"}}  # fmt: skip
    tracker = RolloutTracker(Recorder(), project_id="p", interval=30.0, clock=Clock(), node_check=True)
    tracker.add("names", ["job"])
    tracker.on_snapshot("job", parse_job(orjson.dumps(body)))
    tracker.on_event(job_event("job", "Failed", reason="recycle resource"))
    rollout = tracker.get("names")
    assert rollout is not None and rollout.finished
    failed = {f["subjob_id"]: (f["resource_name"], f["reason"]) for f in rollout.summary()["failed"]}
    assert failed == {
        "s1": ("node-a", "Ecs.0000 for s1"),
        "s2": ("n-2", "Ecs.0000 for s2"),
        "s3": ("s3", "Ecs.0000 for s3"),
    }
