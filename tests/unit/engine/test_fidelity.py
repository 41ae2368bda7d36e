"""What the real API and its gateway answer, and the reaction each answer deserves (issue "Fidelity"): a wrong
endpoint, a lock that is not throttling, a gateway budget per minute, a 403 on one job, a status without a
phase, stalls of sub-jobs, and arrivals paced under the rate. Against the simulator (or a receiver) on
127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import re
import time

import orjson
import pytest

from monitor.cce.auth import TokenAuth
from monitor.cce.client import CCEClient, ClientSettings
from monitor.cce.throttle import RateLimiter
from monitor.core.errors import ConfigError, MalformedResponseError
from monitor.core.model import job_from_json, job_to_json, parse_job
from monitor.core.secret import Secret
from monitor.engine.pipeline import watch
from monitor.engine.scheduler import Scheduler
from monitor.engine.settings import SchedulerSettings
from monitor.sim import SimulatorConfig
from monitor.sim.shapes import PREPAID_MESSAGE
from monitor.sim.timeline import NS
from monitor.testing import Receiver, Reply, busiest_window, sim_arrivals
from tests.conftest import Recorder, SimFactory, client_for

FAST = SchedulerSettings(
    rate=50.0,
    interval=0.1,
    min_interval=0.05,
    max_interval=0.2,
    error_backoff=0.05,
    error_backoff_max=0.2,
    job_timeout=20.0,
    auth_backoff=0.5,
    auth_backoff_max=1.0,
)
PROJECT = SimulatorConfig().project_id


async def test_a_wrong_path_is_a_configuration_error_not_a_missing_job() -> None:
    """The gateway answers 404 APIGW.0101 to a path it has no API for (here: every path): one
    monitor.config_error naming the endpoint, polling stops, and watch ends at once with it (exit 2)."""
    body = {
        "error_code": "APIGW.0101",
        "error_msg": "The API does not exist or has not been published in the environment",
    }
    async with Receiver(Reply.json(body, 404)) as gateway:
        settings = ClientSettings(endpoint=gateway.base, project_id=PROJECT, total_timeout=5)
        recorder = Recorder()
        started = time.monotonic()
        async with CCEClient(settings, TokenAuth(Secret("t"))) as client:
            result = await asyncio.wait_for(
                watch(["job-1", "job-2"], client=client, settings=FAST, observers=[recorder]), 10
            )
        assert time.monotonic() - started < 5, "not after a minute of 404s"
    [event] = recorder.of("monitor.config_error")
    assert gateway.base in (event.detail or "") and "APIGW.0101" in (event.detail or "")
    assert not recorder.of("job.not_found")
    assert result.exit_code == 2 and result.config_error == event.detail


@pytest.mark.parametrize("path", ["/api/v3", "/api/v3/projects/x", "/typo"])
def test_an_endpoint_with_a_path_is_refused_at_start_up(path: str) -> None:
    with pytest.raises(ConfigError, match=r"must not have a path .*: give https://cce\.eu-de\.otc\.t-systems\.com$"):
        ClientSettings(endpoint=f"https://cce.eu-de.otc.t-systems.com{path}", project_id=PROJECT)
    ClientSettings(endpoint="https://cce.eu-de.otc.t-systems.com/", project_id=PROJECT)  # a trailing / is fine


async def test_a_locked_job_is_retried_without_slowing_the_others(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory()
    locked, free = sim.add_job(duration=1.0), sim.add_job(duration=1.0)
    sim.lock_job(locked, 0.6)
    recorder = Recorder()
    limiter = RateLimiter(FAST.rate)
    async with client_for(sim) as client:
        scheduler = Scheduler(client, recorder, FAST, limiter=limiter)
        task = asyncio.create_task(scheduler.run(drain=1.0))
        scheduler.add_many([locked, free])
        await asyncio.wait_for(scheduler.wait_idle(), 10)
        scheduler.stop()
        await task
    assert limiter.throttled_count == 0 and limiter.effective_rate == FAST.rate, "a lock is not throttling"
    assert scheduler.stats.outcomes.get("locked", 0) >= 1
    finals = {e.job_id for e in recorder.of("job.phase_changed") if e.phase == "Success"}
    assert finals == {locked, free}


async def test_a_gateway_budget_per_minute_holds_the_rate(
    sim_factory: SimFactory, logs: pytest.LogCaptureFixture
) -> None:
    """APIG.0308 naming ``limit:120,time:1 minute`` (2 a second): the limiter keeps to that budget from then
    on, even after its usual recovery, and never above the configured rate; one warning says so."""
    sim, _ = await sim_factory(rate_limit=2.0, rate_burst=1, throttle_style="apig-minute", retry_after=False)
    jobs = [sim.add_job(duration=60) for _ in range(5)]
    limiter = RateLimiter(20.0)
    async with client_for(sim) as client:
        scheduler = Scheduler(client, Recorder(), FAST, limiter=limiter)
        task = asyncio.create_task(scheduler.run(drain=1.0))
        scheduler.add_many(jobs)
        await asyncio.sleep(3.0)
        scheduler.stop()
        await task
    assert limiter.throttled_count >= 1
    assert limiter.effective_rate <= 2.0, limiter.effective_rate
    assert limiter.budget_rate == 2.0
    warnings = [r.getMessage() for r in logs.records if r.name == "monitor.cce.throttle"]
    assert warnings == ["the API gateway allows 120 requests per 60s: holding the rate to 2/s (configured 20/s)"]


async def test_a_403_on_one_job_fails_that_job_only(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory()
    refused = sim.add_job(duration=60)
    others = [sim.add_job(duration=0.8) for _ in range(3)]
    sim.forbid_job(refused)
    recorder = Recorder()
    settings = dataclasses.replace(FAST, failure_threshold=2)
    async with client_for(sim) as client:
        scheduler = Scheduler(client, recorder, settings)
        task = asyncio.create_task(scheduler.run(drain=1.0))
        scheduler.add_many([refused, *others])
        async with asyncio.timeout(10):
            while len([e for e in recorder.of("job.phase_changed") if e.phase == "Success"]) < 3 or not recorder.of(
                "job.poll_failed"
            ):
                await asyncio.sleep(0.05)
        scheduler.stop()
        await task
    assert not recorder.of("monitor.auth_failed"), "one job's 403 does not pause all polling"
    assert [e.job_id for e in recorder.of("job.poll_failed")] == [refused]


async def test_a_job_refused_while_others_were_read_stays_refused_alone_once_it_is_the_last(
    sim_factory: SimFactory,
) -> None:
    sim, _ = await sim_factory()
    refused = sim.add_job(duration=60)
    other = sim.add_job(duration=0.5)
    sim.forbid_job(refused)
    recorder = Recorder()
    settings = dataclasses.replace(FAST, failure_threshold=1000)  # it retries and never gives up
    async with client_for(sim) as client:
        scheduler = Scheduler(client, recorder, settings)
        task = asyncio.create_task(scheduler.run(drain=1.0))
        scheduler.add_many([refused, other])
        async with asyncio.timeout(10):
            while not [e for e in recorder.of("job.phase_changed") if e.phase == "Success"]:
                await asyncio.sleep(0.05)
        first = sim.stats.by_status.get(403, 0)
        async with asyncio.timeout(10):
            while sim.stats.by_status.get(403, 0) < first + 3:  # refused again, now the only job tracked
                await asyncio.sleep(0.05)
        scheduler.stop()
        await task
    assert [e.job_id for e in recorder.of("job.phase_changed") if e.phase == "Success"] == [other]
    assert not recorder.of("monitor.auth_failed"), "the last job's 403 is its own: the credentials worked"


async def test_403s_on_every_job_pause_everything(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory()
    jobs = [sim.add_job(duration=60) for _ in range(3)]
    for job in jobs:
        sim.forbid_job(job)
    recorder = Recorder()
    async with client_for(sim) as client:
        scheduler = Scheduler(client, recorder, FAST)
        task = asyncio.create_task(scheduler.run(drain=1.0))
        scheduler.add_many(jobs)
        async with asyncio.timeout(10):
            while not recorder.of("monitor.auth_failed"):
                await asyncio.sleep(0.05)
        scheduler.stop()
        await task
    assert len(recorder.of("monitor.auth_failed")) == 1


def test_a_status_without_a_phase_is_malformed() -> None:
    with pytest.raises(MalformedResponseError, match="status has no phase"):
        parse_job(b'{"metadata": {"uid": "j"}, "spec": {"type": "CreateNode"}, "status": {"reason": ""}}')
    assert parse_job(b'{"metadata": {"uid": "j"}, "spec": {"type": "CreateNode"}}').phase == "Initializing"


async def test_sub_job_progress_is_not_a_stall(sim_factory: SimFactory) -> None:
    """The top job's phase and updateTimestamp may stay put while its sub-jobs move (the simulator's
    ``quiet-parent`` variant): that is progress. ``stall_after`` is longer than any pause between two moves of
    the tree and shorter than the parent's own quiet time, so counting the parent alone would report a stall."""
    sim, _ = await sim_factory()
    job_id = sim.add_job("CreateNode/quiet-parent", duration=4.0)
    truth = sim.truth(job_id)
    own = [t.at_ns / NS for t in truth if not t.is_sub_job and t.phase != "Initializing"]
    moves = sorted({t.at_ns / NS for t in truth if t.phase != "Initializing"})
    stall_after = max(b - a for a, b in itertools.pairwise(moves)) + 0.5
    assert own[-1] - own[0] > stall_after + 0.5, "the parent alone would look stalled"
    recorder = Recorder()
    settings = dataclasses.replace(FAST, stall_after=stall_after, node_check=False)
    async with client_for(sim) as client:
        await asyncio.wait_for(watch([job_id], client=client, settings=settings, observers=[recorder]), 20)
    assert len(recorder.of("subjob.phase_changed")) >= 4, "its sub-jobs moved"
    assert not recorder.of("job.stalled"), [e.type for e in recorder.events]


class LateLimiter:
    """A :class:`~monitor.cce.throttle.Limiter` whose requests leave late: the real limiter's slot, then up to
    ``late`` seconds more (a busy event loop, a slow connection pool), drawn from a seeded random stream."""

    def __init__(self, inner: RateLimiter, late: float = 0.1, seed: int = 12) -> None:
        self.inner, self.late, self._rng = inner, late, random.Random(seed)

    configured_rate = property(lambda self: self.inner.configured_rate)
    effective_rate = property(lambda self: self.inner.effective_rate)
    throttled_count = property(lambda self: self.inner.throttled_count)
    waited_seconds = property(lambda self: self.inner.waited_seconds)
    budget_rate = property(lambda self: self.inner.budget_rate)

    async def acquire(self) -> None:
        await self.inner.acquire()
        await asyncio.sleep(self._rng.uniform(0.0, self.late))

    def throttled(self, retry_after: float | None = None, budget: tuple[int, float] | None = None) -> None:
        self.inner.throttled(retry_after, budget)

    def succeeded(self) -> None:
        self.inner.succeeded()


@pytest.mark.solo  # counts arrivals per second against a rate: alone (-n 0 -m solo)
async def test_arrivals_never_exceed_the_rate_even_when_requests_leave_late(sim_factory: SimFactory) -> None:
    """The gateway counts arrivals: with admissions paced evenly, no 1-second sliding window of requests as
    the simulator saw them holds more than the rate, even when each request leaves up to 100 ms after its
    slot (admitting a second's worth at once, some of them late, puts more than the rate in one window)."""
    sim, endpoint = await sim_factory()
    jobs = [sim.add_job(duration=60) for _ in range(40)]
    limiter = LateLimiter(RateLimiter(10.0))
    async with client_for(sim) as client:
        settings = SchedulerSettings(rate=10.0, interval=0.05, min_interval=0.05, max_interval=0.05)
        scheduler = Scheduler(client, Recorder(), settings, limiter=limiter)
        task = asyncio.create_task(scheduler.run(drain=1.0))
        scheduler.add_many(jobs)
        await asyncio.sleep(6.0)
        scheduler.stop()
        await task
    arrivals = await sim_arrivals(endpoint)
    assert len(arrivals) >= 45, len(arrivals)
    assert busiest_window(arrivals, 1.0) <= 10, sorted(arrivals)


def test_message_owner_and_billing_order_are_read() -> None:
    body = (
        b'{"metadata": {"uid": "cn-1"}, "spec": {"type": "CreateNode", "ownerJob": "scaleup-1",'
        b' "extendParam": {"orderID": "CS2105101234ABCD"}},'
        b' "status": {"phase": "Running", "reason": "", "message": "waiting for the order to be paid"}}'
    )
    job = parse_job(body)
    assert (job.message, job.owner_job, job.order_id) == (
        "waiting for the order to be paid",
        "scaleup-1",
        "CS2105101234ABCD",
    )
    assert job_from_json(job_to_json(job)) == job


async def test_a_job_waiting_on_its_billing_order_is_not_stalled(sim_factory: SimFactory) -> None:
    """The simulator's ``prepaid`` variant: a yearly/monthly job stays Initializing until its order is paid,
    with ``extendParam.orderID`` and a ``status.message``; its event shows both, and it is never stalled."""
    sim, _ = await sim_factory()
    job_id = sim.add_job("CreateNode/prepaid", start_delay=60, duration=10)
    recorder = Recorder()
    async with client_for(sim) as client:
        order = (await client.fetch(job_id)).order_id
        scheduler = Scheduler(client, recorder, dataclasses.replace(FAST, stall_after=0.3))
        task = asyncio.create_task(scheduler.run(drain=1.0))
        scheduler.add(job_id)
        await asyncio.sleep(1.2)
        scheduler.stop()
        await task
    assert re.fullmatch(r"CS\d{10}[0-9A-F]{5}", order), order
    assert scheduler.stats.outcomes.get("ok", 0) >= 4, "polled all along"
    assert not recorder.of("job.stalled")
    [first] = recorder.of("job.phase_changed")
    assert (first.phase, first.detail) == ("Initializing", f"{PREPAID_MESSAGE}; order {order}"), "beside the reason"


async def test_a_sub_job_tracked_by_its_own_id_is_not_counted_twice() -> None:
    """A user adds a cluster's job and one of its sub-jobs (read by its own id, ``spec.ownerJob`` naming the
    parent) to one rollout: the sub-job is counted through its parent, once."""
    from monitor.engine.rollout import RolloutTracker  # noqa: PLC0415

    tracker = RolloutTracker(Recorder(), project_id="p", node_check=False)
    tracker.add("r", ["cluster-job", "master-job"])
    running = {"phase": "Running"}
    master = {"metadata": {"uid": "master-job"}, "spec": {"type": "InstallMaster"}, "status": running}
    parent = {"metadata": {"uid": "cluster-job"}, "spec": {"type": "CreateCluster", "subJobs": [master]}}
    tracker.on_snapshot("cluster-job", parse_job(orjson.dumps({**parent, "status": running})))
    rollout = tracker.get("r")
    assert rollout is not None and rollout.summary()["total"] == 2, "not known yet to be a sub-job"
    owned = {**master, "spec": {"type": "InstallMaster", "ownerJob": "cluster-job"}}
    tracker.on_snapshot("master-job", parse_job(orjson.dumps(owned)))
    assert rollout.summary()["total"] == 1, rollout.summary()


async def test_cce_autopilot_jobs_are_read_under_their_own_prefix(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory()
    job_id = sim.add_job(duration=60)
    settings = ClientSettings(endpoint=endpoint, project_id=sim.config.project_id, api_prefix="/autopilot/v3")
    async with CCEClient(settings, TokenAuth(Secret(sim.config.token))) as client:
        assert (await client.fetch(job_id)).id == job_id
    assert sim.stats.job_requests == 1
    for bad in ("autopilot/v3", "/", "/api/v3/", "/a b", "/../x"):
        with pytest.raises(ConfigError, match="api_prefix"):
            ClientSettings(endpoint=endpoint, project_id=sim.config.project_id, api_prefix=bad)


async def test_a_mistyped_api_path_is_found_at_once_against_the_simulator(sim_factory: SimFactory) -> None:
    """The simulator's gateway answers APIGW.0101 for a path with no API, as the real one does."""
    sim, endpoint = await sim_factory()
    job_id = sim.add_job(duration=60)
    settings = ClientSettings(endpoint=endpoint, project_id=sim.config.project_id, api_prefix="/api/v2")
    recorder = Recorder()
    async with CCEClient(settings, TokenAuth(Secret(sim.config.token))) as client:
        result = await asyncio.wait_for(watch([job_id], client=client, settings=FAST, observers=[recorder]), 10)
    assert result.exit_code == 2 and "APIGW.0101" in (result.config_error or "")
    assert len(recorder.of("monitor.config_error")) == 1


def test_a_429_never_lifts_the_rate_above_the_gateway_budget() -> None:
    limiter = RateLimiter(10.0)
    limiter.throttled(budget=(20, 60.0))
    assert limiter.effective_rate == pytest.approx(1 / 3)
    limiter.throttled()  # a later 429 without a budget in its message
    assert limiter.effective_rate <= 1 / 3 + 1e-9


async def test_one_job_refused_again_and_again_is_still_one_job(sim_factory: SimFactory) -> None:
    """The refused job retries on its own backoff, faster than the others poll: three 403s in a row from it
    are not "every job"."""
    sim, _ = await sim_factory()
    refused = sim.add_job(duration=60)
    others = [sim.add_job(duration=60) for _ in range(2)]
    sim.forbid_job(refused)
    recorder = Recorder()
    slow = dataclasses.replace(FAST, interval=3.0, max_interval=3.0, error_backoff=0.05)
    async with client_for(sim) as client:
        scheduler = Scheduler(client, recorder, slow)
        task = asyncio.create_task(scheduler.run(drain=1.0))
        scheduler.add_many([refused, *others])
        await asyncio.sleep(1.5)
        scheduler.stop()
        await task
    assert scheduler.stats.outcomes.get("auth_failed", 0) >= 3, scheduler.stats.outcomes
    assert not recorder.of("monitor.auth_failed")


def test_two_messages_are_joined_only_when_neither_says_the_other() -> None:
    from monitor.core.errors import parse_error_body  # noqa: PLC0415

    assert parse_error_body(b'{"error_msg": "invalid", "message": "invalid primary fixedIp"}')[1] == (
        "invalid primary fixedIp"
    )
    assert parse_error_body(b'{"error_msg": "Request  body invalid\\n", "message": "request body invalid"}')[1] == (
        "Request body invalid"
    )


def test_a_sub_job_not_started_may_show_an_empty_status() -> None:
    body = b'{"metadata": {"uid": "j"}, "spec": {"subJobs": [{"metadata": {"uid": "s"}, "status": {}}]},'
    job = parse_job(body + b' "status": {"phase": "Running"}}')
    assert job.sub_jobs[0].phase == "Initializing"


async def test_a_paid_order_does_not_hide_a_stall() -> None:
    """A yearly/monthly job keeps its ``orderID`` once paid: stuck while Running, it is a stall like any other."""
    body = {"metadata": {"uid": "j"}, "spec": {"type": "CreateNode", "extendParam": {"orderID": "CS2612020101ABCDE"}}}
    body["status"] = {"phase": "Running"}
    async with Receiver(Reply.json(body)) as server:
        settings = ClientSettings(endpoint=server.base, project_id=PROJECT, total_timeout=5)
        recorder = Recorder()
        async with CCEClient(settings, TokenAuth(Secret("t"))) as client:
            scheduler = Scheduler(client, recorder, dataclasses.replace(FAST, stall_after=0.3))
            task = asyncio.create_task(scheduler.run(drain=1.0))
            scheduler.add("j")
            await asyncio.sleep(1.0)
            scheduler.stop()
            await task
    [stalled] = recorder.of("job.stalled")
    assert stalled.job_id == "j" and "Running unchanged" in (stalled.detail or ""), stalled
