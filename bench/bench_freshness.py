"""Freshness per request: how soon each strategy sees every true transition, on the same rollouts and budget.

    .venv/bin/python bench/bench_freshness.py              # both regimes, ~5 minutes
    .venv/bin/python bench/bench_freshness.py --regime a   # one

For each regime, three ``cce-monitor simulate`` children (one per strategy, so none shares a server or a rate
window with another) are given the same rollouts from the same seed: ``--jobs`` CreateNode jobs in eight waves
``--stagger`` seconds apart, each step (the job's start, ``CreateNodeVM``, ``InstallNode``) lasting its share of
``--duration`` times its own lognormal factor of log spread sigma. The budget is ``jobs / cycle`` requests per
second for every strategy:

* **round-robin**: every job every cycle (``interval = max_interval = cycle``, no backoff, no jitter);
* **interval**: today's policy with its defaults (``interval`` 10 s, x1.5 while unchanged up to 30 s, jitter
  10 %), under the same rate limit;
* **adaptive**: ``polling.strategy: adaptive`` (:mod:`monitor.engine.freshness`), learning as it goes from the
  shipped priors (which are minutes off for these seconds-long jobs).

Regimes (the issue's): **a** — durations fairly predictable (sigma 0.15), one poll per job per 10 s; **b** — a
wide spread (sigma 0.35) and a starved budget (one poll per job per 40 s).

Figures per strategy: the detection latency of every true transition after a job's creation (the simulator's
truth: from the instant it became visible to the first event of that job or sub-job stamped after it) — p50, p90,
max; requests used; the busiest 1-s sliding window of arrivals at the simulator (must not exceed the budget); the
longest a job went unobserved while unfinished (must stay under 3 round-robin cycles); and each strategy's
latencies over round-robin's. Targets: (a) adaptive p50 <= 0.5x and p90 <= 0.7x round-robin's; (b) adaptive at
most 1.0x at p50 and p90.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp
import orjson
from _common import percentile, report, run, sim_add_jobs, sim_truth, simulator

from monitor.cce.auth import TokenAuth
from monitor.cce.client import CCEClient, ClientSettings
from monitor.core.events import Event
from monitor.core.model import Job, ParseMemo
from monitor.core.secret import Secret
from monitor.engine.scheduler import Scheduler, SchedulerSettings

REGIMES = {"a": {"spread": 0.15, "cycle": 10.0}, "b": {"spread": 0.35, "cycle": 40.0}}
STRATEGIES = ("round_robin", "interval", "adaptive")
WAVES = 8
TARGETS = {"a": {"p50": 0.5, "p90": 0.7}, "b": {"p50": 1.0, "p90": 1.0}}


def settings_for(strategy: str, budget: float, cycle: float) -> SchedulerSettings:
    common: dict[str, Any] = {"rate": budget, "job_timeout": 3600.0, "node_check": False, "stall_after": 3600.0}
    if strategy == "round_robin":
        return SchedulerSettings(
            **common, interval=cycle, max_interval=cycle, min_interval=min(1.0, cycle), backoff=1.0, jitter=0.0
        )
    if strategy == "interval":
        return SchedulerSettings(**common)
    return SchedulerSettings(**common, strategy="adaptive", min_interval=1.0, max_interval=cycle)


class Seen:
    """Every event the scheduler publishes, and when each job was read (the client's side)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.reads: dict[str, list[float]] = defaultdict(list)
        self.etas: dict[float, dict[str, float | None]] = {}

    async def __call__(self, event: Event) -> None:
        self.events.append(event)


class LoggedClient(CCEClient):
    """The real client, noting when each job was read."""

    seen: Seen

    async def fetch(
        self, job_id: str, memo: ParseMemo | None = None, *, permit: Callable[[], Awaitable[None]] | None = None
    ) -> Job:
        self.seen.reads[job_id].append(time.time())
        return await super().fetch(job_id, memo, permit=permit)


async def one_strategy(strategy: str, sim: Any, job_ids: list[str], budget: float, cycle: float, limit: float) -> dict:
    seen = Seen()
    async with aiohttp.ClientSession() as session:
        client = LoggedClient(
            ClientSettings(endpoint=sim.endpoint, project_id=sim.project_id),
            TokenAuth(Secret(sim.token)),
            session=session,
        )
        client.seen = seen
        scheduler = Scheduler(client, seen, settings_for(strategy, budget, cycle))
        task = asyncio.create_task(scheduler.run(drain=2.0))
        added = time.time()
        scheduler.add_many(job_ids)
        etas = asyncio.create_task(predict(scheduler, seen, job_ids, added))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await scheduler.wait_idle()
        unfinished = len(scheduler)
        etas.cancel()
        scheduler.stop()
        await task
        await client.aclose()
    return {"events": seen.events, "reads": seen.reads, "added": added, "unfinished": unfinished, "etas": seen.etas}


async def predict(scheduler: Scheduler, seen: Seen, job_ids: list[str], started: float) -> None:
    """When 25, 50 and 75 % of the jobs are seen finished: the predicted end of the rollout by the learned ETA
    (the scheduler's) and by today's (the succeeded jobs' mean duration from the start, less the time run)."""
    marks = [0.25, 0.5, 0.75]
    while marks:
        await asyncio.sleep(0.25)
        ended = {
            e.job_id: e.time.timestamp()
            for e in seen.events
            if e.job_id and e.type.value == "job.phase_changed" and e.phase in ("Success", "Failed")
        }
        if len(ended) < marks[0] * len(job_ids):
            continue
        now = time.time()
        learned = scheduler.eta([j for j in job_ids if j not in ended])
        mean = sum(t - started for t in ended.values()) / len(ended)
        seen.etas[marks.pop(0)] = {
            "at": now,
            "learned_end": now + learned[0] if learned else None,
            "learned_p90_end": now + learned[1] if learned else None,
            "today_end": now + max(0.0, mean - (now - started)),
        }


def latencies(truth: dict[str, list[dict[str, Any]]], events: list[Event]) -> list[float]:
    """For each true transition after creation: from when it became visible to the first event of its job or
    sub-job stamped after it (the first poll that saw the change, or a later one)."""
    stamps: dict[str, list[float]] = defaultdict(list)
    for e in events:
        uid = e.subjob_id or e.job_id
        if uid is not None and e.type.value in ("job.phase_changed", "subjob.phase_changed"):
            stamps[uid].append(e.time.timestamp())
    for values in stamps.values():
        values.sort()
    out: list[float] = []
    for transitions in truth.values():
        for t in transitions:
            if t["phase"] == "Initializing":
                continue  # the job's (or sub-job's) creation: seen at its first poll, not a change
            at = datetime.fromisoformat(t["at"]).timestamp()
            times = stamps.get(t["uid"], [])
            i = bisect.bisect_left(times, at)
            if i < len(times):
                out.append(times[i] - at)
    return out


def longest_unobserved(reads: dict[str, list[float]], added: float, ends: dict[str, float]) -> float:
    """The longest a job went without a read while unfinished (from its addition to its end)."""
    worst = 0.0
    for job_id, end in ends.items():
        times = [added, *(t for t in reads.get(job_id, []) if t <= end + 0.001)]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        tail = end - times[-1] if times[-1] < end else 0.0
        worst = max(worst, tail, *gaps, 0.0)
    return worst


def eta_errors(etas: dict[float, dict[str, float | None]], started: float, end: float) -> dict[str, Any]:
    """|predicted end - true end| / true duration, at 25, 50 and 75 % of the jobs finished, per estimator."""
    out: dict[str, Any] = {}
    for mark, p in sorted(etas.items()):
        row = {}
        for name in ("learned_end", "today_end"):
            predicted = p[name]
            row[name.removesuffix("_end")] = round(abs(predicted - end) / (end - started), 3) if predicted else None
        p90 = p["learned_p90_end"]
        row["true_end_before_p90"] = bool(p90 is not None and end <= p90)
        out[f"{round(mark * 100)}%"] = row
    return out


async def busiest_window(session: aiohttp.ClientSession, sim: Any) -> int:
    """The most arrivals at the simulator in any 1-s sliding window."""
    async with session.get(f"{sim.endpoint}/_sim/arrivals") as resp:
        arrivals = sorted(orjson.loads(await resp.read())["arrivals"])
    best, lo = 0, 0
    for hi, t in enumerate(arrivals):
        while t - arrivals[lo] >= 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def regime(name: str, args: argparse.Namespace) -> dict[str, Any]:
    spread, cycle = REGIMES[name]["spread"], REGIMES[name]["cycle"]
    budget = args.jobs / cycle
    with contextlib.ExitStack() as stack:
        sims = [stack.enter_context(simulator(seed=args.seed)) for _ in STRATEGIES]
        async with aiohttp.ClientSession() as session:
            ids: list[list[str]] = [[] for _ in sims]
            per_wave = -(-args.jobs // WAVES)
            for wave in range(WAVES):
                count = min(per_wave, args.jobs - wave * per_wave)
                for k, sim in enumerate(sims):  # the same calls in the same order: the same plans
                    ids[k] += await sim_add_jobs(
                        session,
                        sim,
                        count,
                        duration=args.duration,
                        start_delay=wave * args.stagger,
                        spread=spread,
                    )
            limit = WAVES * args.stagger + args.duration * 6 + 60
            plans = zip(STRATEGIES, sims, ids, strict=True)
            runs = await asyncio.gather(*(one_strategy(s, sim, j, budget, cycle, limit) for s, sim, j in plans))
            out: dict[str, Any] = {}
            for strategy, sim, job_ids, result in zip(STRATEGIES, sims, ids, runs, strict=True):
                truth = {j: await sim_truth(session, sim, j) for j in job_ids}
                ends = {j: datetime.fromisoformat(t[-1]["at"]).timestamp() for j, t in truth.items()}
                lat = latencies(truth, result["events"])
                async with session.get(f"{sim.endpoint}/_sim/stats") as resp:
                    stats = orjson.loads(await resp.read())
                out[strategy] = {
                    "transitions": sum(1 for t in truth.values() for x in t if x["phase"] != "Initializing"),
                    "detected": len(lat),
                    "p50_s": round(percentile(lat, 50), 2) if lat else None,
                    "p90_s": round(percentile(lat, 90), 2) if lat else None,
                    "max_s": round(max(lat), 2) if lat else None,
                    "requests": stats["job_requests"],
                    "busiest_1s": await busiest_window(session, sim),
                    "longest_unobserved_s": round(longest_unobserved(result["reads"], result["added"], ends), 1),
                    "unfinished": result["unfinished"],
                    "eta_error": eta_errors(result["etas"], result["added"], max(ends.values())),
                }
    rr = out["round_robin"]
    for strategy in STRATEGIES:
        s = out[strategy]
        s["p50_x"] = round(s["p50_s"] / rr["p50_s"], 2) if s["p50_s"] and rr["p50_s"] else None
        s["p90_x"] = round(s["p90_s"] / rr["p90_s"], 2) if s["p90_s"] and rr["p90_s"] else None
    a = out["adaptive"]
    at25 = a["eta_error"].get("25%", {})
    checks = {
        "eta_25pct_half_of_todays": bool(at25.get("learned") is not None and at25.get("today"))
        and at25["learned"] <= 0.5 * at25["today"],
        "p50": a["p50_x"] is not None and a["p50_x"] <= TARGETS[name]["p50"],
        "p90": a["p90_x"] is not None and a["p90_x"] <= TARGETS[name]["p90"],
        "no_window_over": all(out[s]["busiest_1s"] <= budget + 1e-9 for s in STRATEGIES),
        "no_starvation": a["longest_unobserved_s"] <= 3 * cycle,
        "all_detected": all(out[s]["detected"] == out[s]["transitions"] for s in STRATEGIES),
    }
    return {"spread": spread, "cycle_s": cycle, "budget_per_s": budget, "strategies": out, "checks": checks}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    names = [args.regime] if args.regime else list(REGIMES)
    regimes = {}
    for name in names:
        print(f"regime {name}: {REGIMES[name]}", file=sys.stderr, flush=True)
        regimes[name] = await regime(name, args)
    ok = all(all(r["checks"].values()) for r in regimes.values())
    return {
        "bench": "freshness",
        "target": "(a) adaptive p50 <= 0.5x, p90 <= 0.7x round-robin; (b) <= 1.0x; no window over; none starved",
        "pass": ok,
        "settings": {"jobs": args.jobs, "duration_s": args.duration, "stagger_s": args.stagger, "seed": args.seed},
        "regimes": regimes,
    }


def rows(result: dict[str, Any]) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for name, r in result["regimes"].items():
        out.append((f"regime {name}", f"sigma {r['spread']}, budget {r['budget_per_s']:g}/s, cycle {r['cycle_s']:g} s"))
        for strategy, s in r["strategies"].items():
            out.append(
                (
                    f"  {strategy}",
                    f"p50 {s['p50_s']} s ({s['p50_x']}x), p90 {s['p90_s']} s ({s['p90_x']}x), max {s['max_s']} s; "
                    f"{s['requests']} requests, busiest 1 s {s['busiest_1s']}, unobserved <= "
                    f"{s['longest_unobserved_s']} s, {s['detected']}/{s['transitions']} seen",
                )
            )
            errors = "; ".join(
                f"{mark}: {e['learned']} vs {e['today']}{'' if e['true_end_before_p90'] else ' (end past p90)'}"
                for mark, e in s["eta_error"].items()
            )
            out.append(("    ETA error, learned vs today's", errors))
        out.append(("  checks", ", ".join(k for k, ok in r["checks"].items() if not ok) or "all pass"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", choices=sorted(REGIMES))
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="a CreateNode job's nominal duration, s")
    parser.add_argument("--stagger", type=float, default=4.0, help="seconds between the eight waves")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    result = run(main_async(args), limit=1800)
    report(result, rows(result), save=not args.no_save)
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
