"""Run every benchmark, one process each, and print a summary table (about 2-3 minutes).

    .venv/bin/python bench/run_all.py                  # all five
    .venv/bin/python bench/run_all.py rate latency     # some of them

Each benchmark's own output (its JSON line and table) is passed through; the summary comes last and is also
written to ``bench/results/summary.json`` (git-ignored). Exit status: 0 if every target was met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent


def _cpu(r: dict[str, Any]) -> str:
    return f"ratio {r['ratio']:.3f} ({r['monitor_us_per_poll']:.1f} vs {r['bare_us_per_poll']:.1f} µs/poll)"


def _process(r: dict[str, Any]) -> str:
    return "; ".join(
        f"{case} {r[case]['ratio']:.3f} ({r[case]['monitor_us']:.1f} vs {r[case]['bare_us']:.1f} µs/poll)"
        for case in ("changing", "repeat")
        if case in r
    )


def _rate(r: dict[str, Any]) -> str:
    return (
        f"{r['used']:.1%} of {r['configured_rate']:g}/s; max 1-s window "
        f"{r['server_max_window']} server, {r['client_max_sliding_window']} client"
    )


def _memory(r: dict[str, Any]) -> str:
    return "; ".join(f"{s['case']} @{s['jobs'] // 1000}k {s['bytes_per_job'] / 1024:.2f} KB/job" for s in r["stages"])


def _idle(r: dict[str, Any]) -> str:
    return f"{r['cpu_percent']:.3f} % of a core, {r['jobs']:,} jobs, {r['polls']} polls"


def _latency(r: dict[str, Any]) -> str:
    t = r["transitions"]
    return f"p50 {t['p50']:.2f} s, p99 {t['p99']:.2f} s, max {t['max']:.2f} s over {t['count']} transitions"


# name -> (script, wall-time bound for the whole process in seconds, headline)
BENCHES: dict[str, tuple[str, float, Callable[[dict[str, Any]], str]]] = {
    "client_cpu": ("bench_client_cpu.py", 240.0, _cpu),
    "process_cpu": ("bench_process_cpu.py", 400.0, _process),
    "rate": ("bench_rate.py", 150.0, _rate),
    "memory": ("bench_memory.py", 300.0, _memory),
    "idle_cpu": ("bench_idle_cpu.py", 150.0, _idle),
    "latency": ("bench_latency.py", 180.0, _latency),
}


def run_one(name: str) -> tuple[dict[str, Any] | None, float]:
    script, bound, _ = BENCHES[name]
    started = time.monotonic()
    # Its own process group, so that a benchmark stuck past its bound goes together with its simulator.
    proc = subprocess.Popen(
        [sys.executable, str(HERE / script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        print(f"{name}: no result within {bound:g} s", file=sys.stderr)
        return None, time.monotonic() - started
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.stdout.flush()
    for line in out.splitlines():
        if line.startswith("{"):
            result: dict[str, Any] = orjson.loads(line)
            return result, time.monotonic() - started
    print(f"{name}: exited {proc.returncode} without a result", file=sys.stderr)
    return None, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(BENCHES)} (default: all)")
    names = parser.parse_args().names or list(BENCHES)
    unknown = sorted(set(names) - BENCHES.keys())
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    rows = []
    results = {}
    for name in names:
        print(f"=== {name}", flush=True)
        result, seconds = run_one(name)
        results[name] = result
        if result is None:
            rows.append((name, "ERROR", "no result", "", seconds))
        else:
            verdict = "PASS" if result["pass"] else "MISS"
            rows.append((name, verdict, BENCHES[name][2](result), result["target"], seconds))
    print("=== summary")
    width = max(len(r[0]) for r in rows)
    for name, verdict, headline, target, seconds in rows:
        print(f"{name:<{width}}  {verdict:<5} {headline}")
        print(f"{'':<{width}}  {'':<5} target: {target}   [{seconds:.0f} s]")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "summary.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    return 0 if all(r is not None and r["pass"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
