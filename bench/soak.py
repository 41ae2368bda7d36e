"""Soak: the daemon against a misbehaving cloud, network and receiver, judged by the simulator's ground truth.

    .venv/bin/python bench/soak.py                                        # 3,000 jobs, 5 rollouts, ~10 minutes
    .venv/bin/python bench/soak.py --jobs 200 --rollouts 3 --minutes 1    # the short version, ~1 minute

Three kinds of process, all on 127.0.0.1:

* ``cce-monitor simulate`` (a child: its own event loop, so its per-second request windows are exact) with
  ~10 % 5xx (500 and HTML 503), 3 % truncated JSON, 2 % slow answers, 1 % dropped connections, a server-side
  rate limit at or above the daemon's rate, a 429 storm (the limit cut to a tenth for a while), IAM tokens
  that live ``0.4 T`` and are all expired once mid-run.
* This process: a webhook receiver that answers 500 to 20 % of requests and is down (not listening; kept-alive
  connections get 503 + ``Connection: close``) for a while in the middle, recording every request's
  ``webhook-id``, body, signature check and arrival time; and the conductor below.
* ``python -m monitor.cli run --config <generated>`` — the daemon under test, with IAM password auth against the
  simulator, a file sink and the webhook sink. It is SIGKILLed twice and restarted with the same config at once
  (``--restart-delay``; it must resume from its state database: jobs are never added again), and stopped with
  SIGTERM (exit 0) at the end. Rate (``--rate``, 60/s) and interval (T/60, 10 s at most, growing x2 to 6x while a
  job is unchanged) are chosen so the daemon keeps up; the demand is estimated from the plan and printed first.

Timeline, as fractions of ``T = --minutes * 60`` seconds (every duration scales with it): rollouts start from
0.02 T to 0.55 T, each in up to four waves 0.02 T apart, two thirds CreateNode jobs of ~0.2 T and one third
DeleteNode jobs of ~0.12 T, 10 % failing; the first rollout's last wave comes late, at 0.6 T, after the rest of
it has finished (``--no-straggler`` to skip); a 429 storm from the first wave after 0.2 T for ``--storm``
(0.05 T); SIGKILLs spread over 0.33-0.5 T; receiver down at 0.45 T for ``--outage`` (0.1 T); all tokens expired
at 0.62 T. Then: wait until every job is final, both outboxes are empty and every rollout's rollout.finished is
recorded, SIGTERM, compare.

Figures (one JSON line on stdout, then a table; a copy in ``bench/results/soak.json`` unless ``--no-save``):

* transitions: the daemon's recorded history (expected deliveries: job events + rollout digests), how many of
  the simulator's true (uid, phase) transitions it observed, phantoms (observed but never true), and whether
  every job's final phase matches the truth;
* per sink: unique ids delivered, lost, duplicates (same id again), ids whose bodies differ between deliveries,
  the largest outbox backlog; whether each rollout's last word at both sinks is a complete rollout.finished;
* requests over the configured rate in the simulator's one-second windows, 429s (during/outside the storm);
* the daemon's peak RSS (max of VmHWM over its lifetimes) and CPU seconds (utime + stime summed over them),
  read from /proc just before each kill and before the final SIGTERM;
* p50/p99/max delay from a true transition (simulator truth time of that uid + phase) to the first successful
  delivery of its event at the receiver, and from its detection (``event.time``) to that delivery; each also
  outside the outage window (events that did not wait through it: detected after the receiver came back or
  delivered before it went down). The first includes polling (intervals grow to 6x while a job is unchanged),
  the second is what delivery adds.

Exit status 1 if any must-be-zero figure is not zero (lost, differing bodies, over-rate requests, wrong final
phases, phantom transitions, rows left or rejected in an outbox, bad signatures, a non-zero exit on SIGTERM, a
restart that did not resume, a rollout never announced finished), else 0. The work directory (config, logs,
state, events file) is kept and named. SIGINT/SIGTERM and ``--limit`` stop the children before exiting.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import random
import re
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from _common import HOST, ROOT, distribution, report
from aiohttp import web

CLI = [sys.executable, "-m", "monitor.cli"]
API_TOKEN = "soak-api-token"
WEBHOOK_SECRET = "soak-webhook-secret"
# The simulator's default IAM user (SimulatorConfig): the daemon authenticates with it.
IAM_USER, IAM_PASSWORD, IAM_DOMAIN = "monitor", "sim-password", "sim-domain"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PHASE_TYPES = ("job.phase_changed", "subjob.phase_changed")
# Simulator faults (per request to the job API): ~10 % 5xx in all.
FAULTS = {"p_500": 0.07, "p_503_html": 0.03, "p_malformed": 0.03, "p_slow": 0.02, "p_drop": 0.01}
RECEIVER_FAILS = 0.2
# When, within a job of duration d, the simulator's CreateNode / DeleteNode jobs change (for the demand estimate).
CHANGES = {"CreateNode": (0.055, 0.45, 1.0), "DeleteNode": (0.055, 1.0)}

_started = time.monotonic()


def say(message: str) -> None:
    """Progress on stderr; stdout carries only the result."""
    print(f"[{time.monotonic() - _started:7.1f}s] {message}", file=sys.stderr, flush=True)


# --- the plan ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wave:
    at: float
    """Seconds after the start of the timeline."""
    rollout: str
    batches: tuple[tuple[str, int, float], ...]
    """(job type, count, duration in seconds)."""

    @property
    def count(self) -> int:
        return sum(n for _, n, _ in self.batches)


@dataclass(frozen=True, slots=True)
class Plan:
    T: float
    jobs: int
    rollouts: int
    rate: float
    server_rate: float
    interval: float
    max_interval: float
    backoff: float
    """Growth of the delay per unchanged poll; the first polls of a wave are spread over one interval."""
    waves: tuple[Wave, ...]
    storm_at: float
    storm_for: float
    outage_at: float
    outage_for: float
    kills: tuple[float, ...]
    expire_at: float
    token_ttl: float
    slow_seconds: float
    http_timeout: float

    @property
    def last_end(self) -> float:
        """When the last job is planned to end."""
        return max(w.at + d for w in self.waves for _, _, d in w.batches)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def make_plan(args: argparse.Namespace) -> Plan:
    T = args.minutes * 60.0
    rng = random.Random(f"{args.seed}:plan")
    interval = args.interval or min(10.0, max(1.0, args.minutes))
    waves = []
    for r, n in enumerate(_split(args.jobs, args.rollouts)):
        start = T * (0.02 + 0.53 * r / max(1, args.rollouts - 1))
        for w, m in enumerate(_split(n, max(1, min(4, n // 25)))):
            creates = round(m * 2 / 3)
            batches = (
                ("CreateNode", creates, round(0.2 * T * rng.uniform(0.8, 1.2), 2)),
                ("DeleteNode", m - creates, round(0.12 * T * rng.uniform(0.8, 1.2), 2)),
            )
            waves.append(Wave(start + w * 0.02 * T, f"soak-{r + 1}", tuple(b for b in batches if b[1])))
    if args.straggler and len(waves) > 1 and waves[1].rollout == waves[0].rollout:
        # The first rollout's last wave comes late, after the rest of that rollout has finished: rollout tooling
        # retrying a batch under the same rollout name. The rollout finishes a second time.
        last = max(i for i, w in enumerate(waves) if w.rollout == waves[0].rollout)
        waves[last] = Wave(0.6 * T, waves[last].rollout, waves[last].batches)
        waves.sort(key=lambda w: w.at)
    kills = args.kills
    return Plan(
        T=T,
        jobs=args.jobs,
        rollouts=args.rollouts,
        rate=args.rate,
        server_rate=args.server_rate or args.rate * 1.1,
        interval=interval,
        max_interval=6 * interval,
        backoff=2.0,
        waves=tuple(waves),
        # The storm starts with the first wave after 0.2 T, when there is certainly polling to throttle.
        storm_at=next((w.at for w in waves if w.at >= 0.2 * T), 0.25 * T),
        storm_for=args.storm if args.storm is not None else max(3.0, 0.05 * T),
        outage_at=0.45 * T,
        outage_for=args.outage if args.outage is not None else 0.1 * T,
        kills=tuple(T * (0.33 + 0.17 * i / max(1, kills - 1)) for i in range(kills)),
        expire_at=0.62 * T,
        token_ttl=0.4 * T,
        slow_seconds=min(3.0, max(1.0, interval / 3)),
        http_timeout=5.0,
    )


def estimate_demand(plan: Plan, fault_share: float) -> dict[str, float]:
    """Requests/s the plan asks for if every poll were on time (no rate limit), per second of the timeline.

    Each job is first polled within one interval of being added (``initial_delay``), then after ``interval``
    growing by ``backoff`` up to ``max_interval`` while unchanged, reset at every change (CHANGES); failed polls
    add about ``fault_share`` more requests.
    """
    per_second: Counter[int] = Counter()
    for wave in plan.waves:
        for job_type, count, duration in wave.batches:
            marks = [wave.at + f * duration for f in CHANGES.get(job_type, (1.0,))]
            end = wave.at + duration
            for j in range(count):
                t, delay = wave.at + plan.interval * (j + 0.5) / count, plan.interval
                per_second[int(t)] += 1
                while t < end:
                    before, t = t, t + delay
                    per_second[int(t)] += 1
                    changed = any(before < m <= t for m in marks)
                    delay = plan.interval if changed else min(plan.max_interval, delay * plan.backoff)
    if not per_second:
        return {"mean": 0.0, "peak_10s": 0.0, "requests": 0}
    factor = 1 / (1 - fault_share)
    first, last = min(per_second), max(per_second)
    total = sum(per_second.values()) * factor
    peak = max(sum(per_second.get(s, 0) for s in range(t, t + 10)) for t in range(first, last + 1)) / 10 * factor
    return {"mean": round(total / max(1, last - first + 1), 1), "peak_10s": round(peak, 1), "requests": round(total)}


# --- the simulator (child process) --------------------------------------------------------------------------------


class SimProcess:
    """``cce-monitor simulate`` in a child process and its ``/_sim/`` control API."""

    def __init__(self, proc: asyncio.subprocess.Process, hello: dict[str, Any], session: aiohttp.ClientSession):
        self.proc = proc
        self.endpoint: str = hello["endpoint"]
        self.project_id: str = hello["project_id"]
        self.ready_at = time.monotonic()
        self._session = session

    @classmethod
    async def start(cls, plan: Plan, seed: int, log: Path, session: aiohttp.ClientSession) -> SimProcess:
        cmd = [*CLI, "simulate", "--host", HOST, "--port", "0", "--jobs", "0", "--seed", str(seed)]
        cmd += ["--rate", f"{plan.server_rate:g}", "--token-ttl", f"{plan.token_ttl:g}", "--log-level", "warning"]
        cmd += ["--p-500", str(FAULTS["p_500"]), "--p-503", str(FAULTS["p_503_html"])]
        cmd += ["--p-malformed", str(FAULTS["p_malformed"]), "--p-drop", str(FAULTS["p_drop"])]
        cmd += ["--p-slow", str(FAULTS["p_slow"]), "--slow-seconds", f"{plan.slow_seconds:g}"]
        fd = _open_log(log)
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=fd, cwd=ROOT
            )
        finally:
            os.close(fd)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
        except TimeoutError:
            line = b""
        if not line:
            proc.kill()
            await proc.wait()
            raise SystemExit(f"the simulator did not start; see {log}")
        return cls(proc, orjson.loads(line), session)

    async def _call(self, method: str, path: str, body: object = None, **params: str) -> Any:
        data = orjson.dumps(body) if body is not None else None
        async with self._session.request(method, self.endpoint + path, data=data, params=params) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"simulator {method} {path}: {resp.status} {raw[:200]!r}")
            return orjson.loads(raw)

    async def add_jobs(self, count: int, job_type: str, duration: float, fail_ratio: float) -> list[str]:
        spec = {"count": count, "type": job_type, "duration": duration, "fail_ratio": fail_ratio}
        ids: list[str] = (await self._call("POST", "/_sim/jobs", spec))["job_ids"]
        return ids

    async def faults(self, **changes: object) -> None:
        await self._call("POST", "/_sim/faults", changes)

    async def truth(self, job_id: str) -> list[dict[str, Any]]:
        transitions: list[dict[str, Any]] = (await self._call("GET", "/_sim/truth", job_id=job_id))["transitions"]
        return transitions

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self._call("GET", "/_sim/stats")
        return stats

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def _open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


# --- the webhook receiver (this process) ---------------------------------------------------------------------------


@dataclass(slots=True)
class Hit:
    webhook_id: str
    body: bytes
    at_ns: int
    status: int
    signed: bool


class Receiver:
    """Fails ``p_fail`` of requests with 500 (seeded); can go down (stop listening) and come back on its port."""

    def __init__(self, p_fail: float, seed: int) -> None:
        self.p_fail = p_fail
        self._rng = random.Random(f"{seed}:receiver")
        self.hits: list[Hit] = []
        self.first_ok: dict[str, int] = {}
        self.down = False
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._key = WEBHOOK_SECRET.encode()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/hook"

    def _signed(self, request: web.Request, body: bytes) -> bool:
        wid = request.headers.get("webhook-id", "")
        ts = request.headers.get("webhook-timestamp", "")
        digest = hmac.new(self._key, f"{wid}.{ts}.".encode() + body, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(digest).decode()
        given = request.headers.get("webhook-signature", "").split()
        return any(hmac.compare_digest(expected, g) for g in given)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        at = time.time_ns()
        wid = request.headers.get("webhook-id", "")
        # While down, only a connection kept alive from before the outage gets here: refuse it and close it.
        status = 503 if self.down else 500 if self._rng.random() < self.p_fail else 204
        self.hits.append(Hit(wid, body, at, status, self._signed(request, body)))
        if status == 204:
            self.first_ok.setdefault(wid, at)
        return web.Response(status=status, headers={"Connection": "close"} if self.down else None)

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, HOST, 0)
        await self._site.start()
        self.port = self._runner.addresses[0][1]

    async def go_down(self) -> None:
        self.down = True
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def come_up(self) -> None:
        assert self._runner is not None
        for _ in range(100):
            site = web.TCPSite(self._runner, HOST, self.port)
            try:
                await site.start()
            except OSError:
                await asyncio.sleep(0.1)
                continue
            self._site = site
            self.down = False
            return
        raise RuntimeError(f"the receiver could not listen on port {self.port} again")

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# --- the daemon (child process) ------------------------------------------------------------------------------------


def _proc_figures(pid: int) -> tuple[int, float]:
    """(VmHWM in kB, utime + stime in seconds) of a live process; (0, 0.0) if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0, 0.0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    fields = stat.rsplit(")", 1)[1].split()
    return int(match.group(1)) if match else 0, (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass(slots=True)
class Life:
    pid: int
    log: Path
    hwm_kb: int = 0
    cpu_s: float = 0.0
    ended_by: str = ""
    exit_code: int | None = None
    resumed: int | None = None
    """Jobs it said it tracks again from the database at start-up (None on the first start)."""
    unfinished_before: int = 0
    """Unfinished jobs in the database just before the previous daemon was killed."""


class DaemonProcess:
    """``cce-monitor run`` in a subprocess; its API address is read from its log (the INFO line "API on ...")."""

    def __init__(self, config: Path, env: dict[str, str], workdir: Path) -> None:
        self.config = config
        self.env = env
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None
        self.api = ""
        self.lives: list[Life] = []

    async def start(self) -> str:
        log = self.workdir / f"daemon-{len(self.lives) + 1}.log"
        fd = _open_log(log)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *CLI, "run", "--config", str(self.config), "--log-level", "info",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=fd, env=self.env, cwd=ROOT,
            )  # fmt: skip
        finally:
            os.close(fd)
        life = Life(self.proc.pid, log)
        self.lives.append(life)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = log.read_bytes().decode(errors="replace")
            match = re.search(r"API on (http://127\.0\.0\.1:\d+)", text)
            if match:
                self.api = match.group(1)
                resumed = re.search(r"tracking (\d+) unfinished jobs", text)
                life.resumed = int(resumed.group(1)) if resumed else (0 if len(self.lives) > 1 else None)
                return self.api
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the daemon did not start; see {log}")

    def _sample(self) -> Life:
        assert self.proc is not None
        life = self.lives[-1]
        hwm, cpu = _proc_figures(self.proc.pid)
        life.hwm_kb, life.cpu_s = max(life.hwm_kb, hwm), max(life.cpu_s, cpu)
        return life

    async def kill(self) -> Life:
        assert self.proc is not None
        life = self._sample()
        self.proc.send_signal(signal.SIGKILL)
        life.exit_code = await asyncio.wait_for(self.proc.wait(), 30)
        life.ended_by = "SIGKILL"
        self.proc = None
        return life

    async def terminate(self, grace: float) -> Life:
        assert self.proc is not None
        life = self._sample()
        self.proc.send_signal(signal.SIGTERM)
        try:
            life.exit_code = await asyncio.wait_for(self.proc.wait(), grace)
            life.ended_by = "SIGTERM"
        except TimeoutError:
            self.proc.kill()
            life.exit_code = await self.proc.wait()
            life.ended_by = "SIGTERM, then SIGKILL after the timeout"
        self.proc = None
        return life

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self._sample()
            self.proc.kill()
            await self.proc.wait()
            self.lives[-1].ended_by = self.lives[-1].ended_by or "killed at cleanup"
        self.proc = None


def daemon_config(plan: Plan, sim: SimProcess, receiver: Receiver, workdir: Path) -> dict[str, Any]:
    interval = plan.interval
    return {
        "endpoint": sim.endpoint,
        "project_id": sim.project_id,
        "iam_endpoint": sim.endpoint,
        "auth": {"password": {"user": IAM_USER, "password": "${SOAK_IAM_PASSWORD}", "domain": IAM_DOMAIN}},
        "http": {"connect_timeout": 5, "total_timeout": plan.http_timeout, "max_connections": 64},
        "polling": {
            "rate": plan.rate,
            "max_in_flight": 32,
            "interval": interval,
            "min_interval": min(1.0, interval),
            "max_interval": plan.max_interval,
            "backoff": plan.backoff,
            "jitter": 0.1,
            "initial_delay": interval,
            "job_timeout": 3 * plan.T + 600,  # a job timing out would be a wrong final phase: never here
            "stall_after": 3 * plan.T + 600,
            "failure_threshold": 3,
            "error_backoff": max(0.5, interval / 5),
            "error_backoff_max": plan.max_interval,
            "auth_backoff": max(1.0, interval / 2),
            "auth_backoff_max": plan.max_interval,
        },
        "sinks": [
            {"type": "file", "path": str(workdir / "events.jsonl")},
            {
                "type": "webhook",
                "url": receiver.url,
                "secret": "${SOAK_WEBHOOK_SECRET}",
                "max_attempts": 3,
                "backoff_initial": 0.05,
                "backoff_max": 0.5,
                "rate": 1000,
                "timeout": 5,
            },
        ],
        "rollouts": {"interval": max(2.0, 3 * interval)},
        "state": {"path": str(workdir / "state.db")},
        "api": {"listen": "127.0.0.1:0", "token": "${SOAK_API_TOKEN}"},
        "shutdown_deadline": 3,
        "logging": {"level": "info"},
    }


# --- the state database, read-only ---------------------------------------------------------------------------------


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def db_progress(path: Path) -> dict[str, Any]:
    """Finished jobs, undelivered outbox rows per sink, and the rollouts with a complete rollout.finished digest
    recorded (finished = total = members now); the daemon may be running."""
    with contextlib.closing(_ro(path)) as conn:
        jobs, finished = conn.execute("SELECT COUNT(*), COUNT(outcome) FROM jobs").fetchone()
        pending = dict(conn.execute("SELECT sink, COUNT(*) FROM outbox WHERE delivered_at IS NULL GROUP BY sink"))
        members = dict(conn.execute("SELECT rollout, COUNT(*) FROM jobs GROUP BY rollout"))
        pattern = '%"type":"rollout.finished"%'
        digests = [
            orjson.loads(r[0])
            for r in conn.execute("SELECT event FROM outbox WHERE CAST(event AS TEXT) LIKE ?", (pattern,))
        ]
    complete = {d["rollout"] for d in digests if _complete(d, members.get(d["rollout"], -1))}
    return {"jobs": jobs, "finished": finished, "pending": pending, "rollouts_complete": complete}


def _complete(digest: dict[str, Any], members: int) -> bool:
    """Whether a rollout digest is the final word on a rollout of ``members`` jobs."""
    summary = digest.get("summary") or {}
    return digest["type"] == "rollout.finished" and summary.get("finished") == summary.get("total") == members


@dataclass(slots=True)
class Stored:
    jobs: dict[str, tuple[str | None, str | None, str | None]]
    """job id -> (phase, outcome, rollout)."""
    history: list[tuple[str, str, bytes]]
    """(job id, event id, event) in recording order."""
    outbox: list[tuple[str, str, bytes, float | None, int]]
    """(sink, event id, event, delivered_at, rejected)."""


def read_state(path: Path) -> Stored:
    with contextlib.closing(_ro(path)) as conn:
        jobs = {r[0]: (r[1], r[2], r[3]) for r in conn.execute("SELECT job_id, phase, outcome, rollout FROM jobs")}
        history = [
            (r[0], r[1], bytes(r[2])) for r in conn.execute("SELECT job_id, event_id, event FROM history ORDER BY seq")
        ]
        outbox = [
            (r[0], r[1], bytes(r[2]), r[3], r[4])
            for r in conn.execute("SELECT sink, event_id, event, delivered_at, rejected FROM outbox ORDER BY seq")
        ]
    return Stored(jobs, history, outbox)


# --- the run -------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything the conductor learns on the way; analysed at the end."""

    plan: Plan
    workdir: Path
    jobs: dict[str, str] = field(default_factory=dict)
    """job id -> rollout."""
    marks: dict[str, int] = field(default_factory=dict)
    """Simulator throttled-count snapshots around the storm."""
    actions: list[tuple[float, float, str]] = field(default_factory=list)
    """(planned at, done at, what) relative to the timeline start."""
    demand: dict[str, float] = field(default_factory=dict)
    restart_delay: float = 0.0
    """Seconds between a SIGKILL and the restart (0: at once, as a supervisor restarts a crashed service)."""
    max_pending: dict[str, int] = field(default_factory=dict)
    """The largest outbox backlog seen per sink kind (sampled every 2 s)."""
    sim_epoch: float = 0.0
    """The simulator's clock zero on the timeline (seconds, approximate: when its handshake arrived)."""
    sigterm_exit: int | None = None
    drained: bool = False
    wall: float = 0.0


async def api_post(session: aiohttp.ClientSession, base: str, path: str, body: object) -> Any:
    headers = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}
    async with session.post(base + path, data=orjson.dumps(body), headers=headers) as resp:
        raw = await resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"daemon API POST {path}: {resp.status} {raw[:200]!r}")
        return orjson.loads(raw)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    plan = make_plan(args)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cce-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(plan, workdir, restart_delay=args.restart_delay)
    fault_share = 1 - (1 - FAULTS["p_500"]) * (1 - FAULTS["p_503_html"]) * (1 - FAULTS["p_malformed"]) * (
        1 - FAULTS["p_drop"]
    )
    demand = run.demand = estimate_demand(plan, fault_share)
    say(
        f"plan: {plan.jobs} jobs in {plan.rollouts} rollouts ({len(plan.waves)} waves) over T = {plan.T:g} s; "
        f"interval {plan.interval:g}-{plan.max_interval:g} s (x{plan.backoff:g} while unchanged)"
    )
    share = demand["mean"] / plan.rate
    say(
        f"demand if every poll were on time: mean {demand['mean']}/s = {share:.0%} of the rate {plan.rate:g}/s "
        f"(server limit {plan.server_rate:g}/s), busiest 10 s {demand['peak_10s']}/s"
        + (" (a short backlog at wave starts: intervals stretch)" if demand["peak_10s"] > plan.rate else "")
        + ("; WARNING: the daemon cannot keep up on average" if share > 1 else "")
    )
    say(f"work directory {workdir}")
    receiver = Receiver(RECEIVER_FAILS, args.seed)
    daemon: DaemonProcess | None = None
    sim: SimProcess | None = None
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            await receiver.start()
            sim = await SimProcess.start(plan, args.seed, workdir / "simulator.log", session)
            config = workdir / "config.yaml"
            config.write_text(yaml.safe_dump(daemon_config(plan, sim, receiver, workdir), sort_keys=False))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("CCE_", "HUAWEICLOUD_"))}
            env.update(SOAK_IAM_PASSWORD=IAM_PASSWORD, SOAK_API_TOKEN=API_TOKEN, SOAK_WEBHOOK_SECRET=WEBHOOK_SECRET)
            daemon = DaemonProcess(config, env, workdir)
            await daemon.start()
            say(f"simulator {sim.endpoint}, receiver {receiver.url}, daemon {daemon.api} (pid {daemon.lives[-1].pid})")
            await conduct(run, sim, receiver, daemon, session, deadline=_started + args.limit - 30)
            life = await daemon.terminate(grace=30)
            run.sigterm_exit = life.exit_code
            say(f"SIGTERM: exit {life.exit_code}")
            stats = await sim.stats()
            truth = await _all_truth(sim, list(run.jobs))
        finally:
            if daemon is not None:
                await daemon.close()
            if sim is not None:
                await sim.stop()
            await receiver.close()
    run.wall = time.monotonic() - _started
    return analyse(run, daemon.lives, receiver, stats, truth)


async def _all_truth(sim: SimProcess, job_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    gate = asyncio.Semaphore(16)

    async def one(job_id: str) -> tuple[str, list[dict[str, Any]]]:
        async with gate:
            return job_id, await sim.truth(job_id)

    return dict(await asyncio.gather(*(one(j) for j in job_ids)))


async def conduct(
    run: Run,
    sim: SimProcess,
    receiver: Receiver,
    daemon: DaemonProcess,
    session: aiohttp.ClientSession,
    *,
    deadline: float,
) -> None:
    """Play the timeline (one action at a time, so a kill never overlaps adding jobs), then wait for the end."""
    plan = run.plan
    t0 = time.monotonic()
    run.sim_epoch = sim.ready_at - t0
    state_db = run.workdir / "state.db"

    def wave_action(wave: Wave, index: int) -> Callable[[], Awaitable[str]]:
        async def add() -> str:
            ids: list[str] = []
            for job_type, count, duration in wave.batches:
                ids += await sim.add_jobs(count, job_type, duration, fail_ratio=0.1)
            result = await api_post(
                session, daemon.api, "/v1/jobs", {"job_ids": ids, "rollout": wave.rollout, "labels": {"soak": "yes"}}
            )
            if result["known"]:
                raise RuntimeError(f"the daemon knew {len(result['known'])} new job ids already")
            run.jobs.update(dict.fromkeys(ids, wave.rollout))
            kinds = ", ".join(f"{n} {t} of {d:g}s" for t, n, d in wave.batches)
            return f"wave {index}: {len(ids)} jobs added to {wave.rollout} ({kinds})"

        return add

    async def storm_on() -> str:
        run.marks["storm_start"] = (await sim.stats())["throttled"]
        low = max(1.0, plan.rate / 10)
        await sim.faults(rate_limit=low, rate_burst=max(1, round(low)))
        return f"429 storm: server limit {low:g}/s for {plan.storm_for:g}s"

    async def storm_off() -> str:
        await sim.faults(rate_limit=plan.server_rate, rate_burst=None)
        run.marks["storm_end"] = (await sim.stats())["throttled"]
        return f"429 storm over: server limit {plan.server_rate:g}/s again"

    async def outage_on() -> str:
        run.marks["outage_on_ns"] = time.time_ns()
        await receiver.go_down()
        return f"receiver down for {plan.outage_for:g}s"

    async def outage_off() -> str:
        await receiver.come_up()
        run.marks["outage_off_ns"] = time.time_ns()
        return "receiver up again"

    async def expire() -> str:
        await sim.faults(expire_tokens=True)
        return "every IAM token expired"

    def kill_action(number: int) -> Callable[[], Awaitable[str]]:
        async def kill() -> str:
            before = await asyncio.to_thread(db_progress, state_db)
            life = await daemon.kill()
            await asyncio.sleep(run.restart_delay)
            await daemon.start()
            daemon.lives[-1].unfinished_before = before["jobs"] - before["finished"]
            resumed = daemon.lives[-1].resumed
            return (
                f"SIGKILL #{number} (pid {life.pid}: VmHWM {life.hwm_kb / 1024:.0f} MB, CPU {life.cpu_s:.1f}s); "
                f"restarted, tracking {resumed} unfinished jobs again"
            )

        return kill

    actions: list[tuple[float, str, Callable[[], Awaitable[str]]]] = [
        (w.at, "wave", wave_action(w, i + 1)) for i, w in enumerate(plan.waves)
    ]
    actions += [(plan.storm_at, "storm", storm_on), (plan.storm_at + plan.storm_for, "storm-off", storm_off)]
    actions += [(plan.outage_at, "outage", outage_on), (plan.outage_at + plan.outage_for, "outage-off", outage_off)]
    actions += [(at, "kill", kill_action(i + 1)) for i, at in enumerate(plan.kills)]
    actions += [(plan.expire_at, "expire", expire)]
    actions.sort(key=lambda a: a[0])

    async def reporter() -> None:
        """Sample the outbox backlog every 2 s; say how things go every T/20."""
        every = max(5.0, plan.T / 20)
        last = time.monotonic()
        while True:
            await asyncio.sleep(2.0)
            with contextlib.suppress(sqlite3.Error):
                p = await asyncio.to_thread(db_progress, state_db)
                for sink, n in p["pending"].items():
                    kind = sink.split(":", 1)[0]
                    run.max_pending[kind] = max(run.max_pending.get(kind, 0), n)
                if time.monotonic() - last >= every:
                    last = time.monotonic()
                    say(
                        f"progress: {p['finished']}/{len(run.jobs)} jobs final, "
                        f"outbox pending {sum(p['pending'].values())}, "
                        f"receiver {len(receiver.first_ok)} ids, {len(receiver.hits)} requests"
                    )

    progress = asyncio.create_task(reporter(), name="reporter")
    try:
        for at, name, action in actions:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            what = await action()
            done = time.monotonic() - t0
            run.actions.append((round(at, 1), round(done, 1), name))
            say(what + (f" ({done - at:.1f}s late)" if done - at > 1 else ""))
        # The end: every job final, every outbox row delivered, a rollout.finished per rollout recorded.
        digest_grace = None
        while True:
            if daemon.proc is None or daemon.proc.returncode is not None:
                raise RuntimeError(f"the daemon exited unexpectedly; see {daemon.lives[-1].log}")
            p = await asyncio.to_thread(db_progress, state_db)
            now = time.monotonic()
            settled = p["finished"] == len(run.jobs) and not any(p["pending"].values())
            if settled and len(p["rollouts_complete"]) >= plan.rollouts:
                run.drained = True
                break
            if settled:  # wait a little for digests still to come, then go on without them
                digest_grace = digest_grace or now + max(10.0, 4 * plan.interval)
                if now > digest_grace:
                    run.drained = True
                    break
            if now > deadline:
                say(f"gave up waiting: {p}")
                break
            await asyncio.sleep(0.5)
        say(f"settled {time.monotonic() - t0:.1f}s into the timeline (last job planned to end at {plan.last_end:.0f}s)")
    finally:
        progress.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress


# --- the figures ---------------------------------------------------------------------------------------------------


def _uid(event: dict[str, Any]) -> str:
    return event["subjob_id"] or event["job_id"]


def _delay_row(d: dict[str, Any]) -> str:
    return f"p50 {d['p50']} s, p99 {d['p99']} s, max {d['max']} s ({d['count']} transitions)" if d["count"] else "-"


def _file_lines(path: Path) -> tuple[list[tuple[str, bytes]], int]:
    """(id, line) of every parseable line of the file sink, and how many lines were not JSON."""
    good, bad = [], 0
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                good.append((orjson.loads(line)["id"], line))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                bad += 1
    return good, bad


def _log_scan(lives: list[Life]) -> dict[str, Any]:
    tracebacks, errors, samples = 0, Counter[str](), []
    for life in lives:
        text = life.log.read_text(errors="replace") if life.log.exists() else ""
        tracebacks += text.count("Traceback (most recent call last)")
        for line in text.splitlines():
            if " ERROR " in line:
                # Group by the message shape: ids, numbers and quoted parts out.
                shape = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|[0-9a-f]{32}|\d+(\.\d+)?", "#", line.split(" ERROR ", 1)[1])
                errors[shape[:120]] += 1
        for match in re.finditer(r"^.*Traceback \(most recent call last\).*$(\n.*){0,30}", text, re.MULTILINE):
            if len(samples) < 3:
                samples.append(match.group(0)[-1500:])
    return {"tracebacks": tracebacks, "errors": dict(errors.most_common(10)), "traceback_samples": samples}


def analyse(
    run: Run,
    lives: list[Life],
    receiver: Receiver,
    stats: dict[str, Any],
    truth: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    plan = run.plan
    stored = read_state(run.workdir / "state.db")

    # Ground truth vs the daemon: final phases, transitions observed, phantoms.
    wrong_final = []
    for job_id in run.jobs:
        final = [t["phase"] for t in truth[job_id] if t["uid"] == job_id][-1]
        phase, outcome, _ = stored.jobs.get(job_id, (None, None, None))
        if outcome != final or phase != final:
            wrong_final.append((job_id, final, phase, outcome))
    history = [(job_id, eid, orjson.loads(raw), raw) for job_id, eid, raw in stored.history]
    true_at = {(t["uid"], t["phase"]): t["at_ns"] for ts in truth.values() for t in ts}
    seen_pairs = {(_uid(e), e["phase"]) for _, _, e, _ in history if e["type"] in PHASE_TYPES}
    observed = len(seen_pairs & true_at.keys())
    phantoms = sorted(seen_pairs - true_at.keys())
    last_phase: dict[str, str] = {}  # each job's last job.phase_changed, in recording order
    for job_id, _, e, _ in history:
        if e["type"] == "job.phase_changed":
            last_phase[job_id] = e["phase"]
    last_event_wrong = [j for j in run.jobs if last_phase.get(j) is None or last_phase[j] != stored.jobs[j][1]]
    history_types = Counter(e["type"] for _, _, e, _ in history)

    # What each durable sink should have got: its outbox rows (job events and rollout digests).
    sinks = sorted({row[0] for row in stored.outbox})
    webhook_sink = next((s for s in sinks if s.startswith("webhook:")), "")
    file_sink = next((s for s in sinks if s.startswith("file:")), "")
    expected: dict[str, dict[str, bytes]] = {s: {} for s in sinks}
    for sink, eid, raw, _, _ in stored.outbox:
        expected[sink][eid] = raw
    unrouted = {s: len({eid for _, eid, _, _ in history} - expected[s].keys()) for s in sinks}
    pending = Counter(row[0] for row in stored.outbox if row[3] is None)
    rejected = Counter(row[0] for row in stored.outbox if row[4])
    digests = Counter(
        orjson.loads(raw)["type"]
        for eid, raw in expected.get(webhook_sink, {}).items()
        if orjson.loads(raw)["job_id"] is None
    )

    # The webhook receiver.
    want = expected.get(webhook_sink, {})
    ok_counts = Counter(h.webhook_id for h in receiver.hits if h.status == 204)
    bodies: dict[str, set[bytes]] = {}
    for h in receiver.hits:
        bodies.setdefault(h.webhook_id, set()).add(h.body)
    hook_lost = sorted(want.keys() - ok_counts.keys())
    hook_unexpected = sorted(ok_counts.keys() - want.keys())
    hook_mismatch = sorted(i for i, b in bodies.items() if len(b) > 1)
    hook_vs_stored = sorted(
        i for i, b in bodies.items() if i in want and orjson.loads(next(iter(b))) != orjson.loads(want[i])
    )
    hook_id_mismatch = sum(1 for h in receiver.hits if orjson.loads(h.body).get("id") != h.webhook_id)
    unsigned = sum(1 for h in receiver.hits if not h.signed)
    statuses = Counter(h.status for h in receiver.hits)

    # The file sink.
    lines, corrupt = _file_lines(run.workdir / "events.jsonl")
    file_counts = Counter(i for i, _ in lines)
    file_bodies: dict[str, set[bytes]] = {}
    for i, line in lines:
        file_bodies.setdefault(i, set()).add(line)
    want_file = expected.get(file_sink, {})
    file_lost = sorted(want_file.keys() - file_counts.keys())
    file_mismatch = sorted(i for i, b in file_bodies.items() if len(b) > 1)
    file_vs_stored = sorted(
        i
        for i, b in file_bodies.items()
        if i in want_file and orjson.loads(next(iter(b))) != orjson.loads(want_file[i])
    )

    # Rollouts: each one's final word, at the receiver and in the file, says all of its jobs finished.
    members = Counter(run.jobs.values())

    def final_word(bodies: list[bytes]) -> set[str]:
        digests = [d for d in map(orjson.loads, bodies) if d.get("job_id") is None]
        return {d["rollout"] for d in digests if _complete(d, members.get(d.get("rollout"), -1))}

    announced = final_word([h.body for h in receiver.hits if h.status == 204]) & final_word([b for _, b in lines])
    unannounced = sorted(set(members) - announced)

    # The simulator's view: the rate, 429s, IAM. Its windows are whole seconds since it started.
    windows = {int(k): v for k, v in stats["per_second"].items()}
    over_rate = sum(max(0, n - int(plan.rate)) for n in windows.values())
    over_windows = [[round(run.sim_epoch + k, 1), n] for k, n in sorted(windows.items()) if n > plan.rate]
    busiest = max(windows.values(), default=0)
    throttled = stats["throttled"]
    in_storm = run.marks.get("storm_end", 0) - run.marks.get("storm_start", 0)

    # Delay: true transition -> first successful delivery at the receiver, and detection (event.time) -> that
    # delivery. "Outside the outage window": events that did not wait through it — detected after the receiver
    # came back, or delivered before it went down.
    delays, outside, delivery, delivery_outside = [], [], [], []
    down = (run.marks.get("outage_on_ns", 0), run.marks.get("outage_off_ns", 0))
    for _, eid, e, _ in history:
        if e["type"] in PHASE_TYPES and eid in receiver.first_ok:
            ok = receiver.first_ok[eid]
            detected = datetime.fromisoformat(e["time"]).timestamp() * 1e9
            clear = detected > down[1] or ok < down[0]
            delivery.append((ok - detected) / 1e9)
            if clear:
                delivery_outside.append((ok - detected) / 1e9)
            at = true_at.get((_uid(e), e["phase"]))
            if at is not None:
                delays.append((ok - at) / 1e9)
                if clear:
                    outside.append((ok - at) / 1e9)

    restarts_not_resumed = [life.pid for life in lives[1:] if life.unfinished_before and not life.resumed]
    logs = _log_scan(lives)
    peak_rss_mb = max((life.hwm_kb for life in lives), default=0) / 1024
    cpu = sum(life.cpu_s for life in lives)

    must_be_zero = {
        "jobs_not_final": sum(1 for j in run.jobs if stored.jobs.get(j, (None, None))[1] is None),
        "final_phase_wrong": len(wrong_final),
        "final_event_wrong": len(last_event_wrong),
        "phantom_transitions": len(phantoms),
        "webhook_lost": len(hook_lost),
        "file_lost": len(file_lost),
        "history_not_in_outbox": sum(unrouted.values()),
        "webhook_bodies_differ": len(hook_mismatch) + len(hook_vs_stored) + hook_id_mismatch,
        "file_bodies_differ": len(file_mismatch) + len(file_vs_stored),
        "file_corrupt_lines": corrupt,
        "outbox_pending_at_exit": sum(pending.values()),
        "outbox_rejected": sum(rejected.values()),
        "bad_signatures": unsigned,
        "requests_over_rate": over_rate,
        "sigterm_exit_code": 0 if run.sigterm_exit == 0 else 1,
        "restarts_not_resumed": len(restarts_not_resumed),
        "rollouts_without_final_digest": len(unannounced),
    }
    problems = [f"{k} = {v}" for k, v in must_be_zero.items() if v]
    if not run.drained:
        problems.append("the run did not settle before the deadline")
    result: dict[str, Any] = {
        "bench": "soak",
        "target": "nothing lost, duplicates only as identical redeliveries, final phases = truth, rate never exceeded",
        "pass": not problems,
        "problems": problems,
        "must_be_zero": must_be_zero,
        "jobs": {
            "added": len(run.jobs),
            "outcomes": dict(Counter(o for _, o, _ in stored.jobs.values())),
            "final_phase_matches_truth": len(run.jobs) - len(wrong_final),
            "wrong_examples": wrong_final[:5],
        },
        "transitions": {
            "expected_events": len(stored.history),
            "expected_by_type": dict(history_types),
            "rollout_digests": dict(digests),
            "rollouts_finished": digests.get("rollout.finished", 0),
            "rollouts_without_final_digest": unannounced,
            "truth": len(true_at),
            "observed": observed,
            "phantoms": phantoms[:5],
        },
        "webhook": {
            "expected": len(want),
            "delivered_unique": len(ok_counts.keys() & want.keys()),
            "lost": len(hook_lost),
            "lost_examples": hook_lost[:5],
            "unexpected": len(hook_unexpected),
            "duplicates": sum(n - 1 for n in ok_counts.values()),
            "bodies_differ": hook_mismatch[:5] + hook_vs_stored[:5],
            "max_backlog": run.max_pending.get("webhook", 0),
            "requests": len(receiver.hits),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
        },
        "file": {
            "expected": len(want_file),
            "delivered_unique": len(file_counts.keys() & want_file.keys()),
            "lost": len(file_lost),
            "lost_examples": file_lost[:5],
            "duplicates": sum(n - 1 for n in file_counts.values()),
            "bodies_differ": file_mismatch[:5] + file_vs_stored[:5],
            "corrupt_lines": corrupt,
            "max_backlog": run.max_pending.get("file", 0),
        },
        "cce": {
            "configured_rate": plan.rate,
            "server_limit": plan.server_rate,
            "busiest_second": busiest,
            "requests_over_rate": over_rate,
            "over_rate_windows": over_windows[:10],
            "job_requests": stats["job_requests"],
            "throttled_429": throttled,
            "throttled_in_storm": in_storm,
            "throttled_outside_storm": throttled - in_storm,
            "by_status": stats["by_status"],
            "dropped": stats["dropped"],
            "iam_token_requests": stats["iam_token_requests"],
        },
        "delay_s": distribution(delays, digits=2),
        "delay_outside_outage_s": distribution(outside, digits=2),
        "delivery_delay_s": distribution(delivery, digits=2),
        "delivery_delay_outside_outage_s": distribution(delivery_outside, digits=2),
        "daemon": {
            "lifetimes": [
                {
                    "pid": x.pid,
                    "ended_by": x.ended_by,
                    "exit": x.exit_code,
                    "vmhwm_mb": round(x.hwm_kb / 1024, 1),
                    "cpu_s": round(x.cpu_s, 2),
                    "resumed_jobs": x.resumed,
                }
                for x in lives
            ],
            "peak_rss_mb": round(peak_rss_mb, 1),
            "cpu_s": round(cpu, 2),
            "log_tracebacks": logs["tracebacks"],
            "log_errors": logs["errors"],
        },
        "plan": {
            "jobs": plan.jobs,
            "rollouts": plan.rollouts,
            "minutes": plan.T / 60,
            "rate": plan.rate,
            "interval": plan.interval,
            "max_interval": plan.max_interval,
            "backoff": plan.backoff,
            "demand": run.demand,
            "storm": [round(plan.storm_at, 1), plan.storm_for],
            "outage": [round(plan.outage_at, 1), plan.outage_for],
            "kills": [round(k, 1) for k in plan.kills],
            "restart_delay": run.restart_delay,
            "straggler": any(w.at == 0.6 * plan.T for w in plan.waves),
            "expire_tokens_at": round(plan.expire_at, 1),
            "faults": FAULTS,
            "receiver_fails": RECEIVER_FAILS,
        },
        "actions": run.actions,
        "workdir": str(run.workdir),
        "wall_s": round(run.wall, 1),
    }
    if logs["traceback_samples"]:
        result["daemon"]["traceback_samples"] = logs["traceback_samples"]
    return result


def rows(r: dict[str, Any]) -> list[tuple[str, object]]:
    t, w, f, c, d, m = r["transitions"], r["webhook"], r["file"], r["cce"], r["delay_s"], r["daemon"]
    delay = _delay_row(d)
    return [
        ("jobs", f"{r['jobs']['added']} added; outcomes {r['jobs']['outcomes']}"),
        ("final phase = truth", f"{r['jobs']['final_phase_matches_truth']}/{r['jobs']['added']}"),
        ("expected events (history)", f"{t['expected_events']} job events + digests {t['rollout_digests']}"),
        (
            "rollouts announced finished",
            f"{r['plan']['rollouts'] - len(t['rollouts_without_final_digest'])}"
            f"/{r['plan']['rollouts']} (missing: {', '.join(t['rollouts_without_final_digest']) or 'none'})",
        ),
        ("true transitions observed", f"{t['observed']}/{t['truth']}; phantoms {len(t['phantoms'])}"),
        ("webhook delivered / lost", f"{w['delivered_unique']}/{w['expected']} unique ids; lost {w['lost']}"),
        ("webhook duplicates", f"{w['duplicates']} (bodies differ: {len(w['bodies_differ'])})"),
        ("webhook requests", f"{w['requests']} by status {w['statuses']}"),
        ("largest outbox backlog", f"webhook {w['max_backlog']}, file {f['max_backlog']} (sampled every 2 s)"),
        ("file delivered / lost", f"{f['delivered_unique']}/{f['expected']} unique ids; lost {f['lost']}"),
        ("file duplicates", f"{f['duplicates']} (bodies differ: {len(f['bodies_differ'])})"),
        ("file corrupt lines", f["corrupt_lines"]),
        ("requests over the rate", f"{c['requests_over_rate']} (busiest second {c['busiest_second']})"),
        ("configured rate / server limit", f"{c['configured_rate']:g}/s / {c['server_limit']:g}/s"),
        ("429s seen", f"{c['throttled_429']} ({c['throttled_in_storm']} in the storm)"),
        ("CCE answers", f"{c['job_requests']} requests: {c['by_status']}, {c['dropped']} dropped"),
        ("IAM token requests", c["iam_token_requests"]),
        ("daemon peak RSS", f"{m['peak_rss_mb']} MB (max VmHWM over {len(m['lifetimes'])} lifetimes)"),
        ("daemon CPU", f"{m['cpu_s']} s (summed over lifetimes)"),
        ("delay truth -> webhook", delay),
        ("... outside the outage window", _delay_row(r["delay_outside_outage_s"])),
        ("delay detection -> webhook", _delay_row(r["delivery_delay_s"])),
        ("... outside the outage window", _delay_row(r["delivery_delay_outside_outage_s"])),
        ("daemon log", f"{m['log_tracebacks']} tracebacks; errors {sum(m['log_errors'].values())}"),
        ("wall time", f"{r['wall_s']} s; work directory {r['workdir']}"),
        ("problems", "; ".join(r["problems"]) or "none"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rollouts", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=10.0, help="T: every duration scales with it")
    parser.add_argument("--rate", type=float, default=60.0, help="the daemon's requests/s to CCE")
    parser.add_argument("--server-rate", type=float, default=None, help="the simulator's limit (default 1.1 x rate)")
    parser.add_argument("--interval", type=float, default=None, help="polling interval (default T/60, 1-10 s)")
    parser.add_argument("--kills", type=int, default=2, help="SIGKILLs (each followed by a restart)")
    parser.add_argument("--restart-delay", type=float, default=0.0, help="seconds from a SIGKILL to the restart")
    parser.add_argument("--outage", type=float, default=None, help="receiver down this long (default 0.1 T)")
    parser.add_argument("--storm", type=float, default=None, help="429 storm this long (default 0.05 T)")
    parser.add_argument(
        "--straggler",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the first rollout's last wave comes at 0.6 T, after the rest of it finished",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="for config, logs, state, events (default: new temp dir)")
    parser.add_argument("--limit", type=float, default=None, help="wall-time bound, seconds (default 2 T + 300)")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/soak.json")
    args = parser.parse_args()
    if args.jobs < args.rollouts or args.rollouts < 1 or args.minutes <= 0 or args.rate < 1:
        parser.error("need jobs >= rollouts >= 1, minutes > 0, rate >= 1")
    args.limit = args.limit or 2 * args.minutes * 60 + 300
    return conclude(soak(args), args.limit, rows, save=not args.no_save)


def conclude(
    main: Awaitable[dict[str, Any]],
    limit: float,
    rows: Callable[[dict[str, Any]], list[tuple[str, object]]],
    *,
    save: bool,
) -> int:
    """Run a soak within ``limit`` seconds and report it: exit 0 if it passed, 1 if not (or no result), 2 if
    interrupted (the children are stopped in every case)."""
    try:
        result = asyncio.run(_bounded(main, limit))
    except asyncio.CancelledError:
        say("interrupted; the children were stopped")
        return 2
    except TimeoutError:
        say(f"no result within --limit {limit:g} s; the children were stopped")
        return 1
    report(result, rows(result), save=save)
    return 0 if result["pass"] else 1


async def _bounded(main: Awaitable[dict[str, Any]], limit: float) -> dict[str, Any]:
    """``main`` within ``limit`` seconds; SIGINT/SIGTERM cancel it, so its clean-up stops the children."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    async with asyncio.timeout(limit):
        return await main


if __name__ == "__main__":
    sys.exit(main())
