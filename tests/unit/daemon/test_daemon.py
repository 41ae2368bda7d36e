"""The daemon (``monitor.daemon.service``) in process: simulator → scheduler → state → file and webhook sinks, its API.

Everything runs against real servers on 127.0.0.1: the simulator, the daemon's own API on a port it picks, and an
aiohttp webhook receiver that checks Standard Webhooks signatures and can be made to fail or go away.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from monitor.config import Config, SinkConfig, parse_config
from monitor.core.reason import readable_reason
from monitor.daemon.service import Daemon
from monitor.daemon.store import State
from monitor.sim import Simulator
from monitor.testing import Received, Receiver, Reply, running_daemon
from tests.conftest import BotReceiver, SimFactory

API_TOKEN = "api-token-for-tests"
HOOK_KEY = b"daemon-webhook-key"
HOOK_SECRET = "whsec_" + base64.b64encode(HOOK_KEY).decode()
UP = Reply(204)


# ------------------------------------------------------------------------------------------ receiver


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    """A webhook receiver that checks signatures and answers 204; a test sets ``reply`` (503, slow) or stops it."""
    async with Receiver(UP, secret=HOOK_SECRET) as recv:
        yield recv, recv.url


# ---------------------------------------------------------------------------------------- the daemon


def make_config(
    sim: Simulator,
    tmp_path: Path,
    hook_url: str,
    *,
    env: dict[str, str] | None = None,
    postgres: str | None = None,
    **overrides: Any,
) -> Config:
    """A fast-polling config: token via ``${TOK}``, file + webhook sinks, state in ``tmp_path``, API on port 0;
    ``env``: more variables for ``${...}`` references in ``overrides``; ``postgres``: a DSN to keep the state in
    (the file sink then says it is shared, as replicas need)."""
    assert sim.endpoint is not None
    raw: dict[str, Any] = {
        "endpoint": sim.endpoint,
        "project_id": sim.config.project_id,
        "auth": {"token": "${TOK}"},
        "polling": {
            "rate": 200,
            "interval": 0.2,
            "min_interval": 0.05,
            "max_interval": 0.3,
            "error_backoff": 0.05,
            "error_backoff_max": 0.3,
            "job_timeout": 60,
        },
        "sinks": [
            {"type": "file", "path": str(tmp_path / "events.jsonl")},
            {
                "type": "webhook",
                "url": hook_url,
                "secret": "${HOOK_SECRET}",
                "backoff_initial": 0.05,
                "backoff_max": 0.2,
                "max_attempts": 2,
                "rate": 500,
                "timeout": 5,
            },
        ],
        "labels": {"team": "platform"},
        "shutdown_deadline": 10,
        "state": {"path": str(tmp_path / "state.db")},
        "api": {"listen": "127.0.0.1:0", "token": "${API_TOK}"},
        "logging": {"level": "debug"},
    }
    if postgres is not None:
        raw["state"] = {"backend": "postgres", "dsn": "${CCE_MONITOR_DSN}"}
        raw["sinks"][0]["shared"] = True
        env = {**(env or {}), "CCE_MONITOR_DSN": postgres}
    raw.update(overrides)
    variables = {"TOK": sim.config.token, "HOOK_SECRET": HOOK_SECRET, "API_TOK": API_TOKEN, **(env or {})}
    return parse_config(yaml.safe_dump(raw), env=variables)


@dataclass
class Running:
    daemon: Daemon
    stop: asyncio.Event
    task: asyncio.Task[None]
    session: aiohttp.ClientSession
    base: str

    async def call(self, method: str, path: str, body: object = None, *, auth: bool = True) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {API_TOKEN}"} if auth else {}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = orjson.dumps(body)
        async with self.session.request(method, self.base + path, data=data, headers=headers) as resp:
            raw = await resp.read()
            if resp.content_type == "application/json":
                return resp.status, orjson.loads(raw)
            return resp.status, raw.decode()

    async def jobs(self) -> dict[str, dict[str, Any]]:
        status, body = await self.call("GET", "/v1/jobs")
        assert status == 200, body
        return {j["job_id"]: j for j in body["jobs"]}

    async def history(self, job_id: str) -> list[dict[str, Any]]:
        status, body = await self.call("GET", f"/v1/jobs/{job_id}")
        assert status == 200, body
        history: list[dict[str, Any]] = body["history"]
        return history


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Running]:
    """Run a new Daemon until the block ends; then set ``stop`` and wait for a clean exit."""
    async with running_daemon(config) as run, aiohttp.ClientSession() as session:
        yield Running(run.daemon, run.stop, run.task, session, run.base)


async def until(check: Callable[[], Awaitable[bool]], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.05)


def file_events(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "events.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def final_phase(sim: Simulator, job_id: str) -> str:
    return [t.phase for t in sim.truth(job_id) if not t.is_sub_job][-1]


async def all_finished(api: Running, job_ids: list[str]) -> bool:
    jobs = await api.jobs()
    return all(jobs.get(j, {}).get("outcome") for j in job_ids)


async def stored_history(tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    """Every job's history, read from the state file (the daemon must have stopped)."""
    st = await State.open(tmp_path / "state.db")
    try:
        return {job.job_id: [e.to_dict() for e in await st.history(job.job_id)] for job in await st.jobs()}
    finally:
        await st.close()


async def outbox_depth(tmp_path: Path) -> dict[str, int]:
    st = await State.open(tmp_path / "state.db")
    try:
        return await st.outbox_depth()
    finally:
        await st.close()


def by_job(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in events:
        out.setdefault(e["job_id"], []).append(e["id"])
    return out


# --------------------------------------------------------------------------------------------- tests


async def test_jobs_added_over_the_api_reach_file_and_webhook(
    sim_factory: SimFactory, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    recv, url = receiver
    sim, _ = await sim_factory(seed=11)
    jobs = sim.start_rollout(4, fail_ratio=0.25, duration=1.5)
    # Changes phase after it is deleted: nothing about it may be emitted afterwards.
    doomed = sim.add_job("Custom", duration=1.0, start_delay=1.0)
    async with running(make_config(sim, tmp_path, url)) as api:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", api.base), api.base
        assert not api.base.endswith(":0"), "port 0 must be reported as the bound port"

        status, body = await api.call("POST", "/v1/jobs", {"job_ids": [*jobs, doomed], "labels": {"k": "v"}})
        assert status == 202, body
        assert body == {"accepted": [*jobs, doomed], "known": []}
        status, body = await api.call("POST", "/v1/jobs", {"job_ids": [jobs[0], "new-one"], "rollout": "r1"})
        assert (status, body) == (202, {"accepted": ["new-one"], "known": [jobs[0]]})
        assert (await api.call("POST", "/v1/jobs", {"job_ids": jobs}, auth=False))[0] == 401
        assert (await api.call("GET", "/v1/jobs", auth=False))[0] == 401

        async def doomed_seen() -> bool:
            return bool(await api.history(doomed))

        await until(doomed_seen, 5, "the first observation of the doomed job")
        assert await api.call("DELETE", f"/v1/jobs/{doomed}") == (200, {"removed": True})
        assert (await api.call("DELETE", f"/v1/jobs/{doomed}"))[0] == 404
        assert (await api.call("GET", f"/v1/jobs/{doomed}"))[0] == 404
        assert doomed not in await api.jobs()

        await until(lambda: all_finished(api, jobs), 15, "every job to finish")
        listed = await api.jobs()
        details = {j: (await api.call("GET", f"/v1/jobs/{j}"))[1] for j in jobs}
        histories = {j: details[j]["history"] for j in jobs}
        all_ids = {e["id"] for h in histories.values() for e in h}

        async def delivered() -> bool:
            got = {h.webhook_id for h in recv.delivered}
            return got >= all_ids and {e["id"] for e in file_events(tmp_path)} >= all_ids

        await until(delivered, 10, "delivery of every recorded event")
        # The doomed job changes phase (Running at ~1.1 s, Success at 2 s) after its deletion.
        truth_end = sim.truth(doomed)[-1].at
        await asyncio.sleep(max(0.0, (truth_end - datetime.now(UTC)).total_seconds()) + 0.5)
        assert (await api.call("GET", f"/v1/jobs/{doomed}"))[0] == 404
        assert "new-one" in await api.jobs()

    for job in jobs:
        truth = final_phase(sim, job)
        assert listed[job]["phase"] == truth and listed[job]["outcome"] == truth, listed[job]
        assert listed[job]["labels"] == {"team": "platform", "k": "v"}
        assert listed[job]["finished_at"] is not None
        detail = details[job]["job"]
        assert (detail["phase"], detail["outcome"]) == (truth, truth)
        assert detail["snapshot"]["id"] == job and detail["snapshot"]["phase"] == truth
        history = histories[job]
        finals = [e for e in history if e["type"] == "job.phase_changed"]
        assert finals[0]["previous_phase"] is None
        assert finals[-1]["phase"] == truth
        assert all(e["labels"] == {"team": "platform", "k": "v"} for e in history)

    # Rollout "r1" digests (job_id null) reach both sinks too; this test is about the job events.
    digests = [e for e in file_events(tmp_path) if e["job_id"] is None]
    assert digests and all(e["type"].startswith("rollout.") and e["rollout"] == "r1" for e in digests)
    file = [e for e in file_events(tmp_path) if e["job_id"] is not None]
    hits = [h for h in recv.requests if h.json["job_id"] is not None]
    file_ids = [e["id"] for e in file]
    assert len(file_ids) == len(set(file_ids)), "each event once in the file"
    assert not [e for e in file if e["job_id"] == doomed and e["phase"] != "Initializing"]
    assert set(file_ids) - {e["id"] for e in file if e["job_id"] in (doomed, "new-one")} == all_ids
    hook_ids = [h.webhook_id for h in hits]
    assert len(hook_ids) == len(set(hook_ids)), "each event once on the webhook (the receiver never failed)"
    assert all(h.webhook_id == h.json["id"] for h in hits)
    assert recv.bad_signatures == 0
    # Same bodies in both sinks; per job in the order of the history.
    by_id = {e["id"]: e for e in file}
    assert all(h.json == by_id[h.webhook_id] for h in hits)
    for job in jobs:
        assert by_job(file)[job] == [e["id"] for e in histories[job]]
        assert by_job([h.json for h in hits])[job] == [e["id"] for e in histories[job]]


async def test_probes_and_metrics(sim: Simulator, receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    _, url = receiver
    job = sim.add_job("Custom", duration=2.5)  # outlasts the daemon's 1 s rate-limit hold at start
    async with running(make_config(sim, tmp_path, url)) as api:
        assert await api.call("GET", "/healthz", auth=False) == (200, {"status": "ok"})
        status, body = await api.call("GET", "/readyz", auth=False)
        assert status == 200 and body["ready"] is True, body
        assert set(body["checks"]) >= {"state", "scheduler", "cce"} and all(body["checks"].values())
        assert (await api.call("POST", "/v1/jobs", {"job_ids": [job]}))[0] == 202
        await until(lambda: all_finished(api, [job]), 10, "the job to finish")
        async with api.session.get(api.base + "/metrics") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            text = await resp.text()
        assert "cce_monitor_jobs" in text
        polls = [line for line in text.splitlines() if line.startswith("cce_monitor_polls_total{")]
        assert polls and sum(float(line.rsplit(" ", 1)[1]) for line in polls) >= 2, text
        assert 'cce_monitor_polls_total{outcome="ok"}' in text
        assert re.search(r'cce_monitor_events_total\{type="job.phase_changed"\} [1-9]', text), text
        assert (await api.call("GET", "/readyz", auth=False))[0] == 200


async def test_the_budget_the_gateway_named_is_a_metric(
    sim: Simulator, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    """APIG.0308 naming ``limit:120,time:1 minute``: ``cce_monitor_rate_budget`` says 2 (requests per second)
    while that budget holds the rate; 0 before any 429 named one."""
    _, url = receiver
    async with running(make_config(sim, tmp_path, url)) as api:
        _, text = await api.call("GET", "/metrics", auth=False)
        assert "\ncce_monitor_rate_budget 0.0\n" in text, text
        sim.set_faults(rate_limit=2.0, rate_burst=1, throttle_style="apig-minute", retry_after=False)
        jobs = [sim.add_job("Custom", duration=30) for _ in range(3)]
        assert (await api.call("POST", "/v1/jobs", {"job_ids": jobs}))[0] == 202

        async def budget_named() -> bool:
            _, text = await api.call("GET", "/metrics", auth=False)
            return "\ncce_monitor_rate_budget 2.0\n" in text

        await until(budget_named, 10, "the gateway's budget in /metrics")
        _, text = await api.call("GET", "/metrics", auth=False)
        assert re.search(r"\ncce_monitor_rate_effective 2\.0\n", text), "held to the budget"


async def test_restart_resumes_unfinished_jobs_and_reports_what_changed_meanwhile(
    sim: Simulator, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    recv, url = receiver
    config = make_config(sim, tmp_path, url)
    waiting = sim.add_job("Custom", duration=2.0, start_delay=2.0)  # Running at ~2.1 s, Success at 4 s
    running_job = sim.add_job("CreateNode", duration=4.0)  # sub-jobs move all the time
    quick = sim.add_job("Custom", duration=0.3)  # done before the stop
    running_at = next(t.at for t in sim.truth(waiting) if t.phase == "Running")

    async with running(config) as api:
        assert (await api.call("POST", "/v1/jobs", {"job_ids": [waiting, running_job, quick]}))[0] == 202

        async def first_run_done() -> bool:
            jobs = await api.jobs()
            return jobs[quick]["outcome"] == "Success" and jobs[waiting]["phase"] == "Initializing"

        await until(first_run_done, 5, "the quick job to finish and the waiting one to be seen")
        assert datetime.now(UTC) < running_at, "the test machine is too slow for this timeline"
    stopped_at = datetime.now(UTC)
    assert stopped_at < running_at, "the stop took too long"
    lines_before = len(file_events(tmp_path))

    # While it is down: the database says which jobs to take up again, with the last phase seen.
    st = await State.open(tmp_path / "state.db")
    try:
        unfinished = {j.job_id: j for j in await st.unfinished()}
    finally:
        await st.close()
    assert set(unfinished) == {waiting, running_job}
    assert unfinished[waiting].phase == "Initializing"
    await asyncio.sleep(max(0.0, (running_at - datetime.now(UTC)).total_seconds()) + 0.2)

    async with running(config) as api:  # a new Daemon, the same state file; nothing is added again
        await until(lambda: all_finished(api, [waiting, running_job]), 15, "the resumed jobs to finish")
        listed = await api.jobs()
        histories = {j: await api.history(j) for j in (waiting, running_job, quick)}
    assert await outbox_depth(tmp_path) == {}

    for job in (waiting, running_job, quick):
        truth = final_phase(sim, job)
        assert listed[job]["outcome"] == truth and listed[job]["phase"] == truth
    # The transition that happened during the downtime, seen on the first poll after the restart.
    phases = [e for e in histories[waiting] if e["type"] == "job.phase_changed"]
    assert [(e["previous_phase"], e["phase"]) for e in phases] == [
        (None, "Initializing"),
        ("Initializing", "Running"),
        ("Running", "Success"),
    ]
    assert datetime.fromisoformat(phases[1]["time"]) > stopped_at
    second_run = file_events(tmp_path)[lines_before:]
    first_for_waiting = next(e for e in second_run if e["job_id"] == waiting)
    assert first_for_waiting["id"] == phases[1]["id"]

    file = file_events(tmp_path)
    ids = [e["id"] for e in file]
    assert len(ids) == len(set(ids)), "no event repeated across the restart"
    all_ids = {e["id"] for h in histories.values() for e in h}
    assert set(ids) == all_ids
    assert {h.webhook_id for h in recv.delivered} == all_ids
    for job, history in histories.items():
        last = [e for e in history if e["type"] == "job.phase_changed"][-1]
        assert last["phase"] == final_phase(sim, job) and last["id"] in ids
        assert by_job(file)[job] == [e["id"] for e in history]
    assert {e["job_id"] for e in second_run} == {waiting, running_job}, "the finished job is not polled again"


async def test_stop_drains_the_outbox(sim: Simulator, receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    recv, url = receiver
    recv.reply = Reply(204, delay=0.1)  # a slow receiver: events queue up in the outbox (one at a time)
    jobs = [sim.add_job("CreateNode", duration=3.0) for _ in range(4)]
    async with running(make_config(sim, tmp_path, url, delivery={"ordering": "sink"})) as api:
        assert (await api.call("POST", "/v1/jobs", {"job_ids": jobs}))[0] == 202

        async def backlog() -> bool:
            return len(recv.delivered) >= 2 and len(file_events(tmp_path)) >= len(recv.delivered) + 10

        await until(backlog, 10, "a backlog for the webhook")
        behind = len(file_events(tmp_path)) - len(recv.delivered)
        stop_requested = time.monotonic()
    took = time.monotonic() - stop_requested
    print(f"stop with {behind} events behind on the webhook; drained in {took:.1f}s")
    assert await outbox_depth(tmp_path) == {}
    histories = await stored_history(tmp_path)
    all_ids = {e["id"] for h in histories.values() for e in h}
    assert {h.webhook_id for h in recv.delivered} == all_ids
    hook_ids = [h.webhook_id for h in recv.delivered]
    assert len(hook_ids) == len(set(hook_ids))
    assert {e["id"] for e in file_events(tmp_path)} == all_ids
    assert took < 10, f"the drain took {took:.1f}s"


async def test_undelivered_events_wait_in_the_outbox_for_the_next_start(
    sim: Simulator, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    """Receiver down at the stop: the drain gives up at shutdown_deadline; the next daemon sends the rest."""
    recv, url = receiver
    jobs = [sim.add_job("Custom", duration=0.5), sim.add_job("Custom", duration=0.6, fail=True)]
    config = make_config(sim, tmp_path, url, shutdown_deadline=1.0)
    recv.reply = Reply(503)
    async with running(config) as api:
        assert (await api.call("POST", "/v1/jobs", {"job_ids": jobs}))[0] == 202
        await until(lambda: all_finished(api, jobs), 10, "every job to finish")
        stop_requested = time.monotonic()
    took = time.monotonic() - stop_requested
    assert took < 5, f"the stop took {took:.1f}s with shutdown_deadline 1"
    assert not recv.delivered
    histories = await stored_history(tmp_path)
    all_ids = {e["id"] for h in histories.values() for e in h}
    depth = await outbox_depth(tmp_path)
    assert depth == {f"webhook:{url}": len(all_ids)}, "the file got everything, the webhook nothing"

    recv.reply = UP
    async with running(config) as api:

        async def caught_up() -> bool:
            return {h.webhook_id for h in recv.delivered} >= all_ids

        await until(caught_up, 10, "the outbox to be sent after the restart")
    assert await outbox_depth(tmp_path) == {}
    delivered = [h.webhook_id for h in recv.delivered]
    assert sorted(delivered) == sorted(all_ids), "each once"
    for job in jobs:
        assert by_job([h.json for h in recv.delivered])[job] == [e["id"] for e in histories[job]]
    ids = [e["id"] for e in file_events(tmp_path)]
    assert sorted(ids) == sorted(all_ids), "the file sink is not written again"


@pytest.mark.parametrize("outage", ["503", "down"])
async def test_webhook_outage_loses_nothing_and_keeps_order(
    sim: Simulator, receiver: tuple[Receiver, str], tmp_path: Path, outage: str
) -> None:
    recv, url = receiver
    jobs = [
        sim.add_job("Custom", duration=1.5),
        sim.add_job("Custom", duration=2.0, fail=True),
        sim.add_job("CreateNode", duration=2.0),
    ]
    async with running(make_config(sim, tmp_path, url)) as api:
        if outage == "503":
            recv.reply = Reply(503)
        else:
            await recv.stop()  # not listening: connection refused
        assert (await api.call("POST", "/v1/jobs", {"job_ids": jobs}))[0] == 202
        await asyncio.sleep(2.5)  # jobs change while the receiver is out
        assert not recv.delivered
        # The file sink is not held up by the webhook.
        assert len(file_events(tmp_path)) >= 6
        if outage == "503":
            assert recv.requests, "the daemon tried during the outage"
            recv.reply = UP
        else:
            await recv.start()  # the same port
        recovered = time.monotonic()
        await until(lambda: all_finished(api, jobs), 10, "every job to finish")
        histories = {j: await api.history(j) for j in jobs}
        all_ids = {e["id"] for h in histories.values() for e in h}

        async def caught_up() -> bool:
            return {h.webhook_id for h in recv.delivered} >= all_ids

        await until(caught_up, 15, "the webhook to catch up")
        catch_up = time.monotonic() - recovered
    print(f"outage={outage}: {len(all_ids)} events; webhook caught up {catch_up:.1f}s after recovery")

    delivered = [h.webhook_id for h in recv.delivered]
    assert set(delivered) == all_ids
    assert len(delivered) == len(set(delivered)), "nothing delivered twice"
    for job in jobs:
        assert by_job([h.json for h in recv.delivered])[job] == [e["id"] for e in histories[job]], "order per job"
    assert by_job(file_events(tmp_path)) == {j: [e["id"] for e in histories[j]] for j in jobs}
    assert await outbox_depth(tmp_path) == {}


async def test_restart_prunes_jobs_finished_longer_ago_than_the_retention(
    sim: Simulator, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    _, url = receiver
    job = sim.add_job("Custom", duration=0.3)
    config = make_config(sim, tmp_path, url, state={"path": str(tmp_path / "state.db"), "retention": 0.5})
    async with running(config) as api:
        assert (await api.call("POST", "/v1/jobs", {"job_ids": [job]}))[0] == 202
        await until(lambda: all_finished(api, [job]), 10, "the job to finish")
    await asyncio.sleep(0.6)  # now it finished longer ago than the retention
    async with running(config) as api:

        async def pruned() -> bool:
            return job not in await api.jobs()

        await until(pruned, 3, "the finished job to be pruned at start-up")
        assert (await api.call("GET", f"/v1/jobs/{job}"))[0] == 404


async def test_delete_during_a_poll_in_flight_emits_and_stores_nothing_more(
    sim_factory: SimFactory, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    recv, url = receiver
    sim, _ = await sim_factory(p_slow=1.0, slow_seconds=1.0)  # every answer takes a second
    job = sim.add_job("Custom", duration=30)
    async with running(make_config(sim, tmp_path, url)) as api:
        assert (await api.call("POST", "/v1/jobs", {"job_ids": [job]}))[0] == 202

        async def in_flight() -> bool:
            return sim.stats.job_requests >= 1

        await until(in_flight, 5, "the first poll to reach the simulator")
        assert await api.call("DELETE", f"/v1/jobs/{job}") == (200, {"removed": True})
        await asyncio.sleep(1.5)  # the poll in flight answers (and anything it emitted is delivered)
        emitted = [e for e in file_events(tmp_path) if e["job_id"] == job]
        posted = [h.json for h in recv.requests if h.json["job_id"] == job]
        # Added again, the job starts afresh (its next answer is a second away): no history from before the DELETE.
        assert (await api.call("POST", "/v1/jobs", {"job_ids": [job]}))[0] == 202
        _, body = await api.call("GET", f"/v1/jobs/{job}")
        leftover = body["history"]
    assert (emitted, posted) == ([], []), "nothing emitted after the DELETE answered"
    assert leftover == []


async def test_rollouts_over_the_api_and_status_command(
    sim: Simulator, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    _, url = receiver
    jobs = sim.start_rollout(3, fail_ratio=0.34, duration=0.8)
    async with running(make_config(sim, tmp_path, url)) as api:
        status, _ = await api.call("POST", "/v1/jobs", {"job_ids": jobs, "rollout": "pool-z"})
        assert status == 202
        await until(lambda: all_finished(api, jobs), 15, "every job to finish")

        async def summary_done() -> bool:
            found = await api.call("GET", "/v1/rollouts/pool-z")
            return found[0] == 200 and found[1]["rollout"]["finished"] == 3

        await until(summary_done, 5, "the rollout summary to count every job")
        code, body = await api.call("GET", "/v1/rollouts")
        assert code == 200 and [r["rollout"] for r in body["rollouts"]] == ["pool-z"]
        summary = body["rollouts"][0]
        assert summary["counts"] == {"Success": 2, "Failed": 1} and summary["failed_count"] == 1
        assert summary["line"].startswith("pool-z: 3/3 finished (2 Success, 1 Failed)"), summary["line"]
        assert (await api.call("GET", "/v1/rollouts/nope"))[0] == 404
        assert (await api.call("GET", "/v1/rollouts/..%2Fx"))[0] in (400, 404)

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "monitor.cli", "status", "pool-z", "--api", api.base,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "CCE_MONITOR_API_TOKEN": API_TOKEN},
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        text = out.decode()
        assert text.startswith("pool-z: 3/3 finished (2 Success, 1 Failed)")
        assert "Failed:" in text
        raw = summary["failed"][0]["reason"]
        assert f": {readable_reason(raw)}\n" in text, (raw, text)  # the API keeps it raw, status shows it readably


async def test_a_summary_the_chat_budget_held_at_sigterm_is_sent_after_the_restart(
    sim: Simulator, receiver: tuple[Receiver, str], bot: BotReceiver, tmp_path: Path
) -> None:
    """Chat digests are durable: events wait in the outbox until a message carrying them was delivered."""
    _, url = receiver
    jobs = [sim.add_job("Custom", duration=0.3), sim.add_job("Custom", duration=0.8, fail=True)]
    chat = {"type": "wecom", "url": bot.url, "rate_per_minute": 1, "coalesce": 0}
    config = make_config(sim, tmp_path, url, shutdown_deadline=1.0)
    config = config.model_copy(update={"sinks": [*config.sinks, SinkConfig.model_validate(chat)]})
    async with running(config) as api:
        assert (await api.call("POST", "/v1/jobs", {"job_ids": jobs, "rollout": "pool-x"}))[0] == 202
        await until(lambda: all_finished(api, jobs), 10, "every job to finish")

        async def summarised() -> bool:
            return any(e["type"] == "rollout.finished" for e in file_events(tmp_path))

        await until(summarised, 10, "the rollout to finish")
    # The first message spent the budget (one a minute): the summary waits in the outbox.
    assert len(bot.bodies) == 1 and "Rollout pool-x finished" not in bot.texts()[0]
    assert any(sink.startswith("wecom:") for sink in await outbox_depth(tmp_path))

    async with running(config):

        async def sent() -> bool:
            return any("Rollout pool-x finished" in t for t in bot.texts())

        await until(sent, 10, "the summary to be sent after the restart")
    assert "Rollout pool-x finished: 1/2 succeeded, 1 did not" in bot.texts()[-1]
    assert sum("Rollout pool-x finished" in t for t in bot.texts()) == 1
    assert not any(sink.startswith("wecom:") for sink in await outbox_depth(tmp_path))
    assert bot.violations == 0


async def test_delivery_goes_on_for_other_jobs_while_one_jobs_event_fails(
    sim: Simulator, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    """Per-job order, parallel across jobs: the receiver refuses every event of one job for a while; the other
    jobs' events arrive meanwhile, each job's in order, never two of one job at once; then the held-back job's
    events arrive in their order too, each sent again with its own webhook-id."""
    recv, url = receiver
    stuck = sim.add_job("Custom", duration=0.3)
    others = [sim.add_job("Custom", duration=0.3) for _ in range(3)]
    healed = asyncio.Event()
    in_flight: dict[str, int] = {}
    overlap: list[str] = []

    async def answer(received: Received) -> Reply:
        job = orjson.loads(received.body).get("job_id")
        in_flight[job] = in_flight.get(job, 0) + 1
        if in_flight[job] > 1:
            overlap.append(job)
        await asyncio.sleep(0.02)
        in_flight[job] -= 1
        return Reply(503) if job == stuck and not healed.is_set() else Reply(204)

    recv.reply = answer
    cfg = make_config(sim, tmp_path, url, delivery={"retry_initial": 0.1, "retry_max": 0.3})
    async with running(cfg) as api:
        assert (await api.call("POST", "/v1/jobs", {"job_ids": [stuck, *others]}))[0] == 202

        def finals_of(jobs: list[str]) -> set[str]:
            done = {h.json.get("job_id") for h in recv.delivered if h.json.get("phase") == "Success"}
            return done & set(jobs)

        async def others_done() -> bool:
            return finals_of(others) == set(others)

        await until(others_done, 10, "the other jobs' events, past the stuck one")
        assert not finals_of([stuck]), "the stuck job's events are held back"
        healed.set()

        async def stuck_done() -> bool:
            return finals_of([stuck]) == {stuck}

        await until(stuck_done, 10, "the stuck job's events once the receiver takes them")
    assert not overlap, f"two events of one job at once: {overlap}"
    for job in [stuck, *others]:
        phases = [h.json["phase"] for h in recv.delivered if h.json.get("job_id") == job]
        phases = [p for p in phases if p in ("Initializing", "Running", "Success")]
        assert phases == sorted(phases, key=["Initializing", "Running", "Success"].index), (job, phases)


async def test_a_sink_behind_shows_in_readyz_and_metrics_and_delivery_latency_is_measured(
    sim: Simulator, receiver: tuple[Receiver, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from monitor.daemon import service  # noqa: PLC0415

    monkeypatch.setattr(service, "_REFRESH_EVERY", 0.1)
    recv, url = receiver
    recv.reply = Reply(503)  # the webhook receiver is down; the file sink keeps up
    job = sim.add_job("Custom", duration=0.3)
    cfg = make_config(sim, tmp_path, url, delivery={"retry_initial": 0.1, "retry_max": 0.2, "behind_after": 0.5})
    async with running(cfg) as api:
        assert (await api.call("POST", "/v1/jobs", {"job_ids": [job]}))[0] == 202
        hook = next(name for name in api.daemon.delivery_lag() if name.startswith("webhook:"))

        async def hook_behind() -> bool:
            _, ready = await api.call("GET", "/readyz", auth=False)
            return ready["behind"] == [hook]

        await until(hook_behind, 10, "the webhook sink to be named behind")
        status, ready = await api.call("GET", "/readyz", auth=False)
        assert status == 200 and ready["ready"] is True, ready
        lag = ready["sinks"][hook]
        assert lag["depth"] >= 1 and lag["oldest_age_s"] > 0.5, lag
        assert lag["delivering"] is True, "one daemon, its own SQLite outbox: it delivers"
        assert not any(v["behind"] for k, v in ready["sinks"].items() if k != hook), ready
        _, text = await api.call("GET", "/metrics", auth=False)
        age = re.search(r'cce_monitor_outbox_oldest_age_seconds\{sink="webhook:[^"]*"\} ([0-9.e+-]+)', text)
        assert age and float(age.group(1)) > 0.5, text
        recv.reply = UP

        async def caught_up() -> bool:
            _, ready = await api.call("GET", "/readyz", auth=False)
            return not ready["behind"] and ready["sinks"][hook]["depth"] == 0

        await until(caught_up, 10, "the webhook sink to catch up")
        _, text = await api.call("GET", "/metrics", auth=False)
    counts = dict(re.findall(r'cce_monitor_delivery_latency_seconds_count\{sink="([^"]*)"\} ([0-9.e+]+)', text))
    assert float(counts[hook]) >= 1 and float(counts[f"file:{tmp_path / 'events.jsonl'}"]) >= 1, counts
    slow = re.search(r'cce_monitor_delivery_latency_seconds_bucket\{le="0.5",sink="webhook:[^"]*"\} ([0-9.e+]+)', text)
    assert slow and float(slow.group(1)) < float(counts[hook]), "events held through the outage waited > 0.5 s"


async def test_deliveries_commands_list_and_replay_dead_letters(sim: Simulator, tmp_path: Path) -> None:
    """``deliveries ls`` shows what the receiver refused (the sink named on the command line, URL-encoded in the
    query: its path holds a '+'), never the URL's token; ``deliveries replay --sink`` sends it again."""
    async with Receiver(Reply(422, "schema mismatch"), secret=HOOK_SECRET, path="/a+b/hook?token=s3cret") as recv:
        name = f"webhook:{recv.base}/a+b/hook"
        job = sim.add_job("Custom", duration=0.3)
        async with running(make_config(sim, tmp_path, recv.url)) as api:
            assert (await api.call("POST", "/v1/jobs", {"job_ids": [job]}))[0] == 202
            await until(lambda: all_finished(api, [job]), 15, "the job to finish")
            ids = {e["id"] for e in file_events(tmp_path) if e["job_id"] == job}

            async def all_rejected() -> bool:
                _, body = await api.call("GET", "/v1/deliveries")
                return {r["event"]["id"] for r in body["deliveries"]} == ids

            await until(all_rejected, 10, "every event of the job to be rejected")

            async def cli(*args: str) -> tuple[int, str, str]:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "monitor.cli", "deliveries", *args, "--api", api.base,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                    env={**os.environ, "CCE_MONITOR_API_TOKEN": API_TOKEN},
                )  # fmt: skip
                out, err = await asyncio.wait_for(proc.communicate(), 20)
                assert proc.returncode is not None
                return proc.returncode, out.decode(), err.decode()

            code, out, err = await cli("ls", "--sink", name, "--job", job)
            assert code == 0, err
            lines = out.splitlines()
            assert len(lines) == len(ids) and all(f"{name}  " in line and f"  {job}  1  " in line for line in lines)
            assert all(line.endswith(f"{name}: HTTP 422: schema mismatch") for line in lines), out
            assert "s3cret" not in out
            code, out, err = await cli("ls", "--json", "--state", "pending")
            assert code == 0 and orjson.loads(out) == {"deliveries": []}, err
            code, out, err = await cli("replay")
            assert code == 2 and out == "" and err.count("\n") == 1 and "--sink" in err, (out, err)

            recv.reply = UP
            code, out, err = await cli("replay", "--sink", name)
            assert (code, out) == (0, f"replayed {len(ids)} to {name}\n"), err

            async def all_delivered() -> bool:
                return {r.webhook_id for r in recv.delivered} == ids

            await until(all_delivered, 10, "the replayed events, with their ids")
            code, out, err = await cli("ls")
            assert (code, out) == (0, "no rejected deliveries\n"), err
