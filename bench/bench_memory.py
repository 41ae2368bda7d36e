"""RSS growth per tracked job, at 10,000 and 100,000 jobs, bare and with a last snapshot per job.

One process, one baseline, two schedulers that are never run (so nothing is polled):

1. tracking only: ``scheduler.add(job_id)`` for 10,000 jobs, then 90,000 more (ids are fresh UUID strings made
   inside the measured window: a real run holds them too);
2. tracking plus a last snapshot: a second scheduler, ``scheduler.add(job_id, previous=job)`` where ``job`` is
   the simulator's answer for a running CreateNode job (two sub-jobs), parsed once per job with the job's own
   id substituted — distinct objects per job, as a real run has after its first poll.

RSS is read from ``/proc/self/statm`` after a full garbage collection; growth is divided by the number of jobs
added since the previous stage's baseline. A deep-size breakdown of one parsed snapshot (the objects a second
snapshot adds, by type, from ``sys.getsizeof``) explains the figure.

Target: <= 4 KB (4,096 bytes) per job in every case.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import uuid
from collections import Counter
from typing import Any

import aiohttp
from _common import Sim, make_client, report, rss_bytes, run, sim_add_jobs, sim_job_body, simulator

from monitor.core.events import Event
from monitor.core.model import Job, parse_job
from monitor.engine.scheduler import Scheduler, SchedulerSettings

TARGET = 4096


def reachable(root: object) -> dict[int, object]:
    """Objects reachable from ``root`` through ``gc.get_referents``, classes and modules excluded."""
    seen: dict[int, object] = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type) or type(obj).__name__ == "module":
            continue
        seen[id(obj)] = obj
        stack.extend(gc.get_referents(obj))
    return seen


def snapshot_breakdown(body: bytes, old_id: str) -> tuple[int, dict[str, tuple[int, int]]]:
    """Bytes a second parsed snapshot adds (objects not shared with a first one), and (count, bytes) by type."""
    first = parse_job(body.replace(old_id.encode(), str(uuid.uuid4()).encode()))
    second = parse_job(body.replace(old_id.encode(), str(uuid.uuid4()).encode()))
    shared = reachable(first)
    count: Counter[str] = Counter()
    size: Counter[str] = Counter()
    for key, obj in reachable(second).items():
        if key not in shared:
            name = type(obj).__name__
            count[name] += 1
            size[name] += sys.getsizeof(obj)
    return sum(size.values()), {name: (count[name], size[name]) for name, _ in size.most_common()}


async def fetch_running_job(sim_duration: float) -> tuple[bytes, str, Sim]:
    """Start a simulator, add one CreateNode job, wait until it runs; its body, its id, and the (stopped)
    simulator's handshake, which is all a client that never sends a request needs."""
    with simulator(jobs=0) as sim:
        async with aiohttp.ClientSession() as session:
            (job_id,) = await sim_add_jobs(session, sim, 1, duration=sim_duration)
            await asyncio.sleep(0.15 * sim_duration)  # Running starts at 3-8 % of the duration
            body = await sim_job_body(session, sim, job_id)
        return body, job_id, sim


async def main(args: argparse.Namespace) -> None:
    body, template_id, sim = await fetch_running_job(20.0)
    sample = parse_job(body)
    if len(sample.sub_jobs) != 2:
        raise SystemExit(f"expected a CreateNode job with 2 sub-jobs, got {sample}")
    sizes = sorted(args.sizes)

    async def publish(event: Event) -> None:
        pass

    settings = SchedulerSettings(rate=10.0)
    stages: list[dict[str, Any]] = []
    client = make_client(sim)  # never opens a session: the schedulers are not run
    keep: list[Scheduler] = []
    template = template_id.encode()
    base = rss_bytes()
    for with_snapshot in (False, True):
        scheduler = Scheduler(client, publish, settings)
        keep.append(scheduler)  # the first stays alive while the second is measured
        start, added = base, 0
        for size in sizes:
            for _ in range(size - added):
                job_id = str(uuid.uuid4())
                previous: Job | None = None
                if with_snapshot:
                    previous = parse_job(body.replace(template, job_id.encode()))
                scheduler.add(job_id, previous=previous)
            added = size
            now = rss_bytes()
            stages.append(
                {
                    "case": "with snapshot" if with_snapshot else "tracking only",
                    "jobs": size,
                    "rss_growth_bytes": now - start,
                    "bytes_per_job": round((now - start) / size),
                }
            )
        base = rss_bytes()
    per_snapshot, by_type = snapshot_breakdown(body, template_id)
    worst = max(s["bytes_per_job"] for s in stages)
    result = {
        "bench": "memory",
        "target": f"<= {TARGET / 1024:g} KB RSS growth per tracked job",
        "pass": worst <= TARGET,
        "worst_bytes_per_job": worst,
        "stages": stages,
        "snapshot_deep_bytes": per_snapshot,
        "snapshot_by_type": by_type,
        "body_bytes": len(body),
        "settings": {"sizes": sizes, "job_type": "CreateNode", "sub_jobs": len(sample.sub_jobs)},
    }
    rows: list[tuple[str, object]] = [
        (
            f"{s['case']} @ {s['jobs']:,}",
            f"{s['bytes_per_job'] / 1024:.2f} KB/job ({s['rss_growth_bytes'] / 2**20:.1f} MiB)",
        )
        for s in stages
    ]
    rows.append(("one snapshot, deep size", f"{per_snapshot} B (body on the wire: {len(body)} B)"))
    rows.append(("  by type", ", ".join(f"{n} {c}x={b}B" for n, (c, b) in by_type.items())))
    report(result, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--limit", type=float, default=240.0, help="wall-time bound, seconds")
    cli_args = parser.parse_args()
    run(main(cli_args), cli_args.limit)
