"""The adaptive strategy (polling.strategy: adaptive) against the real simulator on 127.0.0.1: under a budget
below demand every job finishes with every phase seen, none goes unread past the staleness bound, the learner
takes CCE's own timestamps, and a job whose step is predictable is read around its end rather than all along."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from typing import Any

import orjson

from monitor.cce.auth import TokenAuth
from monitor.cce.client import CCEClient, ClientSettings
from monitor.core.model import Job, ParseMemo, parse_job
from monitor.core.secret import Secret
from monitor.engine.durations import Durations, step_key
from monitor.engine.scheduler import Scheduler, SchedulerSettings
from monitor.sim import Simulator
from tests.conftest import Recorder, client_for


class ReadLog(CCEClient):
    """The real client, noting when each job was read."""

    __slots__ = ("reads",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: dict[str, list[float]] = defaultdict(list)

    async def fetch(self, job_id: str, memo: ParseMemo | None = None, **kwargs: Any) -> Job:
        self.reads[job_id].append(time.monotonic())
        return await super().fetch(job_id, memo, **kwargs)


async def test_adaptive_sees_every_phase_starves_none_and_learns_from_timestamps(sim: Simulator) -> None:
    jobs = [sim.add_job("CreateNode", duration=3.0, spread=0.1) for _ in range(12)]
    settings = SchedulerSettings(
        strategy="adaptive", rate=8.0, interval=1.0, min_interval=0.2, max_interval=1.0, node_check=False
    )
    learned = Durations()
    assert sim.endpoint is not None
    where = ClientSettings(endpoint=sim.endpoint, project_id=sim.config.project_id)
    recorder = Recorder()
    async with ReadLog(where, TokenAuth(Secret(sim.config.token))) as client:
        scheduler = Scheduler(client, recorder, settings, durations=learned)
        assert scheduler.freshness is not None
        task = asyncio.create_task(scheduler.run(drain=2.0))
        started = time.monotonic()
        scheduler.add_many(jobs)
        async with asyncio.timeout(30):
            await scheduler.wait_idle()
        scheduler.stop()
        await task
    for job in jobs:  # every job's final phase, as the simulator planned it
        finals = [e.phase for e in recorder.events if e.job_id == job and e.type.value == "job.phase_changed"]
        assert finals and finals[-1] == sim.truth(job)[-1].phase
        reads = [started, *client.reads[job]]
        stale_after = max(settings.max_interval, 2 * len(jobs) / settings.rate)  # two round-robin cycles
        assert max(b - a for a, b in itertools.pairwise(reads)) <= stale_after + 1.0, job
    # The steps' durations came from CCE's timestamps: close to what the simulator planned (3 s jobs).
    vm = learned.estimate(step_key("CreateNode", "CreateNodeVM", "Running"))
    assert vm is not None and vm.samples >= 6 and 0.3 < vm.median < 3.0, vm
    assert sum(len(r) for r in client.reads.values()) < 8.0 * (time.monotonic() - started), "within the budget"


async def test_the_learned_eta_of_a_second_rollout_is_close_to_its_true_end(sim: Simulator) -> None:
    settings = SchedulerSettings(rate=50.0, interval=0.2, min_interval=0.1, max_interval=0.2, node_check=False)
    learned = Durations()
    async with client_for(sim) as client:
        scheduler = Scheduler(client, Recorder(), settings, durations=learned)
        task = asyncio.create_task(scheduler.run(drain=2.0))
        first = [sim.add_job("CreateNode", duration=3.0, spread=0.1) for _ in range(6)]
        scheduler.add_many(first)  # (interval strategy: it learns all the same)
        async with asyncio.timeout(20):
            await scheduler.wait_idle()
        second = [sim.add_job("CreateNode", duration=3.0, spread=0.1) for _ in range(6)]
        scheduler.add_many(second)
        await asyncio.sleep(0.6)  # every job read, its first step running
        eta = scheduler.eta(second)
        asked = time.time()
        async with asyncio.timeout(20):
            await scheduler.wait_idle()
        scheduler.stop()
        await task
    assert eta is not None
    p50, p90 = eta
    end = max(sim.truth(j)[-1].at.timestamp() for j in second)
    assert p50 <= p90
    assert abs(asked + p50 - end) < 0.35 * 3.0, (p50, end - asked)  # the priors alone say minutes
    assert scheduler.eta(["not-tracked"]) is None


def _body(phases: list[tuple[str, str, str]], job_phase: str) -> bytes:
    """A CreateNode job whose sub-jobs (type, phase, updateTimestamp) run one after another."""
    subs = [
        {
            "metadata": {
                "uid": f"sub-{i}",
                "creationTimestamp": "2026-12-01 10:00:00 +0000 UTC",
                "updateTimestamp": stamp,
            },
            "spec": {"type": kind},
            "status": {"phase": phase},
        }
        for i, (kind, phase, stamp) in enumerate(phases)
    ]
    job = {
        "kind": "Job",
        "metadata": {
            "uid": "job-1",
            "creationTimestamp": "2026-12-01 10:00:00 +0000 UTC",
            "updateTimestamp": "2026-12-01 10:00:01 +0000 UTC",
        },
        "spec": {"type": "CreateNode", "subJobs": subs},
        "status": {"phase": job_phase},
    }
    return orjson.dumps(job)


def test_steps_that_began_and_ended_between_two_reads_are_learned_from_their_timestamps() -> None:
    """Under a starved budget a short step runs from one read to the next: its duration still comes from CCE's
    timestamps (the sub-job before it ended when it began), and is counted once."""
    from monitor.engine.freshness import Freshness  # noqa: PLC0415
    from monitor.engine.tracked import Tracked  # noqa: PLC0415

    learned = Durations(priors={})
    fresh = Freshness(learned, SchedulerSettings(strategy="adaptive"), lambda: 1_796_119_260.0)  # 10:01 UTC that day
    tracked = Tracked("job-1", {}, 0.0, 3600.0, 0.0)
    first = [
        ("GetPSMCert", "Success", "2026-12-01 10:00:03 +0000 UTC"),
        ("CreateNodeVM", "Running", "2026-12-01 10:00:03 +0000 UTC"),
        ("InstallNode", "Initializing", "2026-12-01 10:00:00 +0000 UTC"),
    ]
    one = parse_job(_body(first, "Running"))
    fresh.seen(tracked, one, None)
    later = [
        ("GetPSMCert", "Success", "2026-12-01 10:00:03 +0000 UTC"),
        ("CreateNodeVM", "Success", "2026-12-01 10:00:23 +0000 UTC"),
        ("InstallNode", "Success", "2026-12-01 10:00:38.5 +0000 UTC"),
    ]
    two = parse_job(_body(later, "Running"))
    fresh.seen(tracked, two, one)
    fresh.seen(tracked, parse_job(_body(later, "Success")), two)  # read again: nothing learned twice
    vm = learned.estimate(step_key("CreateNode", "CreateNodeVM", "Running"))
    install = learned.estimate(step_key("CreateNode", "InstallNode", "Running"))
    assert vm is not None and vm.samples == 1 and round(vm.median, 3) == 20.0  # seen running, then ended
    assert install is not None and install.samples == 1 and round(install.median, 3) == 15.5  # never seen running
    assert learned.estimate(step_key("CreateNode", "GetPSMCert", "Running")) is None, "its start is not known"


def test_a_body_that_only_moved_its_timestamp_moves_only_the_time_of_the_read() -> None:
    """The parse reuses unchanged sub-jobs: a body whose only change is the job's ``updateTimestamp`` has the
    previous answer's very sub-jobs, so no step began or ended and each keeps the time it began."""
    from monitor.engine.freshness import Freshness  # noqa: PLC0415
    from monitor.engine.tracked import Tracked  # noqa: PLC0415

    now = [1_796_119_260.0]
    fresh = Freshness(Durations(priors={}), SchedulerSettings(strategy="adaptive"), lambda: now[0])
    tracked = Tracked("job-1", {}, 0.0, 3600.0, 0.0)
    steps = [("CreateNodeVM", "Running", "2026-12-01 10:00:03 +0000 UTC")]
    memo = ParseMemo()
    first = memo.parse(_body(steps, "Running"))
    fresh.seen(tracked, first, None)
    began = dict(tracked.steps.active) if tracked.steps else {}
    moved = orjson.loads(_body(steps, "Running"))
    moved["metadata"]["updateTimestamp"] = "2026-12-01 10:00:50 +0000 UTC"
    now[0] += 30
    second = memo.parse(orjson.dumps(moved))
    assert second is not first and second.sub_jobs is first.sub_jobs
    fresh.seen(tracked, second, first)
    assert tracked.steps is not None and tracked.steps.active == began and tracked.steps.polled == now[0]
    steps = [("CreateNodeVM", "Success", "2026-12-01 10:00:53 +0000 UTC")]
    third = memo.parse(_body(steps, "Running"))
    fresh.seen(tracked, third, second)
    assert tracked.steps.active != began, "a sub-job that moved is news"
