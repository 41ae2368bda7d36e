"""The adaptive strategy (polling.strategy: adaptive) against the real simulator on 127.0.0.1: under a budget
below demand every job finishes with every phase seen, none goes unread past the staleness bound, the learner
takes CCE's own timestamps, and a job whose step is predictable is read around its end rather than all along."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from typing import Any

from monitor.cce.auth import TokenAuth
from monitor.cce.client import CCEClient, ClientSettings
from monitor.core.model import Job, ParseMemo
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
