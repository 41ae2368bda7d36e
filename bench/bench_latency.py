"""Detection latency: from the simulator's true transition time to the monitor's event, under capacity.

``--jobs`` short CreateNode jobs (durations spread evenly over ``--min-duration``..``--max-duration`` seconds,
10 % failing) are created through ``POST /_sim/jobs`` and watched by the real Scheduler + CCEClient with a
rate well above demand, ``interval`` = ``max_interval`` (no growth) and jitter 0.1, until every job is final.

For every ``job.phase_changed`` / ``subjob.phase_changed`` event, latency = ``event.time`` - the simulator's
truth ``at_ns`` for that (uid, phase) (``GET /_sim/truth``); both clocks are this machine's wall clock. Real
transitions (``previous_phase`` set) are the figure; first observations (discovery of a job's phase at its
first poll) are reported apart, as are transitions never seen because a later one came before the next poll.

Target: p99 <= interval + 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp
from _common import distribution, make_client, report, run, sim_add_jobs, sim_truth, simulator

from monitor.core.events import Event, EventType
from monitor.engine.scheduler import Scheduler, SchedulerSettings

PHASE_EVENTS = (EventType.JOB_PHASE_CHANGED, EventType.SUBJOB_PHASE_CHANGED)


def durations(jobs: int, low: float, high: float, batches: int) -> list[tuple[int, float]]:
    """(count, duration) batches spreading ``jobs`` evenly over [low, high]."""
    out = []
    for i in range(batches):
        count = jobs // batches + (1 if i < jobs % batches else 0)
        out.append((count, low + (high - low) * i / max(1, batches - 1)))
    return out


async def main(args: argparse.Namespace) -> None:
    settings = SchedulerSettings(
        rate=args.rate,
        max_in_flight=args.max_in_flight,
        interval=args.interval,
        min_interval=min(1.0, args.interval),
        max_interval=args.interval,
        jitter=args.jitter,
        job_timeout=args.max_duration + 60.0,
    )
    seen: list[tuple[Event, float]] = []

    async def publish(event: Event) -> None:
        seen.append((event, time.time()))

    with simulator(jobs=0) as sim:
        async with aiohttp.ClientSession() as control:
            ids: list[str] = []
            for count, duration in durations(args.jobs, args.min_duration, args.max_duration, args.batches):
                ids += await sim_add_jobs(control, sim, count, duration=duration, fail_ratio=args.fail_ratio)
            async with make_client(sim) as client:
                scheduler = Scheduler(client, publish, settings)
                scheduler.add_many(ids)
                runner = asyncio.create_task(scheduler.run(), name="scheduler")
                try:
                    async with asyncio.timeout(args.max_duration + 30.0):
                        await scheduler.wait_idle()
                except TimeoutError:
                    pass
                unfinished = len(scheduler)
                scheduler.stop()
                await runner
            truth: dict[tuple[str, str], int] = {}
            for job_id in ids:
                for t in await sim_truth(control, sim, job_id):
                    truth[(t["uid"], t["phase"])] = t["at_ns"]
    result = analyse(args, settings, seen, truth, unfinished, scheduler.stats.polls)
    report(result, result.pop("_rows"))


def analyse(
    args: argparse.Namespace,
    settings: SchedulerSettings,
    seen: list[tuple[Event, float]],
    truth: dict[tuple[str, str], int],
    unfinished: int,
    polls: int,
) -> dict[str, Any]:
    transitions: list[float] = []
    delivered: list[float] = []
    discovery: list[float] = []
    matched: set[tuple[str, str]] = set()
    unmatched = 0
    for event, received in seen:
        if event.type not in PHASE_EVENTS or event.phase is None:
            continue
        uid = event.job_id if event.type is EventType.JOB_PHASE_CHANGED else event.subjob_id
        key = (uid or "", event.phase)
        at_ns = truth.get(key)
        if at_ns is None:
            unmatched += 1
            continue
        matched.add(key)
        latency = event.time.timestamp() - at_ns / 1e9
        if event.previous_phase is None:
            discovery.append(latency)
        else:
            transitions.append(latency)
            delivered.append(received - at_ns / 1e9)
    skipped = sum(1 for key in truth if key[1] != "Initializing" and key not in matched)
    stats = distribution(transitions, (50, 90, 99), minimum=True)
    bound = settings.interval + 1.0
    ok = bool(transitions) and stats["p99"] <= bound and unfinished == 0 and unmatched == 0
    other = sum(1 for e, _ in seen if e.type not in PHASE_EVENTS)
    disc = distribution(discovery, (50, 90, 99), minimum=True)
    deliv = distribution(delivered, (50, 90, 99), minimum=True)
    return {
        "bench": "latency",
        "target": f"p99 detection latency <= interval + 1 s = {bound:g} s",
        "pass": ok,
        "transitions": stats,
        "delivered_to_callback": deliv,
        "discovery": disc,
        "unobserved_transitions": skipped,
        "unmatched_events": unmatched,
        "other_events": other,
        "unfinished_jobs": unfinished,
        "polls": polls,
        "settings": {
            "jobs": args.jobs,
            "durations": [args.min_duration, args.max_duration],
            "fail_ratio": args.fail_ratio,
            "rate": settings.rate,
            "interval": settings.interval,
            "max_interval": settings.max_interval,
            "jitter": settings.jitter,
            "max_in_flight": settings.max_in_flight,
        },
        "_rows": [
            ("transitions: count", stats["count"]),
            (
                "  p50 / p90 / p99 / max (s)",
                f"{stats.get('p50')} / {stats.get('p90')} / {stats.get('p99')} / {stats.get('max')}",
            ),
            ("  delivered to callback p99", f"{deliv.get('p99')} s"),
            ("first observations p50 / p99", f"{disc.get('p50')} / {disc.get('p99')} s ({disc['count']})"),
            ("unobserved (skipped between polls)", skipped),
            ("unmatched events / other events", f"{unmatched} / {other}"),
            ("unfinished jobs / polls", f"{unfinished} / {polls}"),
            (
                "settings",
                f"{args.jobs} jobs of {args.min_duration:g}-{args.max_duration:g}s, rate {settings.rate:g}/s, "
                f"interval {settings.interval:g}s = max_interval, jitter {settings.jitter:g}",
            ),
        ],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--min-duration", type=float, default=10.0)
    parser.add_argument("--max-duration", type=float, default=20.0)
    parser.add_argument("--batches", type=int, default=6, help="distinct durations")
    parser.add_argument("--fail-ratio", type=float, default=0.1)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--jitter", type=float, default=0.1)
    parser.add_argument("--max-in-flight", type=int, default=16)
    parser.add_argument("--limit", type=float, default=150.0, help="wall-time bound, seconds")
    cli_args = parser.parse_args()
    run(main(cli_args), cli_args.limit)
