"""The daemon follows node pools: POST /v1/nodepools, GET /v1/nodepools, and a restart mid-rollout that resumes
the pool, its nodes' jobs and the nodes still awaited (state in SQLite), against the simulator."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from monitor.config import Config, config_from
from monitor.daemon.service import Daemon
from monitor.sim import Simulator
from monitor.testing import running_daemon
from tests.conftest import SimFactory


def pool_config(sim: Simulator, tmp_path: Path) -> Config:
    assert sim.endpoint is not None
    return config_from(
        {
            "endpoint": sim.endpoint,
            "project_id": sim.config.project_id,
            "polling": {"rate": 100, "interval": 0.2, "min_interval": 0.05, "max_interval": 0.3, "job_timeout": 60},
            "sinks": [{"type": "file", "path": str(tmp_path / "events.jsonl")}],
            "state": {"path": str(tmp_path / "state.db")},
            "api": {"listen": "127.0.0.1:0"},
            "rollouts": {"interval": 0.2},
            "shutdown_deadline": 4,
        },
        source="test",
    )


async def call(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    async with session.request(method, url, json=body) as resp:
        return resp.status, orjson.loads(await resp.read())


async def until_finished(session: aiohttp.ClientSession, base: str, rollout: str) -> dict[str, Any]:
    async with asyncio.timeout(40):
        while True:
            status, body = await call(session, "GET", f"{base}/v1/rollouts/{rollout}")
            if status == 200 and body["rollout"]["ended"]:
                return dict(body["rollout"])
            await asyncio.sleep(0.1)


def events(tmp_path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (tmp_path / "events.jsonl").read_bytes().splitlines()]


async def test_post_a_nodepool_and_follow_it_to_its_target(sim_factory: SimFactory, tmp_path: Path) -> None:
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, node_duration=1.0)
    sim.scale_nodepool(cluster, pool, 3)
    env = {"CCE_AUTH_TOKEN": sim.config.token}
    async with running_daemon(pool_config(sim, tmp_path), env=env) as d, aiohttp.ClientSession() as session:
        body = {"cluster_id": cluster, "nodepool_id": pool, "target": 3, "labels": {"team": "a"}}
        assert await call(session, "POST", f"{d.base}/v1/nodepools", body) == (202, {"followed": True, "rollout": pool})
        assert (await call(session, "POST", f"{d.base}/v1/nodepools", body))[1]["followed"] is False
        summary = await until_finished(session, d.base, pool)
        assert summary["unit"] == "nodes" and summary["counts"] == {"Active": 3}
        _, listed = await call(session, "GET", f"{d.base}/v1/nodepools")
        [row] = listed["nodepools"]
        assert (row["outcome"], row["phase"], row["current"], row["labels"]["team"]) == ("Success", "", 3, "a")
        _, jobs = await call(session, "GET", f"{d.base}/v1/jobs?rollout={pool}")
        assert len(jobs["jobs"]) == 3, "each node's job is a tracked job of the rollout"
        # Bad bodies are one-line 400s.
        for bad, message in [
            ({"nodepool_id": pool}, "cluster_id is required"),
            ({"cluster_id": "a/b", "nodepool_id": pool}, "cluster_id: invalid cluster id"),
            ({"cluster_id": cluster, "nodepool_id": pool, "target": -1}, "target must be a whole number"),
            ({"cluster_id": cluster, "nodepool_id": pool, "extra": 1}, "unknown key"),
        ]:
            status, answer = await call(session, "POST", f"{d.base}/v1/nodepools", bad)
            assert status == 400 and message in answer["error"], answer
    types = [e["type"] for e in events(tmp_path)]
    assert types.count("node.active") == 3 and types.count("nodepool.settled") == 1


async def test_two_pools_posted_into_one_named_rollout(sim_factory: SimFactory, tmp_path: Path) -> None:
    """``rollout`` in the body names the rollout: two pools counted together, their nodes under that name."""
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    # Nodes that take longer than the daemon's start-up hold: a node already Active at the first read of its
    # pool was there before the scale (monitor.engine.fleet.PoolProbe.discover).
    pools = [sim.add_nodepool(cluster, node_duration=3.0) for _ in range(2)]
    for pool, size in zip(pools, (2, 3), strict=True):
        sim.scale_nodepool(cluster, pool, size)
    env = {"CCE_AUTH_TOKEN": sim.config.token}
    async with running_daemon(pool_config(sim, tmp_path), env=env) as d, aiohttp.ClientSession() as session:
        for pool in pools:
            body = {"cluster_id": cluster, "nodepool_id": pool, "rollout": "wave-1"}
            assert await call(session, "POST", f"{d.base}/v1/nodepools", body) == (
                202,
                {"followed": True, "rollout": "wave-1"},
            )
        status, answer = await call(
            session, "POST", f"{d.base}/v1/nodepools", {"cluster_id": cluster, "nodepool_id": "p", "rollout": "a b"}
        )
        assert status == 400 and "rollout: invalid rollout name" in answer["error"], answer
        summary = await until_finished(session, d.base, "wave-1")
        assert summary["unit"] == "nodes" and summary["counts"] == {"Active": 5}, summary
        assert (await call(session, "GET", f"{d.base}/v1/rollouts/{pools[0]}"))[0] == 404
    assert {e["rollout"] for e in events(tmp_path) if e["type"] == "node.active"} == {"wave-1"}


async def test_a_daemon_restarted_mid_rollout_resumes_the_pool_and_its_nodes(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    sim, _ = await sim_factory(time_scale=0.2)
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, node_duration=3.0)
    sim.scale_nodepool(cluster, pool, 6)
    env = {"CCE_AUTH_TOKEN": sim.config.token}
    cfg = pool_config(sim, tmp_path)
    first = Daemon(cfg, env=env)
    task = asyncio.create_task(first.run(asyncio.Event()))
    await asyncio.wait_for(first.started.wait(), 15)
    async with aiohttp.ClientSession() as session:
        body = {"cluster_id": cluster, "nodepool_id": pool}
        assert (await call(session, "POST", f"{first.endpoint}/v1/nodepools", body))[0] == 202
        async with asyncio.timeout(20):  # some node jobs found, the rollout not over
            while len((await call(session, "GET", f"{first.endpoint}/v1/jobs?rollout={pool}"))[1]["jobs"]) < 2:
                await asyncio.sleep(0.05)
    task.cancel()  # gone mid-rollout: no orderly shutdown, only what each transaction committed
    await asyncio.gather(task, return_exceptions=True)
    assert not _rollout_done(tmp_path, pool), "the rollout was still running when the daemon went"
    async with running_daemon(cfg, env=env) as d, aiohttp.ClientSession() as session:
        summary = await until_finished(session, d.base, pool)
        assert summary["counts"] == {"Active": 6}, summary
        _, listed = await call(session, "GET", f"{d.base}/v1/nodepools")
        assert [row["outcome"] for row in listed["nodepools"]] == ["Success"]
    active = {e["node_id"] for e in events(tmp_path) if e["type"] == "node.active"}
    assert active == {t.node_id for t in sim.node_truth(cluster) if t.phase == "Active"}


def _rollout_done(tmp_path: Path, rollout: str) -> bool:
    return any(e["type"] == "rollout.finished" and e["rollout"] == rollout for e in events(tmp_path))


async def test_a_daemon_on_a_wrong_api_path_says_so_once_and_is_not_ready(
    sim_factory: SimFactory, tmp_path: Path
) -> None:
    """404 APIGW.0101 from the gateway: one monitor.config_error, polling stops, /readyz says cce: false."""
    sim, _ = await sim_factory()
    jobs = [sim.add_job(duration=60) for _ in range(3)]
    cfg = pool_config(sim, tmp_path).model_copy(update={"api_prefix": "/api/v2"})
    async with running_daemon(cfg, env={"CCE_AUTH_TOKEN": sim.config.token}) as d, aiohttp.ClientSession() as s:
        assert (await call(s, "POST", f"{d.base}/v1/jobs", {"job_ids": jobs}))[0] == 202
        async with asyncio.timeout(10):
            while not any(e["type"] == "monitor.config_error" for e in events(tmp_path)):
                await asyncio.sleep(0.05)
        requests = sim.stats.job_requests
        await asyncio.sleep(1.0)
        assert sim.stats.job_requests == requests, "polling stopped"
        status, ready = await call(s, "GET", f"{d.base}/readyz")
        assert status == 503 and ready["checks"]["cce"] is False
    errors = [e for e in events(tmp_path) if e["type"] == "monitor.config_error"]
    assert len(errors) == 1 and "api_prefix (/api/v2)" in errors[0]["detail"] and "APIGW.0101" in errors[0]["detail"]
