"""Whole-process CPU per poll: a ``cce-monitor watch`` process versus a bare aiohttp + orjson loop process.

Both are separate processes polling the same 3,000 long-running jobs on one simulator process (its own core),
with 32 requests in flight and nothing else holding them back (no rate limit that binds, a 1 ms interval, no
backoff, no jitter), so the server is saturated and both sides poll as fast as it answers. For each process the
figure is its *marginal* CPU per poll: the CPU time it used (``/proc/PID/stat``: user + system) between two
samples taken after a warm-up, divided by the job requests the simulator answered in between. Start-up, imports
and the first observation of every job are outside the window.

* bare: ``aiohttp.ClientSession``; 32 workers each loop ``GET`` + ``orjson.loads(body)`` over the ids;
* monitor: ``cce-monitor watch --no-live --sink file:… -`` with the ids on stdin, through a config file:
  everything a user runs — client, parse, diff, events, bus, the file and log sinks, scheduler bookkeeping.

Two cases, each its own simulator: ``repeat`` — bodies are byte-identical from poll to poll (a node takes
minutes); ``changing`` — every body differs (``--live-timestamps``: a running job's ``updateTimestamp`` is the
request time), so every poll is parsed and diffed. Rounds interleave bare and monitor (ABBA); the figure is the
ratio of the medians. Target: monitor / bare <= 1.25 in both cases.

    .venv/bin/python bench/bench_process_cpu.py [--rounds 3] [--window 8] [--jobs 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiohttp
import orjson
from _common import Sim, _cli, median, report, run, sim_stats, simulator

TARGET = 1.25
CONCURRENCY = 32
_TICK = os.sysconf("SC_CLK_TCK")

BARE = textwrap.dedent(
    """
    import asyncio, itertools, sys
    import aiohttp, orjson

    async def main(urls, token, concurrency):
        headers = {"X-Auth-Token": token}
        counter = itertools.count()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
            async def loop():
                while True:
                    async with session.get(urls[next(counter) % len(urls)], headers=headers) as r:
                        orjson.loads(await r.read())
            await asyncio.gather(*(loop() for _ in range(concurrency)))

    spec = orjson.loads(sys.stdin.buffer.read())
    asyncio.run(main(spec["urls"], spec["token"], spec["concurrency"]))
    """
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def start_bare(sim: Sim) -> subprocess.Popen[bytes]:
    spec = {"urls": [sim.job_url(j) for j in sim.job_ids], "token": sim.token, "concurrency": CONCURRENCY}
    proc = subprocess.Popen([sys.executable, "-c", BARE], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stdin is not None
    proc.stdin.write(orjson.dumps(spec))
    proc.stdin.close()
    return proc


def start_monitor(sim: Sim, workdir: Path) -> subprocess.Popen[bytes]:
    config = workdir / "config.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            endpoint: {sim.endpoint}
            project_id: {sim.project_id}
            polling: {{rate: 1000000, max_in_flight: {CONCURRENCY}, interval: 0.001, min_interval: 0.001,
                       max_interval: 0.001, backoff: 1.0, jitter: 0.0, job_timeout: 86400, stall_after: 86400}}
            http: {{max_connections: {CONCURRENCY}}}
            logging: {{level: error}}
            """
        )
    )
    events = workdir / "events.jsonl"
    events.unlink(missing_ok=True)
    cmd = [_cli(), "watch", "--config", str(config), "--no-live", "--sink", f"file:{events}", "-"]
    env = {**os.environ, "CCE_AUTH_TOKEN": sim.token}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    assert proc.stdin is not None
    proc.stdin.write("\n".join(sim.job_ids).encode())
    proc.stdin.close()
    return proc


async def requests(session: aiohttp.ClientSession, sim: Sim) -> int:
    stats = await sim_stats(session, sim)
    return int(stats["job_requests"])


async def measure(sim: Sim, kind: str, workdir: Path, warmup: float, window: float) -> tuple[float, float]:
    """(µs of CPU per poll, polls per second) of one process over ``window`` s after ``warmup`` s."""
    proc = start_bare(sim) if kind == "bare" else start_monitor(sim, workdir)
    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(warmup)
            if proc.poll() is not None:
                raise SystemExit(f"{kind} exited with {proc.returncode} during the warm-up")
            cpu0, req0, t0 = cpu_seconds(proc.pid), await requests(session, sim), time.monotonic()
            await asyncio.sleep(window)
            cpu1, req1, t1 = cpu_seconds(proc.pid), await requests(session, sim), time.monotonic()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    polls = req1 - req0
    return (cpu1 - cpu0) / max(1, polls) * 1e6, polls / (t1 - t0)


def one_case(case: str, args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    extra = ["--live-timestamps"] if case == "changing" else []
    bare: list[float] = []
    mon: list[float] = []
    rates: dict[str, list[float]] = {"bare": [], "monitor": []}
    with simulator(jobs=args.jobs, duration=86_400.0, extra=extra) as sim:
        for i in range(args.rounds):
            order = ("bare", "monitor") if i % 2 == 0 else ("monitor", "bare")
            for kind in order:
                us, rate = run(measure(sim, kind, workdir, args.warmup, args.window), args.warmup + args.window + 60)
                (bare if kind == "bare" else mon).append(us)
                rates[kind].append(rate)
                print(f"  {case} round {i + 1} {kind:<7} {us:7.1f} µs/poll at {rate:6.0f} polls/s", file=sys.stderr)
    ratio = median(mon) / median(bare)
    return {
        "bare_us": round(median(bare), 1),
        "monitor_us": round(median(mon), 1),
        "ratio": round(ratio, 3),
        "rounds_bare_us": [round(x, 1) for x in bare],
        "rounds_monitor_us": [round(x, 1) for x in mon],
        "polls_per_s": {k: round(median(v)) for k, v in rates.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=4.0, help="seconds before the window (start-up, first sight)")
    parser.add_argument("--window", type=float, default=8.0, help="seconds measured per round")
    parser.add_argument("--cases", default="changing,repeat")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {case: one_case(case, args, Path(tmp)) for case in args.cases.split(",")}
    worst = max(float(r["ratio"]) for r in results.values())  # type: ignore[arg-type]
    result = {
        "bench": "process_cpu",
        "target": f"monitor / bare <= {TARGET} in both cases",
        "pass": worst <= TARGET,
        **results,
    }
    rows = [
        (
            case,
            f"monitor {r['monitor_us']} µs vs bare {r['bare_us']} µs per poll: {r['ratio']}x"
            f"  (polls/s {r['polls_per_s']})",
        )
        for case, r in results.items()
    ]
    report(result, rows)


if __name__ == "__main__":
    main()
