"""Serving a simulator from another process: :func:`run_forever` and its one-line JSON handshake."""

from __future__ import annotations

import asyncio
from typing import TextIO

import orjson

from monitor.sim.config import SimulatorConfig
from monitor.sim.server import Simulator

__all__ = ["run_forever"]


async def run_forever(
    config: SimulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    jobs: int = 100,
    job_type: str = "CreateNode",
    fail_ratio: float = 0.1,
    out: TextIO,
    duration: float | None = None,
) -> None:
    """Serve a simulator with a rollout of ``jobs`` jobs until cancelled.

    The first line written to ``out`` is one JSON object: ``endpoint``, ``project_id``, ``token`` and
    ``job_ids``, for a benchmark in another process.
    """
    simulator = Simulator(config)
    endpoint = await simulator.start(host, port)
    try:
        job_ids = simulator.start_rollout(jobs, fail_ratio=fail_ratio, job_type=job_type, duration=duration)
        handshake = {"endpoint": endpoint, "project_id": config.project_id, "token": config.token, "job_ids": job_ids}
        out.write(orjson.dumps(handshake).decode() + "\n")
        out.flush()
        await asyncio.Event().wait()
    finally:
        await simulator.close()
