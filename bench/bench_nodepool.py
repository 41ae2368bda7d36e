"""What following a node pool costs in API requests: a pool scaled from 0 to N nodes, followed by ``watch`` at
the default polling settings until it settles and every node is confirmed Active.

Run by hand: ``.venv/bin/python bench/bench_nodepool.py [--nodes 100] [--speedup 20] [--kind pool|scaleup]``
(``scaleup``: the same nodes created by one ``ScaleupCluster`` job instead).

Time is compressed by ``--speedup``: every polling interval and every duration (node creation, ~5 minutes per
node as CCE takes; the wait for Active) is divided by it and the rate limit multiplied by it, so requests per
*simulated* minute are the requests per minute the defaults cost against a real pool. The simulator runs in
this process (its CPU does not matter here: we count requests, per route, as the simulator received them).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time

import orjson

from monitor.cce.auth import TokenAuth
from monitor.cce.client import CCEClient, ClientSettings
from monitor.core.secret import Secret
from monitor.engine.pipeline import NodePoolTarget, watch
from monitor.engine.settings import SchedulerSettings
from monitor.sim import Simulator, SimulatorConfig

NODE_SECONDS = 300.0  # a CreateNode job's length on CCE, about five minutes


def scaled(settings: SchedulerSettings, k: float) -> SchedulerSettings:
    times = ("interval", "min_interval", "max_interval", "initial_delay", "job_timeout", "stall_after")
    times += ("not_found_grace", "error_backoff", "error_backoff_max", "auth_backoff", "auth_backoff_max")
    values = {name: getattr(settings, name) / k for name in (*times, "node_timeout")}
    return dataclasses.replace(settings, rate=settings.rate * k, **values)  # the same requests per simulated second


async def main(nodes: int, k: float, kind: str) -> dict[str, object]:
    sim = Simulator(SimulatorConfig(seed=11, time_scale=10.0 / k))  # Active 10-30 s after the job, scaled
    endpoint = await sim.start()
    try:
        cluster = sim.add_cluster()
        settings = scaled(SchedulerSettings(), k)
        client = CCEClient(
            ClientSettings(endpoint=endpoint, project_id=sim.config.project_id), TokenAuth(Secret(sim.config.token))
        )
        jobs: list[str] = []
        pools: tuple[NodePoolTarget, ...] = ()
        if kind == "pool":  # PUT .../nodepools/{id}: a CreateNode job per node, found in the node list
            pool = sim.add_nodepool(cluster, name="workers", node_duration=NODE_SECONDS / k)
            sim.scale_nodepool(cluster, pool, nodes)
            pools = (NodePoolTarget(cluster, pool),)
        else:  # POST .../nodes with count: one ScaleupCluster job for all of them
            jobs = [sim.create_nodes(cluster, nodes, duration=NODE_SECONDS / k)]
        started = time.monotonic()
        async with client:
            result = await watch(jobs, client=client, settings=settings, rollout="bench", nodepools=pools)
        elapsed = time.monotonic() - started
    finally:
        await sim.close()
    minutes = elapsed * k / 60
    by_route = dict(sim.stats.by_route)
    total = sum(by_route.values())
    return {
        "bench": "nodepool",
        "kind": kind,
        "nodes": nodes,
        "speedup": k,
        "exit_code": result.exit_code,
        "simulated_minutes": round(minutes, 2),
        "requests": total,
        "requests_per_minute": round(total / minutes, 1),
        "per_route_per_minute": {route: round(n / minutes, 1) for route, n in sorted(by_route.items())},
        "requests_per_node": round(total / nodes, 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--speedup", type=float, default=20.0)
    parser.add_argument("--kind", choices=["pool", "scaleup"], default="pool")
    args = parser.parse_args()
    figures = asyncio.run(main(args.nodes, args.speedup, args.kind))
    print(orjson.dumps(figures).decode())
    print(
        f"{args.kind} of {args.nodes} nodes: {figures['requests']} requests over {figures['simulated_minutes']} min "
        f"= {figures['requests_per_minute']}/min {figures['per_route_per_minute']}; "
        f"{figures['requests_per_node']} per node; exit {figures['exit_code']}"
    )
