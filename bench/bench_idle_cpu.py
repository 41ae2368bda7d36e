"""CPU with 100,000 jobs tracked and none due: the cost of waiting.

A running Scheduler (real CCEClient against a simulator process) tracks ``--jobs`` jobs whose first poll is far
away (``initial_delay`` of 10⁹ s spreads first polls over ~30 years, so even one poll during the run is unlikely;
the polls that did happen are reported). After ``--settle`` seconds, this process's CPU time
(``time.process_time``) is measured over ``--seconds`` of wall time.

Target: < 2 % of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid

from _common import make_client, report, rss_bytes, run, simulator

from monitor.core.events import Event
from monitor.engine.scheduler import Scheduler, SchedulerSettings

TARGET_PERCENT = 2.0


async def main(args: argparse.Namespace) -> None:
    with simulator(jobs=0) as sim:
        settings = SchedulerSettings(rate=10.0, initial_delay=1e9, job_timeout=1e10, stall_after=1e10)

        async def publish(event: Event) -> None:
            pass

        async with make_client(sim) as client:
            scheduler = Scheduler(client, publish, settings, rng=random.Random(1))
            started = time.perf_counter()
            rng = random.Random(2)
            for _ in range(args.jobs):
                scheduler.add(str(uuid.UUID(int=rng.getrandbits(128), version=4)))
            add_seconds = time.perf_counter() - started
            runner = asyncio.create_task(scheduler.run(), name="scheduler")
            await asyncio.sleep(args.settle)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            await asyncio.sleep(args.seconds)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            scheduler.stop()
            await runner
            rss = rss_bytes()
    percent = cpu / wall * 100
    result = {
        "bench": "idle_cpu",
        "target": f"< {TARGET_PERCENT:g} % of one core with {args.jobs:,} jobs tracked, none due",
        "pass": percent < TARGET_PERCENT,
        "cpu_percent": round(percent, 3),
        "cpu_seconds": round(cpu, 4),
        "wall_seconds": round(wall, 2),
        "jobs": len(scheduler),
        "polls": scheduler.stats.polls,
        "add_seconds": round(add_seconds, 2),
        "rss_mib": round(rss / 2**20, 1),
        "settings": {"jobs": args.jobs, "seconds": args.seconds, "settle": args.settle, "initial_delay": 1e9},
    }
    report(
        result,
        [
            ("CPU, % of one core", f"{percent:.3f} %  ({cpu * 1000:.1f} ms CPU in {wall:.1f} s)"),
            ("jobs tracked / polls", f"{len(scheduler):,} / {scheduler.stats.polls}"),
            ("adding them took", f"{add_seconds:.2f} s"),
            ("RSS", f"{rss / 2**20:.1f} MiB"),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured wall time")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after starting before measuring")
    parser.add_argument("--limit", type=float, default=120.0, help="wall-time bound, seconds")
    cli_args = parser.parse_args()
    run(main(cli_args), cli_args.limit)
