"""Client CPU per poll: the monitor versus a bare aiohttp + orjson GET loop at the same concurrency.

Both sides poll the same simulated jobs (long-running, so nothing finishes) on one simulator process and
measure this process's CPU time (``time.process_time``) over ``--polls`` polls after a warm-up:

* bare: one ``aiohttp.ClientSession``; ``--concurrency`` workers each loop
  ``async with session.get(url, headers={"X-Auth-Token": token}) as r: orjson.loads(await r.read())``;
* monitor: the real :class:`~monitor.engine.scheduler.Scheduler` + :class:`~monitor.cce.client.CCEClient` (token auth, a
  :class:`~monitor.cce.throttle.RateLimiter` too high to bind) publishing to a no-op callback, with
  ``max_in_flight = --concurrency`` and a 1 ms interval with no jitter or backoff, so polls are always due.
  Polls are counted from ``scheduler.stats.polls``.

Rounds alternate the order (bare first, then monitor first, ...); the figure is the ratio of the medians.
Target: monitor / bare <= 1.25.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections.abc import Callable

import aiohttp
import orjson
from _common import Sim, make_client, median, report, run, simulator

from monitor.core.events import Event
from monitor.engine.scheduler import Scheduler, SchedulerSettings

TARGET = 1.25
NO_LIMIT = 100_000.0


async def bare(sim: Sim, ids: list[str], polls: int, warmup: int, concurrency: int) -> tuple[float, int]:
    """CPU seconds and requests for ``polls`` GETs after ``warmup`` (connections opened, caches warm)."""
    urls = [sim.job_url(job_id) for job_id in ids]
    headers = {"X-Auth-Token": sim.token}
    async with aiohttp.ClientSession() as session:

        async def loop(counter: itertools.count[int], limit: int) -> None:
            while (i := next(counter)) < limit:
                async with session.get(urls[i % len(urls)], headers=headers) as r:
                    orjson.loads(await r.read())

        async def phase(limit: int) -> None:
            counter = itertools.count()
            await asyncio.gather(*(loop(counter, limit) for _ in range(concurrency)))

        await phase(warmup)
        start = time.process_time()
        await phase(polls)
        return time.process_time() - start, polls


async def _until(condition: Callable[[], bool], check_every: float = 0.02) -> None:
    # Polling, because the scheduler has no hook per poll; 50 wake-ups a second cost nothing measurable.
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(check_every)


async def monitor(sim: Sim, ids: list[str], polls: int, warmup: int, concurrency: int) -> tuple[float, int]:
    """CPU seconds and polls for at least ``polls`` scheduler polls after ``warmup`` polls."""
    settings = SchedulerSettings(
        rate=NO_LIMIT,
        max_in_flight=concurrency,
        interval=0.001,
        min_interval=0.001,
        max_interval=0.001,
        backoff=1.0,
        jitter=0.0,
        job_timeout=86_400.0,
        stall_after=86_400.0,
    )

    async def publish(event: Event) -> None:
        pass

    async with make_client(sim) as client:
        scheduler = Scheduler(client, publish, settings)
        scheduler.add_many(ids)
        stats = scheduler.stats
        runner = asyncio.create_task(scheduler.run(), name="scheduler")
        try:
            # Warm-up also covers every job's first poll, the only one that produces events here.
            await _until(lambda: stats.polls >= warmup)
            start_cpu, start_polls = time.process_time(), stats.polls
            await _until(lambda: stats.polls >= start_polls + polls)
            cpu, done = time.process_time() - start_cpu, stats.polls - start_polls
        finally:
            scheduler.stop()
            await runner
        failed = {k: v for k, v in stats.outcomes.items() if k != "ok"}
        if failed:
            raise SystemExit(f"monitor polls failed: {failed}")
        return cpu, done


async def main(args: argparse.Namespace) -> None:
    with simulator(jobs=args.jobs, duration=86_400.0) as sim:
        ids = sim.job_ids
        warmup = max(args.warmup, 2 * len(ids))
        bare_us: list[float] = []
        monitor_us: list[float] = []
        for round_no in range(args.rounds):
            order = (bare, monitor) if round_no % 2 == 0 else (monitor, bare)
            for side in order:
                cpu, n = await side(sim, ids, args.polls, warmup, args.concurrency)
                (bare_us if side is bare else monitor_us).append(cpu / n * 1e6)
        b, m = median(bare_us), median(monitor_us)
        ratio = m / b
        result = {
            "bench": "client_cpu",
            "target": f"monitor/bare CPU per poll <= {TARGET}",
            "pass": ratio <= TARGET,
            "ratio": round(ratio, 3),
            "bare_us_per_poll": round(b, 1),
            "monitor_us_per_poll": round(m, 1),
            "bare_rounds_us": [round(x, 1) for x in bare_us],
            "monitor_rounds_us": [round(x, 1) for x in monitor_us],
            "round_ratios": [round(y / x, 3) for x, y in zip(bare_us, monitor_us, strict=True)],
            "settings": {
                "polls": args.polls,
                "warmup": warmup,
                "rounds": args.rounds,
                "concurrency": args.concurrency,
                "jobs": len(ids),
            },
        }
        report(
            result,
            [
                ("bare µs/poll (median)", f"{b:.1f}   rounds {result['bare_rounds_us']}"),
                ("monitor µs/poll (median)", f"{m:.1f}   rounds {result['monitor_rounds_us']}"),
                ("ratio monitor/bare", f"{ratio:.3f}   per round {result['round_ratios']}"),
                (
                    "settings",
                    f"{args.rounds} rounds x {args.polls} polls, concurrency {args.concurrency}, {len(ids)} jobs",
                ),
            ],
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--polls", type=int, default=4000, help="polls measured per round and side")
    parser.add_argument("--warmup", type=int, default=500, help="polls before measuring (at least 2 per job)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per side, order alternating")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=64, help="simulated jobs polled round-robin")
    parser.add_argument("--limit", type=float, default=180.0, help="wall-time bound, seconds")
    cli_args = parser.parse_args()
    run(main(cli_args), cli_args.limit)
