"""The soak (``bench/soak.py``) in its short form, its plan, and each defect it found as the smallest failing test.

The short soak is the real thing scaled down: ``cce-monitor simulate`` with faults (5xx, truncated JSON, slow
answers, dropped connections, a 429 storm, every IAM token expired once), a flaky webhook receiver that is down for
10 s, and ``cce-monitor run`` killed with SIGKILL twice and restarted; then SIGTERM and a comparison with the
simulator's ground truth. It runs as a subprocess in its own session, so a hang takes its children with it.

Below it, each defect found by running the soak or while building its checks, as the smallest test that failed before
the fix (commit 6754419) and keeps it fixed: the limiter bursting past the rate when recovering from 429s, a restarted
daemon doubling the rate, a rollout finishing a second time never announced, and rollout.finished lost to a crash
just before it was recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from argparse import Namespace
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.typedefs import Handler

from monitor.cce.throttle import RateLimiter
from monitor.config import parse_config
from monitor.core.events import Event, EventType, event_id
from monitor.daemon.service import Daemon
from monitor.daemon.store import State
from monitor.engine.bus import EventFilter
from monitor.engine.rollout import RolloutTracker
from monitor.sim import Simulator, SimulatorConfig
from tests.conftest import SimFactory, client_for

pytestmark = pytest.mark.solo  # counts arrivals per second against a rate: runs alone (pyproject: -m solo)

ROOT = Path(__file__).resolve().parents[2]
SOAK = ROOT / "bench" / "soak.py"
PROJECT = "0b9c3a5e8e8f4e4a9d5c7a3b2f1e0d9c"

# 160 jobs in 3 rollouts over a 1-minute timeline: two SIGKILLs each restarted at once, a 10 s receiver outage, a 5 s
# 429 storm, one token expiry, and a straggler wave that makes the first rollout finish twice.
SHORT_SOAK = ["--jobs", "160", "--rollouts", "3", "--minutes", "1", "--kills", "2", "--outage", "10", "--storm", "5"]
SHORT_SOAK += ["--no-save", "--limit", "135"]


def load_soak() -> ModuleType:
    """``bench/soak.py`` as a module (it imports its sibling ``_common`` the way a script does)."""
    sys.path.insert(0, str(SOAK.parent))
    try:
        spec = importlib.util.spec_from_file_location("soak_under_test", SOAK)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up while being created
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SOAK.parent))


def run_soak(args: list[str], workdir: Path, limit: float) -> tuple[dict[str, Any], str]:
    """Run the soak script; its JSON result and its stderr. Past ``limit`` its whole session is killed."""
    proc = subprocess.Popen(
        [sys.executable, str(SOAK), *args, "--workdir", str(workdir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"the soak did not finish within {limit:g} s:\n{err[-4000:]}") from None
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no result (exit {proc.returncode}):\n{err[-4000:]}"
    result: dict[str, Any] = orjson.loads(lines[0])
    result["_exit"] = proc.returncode
    return result, err


# ------------------------------------------------------------------------------------------------ the short soak


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_short_soak_loses_nothing_and_matches_the_truth(tmp_path: Path) -> None:
    started = time.monotonic()
    r, err = run_soak(SHORT_SOAK, tmp_path / "soak", limit=145)
    elapsed = time.monotonic() - started
    print(f"\nshort soak: {elapsed:.0f} s wall; problems: {r['problems'] or 'none'}")
    context = f"\n{err[-4000:]}\nworkdir {r['workdir']}"

    # Every must-be-zero figure is zero: nothing lost, no differing bodies, the rate never exceeded, ...
    assert {k: v for k, v in r["must_be_zero"].items() if v} == {}, context
    assert r["pass"] and r["_exit"] == 0, context
    # ... every job's final phase is the truth, and the daemon saw only transitions that really happened.
    assert r["jobs"]["added"] == 160
    assert r["jobs"]["final_phase_matches_truth"] == 160
    assert r["transitions"]["phantoms"] == []
    assert r["transitions"]["observed"] > 0.6 * r["transitions"]["truth"]
    # Duplicates only as redeliveries of one id with one body, on the webhook and in the file.
    for sink in ("webhook", "file"):
        assert r[sink]["lost"] == 0 and r[sink]["bodies_differ"] == [], (sink, context)
        assert r[sink]["delivered_unique"] == r[sink]["expected"] >= r["transitions"]["expected_events"]
    assert r["transitions"]["rollouts_without_final_digest"] == []

    # The faults really happened (otherwise the zeros above prove little).
    lives = r["daemon"]["lifetimes"]
    assert [x["ended_by"] for x in lives] == ["SIGKILL", "SIGKILL", "SIGTERM"]
    assert all(x["resumed_jobs"] for x in lives[1:]), lives
    cce = r["cce"]
    assert cce["throttled_in_storm"] > 0
    assert cce["by_status"].get("500", 0) > 0 and cce["by_status"].get("503", 0) > 0 and cce["dropped"] > 0
    assert cce["by_status"].get("401", 0) > 0 and cce["iam_token_requests"] >= 2  # the expiry, and recovery
    statuses = r["webhook"]["statuses"]
    assert statuses.get("500", 0) > 0
    assert r["daemon"]["peak_rss_mb"] > 0 and r["daemon"]["cpu_s"] > 0
    assert r["delay_s"]["count"] > 0


def test_every_duration_of_the_plan_scales_with_minutes() -> None:
    soak = load_soak()
    base = {"jobs": 200, "rollouts": 3, "seed": 1, "interval": None, "rate": 60.0, "server_rate": None, "kills": 2}
    base |= {"outage": None, "storm": None, "straggler": True}
    for minutes in (1.0, 10.0):
        plan = soak.make_plan(Namespace(**base, minutes=minutes))
        T = minutes * 60
        assert sum(w.count for w in plan.waves) == 200
        assert {w.rollout for w in plan.waves} == {"soak-1", "soak-2", "soak-3"}
        assert plan.last_end < 0.9 * T, "every job ends with time left to drain"
        events = [plan.storm_at + plan.storm_for, plan.outage_at + plan.outage_for, *plan.kills, plan.expire_at]
        assert max(events) < 0.7 * T and len(plan.kills) == 2
        assert plan.outage_for == pytest.approx(0.1 * T) and plan.storm_for >= 3
        # The straggler: soak-1's last wave starts after the rest of soak-1 has ended.
        first = [w for w in plan.waves if w.rollout == "soak-1"]
        assert first[-1].at == pytest.approx(0.6 * T)
        assert max(w.at + d for w in first[:-1] for _, _, d in w.batches) < first[-1].at
        demand = soak.estimate_demand(plan, 0.135)
        assert 0 < demand["mean"] < plan.rate, demand


# ------------------------------------------------------------------------------------- defects the soak found


def final_event(job_id: str, rollout: str) -> Event:
    return Event(
        id=event_id(PROJECT, job_id, "final"),
        type=EventType.JOB_PHASE_CHANGED,
        time=datetime.now(UTC),
        project_id=PROJECT,
        job_id=job_id,
        phase="Success",
        previous_phase="Running",
        labels={"rollout": rollout},
        rollout=rollout,
    )


async def test_a_rollout_that_finishes_again_is_announced_again() -> None:
    """Was: rollout.finished had one id per rollout name, so a rollout that got more jobs after finishing and then
    finished again had its new digest dropped by the outbox (INSERT OR IGNORE); receivers' last word on it was a
    progress digest saying it was unfinished. The soak's straggler wave showed it."""
    state = await State.open(":memory:")
    try:
        state.route("file:events.jsonl", EventFilter.of())

        async def publish(event: Event) -> None:  # what the daemon does with a digest
            await state.record_events([event])

        tracker = RolloutTracker(publish, project_id=PROJECT, interval=3600)
        tracker.add("pool-a", ["job-1"])
        tracker.on_event(final_event("job-1", "pool-a"))
        await tracker.flush()
        tracker.add("pool-a", ["job-2"])  # a late batch under the same rollout name
        tracker.on_event(final_event("job-2", "pool-a"))
        await tracker.flush()
        rows = await state.pending("file:events.jsonl")
        finished = [r.event.summary for r in rows if r.event.type is EventType.ROLLOUT_FINISHED and r.event.summary]
        assert [(s["finished"], s["total"]) for s in finished] == [(1, 1), (2, 2)]
    finally:
        await state.close()


@pytest.mark.timeout(30)
async def test_rollout_finished_is_sent_after_a_crash_just_before_it_was_recorded(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """Was: a daemon killed after committing a rollout's last job but before recording rollout.finished never
    sent it: on restart the finished rollout was restored as ended and clean, without a digest."""
    sim, endpoint = await sim_factory(seed=5)
    [job] = sim.start_rollout(1, fail_ratio=0.0, duration=0.05)
    await asyncio.sleep(0.2)
    async with client_for(sim) as client:
        snapshot = await client.fetch(job)
    assert snapshot.is_terminal
    # The state file as a SIGKILL leaves it in that window: the job's final poll committed, no digest yet.
    state = await State.open(tmp_path / "state.db")
    await state.add_jobs([job], {"rollout": "pool-b"}, "pool-b")
    await state.record(job, snapshot, [], outcome=snapshot.phase.value)
    await state.close()

    events = tmp_path / "events.jsonl"
    raw = {
        "endpoint": endpoint,
        "project_id": sim.config.project_id,
        "auth": {"token": "${TOK}"},
        "sinks": [{"type": "file", "path": str(events)}],
        "rollouts": {"interval": 0.2},
        "state": {"path": str(tmp_path / "state.db")},
        "api": {"listen": "127.0.0.1:0"},
        "shutdown_deadline": 2,
    }
    daemon = Daemon(parse_config(yaml.safe_dump(raw), env={"TOK": sim.config.token}), env={})
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop), name="daemon")

    def announced() -> bool:
        lines = events.read_bytes().splitlines() if events.exists() else []
        return any(orjson.loads(line)["type"] == "rollout.finished" for line in lines)

    try:
        await asyncio.wait_for(daemon.started.wait(), 15)
        deadline = time.monotonic() + 5  # a digest due at start-up is published within a second
        while not announced() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert announced()


def busiest_second(times: list[float]) -> int:
    """The most timestamps in any half-open interval ``[t, t + 1 s)``."""
    times = sorted(times)
    best = lo = 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


@pytest.mark.timeout(30)
async def test_a_daemon_restarted_within_a_second_keeps_to_the_rate(tmp_path: Path) -> None:
    """Was: a restarted daemon's limiter started empty and sent a whole second's worth at once, on top of what the
    previous process sent in its last second. With the next one, a cause of the 85 requests in one second at 60/s
    that the full soak measured (two SIGKILLs restarted in 0.4 s, a 429 storm recovered from 10 s before)."""
    rate = 20
    sim = Simulator(SimulatorConfig(seed=9))
    arrivals: list[float] = []  # when each job API request reached the server

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            arrivals.append(time.monotonic())
        return await handler(request)

    sim.app.middlewares.append(record)
    endpoint = await sim.start()
    try:
        jobs = sim.start_rollout(100, fail_ratio=0.0, duration=600)  # 100 jobs due every second: 5x the rate
        raw = {
            "endpoint": endpoint,
            "project_id": sim.config.project_id,
            "auth": {"token": "${TOK}"},
            "polling": {"rate": rate, "interval": 1, "min_interval": 1, "max_interval": 1, "jitter": 0},
            "state": {"path": str(tmp_path / "state.db")},
            "api": {"listen": "127.0.0.1:0"},
            "shutdown_deadline": 2,
        }
        config = parse_config(yaml.safe_dump(raw), env={"TOK": sim.config.token})

        async def run_until(requests: int, *, add: bool, crash: bool) -> None:
            daemon, stop = Daemon(config, env={}), asyncio.Event()
            task = asyncio.create_task(daemon.run(stop), name="daemon")
            try:
                await asyncio.wait_for(daemon.started.wait(), 15)
                if add:
                    await daemon.add_jobs(jobs, {}, None)
                while len(arrivals) < requests:
                    await asyncio.sleep(0.005)
            finally:
                if crash:  # as abrupt as a SIGKILL can be in process: no orderly shutdown
                    task.cancel()
                stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, 15)

        # Saturated, the limiter sends bursts of `rate` requests 1.01 s apart. It dies right after the third;
        # a new daemon on the same state tracks the jobs again at once (the soak's restarts took 0.4-0.5 s).
        await run_until(3 * rate, add=True, crash=True)
        await run_until(len(arrivals) + 2 * rate, add=False, crash=False)
    finally:
        await sim.close()
    # Some slack for scheduling jitter in one shared event loop; the restart doubles the burst.
    assert busiest_second(arrivals) <= rate + 2, sorted(arrivals)


async def test_recovering_from_429s_never_exceeds_the_configured_rate() -> None:
    """Was: recovering from 429s through a fractional rate (a 1-request, 1.01/r-second window) back to the
    configured one (a 1-second window) forgot the last second, and let a whole second's worth through on top."""
    now = [0.0]  # the limiter's own clock decides when it may change the rate; requests use real time
    limiter = RateLimiter(60, clock=lambda: now[0])
    limiter.throttled()  # 60 -> 30
    for _ in range(2):
        now[0] += 1.1
        limiter.throttled()  # -> 15 -> 7.5
    while limiter.effective_rate + 6 < 60:
        now[0] += 1.1
        limiter.succeeded()  # +6 a step: 13.5, 19.5, ... 55.5 requests/s (non-integer: a 1/r-second window)
    assert limiter.effective_rate == 55.5
    admitted: list[float] = []

    async def saturate(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await limiter.acquire()
            admitted.append(time.monotonic())

    await saturate(1.1)
    now[0] += 1.1
    limiter.succeeded()  # the last step: back to the configured 60/s
    assert limiter.effective_rate == 60
    await saturate(1.0)
    assert busiest_second(admitted) <= 60
