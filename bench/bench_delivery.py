"""Durable delivery: outbox throughput and delay, one event at a time per sink versus per-job order.

Events are recorded in the daemon's SQLite state database (:class:`monitor.daemon.store.State`, a real file in a
temporary directory, one webhook sink routed with an empty filter, as the daemon's ``_build_sinks`` does) and
sent by :class:`monitor.daemon.delivery.Deliverer` through the real ``webhook`` sink (built by
``create_sink`` with a signing secret and a ``rate`` far above demand) to a receiver in a child process
(``bench_delivery.py --receiver``: aiohttp on 127.0.0.1, checks each signature, logs each request's
``webhook-id``, arrival time and answer, and takes orders on a control port: fail a fraction with 500, add
latency, go down — stop listening and drop its connections, or answer 503 — and come back).

Two designs, with the daemon's ``delivery`` defaults for ``retry_initial``/``retry_max``:

* ``today``: ``Deliverer(sink, state, concurrency=1)`` — one event at a time, total order (``ordering: sink``);
* ``new``: ``Deliverer(sink, state, concurrency=8)`` — per-job order, up to 8 in flight (``ordering: job``).

Events are ``job.phase_changed`` / ``subjob.phase_changed`` events built as the engine builds them, spread
round-robin over ``--jobs`` jobs; each is one ``state.record`` call followed by ``deliverer.notify()``.
Delay = arrival, at the receiver, of the first request for the event's id that was answered 2xx, minus the
time the event was recorded (both this machine's wall clock).

Scenarios (each for both designs):

1. ``healthy``: the receiver answers 204 at once. ``--events`` already in the outbox, then the deliverer is
   started: events/s until the outbox is empty. Then ``--live-events`` recorded as fast as one producer can
   while the deliverer runs: events/s until the last is delivered. Designs back to back.
2. ``flaky``: 20 % of requests answered 500, every answer after 50 ms; events recorded at ``--rate`` for
   ``--flaky-seconds``; then up to ``--drain-limit`` s for the rest to be delivered.
3. ``outage``: events at ``--rate``; after ``--lead`` s the receiver is down for ``--outage`` s, then healthy
   again; the producer goes on for ``--after`` s. Backlog at the return, and drain time: from the return until
   every event recorded before it has been delivered.

``flaky`` and ``outage`` run both designs side by side (own state file, own receiver process, one loop) unless
``--serial``: at 100 events/s they are bounded by waiting, not by CPU. An event still in the outbox at the end
is *late*, not lost: its delay counts as at least the time it had waited (percentiles marked ``>=``). Lost =
recorded, not in the outbox, never answered 2xx. Order: a job's events must be first delivered (and none
delivered before an earlier one of its job) in the order recorded.

Targets (new design): healthy >= 1,000 events/s; flaky p99 delay <= 10 s; outage drain <= 30 s; per-job
order violations 0; lost 0 for both designs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from _common import HOST, ROOT, distribution, first_line, report, run, stop_process
from aiohttp import web

from monitor.config import DeliveryConfig
from monitor.core.events import Event, EventType, event_id
from monitor.daemon.delivery import Deliverer
from monitor.daemon.store import State
from monitor.engine.bus import EventFilter
from monitor.sinks import create_sink

TARGET_RATE = 1000.0
TARGET_FLAKY_P99 = 10.0
TARGET_DRAIN = 30.0
PROJECT_ID = "0b0f5d1d9c8a4bfa9d0c6c1b0f3d2e1a"
LABELS = {"env": "bench", "team": "delivery"}
SECRET_ENV = "BENCH_DELIVERY_SECRET"


# --- the receiver (child process) -------------------------------------------------------------------------------


class Receiver:
    """The webhook endpoint: one hook listener that can go down, one control listener that stays up."""

    def __init__(self, key: bytes, seed: int, hook_runner: web.AppRunner) -> None:
        self.key = key
        self.hook_runner = hook_runner
        self.random = random.Random(seed)
        self.fail = 0.0
        self.latency = 0.0
        self.down: str | None = None  # "refuse" (not listening) or "503"
        self.bad_signatures = 0
        self.log: list[tuple[str, float, int]] = []  # webhook-id, arrival (unix s), status answered (0: dropped)
        self.hook_site: web.TCPSite | None = None
        self.port = 0

    def signed(self, webhook_id: str, headers: Mapping[str, str], body: bytes) -> bool:
        timestamp = headers.get("webhook-timestamp", "")
        signature = headers.get("webhook-signature", "")
        mac = hmac.new(self.key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        return hmac.compare_digest(signature, "v1," + base64.b64encode(mac).decode())

    async def hook(self, request: web.Request) -> web.Response:
        arrived = time.time()
        webhook_id = request.headers.get("webhook-id", "")
        body = await request.read()
        if self.down == "refuse":  # a connection accepted just before the outage: drop it as a dead host would
            self.log.append((webhook_id, arrived, 0))
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        if self.down == "503":
            self.log.append((webhook_id, arrived, 503))
            return web.Response(status=503, headers={"Connection": "close"})
        if not self.signed(webhook_id, request.headers, body):
            self.bad_signatures += 1
            self.log.append((webhook_id, arrived, 401))
            return web.Response(status=401)
        if self.latency:
            await asyncio.sleep(self.latency)
        status = 500 if self.fail and self.random.random() < self.fail else 204
        self.log.append((webhook_id, arrived, status))
        return web.Response(status=status)

    async def listen(self) -> None:
        self.hook_site = web.TCPSite(self.hook_runner, HOST, self.port, reuse_address=True)
        await self.hook_site.start()
        self.port = self.hook_runner.addresses[0][1]

    async def control(self, request: web.Request) -> web.Response:
        orders = orjson.loads(await request.read())
        self.fail = float(orders.get("fail", self.fail))
        self.latency = float(orders.get("latency", self.latency))
        if "down" in orders:
            down = orders["down"]
            if down == "refuse" and self.down != "refuse":
                assert self.hook_site is not None and self.hook_runner.server is not None
                await self.hook_site.stop()  # new connections are refused
                for handler in self.hook_runner.server.connections:  # and open ones are cut
                    handler.force_close()
            elif down != "refuse" and self.down == "refuse":
                await self.listen()
            self.down = down
        return web.json_response({"at": time.time(), "port": self.port}, dumps=lambda o: orjson.dumps(o).decode())

    async def get_log(self, _request: web.Request) -> web.Response:
        body = orjson.dumps({"log": self.log, "bad_signatures": self.bad_signatures})
        return web.Response(body=body, content_type="application/json")


async def serve_receiver(seed: int) -> None:
    """``--receiver`` mode: print ``{"hook": PORT, "control": PORT}`` on stdout, then serve until killed."""
    secret = os.environ[SECRET_ENV]
    hook_app = web.Application()
    receiver = Receiver(
        base64.b64decode(secret.removeprefix("whsec_")),
        seed,
        web.AppRunner(hook_app, access_log=None, handle_signals=False),
    )
    hook_app.router.add_post("/hook", receiver.hook)
    await receiver.hook_runner.setup()
    await receiver.listen()
    control_app = web.Application(client_max_size=1 << 20)
    control_app.router.add_post("/_ctl", receiver.control)
    control_app.router.add_get("/_log", receiver.get_log)
    control_runner = web.AppRunner(control_app, access_log=None, handle_signals=False)
    await control_runner.setup()
    await web.TCPSite(control_runner, HOST, 0).start()
    hello = {"hook": receiver.port, "control": control_runner.addresses[0][1]}
    sys.stdout.write(orjson.dumps(hello).decode() + "\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


@dataclass
class ReceiverProcess:
    proc: subprocess.Popen[bytes]
    hook_url: str
    control_url: str

    async def order(self, session: aiohttp.ClientSession, **orders: object) -> float:
        """Change the receiver's behaviour; returns its clock when it took the order."""
        async with session.post(f"{self.control_url}/_ctl", data=orjson.dumps(orders)) as resp:
            resp.raise_for_status()
            at: float = orjson.loads(await resp.read())["at"]
            return at

    async def fetch_log(self, session: aiohttp.ClientSession) -> tuple[list[tuple[str, float, int]], int]:
        async with session.get(f"{self.control_url}/_log") as resp:
            resp.raise_for_status()
            data = orjson.loads(await resp.read())
            return [(i, t, s) for i, t, s in data["log"]], int(data["bad_signatures"])


@contextlib.contextmanager
def receiver_process(secret: str, seed: int) -> Iterator[ReceiverProcess]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--receiver", "--seed", str(seed)]
    env = {**os.environ, SECRET_ENV: secret}
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL, env=env)
        try:
            line = first_line(proc, 30.0)
            if not line:
                errors.seek(0)
                tail = errors.read()[-2000:].decode(errors="replace")
                raise SystemExit(f"receiver did not start (exit {proc.poll()}): {tail}")
            ports = orjson.loads(line)
            yield ReceiverProcess(proc, f"http://{HOST}:{ports['hook']}/hook", f"http://{HOST}:{ports['control']}")
        finally:
            stop_process(proc)


# --- events and one design's delivery ----------------------------------------------------------------------------


def job_ids(jobs: int) -> list[str]:
    return [f"{i:08x}-229a-11e8-9c75-0255ac100ceb" for i in range(jobs)]


def make_event(job_id: str, k: int, at: float) -> Event:
    """The ``k``-th event of a CreateNode job, as the engine's diff builds it: first the job is seen Running,
    then its sub-jobs go Running and Success one after another."""
    if k == 0:
        kind, sub, previous, phase = EventType.JOB_PHASE_CHANGED, None, None, "Running"
    else:
        kind, sub = EventType.SUBJOB_PHASE_CHANGED, f"{job_id[:8]}-sub-{(k - 1) // 2}"
        previous, phase = ("Initializing", "Running") if k % 2 else ("Running", "Success")
    return Event(
        id=event_id(PROJECT_ID, job_id, sub, kind.value, previous, phase, None),
        type=kind,
        time=datetime.fromtimestamp(at, UTC),
        project_id=PROJECT_ID,
        job_id=job_id,
        job_type="CreateNode",
        phase=phase,
        previous_phase=previous,
        reason=None,
        subjob_id=sub,
        subjob_type="InstallNode" if sub else None,
        resource_name=f"node-{job_id[:8]}",
        cluster_id="c0ffee00-1234-11ee-9c75-0255ac100ceb",
        labels=LABELS,
    )


@dataclass
class Recorded:
    id: str
    job: str
    k: int
    at: float


@dataclass
class Delivery:
    """One design's state file, sink and deliverer, and what was recorded."""

    design: str
    state: State
    deliverer: Deliverer
    jobs: list[str]
    recorded: list[Recorded] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.deliverer.name

    def start(self) -> None:
        self.task = asyncio.create_task(self.deliverer.run(), name=f"deliverer-{self.design}")
        self.deliverer.notify()

    async def record_next(self, *, notify: bool = True) -> None:
        i = len(self.recorded)
        job = self.jobs[i % len(self.jobs)]
        k = i // len(self.jobs)
        at = time.time()
        event = make_event(job, k, at)
        await self.state.record(job, None, [event])
        self.recorded.append(Recorded(event.id, job, k, at))
        if notify:
            self.deliverer.notify()

    async def depth(self) -> int:
        return (await self.state.outbox_depth()).get(self.name, 0)

    async def drained(self, limit: float) -> float | None:
        """Wait until the outbox is empty (``wait_idle`` and then a count); ``time.time()`` then, or ``None``
        after ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                async with asyncio.timeout(left):
                    await self.deliverer.wait_idle()
            except TimeoutError:
                return None
            if await self.depth() == 0:
                return time.time()
            await asyncio.sleep(0.01)  # idle was set while a row was being recorded: look again

    async def pending_ids(self) -> set[str]:
        return {row.event.id for row in await self.state.pending(self.name, limit=1 << 30)}


NEW_CONCURRENCY: list[int] = []  # --concurrency, else the config's default


def concurrency_of(design: str) -> int:
    return 1 if design == "today" else (NEW_CONCURRENCY or [DeliveryConfig().concurrency])[0]


@contextlib.asynccontextmanager
async def delivery(design: str, rx: ReceiverProcess, folder: Path, args: argparse.Namespace) -> AsyncIterator[Delivery]:
    """A design wired as the daemon wires a durable sink: route, then a Deliverer with the config's defaults."""
    d = DeliveryConfig()
    state = await State.open(folder / f"{design}-{secrets.token_hex(4)}.db")
    options: dict[str, object] = {"secret": args.secret}
    if args.sink_rate:
        options["rate"] = args.sink_rate
    sink = create_sink(f"webhook:{rx.hook_url}", options)
    state.route(sink.name, EventFilter.of())
    deliverer = Deliverer(
        sink,
        state,
        name=sink.name,
        retry_initial=d.retry_initial,
        retry_max=d.retry_max,
        concurrency=concurrency_of(design),
    )
    jobs = job_ids(args.jobs)
    await state.add_jobs(jobs, LABELS, None)
    run_ = Delivery(design, state, deliverer, jobs)
    try:
        yield run_
    finally:
        if run_.task is not None:
            run_.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run_.task
        await sink.aclose()
        await state.close()


async def produce(run_: Delivery, count: int, rate: float) -> float:
    """Record ``count`` events at ``rate`` per second (as fast as possible if 0); the achieved rate."""
    start = time.monotonic()
    for i in range(count):
        if rate > 0 and (wait := start + i / rate - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        await run_.record_next()
    return count / max(time.monotonic() - start, 1e-9)


# --- figures -----------------------------------------------------------------------------------------------------


def analyse(
    recorded: list[Recorded], log: list[tuple[str, float, int]], pending: set[str], cutoff: float
) -> dict[str, Any]:
    """Delay, lost, late, duplicates and per-job order from the receiver's log."""
    first_ok: dict[str, tuple[int, float]] = {}
    ok_count: Counter[str] = Counter()
    attempts: Counter[str] = Counter()
    for index, (webhook_id, arrived, status) in enumerate(log):
        attempts[webhook_id] += 1
        if 200 <= status < 300:
            ok_count[webhook_id] += 1
            first_ok.setdefault(webhook_id, (index, arrived))
    known = {r.id for r in recorded}
    done = [first_ok[r.id][1] for r in recorded if r.id in first_ok]
    span = max(done) - min(r.at for r in recorded) if done else 0.0  # first recorded to last delivered
    delays: list[float] = []
    late = lost = 0
    for r in recorded:
        if r.id in first_ok:
            delays.append(first_ok[r.id][1] - r.at)
        elif r.id in pending:
            late += 1
            delays.append(cutoff - r.at)  # at least this
        else:
            lost += 1
    by_job: defaultdict[str, list[Recorded]] = defaultdict(list)
    for r in recorded:
        by_job[r.job].append(r)
    violations = 0
    for events in by_job.values():
        last, gap = -1, False
        for r in sorted(events, key=lambda e: e.k):
            got = first_ok.get(r.id)
            if got is None:
                gap = True
                continue
            if gap or got[0] < last:
                violations += 1
            last = max(last, got[0])
    return {
        "events": len(recorded),
        "delivered": len(done),
        "delivered_per_s": round(len(done) / span, 1) if span > 0 else None,
        "late": late,
        "lost": lost,
        "duplicates": sum(c - 1 for i, c in ok_count.items() if i in known),
        "unknown_ids": sum(1 for i in attempts if i not in known),
        "requests": len(log),
        "requests_per_delivered": round(len(log) / max(1, len(done)), 3),
        "order_violations": violations,
        "delay": delay_summary(delays, censored=late > 0),
    }


def delay_summary(values: list[float], *, censored: bool) -> dict[str, Any]:
    # censored: some events were still waiting; their delay is at least the figure
    return distribution(values) | ({"lower_bound": censored} if values else {})


def delays_text(d: dict[str, Any]) -> str:
    if not d.get("count"):
        return "-"
    ge = ">= " if d["lower_bound"] else ""
    return f"{ge}{d['p50']:.3f} / {ge}{d['p99']:.2f} / {ge}{d['max']:.2f} s"


# --- scenarios ---------------------------------------------------------------------------------------------------


async def healthy(
    design: str, args: argparse.Namespace, folder: Path, session: aiohttp.ClientSession
) -> dict[str, Any]:
    with receiver_process(args.secret, args.seed) as rx:
        async with delivery(design, rx, folder, args) as run_:
            started = time.monotonic()
            for _ in range(args.events):
                await run_.record_next(notify=False)
            fill = time.monotonic() - started
            backlog = await run_.depth()
            started = time.monotonic()
            run_.start()
            done = await run_.drained(args.drain_limit + args.events / 100)
            backlog_seconds = time.monotonic() - started
            result: dict[str, Any] = {
                "design": design,
                "concurrency": concurrency_of(design),
                "backlog": backlog,
                "record_rate": round(args.events / fill, 1),
                "backlog_seconds": round(backlog_seconds, 3),
                "rate": round(args.events / backlog_seconds, 1) if done else None,
            }
            if args.live_events and done:
                started = time.monotonic()
                result["live_record_rate"] = round(await produce(run_, args.live_events, 0.0), 1)
                done = await run_.drained(args.drain_limit + args.live_events / 100)
                live_seconds = time.monotonic() - started
                result["live_seconds"] = round(live_seconds, 3)
                result["live_rate"] = round(args.live_events / live_seconds, 1) if done else None
            pending = await run_.pending_ids()
            log, bad = await rx.fetch_log(session)
            result |= analyse(run_.recorded, log, pending, time.time())
            result["bad_signatures"] = bad
            result["sink_failures"] = run_.deliverer.failed
            return result


async def flaky(design: str, args: argparse.Namespace, folder: Path, session: aiohttp.ClientSession) -> dict[str, Any]:
    with receiver_process(args.secret, args.seed) as rx:
        await rx.order(session, fail=args.fail, latency=args.latency)
        async with delivery(design, rx, folder, args) as run_:
            run_.start()
            offered = await produce(run_, round(args.rate * args.flaky_seconds), args.rate)
            depth_at_end = await run_.depth()
            finished = time.time()
            done = await run_.drained(args.drain_limit)
            cutoff = time.time()
            pending = await run_.pending_ids()
            log, bad = await rx.fetch_log(session)
            result = {
                "design": design,
                "concurrency": concurrency_of(design),
                "offered_rate": round(offered, 1),
                "backlog_at_producer_end": depth_at_end,
                "drained_after_producer_s": round(done - finished, 3) if done else None,
                **analyse(run_.recorded, log, pending, cutoff),
                "bad_signatures": bad,
                "deliverer_failures": run_.deliverer.failed,
            }
            return result


async def outage(design: str, args: argparse.Namespace, folder: Path, session: aiohttp.ClientSession) -> dict[str, Any]:
    with receiver_process(args.secret, args.seed) as rx:
        async with delivery(design, rx, folder, args) as run_:
            run_.start()
            total = round(args.rate * (args.lead + args.outage + args.after))
            producer = asyncio.create_task(produce(run_, total, args.rate), name=f"producer-{design}")
            await asyncio.sleep(args.lead)
            await rx.order(session, down=args.outage_mode)
            await asyncio.sleep(args.outage)
            backlog = await run_.depth()
            returned = await rx.order(session, down=None)
            before_return = len(run_.recorded)
            offered = await producer
            done = await run_.drained(args.drain_limit)
            cutoff = time.time()
            pending = await run_.pending_ids()
            log, bad = await rx.fetch_log(session)
            figures = analyse(run_.recorded, log, pending, cutoff)
            first_ok: dict[str, float] = {}
            for webhook_id, arrived, status in log:
                if 200 <= status < 300:
                    first_ok.setdefault(webhook_id, arrived)
            earlier = run_.recorded[:before_return]
            caught_up = all(r.id in first_ok for r in earlier)
            drain = max((first_ok[r.id] for r in earlier if r.id in first_ok), default=returned) - returned
            return {
                "design": design,
                "concurrency": concurrency_of(design),
                "offered_rate": round(offered, 1),
                "backlog_at_return": backlog,
                "drain_s": round(drain if caught_up else cutoff - returned, 3),
                "drain_lower_bound": not caught_up,
                "all_delivered_s_after_return": round(done - returned, 3) if done else None,
                **figures,
                "bad_signatures": bad,
                "deliverer_failures": run_.deliverer.failed,
            }


SCENARIOS = {"healthy": healthy, "flaky": flaky, "outage": outage}


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(levelname)s %(name)s: %(message)s")
    designs = args.designs
    results: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession() as session:
        with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
            folder = Path(tmp)
            for scenario in args.scenarios:
                fn = SCENARIOS[scenario]
                if scenario == "healthy" or args.serial:
                    out = [await fn(design, args, folder, session) for design in designs]
                else:
                    out = list(await asyncio.gather(*(fn(design, args, folder, session) for design in designs)))
                results[scenario] = {r["design"]: r for r in out}
                print(f"# {scenario} done", file=sys.stderr, flush=True)
    result = verdict(args, results)
    report(result, result.pop("_rows"))


def verdict(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    checks: dict[str, bool] = {}
    for scenario, by_design in results.items():
        for design, r in by_design.items():
            checks[f"{scenario}.{design}.lost==0"] = r["lost"] == 0 and r["unknown_ids"] == 0
            checks[f"{scenario}.{design}.bad_signatures==0"] = r["bad_signatures"] == 0
    new = {scenario: by_design["new"] for scenario, by_design in results.items() if "new" in by_design}
    for scenario, r in new.items():
        checks[f"{scenario}.new.order_violations==0"] = r["order_violations"] == 0
    if "healthy" in new:
        checks["healthy.new.rate>=1000"] = (new["healthy"]["rate"] or 0.0) >= TARGET_RATE
    if "flaky" in new:
        d = new["flaky"]["delay"]
        checks["flaky.new.p99<=10s"] = bool(d.get("count")) and not d["lower_bound"] and d["p99"] <= TARGET_FLAKY_P99
    if "outage" in new:
        o = new["outage"]
        checks["outage.new.drain<=30s"] = not o["drain_lower_bound"] and o["drain_s"] <= TARGET_DRAIN
    rows: list[tuple[str, object]] = []
    for design, r in results.get("healthy", {}).items():
        live = f"; recorded while delivering {r['live_rate']}/s" if r.get("live_rate") else ""
        rows.append((f"healthy {design} (c={r['concurrency']})", f"{r['rate']} events/s from a backlog{live}"))
        rows.append(("", f"lost {r['lost']}, order violations {r['order_violations']}, dup {r['duplicates']}"))
    for design, r in results.get("flaky", {}).items():
        rows.append(
            (
                f"flaky {design} (c={r['concurrency']})",
                f"delay p50/p99/max {delays_text(r['delay'])}; delivered {r['delivered']}/{r['events']} "
                f"({r['delivered_per_s']}/s)",
            )
        )
        rows.append(
            (
                "",
                f"late {r['late']}, lost {r['lost']}, order violations {r['order_violations']}, dup "
                f"{r['duplicates']}, {r['requests_per_delivered']} requests/delivered",
            )
        )
    for design, r in results.get("outage", {}).items():
        ge = ">= " if r["drain_lower_bound"] else ""
        rows.append(
            (
                f"outage {design} (c={r['concurrency']})",
                f"backlog {r['backlog_at_return']} at return, drain {ge}{r['drain_s']:.1f} s; "
                f"delay p50/p99/max {delays_text(r['delay'])}",
            )
        )
        rows.append(
            (
                "",
                f"late {r['late']}, lost {r['lost']}, order violations {r['order_violations']}, dup "
                f"{r['duplicates']}, {r['requests_per_delivered']} requests/delivered",
            )
        )
    d = DeliveryConfig()
    settings = {
        "designs": {design: {"concurrency": concurrency_of(design)} for design in args.designs},
        "retry_initial": d.retry_initial,
        "retry_max": d.retry_max,
        "sink": {"rate": args.sink_rate, "secret": True, "other options": "defaults"},
        "events": args.events,
        "live_events": args.live_events,
        "jobs": args.jobs,
        "rate": args.rate,
        "flaky": {"seconds": args.flaky_seconds, "fail": args.fail, "latency": args.latency},
        "outage": {"lead": args.lead, "seconds": args.outage, "after": args.after, "mode": args.outage_mode},
        "drain_limit": args.drain_limit,
        "side_by_side": not args.serial,
        "tree": tree(),
    }
    rows.append(
        (
            "settings",
            f"{args.jobs} jobs; healthy {args.events}+{args.live_events} events; {args.rate:g} events/s; flaky "
            f"{args.fail:.0%} 500 + {args.latency * 1000:.0f} ms for {args.flaky_seconds:g} s; outage "
            f"{args.outage:g} s ({args.outage_mode}); drain limit {args.drain_limit:g} s",
        )
    )
    rows += [(f"check {name}", "ok" if ok else "MISS") for name, ok in checks.items() if not ok]
    return {
        "bench": "delivery",
        "target": "new design: >= 1,000 events/s healthy, flaky p99 <= 10 s, outage drain <= 30 s, order "
        "violations 0; lost 0 for both",
        "pass": all(checks.values()),
        "checks": checks,
        **results,
        "settings": settings,
        "_rows": rows,
    }


def tree() -> dict[str, Any]:
    """The code measured: the commit, and files of monitor/ changed since (others may be editing them)."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"), "changed": git("status", "--short", "monitor").splitlines()}


def default_limit(args: argparse.Namespace) -> float:
    """A wall-time bound from the settings: every phase at its longest, plus start-up margin."""
    parallel = 1 if not args.serial else len(args.designs)
    healthy_s = len(args.designs) * (2 * args.drain_limit + (args.events + args.live_events) / 50 + 10)
    flaky_s = parallel * (args.flaky_seconds + args.drain_limit + 10)
    outage_s = parallel * (args.lead + args.outage + args.after + args.drain_limit + 10)
    per: dict[str, float] = {"healthy": healthy_s, "flaky": flaky_s, "outage": outage_s}
    return sum(per[s] for s in args.scenarios) + 30.0


def names(allowed: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        chosen = [n.strip() for n in text.split(",") if n.strip()]
        wrong = sorted(set(chosen) - set(allowed))
        if wrong or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return chosen

    return parse


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="healthy: events in the outbox at the start")
    parser.add_argument("--live-events", type=int, default=5_000, help="healthy: then recorded while delivering")
    parser.add_argument("--jobs", type=int, default=1_000)
    parser.add_argument("--rate", type=float, default=100.0, help="flaky, outage: events recorded per second")
    parser.add_argument("--flaky-seconds", type=float, default=60.0)
    parser.add_argument("--fail", type=float, default=0.2, help="flaky: fraction answered 500")
    parser.add_argument("--latency", type=float, default=0.05, help="flaky: seconds before every answer")
    parser.add_argument("--outage", type=float, default=60.0, help="outage: seconds the receiver is down")
    parser.add_argument("--lead", type=float, default=5.0, help="outage: seconds healthy before it goes down")
    parser.add_argument("--after", type=float, default=10.0, help="outage: seconds of recording after the return")
    parser.add_argument("--outage-mode", choices=("refuse", "503"), default="refuse")
    parser.add_argument("--drain-limit", type=float, default=45.0, help="seconds to wait for the rest after recording")
    parser.add_argument("--designs", type=names(("today", "new")), default=["today", "new"])
    parser.add_argument("--scenarios", type=names(tuple(SCENARIOS)), default=list(SCENARIOS))
    parser.add_argument("--serial", action="store_true", help="flaky, outage: one design after the other")
    parser.add_argument("--sink-rate", type=float, default=100_000.0, help="the webhook sink's rate option (0: none)")
    parser.add_argument("--concurrency", type=int, default=None, help="the new design's (default: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-level", default="error")
    parser.add_argument("--limit", type=float, default=None, help="wall-time bound, seconds (default: from settings)")
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    cli_args = parser.parse_args()
    if cli_args.receiver:
        asyncio.run(serve_receiver(cli_args.seed))
    else:
        if cli_args.concurrency is not None:
            NEW_CONCURRENCY.append(cli_args.concurrency)
        cli_args.secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        run(main(cli_args), cli_args.limit or default_limit(cli_args))
