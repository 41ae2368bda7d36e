"""Shared helpers for the benchmarks: the simulator in its own process, its control API, figures, output.

Every benchmark starts ``cce-monitor simulate`` as a child process on 127.0.0.1 (so the server's CPU is not
counted in ours), reads the one JSON handshake line it prints, and kills it at the end. Results are one JSON
line on stdout (what ``run_all.py`` collects) followed by a short human table.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from monitor.cce.auth import TokenAuth
from monitor.cce.client import CCEClient, ClientSettings
from monitor.core.secret import Secret

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _cli() -> str:
    """The ``cce-monitor`` script of the interpreter running us (the project's venv), else one on PATH."""
    local = Path(sys.executable).parent / "cce-monitor"
    if local.exists():
        return str(local)
    found = shutil.which("cce-monitor")
    if found is None:
        raise SystemExit("cce-monitor not found: run the benchmarks with the project's .venv/bin/python")
    return found


@dataclass
class Sim:
    """A running simulator child process and its handshake."""

    proc: subprocess.Popen[bytes]
    endpoint: str
    project_id: str
    token: str
    job_ids: list[str] = field(repr=False)

    def job_url(self, job_id: str) -> str:
        return f"{self.endpoint}/api/v3/projects/{self.project_id}/jobs/{job_id}"


@contextlib.contextmanager
def simulator(
    *,
    jobs: int = 0,
    duration: float | None = None,
    fail_ratio: float = 0.0,
    seed: int = 0,
    rate: float | None = None,
    start_timeout: float = 60.0,
    extra: Sequence[str] = (),
) -> Iterator[Sim]:
    """Run ``cce-monitor simulate --port 0`` on loopback; yield its handshake; kill it on exit."""
    cmd = [_cli(), "simulate", "--host", HOST, "--port", "0", "--jobs", str(jobs), "--fail-ratio", str(fail_ratio)]
    cmd += ["--seed", str(seed), "--log-level", "error"]
    if duration is not None:
        cmd += ["--duration", str(duration)]
    if rate is not None:
        cmd += ["--rate", str(rate)]
    cmd += list(extra)
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
        try:
            line = first_line(proc, start_timeout)
            if not line:
                errors.seek(0)
                tail = errors.read()[-2000:].decode(errors="replace")
                raise SystemExit(f"simulator did not start (exit {proc.poll()}): {tail}")
            hello = orjson.loads(line)
            yield Sim(proc, hello["endpoint"], hello["project_id"], hello["token"], hello["job_ids"])
        except BaseException:
            if proc.poll() is not None:  # it died under us: say why
                errors.seek(0)
                tail = errors.read()[-2000:].decode(errors="replace")
                print(f"simulator exited with {proc.returncode} during the run:\n{tail}", file=sys.stderr)
            raise
        finally:
            stop_process(proc)


def first_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The first stdout line of ``proc`` within ``timeout`` seconds (b"" if it exits or times out)."""
    assert proc.stdout is not None
    buffer = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return b""
            chunk = os.read(proc.stdout.fileno(), 1 << 20)
            if not chunk:
                return b""
            buffer += chunk
    return buffer.split(b"\n", 1)[0]


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


# --- the simulator's control API (not counted in its statistics) -------------------------------------------


async def sim_add_jobs(
    session: aiohttp.ClientSession,
    sim: Sim,
    count: int,
    *,
    duration: float | None = None,
    job_type: str = "CreateNode",
    fail_ratio: float = 0.0,
    start_delay: float = 0.0,
    spread: float = 0.0,
) -> list[str]:
    spec: dict[str, Any] = {"count": count, "type": job_type, "fail_ratio": fail_ratio, "start_delay": start_delay}
    spec["spread"] = spread
    if duration is not None:
        spec["duration"] = duration
    async with session.post(f"{sim.endpoint}/_sim/jobs", data=orjson.dumps(spec)) as resp:
        resp.raise_for_status()
        ids: list[str] = orjson.loads(await resp.read())["job_ids"]
        return ids


async def sim_truth(session: aiohttp.ClientSession, sim: Sim, job_id: str) -> list[dict[str, Any]]:
    async with session.get(f"{sim.endpoint}/_sim/truth", params={"job_id": job_id}) as resp:
        resp.raise_for_status()
        transitions: list[dict[str, Any]] = orjson.loads(await resp.read())["transitions"]
        return transitions


async def sim_stats(session: aiohttp.ClientSession, sim: Sim) -> dict[str, Any]:
    async with session.get(f"{sim.endpoint}/_sim/stats") as resp:
        resp.raise_for_status()
        stats: dict[str, Any] = orjson.loads(await resp.read())
        return stats


async def sim_job_body(session: aiohttp.ClientSession, sim: Sim, job_id: str) -> bytes:
    """One job API answer, as the monitor would receive it."""
    async with session.get(sim.job_url(job_id), headers={"X-Auth-Token": sim.token}) as resp:
        resp.raise_for_status()
        return await resp.read()


def make_client(sim: Sim, *, session: aiohttp.ClientSession | None = None, total_timeout: float = 10.0) -> CCEClient:
    """The real client as the CLI builds it: token auth (the rate limit is the scheduler's, from its settings)."""
    settings = ClientSettings(endpoint=sim.endpoint, project_id=sim.project_id, total_timeout=total_timeout)
    return CCEClient(settings, TokenAuth(Secret(sim.token)), session=session)


# --- figures -------------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process now (not the peak), after a full garbage collection."""
    gc.collect()
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def distribution(
    values: Sequence[float], percentiles: Sequence[int] = (50, 99), *, digits: int = 3, minimum: bool = False
) -> dict[str, float | int]:
    """``{"count", "p50", ..., "max"}`` (and ``"min"``) of ``values``, rounded; ``{"count": 0}`` when empty."""
    if not values:
        return {"count": 0}
    out: dict[str, float | int] = {"count": len(values)}
    out |= {f"p{p}": round(percentile(values, p), digits) for p in percentiles}
    out["max"] = round(max(values), digits)
    if minimum:
        out["min"] = round(min(values), digits)
    return out


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"python": sys.version.split()[0], "cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}


# --- output --------------------------------------------------------------------------------------------------


def report(result: dict[str, Any], rows: Sequence[tuple[str, object]], *, save: bool = True) -> None:
    """Print the JSON line, then the human table; keep a copy under ``bench/results/`` (git-ignored)."""
    result = {**result, "machine": machine()}
    line = orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS).decode()
    print(line, flush=True)
    width = max(len(name) for name, _ in rows)
    verdict = "PASS" if result.get("pass") else "MISS"
    print(f"\n{result['bench']}: {verdict}  (target: {result['target']})")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(flush=True)
    if save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{result['bench']}.json").write_text(line + "\n")


def run(main: Any, limit: float) -> Any:
    """``asyncio.run(main)`` bounded by ``limit`` seconds of wall time."""

    async def bounded() -> Any:
        async with asyncio.timeout(limit):
            return await main

    return asyncio.run(bounded())
