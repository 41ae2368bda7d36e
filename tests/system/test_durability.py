"""Crash test with real processes: ``cce-monitor run`` is killed with SIGKILL mid-rollout, with several deliveries
in flight at once (per-job parallel delivery), and restarted.

The simulator and a flaky webhook receiver run in the test process; the daemon is a subprocess, as in production.
Afterwards, against the simulator's ground truth and the daemon's state file: nothing lost, duplicates only as
byte-identical redeliveries of the same event id, every job's final phase right and its final event received.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from monitor.daemon.store import State
from monitor.testing import Received, Receiver, Reply
from tests.conftest import SimFactory

EXE = [sys.executable, "-m", "monitor.cli"]
API_TOKEN = "durability-api-token"
JOBS = 30
START_DELAY = 1.5  # the jobs sit in Initializing while the daemon starts and the jobs are added
DURATION = 6.0
HELD = 3  # deliveries in flight together when the daemon is killed

pytestmark = pytest.mark.slow


class FlakyReceiver(Receiver):
    """Answers 500 to every fifth request (20 %, deterministic by arrival order) and 204 to the rest.

    With ``hold`` set to N, the next N requests to be accepted are recorded (they count as received) and their
    answers held back; ``holding`` is set once N are held at once: the test kills the daemon while it waits for
    them — N deliveries in flight together, which only parallel delivery (per job) does. ``let_go()`` lets the
    held answers go (to a daemon that is gone).
    """

    def __init__(self) -> None:
        super().__init__(self._flaky)
        self.hold = 0
        self.held: list[Received] = []
        self.holding = asyncio.Event()
        self._let_go = asyncio.Event()

    async def _flaky(self, received: Received) -> Reply:
        status = 500 if len(self.requests) % 5 == 0 else 204  # this request is the last recorded
        if self.hold and status == 204:
            self.hold -= 1
            self.held.append(received)
            if not self.hold:
                self.holding.set()
            let_go = self._let_go
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(let_go.wait(), 30)
        return Reply(status)

    def let_go(self) -> None:
        self._let_go.set()
        self._let_go = asyncio.Event()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[FlakyReceiver, str]]:
    async with FlakyReceiver() as recv:
        yield recv, recv.url


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCE_", "HUAWEICLOUD_"))}
    env.update(extra)
    return env


class DaemonProcess:
    """``cce-monitor run`` in a subprocess; stderr goes to a log file, where the API's address is read from."""

    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.config = config
        self.env = env
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.api: str | None = None

    async def start(self) -> str:
        with self.log.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *EXE, "run", "--config", str(self.config), "--log-level", "info",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=err, env=self.env,
            )  # fmt: skip
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            match = re.search(r"API on (http://127\.0\.0\.1:\d+)", self.log.read_text(errors="replace"))
            if match:
                self.api = match.group(1)
                return self.api
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"the daemon did not start:\n{self.log.read_text(errors='replace')}")

    async def kill(self, sig: int) -> int:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        self.proc = None
        return code

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None


async def api_get(session: aiohttp.ClientSession, base: str, path: str) -> Any:
    async with session.get(base + path, headers={"Authorization": f"Bearer {API_TOKEN}"}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def finished_count(session: aiohttp.ClientSession, base: str) -> int:
    jobs = (await api_get(session, base, "/v1/jobs"))["jobs"]
    return sum(1 for j in jobs if j["outcome"])


def write_config(tmp_path: Path, sim: Any, endpoint: str, **sections: Any) -> Path:
    """The daemon's config file: the simulator, its token and the API token from the environment, a state file
    in ``tmp_path``; ``sections`` add the rest (polling, sinks, ...)."""
    config = tmp_path / "config.yaml"
    base = {
        "endpoint": endpoint,
        "project_id": sim.config.project_id,
        "auth": {"token": "${SIM_TOKEN}"},
        "state": {"path": str(tmp_path / "state.db")},
        "api": {"listen": "127.0.0.1:0", "token": "${API_TOKEN}"},
    }
    config.write_text(yaml.safe_dump({**base, **sections}))
    return config


@contextlib.asynccontextmanager
async def daemon_processes() -> AsyncIterator[list[DaemonProcess]]:
    """Daemon processes started in the block (log files daemon-N.log); any still alive are killed at the end."""
    started: list[DaemonProcess] = []
    try:
        yield started
    finally:
        for d in started:
            await d.close()


async def test_kill_9_mid_rollout_loses_nothing(
    sim_factory: SimFactory, receiver: tuple[FlakyReceiver, str], tmp_path: Path
) -> None:
    recv, url = receiver
    sim, endpoint = await sim_factory(seed=42)
    jobs = sim.start_rollout(JOBS, fail_ratio=0.1, duration=DURATION, start_delay=START_DELAY)
    t0 = time.monotonic()
    events_file = tmp_path / "events.jsonl"
    state_file = tmp_path / "state.db"
    config = write_config(
        tmp_path,
        sim,
        endpoint,
        polling={
            "rate": 400,
            "max_in_flight": 32,
            "interval": 0.2,
            "min_interval": 0.05,
            "max_interval": 0.3,
            "error_backoff": 0.05,
            "error_backoff_max": 0.3,
            "job_timeout": 120,
        },
        sinks=[
            {"type": "file", "path": str(events_file)},
            {
                "type": "webhook",
                "url": url,
                "backoff_initial": 0.02,
                "backoff_max": 0.1,
                "max_attempts": 3,
                "rate": 2000,
                "timeout": 5,
            },
        ],
        shutdown_deadline=10,
    )
    env = child_env(SIM_TOKEN=sim.config.token, API_TOKEN=API_TOKEN)
    kills = 0
    async with daemon_processes() as started, aiohttp.ClientSession() as session:

        async def start() -> DaemonProcess:
            d = DaemonProcess(config, env, tmp_path / f"daemon-{len(started) + 1}.log")
            started.append(d)
            await d.start()
            return d

        daemon = await start()
        add = await asyncio.create_subprocess_exec(
            *EXE, "add", "--api", daemon.api or "", "--rollout", "crash-test", "--label", "team=durability", "-",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=child_env(CCE_MONITOR_API_TOKEN=API_TOKEN),
        )  # fmt: skip
        out, err = await asyncio.wait_for(add.communicate("\n".join(jobs).encode()), 30)
        assert add.returncode == 0, err.decode()
        assert out.decode().strip() == f"accepted {JOBS}, already known 0"

        # Kill -9 twice while the jobs are moving: once early in the rollout, once near its end.
        for at in (START_DELAY + 0.3 * DURATION, START_DELAY + 0.7 * DURATION):
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            assert events_file.read_bytes(), "the daemon had seen the jobs before the kill"
            # Kill while deliveries are in flight: the receiver has them, the daemon never hears back.
            recv.holding.clear()
            recv.held.clear()
            recv.hold = HELD
            await asyncio.wait_for(recv.holding.wait(), 10)
            in_flight = [orjson.loads(r.body) for r in recv.held]
            assert len({(e["job_id"], e["rollout"]) for e in in_flight}) == HELD, "never two of one job at once"
            assert await daemon.kill(signal.SIGKILL) == -signal.SIGKILL
            recv.let_go()
            kills += 1
            daemon = await start()  # the same config, nothing added again
            assert re.search(r"tracking \d+ unfinished jobs", daemon.log.read_text()), daemon.log.read_text()

        base = daemon.api or ""
        deadline = time.monotonic() + 30
        while await finished_count(session, base) < JOBS:
            assert time.monotonic() < deadline, "the jobs did not all finish"
            await asyncio.sleep(0.1)
        listed = {j["job_id"]: j for j in (await api_get(session, base, "/v1/jobs"))["jobs"]}
        expected_ids: set[str] = set()
        for job in jobs:
            expected_ids |= {e["id"] for e in (await api_get(session, base, f"/v1/jobs/{job}"))["history"]}
        while {r.webhook_id for r in recv.delivered} < expected_ids:
            assert time.monotonic() < deadline, "the webhook did not catch up"
            await asyncio.sleep(0.1)
        # Rows delivered just before a kill -9 but not yet marked (marks go in batches) are sent again after the
        # restart, and the flaky receiver may make one wait out a backoff: the outbox drains, then the clean stop.
        while (await api_get(session, base, "/v1/deliveries?state=pending"))["deliveries"]:
            assert time.monotonic() < deadline, "the outbox did not drain"
            await asyncio.sleep(0.1)
        assert await daemon.kill(signal.SIGTERM) == 0, daemon.log.read_text()
    elapsed = time.monotonic() - t0

    # The daemon's durable view after a clean exit.
    st = await State.open(state_file)
    try:
        history = {job: await st.history(job) for job in jobs}
        stored = {job: await st.get(job) for job in jobs}
        depth = await st.outbox_depth()
    finally:
        await st.close()
    expected = {e.id: e for h in history.values() for e in h}
    assert set(expected) == expected_ids, "the API showed what the database holds"
    assert depth == {}, "everything delivered at exit"
    assert not recv.hold

    # Rollout digests (job_id null) are delivered too; the job events are checked against the history below.
    digests = [orjson.loads(r.body) for r in recv.delivered if orjson.loads(r.body)["job_id"] is None]
    assert any(d["type"] == "rollout.finished" and d["summary"]["finished"] == JOBS for d in digests), digests[-1:]
    delivered = [r for r in recv.delivered if orjson.loads(r.body)["job_id"] is not None]
    delivered_ids = Counter(r.webhook_id for r in delivered)
    file_lines = [line for line in events_file.read_bytes().splitlines() if orjson.loads(line)["job_id"] is not None]
    file_ids = Counter(orjson.loads(line)["id"] for line in file_lines)
    webhook_dups = sum(n - 1 for n in delivered_ids.values())
    file_dups = sum(n - 1 for n in file_ids.values())
    failed = sum(1 for r in recv.requests if r.status >= 500)
    print(
        f"\ncrash test: {JOBS} jobs, {kills} x SIGKILL, {elapsed:.1f}s; expected {len(expected)} events; "
        f"webhook: {len(delivered_ids)} delivered, {webhook_dups} duplicates, {failed} answered 500, "
        f"{len(recv.requests)} requests; file: {len(file_ids)} events, {file_dups} duplicate lines"
    )

    # Zero lost; nothing that the daemon does not know of.
    assert set(delivered_ids) == set(expected), (set(expected) - set(delivered_ids), set(delivered_ids) - set(expected))
    assert set(file_ids) == set(expected)
    # Duplicates only as the same event again: one body per id, on the webhook (every attempt) and in the file.
    bodies: dict[str, set[bytes]] = {}
    for r in recv.requests:
        bodies.setdefault(r.webhook_id, set()).add(r.body)
        assert orjson.loads(r.body)["id"] == r.webhook_id
    assert {i: b for i, b in bodies.items() if len(b) > 1} == {}
    lines_by_id: dict[str, set[bytes]] = {}
    for line in file_lines:
        lines_by_id.setdefault(orjson.loads(line)["id"], set()).add(line)
    assert {i: b for i, b in lines_by_id.items() if len(b) > 1} == {}
    # Each kill cut off HELD accepted deliveries: those events were sent again after the restart, same ids.
    assert webhook_dups >= HELD * kills
    assert all(orjson.loads(next(iter(bodies[i]))) == e.to_dict() for i, e in expected.items())

    # Against the simulator's ground truth: the final phase, and the final event received by both sinks.
    for job in jobs:
        truth = [t.phase for t in sim.truth(job) if not t.is_sub_job][-1]
        job_stored = stored[job]
        assert job_stored is not None
        assert job_stored.outcome == truth and job_stored.phase == truth, job
        assert listed[job]["outcome"] == truth
        final = [e for e in history[job] if e.type == "job.phase_changed"][-1]
        assert final.phase == truth
        assert final.id in delivered_ids and final.id in file_ids
        assert job_stored.labels == {"team": "durability", "rollout": "crash-test"}
        # Per job, the webhook first received the events in the order they happened.
        first_seen = list(dict.fromkeys(r.webhook_id for r in delivered if orjson.loads(r.body)["job_id"] == job))
        assert first_seen == [e.id for e in history[job]], job


async def test_kill_9_mid_pool_rollout_resumes_the_pool_its_jobs_and_the_nodes_awaited(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """A pool handed over with ``cce-monitor add --nodepool``; the daemon is killed with SIGKILL once a node's job
    has succeeded but the node is not yet seen Active. The restarted daemon resumes the pool, its nodes' jobs and
    that awaited node (kept in the database), and confirms every node Active exactly as the truth has it."""
    sim, endpoint = await sim_factory(seed=7)  # time_scale 1: a node is Active 1-3 s after its job succeeded
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, name="crash-pool", fail=1, node_duration=4.0)  # slower than process starts
    sim.scale_nodepool(cluster, pool, 6)
    events_file = tmp_path / "events.jsonl"
    config = write_config(
        tmp_path,
        sim,
        endpoint,
        polling={"rate": 200, "interval": 0.2, "min_interval": 0.05, "max_interval": 0.3, "job_timeout": 60,
                 "node_timeout": 30},
        sinks=[{"type": "file", "path": str(events_file)}],
        rollouts={"interval": 0.2},
        shutdown_deadline=5,
    )  # fmt: skip
    env = child_env(SIM_TOKEN=sim.config.token, API_TOKEN=API_TOKEN)

    def seen() -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in events_file.read_bytes().splitlines()] if events_file.exists() else []

    async with daemon_processes() as started, aiohttp.ClientSession() as session:
        first = DaemonProcess(config, env, tmp_path / "daemon-1.log")
        started.append(first)
        await first.start()
        add = await asyncio.create_subprocess_exec(
            *EXE, "add", "--api", first.api or "", "--cluster", cluster, "--nodepool", pool, "--target", "6",
            "--label", "team=durability",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=child_env(CCE_MONITOR_API_TOKEN=API_TOKEN),
        )  # fmt: skip
        out, err = await asyncio.wait_for(add.communicate(), 30)
        assert add.returncode == 0, err.decode()
        assert out.decode().strip() == f"following node pool {pool} (rollout {pool})"

        async with asyncio.timeout(30):  # a node job failed, another succeeded with its node not yet seen Active
            while True:
                events = seen()
                jobs = [e for e in events if e["type"] == "job.phase_changed"]
                done = {e["job_id"] for e in jobs if e["phase"] == "Success"}
                active = {e["job_id"] for e in events if e["type"] == "node.active"}
                if done - active and any(e["phase"] == "Failed" for e in jobs):
                    break
                await asyncio.sleep(0.02)
        assert await first.kill(signal.SIGKILL) == -signal.SIGKILL
        before = len(seen())

        second = DaemonProcess(config, env, tmp_path / "daemon-2.log")
        started.append(second)
        base = await second.start()
        async with asyncio.timeout(40):
            while not (await api_get(session, base, f"/v1/rollouts/{pool}"))["rollout"]["ended"]:
                await asyncio.sleep(0.1)
        summary = (await api_get(session, base, f"/v1/rollouts/{pool}"))["rollout"]
        pools = (await api_get(session, base, "/v1/nodepools"))["nodepools"]
        assert await second.kill(signal.SIGTERM) == 0, second.log.read_text()

    events = seen()
    after = events[before:]
    truth_active = {t.node_id for t in sim.node_truth(cluster) if t.phase == "Active"}
    assert summary["counts"] == {"Active": 5, "Failed": 1}, summary
    # The failed node, failed before the kill, is named after the restart by its failed step's reason.
    [failed] = summary["failed"]
    [step] = [t for t in sim.truth(failed["job_id"]) if t.phase == "Failed" and t.uid != failed["job_id"]]
    assert failed["reason"] == step.reason, (failed, step)
    assert [p["outcome"] for p in pools] == ["Success"]
    assert {e["node_id"] for e in events if e["type"] == "node.active"} == truth_active
    # The nodes awaited when the first daemon died were confirmed by the second one.
    awaited = (done - active) & {e["job_id"] for e in after if e["type"] == "node.active"}
    assert awaited == done - active, (done - active, [e["type"] for e in after])
    assert not [e for e in events if e["type"] == "node.failed"]
    assert len({e["id"] for e in events if e["type"] == "node.active"}) == 5, "each node confirmed once (same id)"
