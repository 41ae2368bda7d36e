"""The scheduler against the real simulator on 127.0.0.1: outcomes, errors, rate limit, fairness, intake."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from monitor.cce.auth import TokenAuth
from monitor.cce.client import CCEClient, ClientSettings
from monitor.cce.throttle import RateLimiter
from monitor.core.errors import ConfigError, InvalidIdError
from monitor.core.events import EventType
from monitor.core.model import Job, ParseMemo
from monitor.core.secret import Secret
from monitor.engine.scheduler import Scheduler, SchedulerSettings
from monitor.sim import Simulator
from tests.conftest import Recorder, SimFactory, client_for

FAST: dict[str, Any] = {
    "rate": 200.0,
    "interval": 0.1,
    "min_interval": 0.05,
    "max_interval": 0.1,
    "error_backoff": 0.05,
    "error_backoff_max": 0.1,
    "not_found_grace": 0.3,
    "not_found_count": 3,
    "job_timeout": 15.0,
    "auth_backoff": 0.5,
    "auth_backoff_max": 1.0,
}


def fast(**overrides: Any) -> SchedulerSettings:
    return SchedulerSettings(**{**FAST, **overrides})


@contextlib.asynccontextmanager
async def running(
    sim: Simulator, settings: SchedulerSettings, *, token: str | None = None, rate: float | None = None
) -> AsyncIterator[tuple[Scheduler, Recorder]]:
    recorder = Recorder()
    async with client_for(sim, token=token) as client:
        scheduler = Scheduler(client, recorder, settings, limiter=RateLimiter(rate) if rate else None)
        task = asyncio.create_task(scheduler.run(drain=2.0))
        try:
            yield scheduler, recorder
        finally:
            scheduler.stop()
            await asyncio.wait_for(task, 10)


async def test_jobs_run_to_success_and_failure_and_polling_stops(sim: Simulator) -> None:
    ok = sim.add_job("CreateNode", duration=0.6)
    bad = sim.add_job("CreateNode", duration=0.6, fail=True)
    async with running(sim, fast()) as (scheduler, rec):
        scheduler.add_many([ok, bad], {"team": "platform"})
        await asyncio.wait_for(scheduler.wait_idle(), 10)
        requests_at_end = sim.stats.job_requests
        await asyncio.sleep(0.4)
        assert sim.stats.job_requests == requests_at_end, "finished jobs must not be polled again"

    ok_chain = [(e.previous_phase, e.phase) for e in rec.of("job.phase_changed", ok)]
    assert ok_chain[0][0] is None
    assert ok_chain[-1][1] == "Success"
    for (_, before), (after_prev, _) in itertools.pairwise(ok_chain):
        assert after_prev == before
    final_bad = rec.of("job.phase_changed", bad)[-1]
    assert final_bad.phase == "Failed" and final_bad.reason
    assert final_bad.labels == {"team": "platform"}
    assert final_bad.job_type == "CreateNode"
    # Sub-job transitions reach the bus, each before the job's own final event.
    subs = rec.of("subjob.phase_changed", ok)
    assert {e.subjob_type for e in subs} == {"CreateNodeVM", "InstallNode"}
    assert rec.events.index(subs[-1]) < rec.events.index(rec.of("job.phase_changed", ok)[-1])
    truth_phases = [t.phase for t in sim.truth(ok) if not t.is_sub_job]
    assert truth_phases[-1] == "Success"


async def test_brief_404_after_creation_is_not_final(sim: Simulator) -> None:
    job = sim.add_job(duration=0.5, not_found_for=0.15)
    async with running(sim, fast(not_found_grace=1.0)) as (scheduler, rec):
        scheduler.add(job)
        await asyncio.wait_for(scheduler.wait_idle(), 10)
    assert not rec.of("job.not_found")
    assert rec.of("job.phase_changed", job)[-1].phase == "Success"


async def test_unknown_job_is_not_found_only_after_grace(sim: Simulator) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    async with running(sim, fast(not_found_grace=0.4, not_found_count=3)) as (scheduler, rec):
        start = time.monotonic()
        scheduler.add(missing)
        await asyncio.wait_for(scheduler.wait_idle(), 10)
        elapsed = time.monotonic() - start
    [event] = rec.of("job.not_found")
    assert event.job_id == missing
    assert "404" in (event.detail or "")
    assert elapsed >= 0.4
    assert sim.stats.by_status.get(404, 0) >= 3


async def test_timeout_stops_polling_with_one_event(sim: Simulator) -> None:
    job = sim.add_job(duration=60)
    async with running(sim, fast(job_timeout=0.5)) as (scheduler, rec):
        scheduler.add(job)
        await asyncio.wait_for(scheduler.wait_idle(), 10)
    [event] = rec.of("job.timed_out")
    assert event.job_id == job and event.phase in ("Initializing", "Running")
    assert event.is_final


async def test_stalled_job_reported_once(sim: Simulator) -> None:
    job = sim.add_job(duration=0.2, start_delay=60)  # stays Initializing with the same updateTimestamp
    async with running(sim, fast(stall_after=0.3, job_timeout=1.2)) as (scheduler, rec):
        scheduler.add(job)
        await asyncio.wait_for(scheduler.wait_idle(), 10)
    assert len(rec.of("job.stalled")) == 1
    assert rec.of("job.stalled")[0].phase == "Initializing"
    assert len(rec.of("job.timed_out")) == 1


async def test_poll_failures_then_recovery(sim: Simulator) -> None:
    job = sim.add_job(duration=3.0)
    sim.set_faults(p_500=1.0)
    async with running(sim, fast(failure_threshold=3)) as (scheduler, rec):
        scheduler.add(job)
        for _ in range(100):
            if rec.of("job.poll_failed"):
                break
            await asyncio.sleep(0.05)
        [failed] = rec.of("job.poll_failed")
        assert "HTTP 500" in (failed.detail or "")
        sim.set_faults(p_500=0.0)
        await asyncio.wait_for(scheduler.wait_idle(), 10)
    assert len(rec.of("job.poll_failed")) == 1
    assert len(rec.of("job.recovered")) == 1
    assert rec.of("job.phase_changed", job)[-1].phase == "Success"
    order = [e.type for e in rec.events]
    assert order.index(EventType.JOB_POLL_FAILED) < order.index(EventType.JOB_RECOVERED)


async def test_malformed_and_dropped_answers_are_retried(sim: Simulator) -> None:
    jobs = [sim.add_job(duration=0.8) for _ in range(5)]
    sim.set_faults(p_malformed=0.2, p_drop=0.1, p_503_html=0.1)
    async with running(sim, fast(failure_threshold=50)) as (scheduler, rec):
        scheduler.add_many(jobs)
        await asyncio.wait_for(scheduler.wait_idle(), 15)
    assert {e.job_id for e in rec.of("job.phase_changed") if e.phase == "Success"} == set(jobs)
    assert scheduler.stats.outcomes.get("error", 0) > 0


async def test_auth_failure_pauses_polling_with_one_event(sim: Simulator) -> None:
    jobs = [sim.add_job(duration=30) for _ in range(10)]
    async with running(sim, fast(auth_backoff=0.5, job_timeout=1.6), token="wrong-token") as (scheduler, rec):
        scheduler.add_many(jobs)
        await asyncio.wait_for(scheduler.wait_idle(), 10)
    assert len(rec.of("monitor.auth_failed")) == 1
    # Polling paused: with 10 jobs at a 0.1 s interval, 1.6 s of polling would be ~160 requests.
    assert sim.stats.by_status.get(401, 0) <= 40
    assert len(rec.of("job.timed_out")) == 10


async def test_429_slows_the_whole_scheduler_and_jobs_still_finish(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory(rate_limit=20.0, rate_burst=20)
    jobs = [sim.add_job(duration=1.0) for _ in range(30)]
    async with running(sim, fast(rate=100.0, interval=0.2, max_interval=0.2, failure_threshold=100)) as (
        scheduler,
        rec,
    ):
        scheduler.add_many(jobs)
        await asyncio.wait_for(scheduler.wait_idle(), 20)
        limiter = scheduler.limiter
    assert sim.stats.throttled > 0
    assert limiter.throttled_count > 0
    assert limiter.effective_rate < 100.0
    assert scheduler.stats.outcomes.get("throttled", 0) > 0
    assert {e.job_id for e in rec.of("job.phase_changed") if e.phase in ("Success", "Failed")} == set(jobs)
    assert not rec.of("job.poll_failed"), "429s are not the job's failures"


async def test_rate_limit_is_never_exceeded_and_no_job_starves(sim: Simulator) -> None:
    jobs = [sim.add_job(duration=60) for _ in range(40)]
    async with running(sim, fast(rate=25.0, interval=0.05, min_interval=0.05, max_interval=0.05)) as (scheduler, _):
        scheduler.add_many(jobs)
        await asyncio.sleep(3.2)
    windows = sim.stats.per_second
    full = [count for second, count in windows.items() if second != max(windows) and second != min(windows)]
    assert full and max(full) <= 26  # 25/s, plus one for a window edge between client and server clocks
    assert sum(full) / len(full) >= 20
    assert scheduler.stats.polls >= 60
    assert scheduler.stats.lag > 0.5, "demand was above the rate, so polls ran late"


class CountingClient(CCEClient):
    """The real client, counting requests per job."""

    __slots__ = ("seen",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: Counter[str] = Counter()

    async def fetch(self, job_id: str, memo: ParseMemo | None = None, **kwargs: Any) -> Job:
        self.seen[job_id] += 1
        return await super().fetch(job_id, memo, **kwargs)


async def test_fair_share_under_backlog(sim: Simulator) -> None:
    jobs = [sim.add_job(duration=60) for _ in range(20)]
    settings = fast(rate=40.0, interval=0.05, min_interval=0.05, max_interval=0.05)
    assert sim.endpoint is not None
    client_settings = ClientSettings(endpoint=sim.endpoint, project_id=sim.config.project_id)
    async with CountingClient(client_settings, TokenAuth(Secret(sim.config.token))) as client:
        scheduler = Scheduler(client, Recorder(), settings, limiter=RateLimiter(40.0))
        task = asyncio.create_task(scheduler.run(drain=2.0))
        scheduler.add_many(jobs)
        await asyncio.sleep(2.5)
        scheduler.stop()
        await task
    seen = client.seen
    counts = [seen[j] for j in jobs]
    assert min(counts) >= 2
    assert max(counts) - min(counts) <= 2, counts


async def test_add_and_remove_while_running(sim: Simulator) -> None:
    keep = sim.add_job(duration=0.5)
    drop = sim.add_job(duration=60)
    async with running(sim, fast()) as (scheduler, rec):
        scheduler.add(drop)
        await asyncio.sleep(0.3)
        assert scheduler.remove(drop) is True
        assert scheduler.remove(drop) is False
        before = sum(1 for e in rec.events if e.job_id == drop)
        scheduler.add(keep)
        assert scheduler.add(keep) is False, "already tracked"
        await asyncio.wait_for(scheduler.wait_idle(), 10)
        await asyncio.sleep(0.2)
    assert sum(1 for e in rec.events if e.job_id == drop) == before
    assert rec.of("job.phase_changed", keep)[-1].phase == "Success"
    assert drop not in scheduler and len(scheduler) == 0


async def test_unchanged_jobs_back_off_and_reset_on_change(sim: Simulator) -> None:
    job = sim.add_job(duration=60, start_delay=60)
    async with running(sim, fast(interval=0.05, min_interval=0.05, max_interval=0.4, backoff=2.0, jitter=0.0)) as (
        scheduler,
        _,
    ):
        scheduler.add(job)
        await asyncio.sleep(1.5)
    # 0.05, 0.1, 0.2, 0.4, 0.4, ... → about 6 polls in 1.5 s instead of 30 at a fixed 0.05 s.
    assert 3 <= scheduler.stats.polls <= 9


async def test_stop_drains_in_flight_polls(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory(p_slow=1.0, slow_seconds=0.3)
    jobs = [sim.add_job(duration=60) for _ in range(3)]
    rec = Recorder()
    async with client_for(sim) as client:
        scheduler = Scheduler(client, rec, fast())
        task = asyncio.create_task(scheduler.run(drain=2.0))
        scheduler.add_many(jobs)
        await asyncio.sleep(0.1)
        scheduler.stop()
        await asyncio.wait_for(task, 5)
    # The three slow first polls were allowed to finish and publish their first observations.
    assert {e.job_id for e in rec.of("job.phase_changed")} == set(jobs)
    assert scheduler.add("another-job") is False, "no intake after stop"


async def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="min_interval"):
        SchedulerSettings(interval=1.0, min_interval=2.0)
    with pytest.raises(ConfigError, match="rate"):
        SchedulerSettings(rate=0)


async def test_add_validates_ids(sim: Simulator) -> None:
    async with running(sim, fast()) as (scheduler, _):
        for bad in ("../etc", "a/b", "a?b", "", "x" * 200):
            with pytest.raises(InvalidIdError):
                scheduler.add(bad)
        assert len(scheduler) == 0


@pytest.mark.parametrize("retry_after", [False, True])
async def test_a_429_tells_the_schedulers_limiter(sim_factory: SimFactory, retry_after: bool) -> None:
    """The scheduler owns the rate limit: the client only raises ThrottledError, the scheduler slows its
    limiter (halving the rate, at most once a second) and honours Retry-After for every job."""
    sim, _ = await sim_factory(rate_limit=0.01, retry_after=retry_after)  # one request, then 429s
    job_id = sim.add_job(duration=100)
    async with running(sim, fast(rate=10.0)) as (scheduler, _rec):
        limiter = scheduler.limiter
        assert isinstance(limiter, RateLimiter)
        assert (limiter.throttled_count, limiter.effective_rate) == (0, 10.0)
        scheduler.add(job_id)
        for _ in range(200):
            if limiter.throttled_count:
                break
            await asyncio.sleep(0.01)
        assert limiter.throttled_count >= 1
        assert limiter.effective_rate == 5.0
        assert limiter.degraded
    assert sim.stats.throttled >= 1
    assert scheduler.stats.outcomes.get("throttled", 0) >= 1
