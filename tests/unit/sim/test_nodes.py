"""Nodes and node pools of the simulator, over real HTTP on 127.0.0.1 (and once with the vendor SDK)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from huaweicloudsdkcce.v3 import (
    ListNodesRequest,
    Login,
    NodeItem,
    RemoveNodeRequest,
    RemoveNodesSpec,
    RemoveNodesTask,
    ScaleNodePoolRequest,
    ScaleNodePoolRequestBody,
    ScaleNodePoolSpec,
    ShowJobRequest,
    ShowNodePoolRequest,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.sim import Simulator, SimulatorConfig
from monitor.testing import FakeClock, Simulators

from .test_simulator import AK, SK, sdk_to_wire, vendor_client

ORDER = {"Build": 0, "Installing": 1, "Active": 2, "Abnormal": 2, "Error": 2, "Deleting": 3}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def started(clock: FakeClock) -> AsyncIterator[tuple[Simulator, str, aiohttp.ClientSession]]:
    async with Simulators(clock=clock) as simulators, aiohttp.ClientSession() as session:
        sim, endpoint = await simulators.start(SimulatorConfig(seed=5))
        yield sim, endpoint, session


Started = tuple[Simulator, str, aiohttp.ClientSession]


async def call(started: Started, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    sim, endpoint, session = started
    url = endpoint + f"/api/v3/projects/{sim.config.project_id}" + path
    headers = {"X-Auth-Token": sim.config.token}
    async with session.request(method, url, headers=headers, json=body) as response:
        return response.status, orjson.loads(await response.read())


async def job(started: Started, job_id: str) -> dict[str, Any]:
    status, body = await call(started, "GET", f"/jobs/{job_id}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def phases(started: Started, cluster: str) -> dict[str, str]:
    status, body = await call(started, "GET", f"/clusters/{cluster}/nodes")
    assert status == 200 and body["kind"] == "List" and body["apiVersion"] == "v3"
    return {item["metadata"]["uid"]: item["status"]["phase"] for item in body["items"]}


async def test_scaleup_job_shape_and_late_resource_ids(started: Started, clock: FakeClock) -> None:
    sim = started[0]
    cluster = sim.add_cluster()
    job_id = sim.create_nodes(cluster, 3, duration=100)
    body = await job(started, job_id)
    assert (body["kind"], body["spec"]["type"], body["status"]["phase"]) == ("Job", "ScaleupCluster", "Initializing")
    assert body["spec"]["resourceID"] == cluster
    subs = body["spec"]["subJobs"]
    assert [sub["spec"]["type"] for sub in subs] == ["CreateNode"] * 3
    for sub in subs:
        assert [s["spec"]["type"] for s in sub["spec"]["subJobs"]] == ["GetPSMCert", "CreateNodeVM", "InstallNode"]
        assert sub["spec"]["resourceID"] == sub["spec"]["resourceName"] == ""  # not known before it runs
        assert (await job(started, sub["metadata"]["uid"])) == sub  # a sub-job read by id: itself, nested
        leaf = sub["spec"]["subJobs"][1]
        assert (await job(started, leaf["metadata"]["uid"]))["spec"]["type"] == "CreateNodeVM"
    assert await phases(started, cluster) == {}
    clock.advance(30)
    body = await job(started, job_id)
    assert body["status"]["phase"] == "Running"
    listed = await phases(started, cluster)
    for sub in body["spec"]["subJobs"]:
        node_id = sub["spec"]["resourceID"]
        assert node_id and listed[node_id] in {"Build", "Installing"}
        vm = sub["spec"]["subJobs"][1]
        if vm["status"]["phase"] != "Initializing":
            assert vm["spec"]["resourceID"] == node_id
    clock.advance(200)
    body = await job(started, job_id)
    assert body["status"] == {"phase": "Success", "reason": ""}
    assert set((await phases(started, cluster)).values()) == {"Active"}
    status, node = await call(
        started, "GET", f"/clusters/{cluster}/nodes/{body['spec']['subJobs'][0]['spec']['resourceID']}"
    )
    assert status == 200 and node["kind"] == "Node" and node["status"]["jobID"] == job_id
    assert node["status"]["serverId"] and node["status"]["privateIP"]
    assert node["metadata"]["annotations"]["kubernetes.io/node-pool.id"].count("#") == 2


async def test_omit_nested_and_partial_failure(started: Started, clock: FakeClock) -> None:
    sim = started[0]
    cluster = sim.add_cluster()
    job_id = sim.create_nodes(cluster, 5, fail=2, abnormal=1, duration=50, omit_nested=True)
    body = await job(started, job_id)
    assert all("subJobs" not in sub["spec"] for sub in body["spec"]["subJobs"])
    first = await job(started, body["spec"]["subJobs"][0]["metadata"]["uid"])
    assert len(first["spec"]["subJobs"]) == 3
    clock.advance(200)
    body = await job(started, job_id)
    failed = [sub for sub in body["spec"]["subJobs"] if sub["status"]["phase"] == "Failed"]
    assert len(failed) == 2
    assert body["status"]["phase"] == "Failed" and body["status"]["reason"] in {f["status"]["reason"] for f in failed}
    assert sorted((await phases(started, cluster)).values()) == ["Abnormal", "Active", "Active", "Error", "Error"]
    truth = sim.node_truth(cluster)
    assert {"Build", "Active", "Abnormal", "Error"} <= {t.phase for t in truth}
    assert sim.truth(job_id)[-1].phase == "Failed"


async def test_pool_scale_up_to_sold_out_and_down(started: Started, clock: FakeClock) -> None:
    sim = started[0]
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, name="workers", nodes=2, capacity=3, node_duration=40)
    status, body = await call(started, "GET", f"/clusters/{cluster}/nodepools/{pool}")
    assert status == 200 and body["kind"] == "NodePool" and body["metadata"]["name"] == "workers"
    assert body["status"]["phase"] == "Synchronizing" and body["status"]["creatingNode"] == 2
    clock.advance(100)
    status, body = await call(
        started, "PUT", f"/clusters/{cluster}/nodepools/{pool}", {"spec": {"initialNodeCount": 5}}
    )
    assert status == 200 and "jobId" not in body["status"] and body["spec"]["initialNodeCount"] == 5
    assert body["status"]["creatingNode"] == 1  # only one more fits
    clock.advance(100)
    status, body = await call(started, "GET", f"/clusters/{cluster}/nodepools/{pool}")
    assert body["status"]["phase"] == "SoldOut"
    assert body["status"]["currentNode"] == 3 < body["spec"]["initialNodeCount"]
    scalable = body["status"]["conditions"][0]
    assert (scalable["type"], scalable["status"]) == ("Scalable", "False") and "no capacity" in scalable["message"]
    nodes = (await call(started, "GET", f"/clusters/{cluster}/nodes"))[1]["items"]
    assert {n["metadata"]["annotations"]["kubernetes.io/node-pool.id"] for n in nodes} == {pool}
    assert all(n["metadata"]["name"].startswith("workers-") for n in nodes)
    for node in nodes:  # pool nodes each have their own CreateNode job
        assert (await job(started, node["status"]["jobID"]))["spec"]["type"] == "CreateNode"

    sim.scale_nodepool(cluster, pool, 1)
    clock.advance(2)
    status, body = await call(started, "GET", f"/clusters/{cluster}/nodepools/{pool}")
    assert body["status"]["deletingNode"] == 2 and body["status"]["phase"] == "Synchronizing"
    deleting = [
        n
        for n in (await call(started, "GET", f"/clusters/{cluster}/nodes"))[1]["items"]
        if n["status"]["phase"] == "Deleting"
    ]
    assert len(deleting) == 2
    assert (await job(started, deleting[0]["status"]["jobID"]))["spec"]["type"] == "DeleteNode"
    clock.advance(100)
    assert list((await phases(started, cluster)).values()) == ["Active"]
    status, _ = await call(started, "GET", f"/clusters/{cluster}/nodes/{deleting[0]['metadata']['uid']}")
    assert status == 404
    status, body = await call(started, "GET", f"/clusters/{cluster}/nodepools/{pool}")
    assert (body["status"]["phase"], body["status"]["currentNode"]) == ("", 1)
    assert sim.node_truth(cluster)[-1].phase == "Deleted"


async def test_pool_failures_and_not_found(started: Started, clock: FakeClock) -> None:
    sim = started[0]
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, nodes=3, fail=1, abnormal=1, node_duration=20)
    clock.advance(100)
    assert sorted((await phases(started, cluster)).values()) == ["Abnormal", "Active", "Error"]
    for path in (
        "/clusters/nope/nodes",
        f"/clusters/{cluster}/nodes/nope",
        f"/clusters/{cluster}/nodepools/nope",
        f"/clusters/nope/nodepools/{pool}",
        "/jobs/nope",
    ):
        status, body = await call(started, "GET", path)
        assert status == 404 and body["errorCode"] == "CCE.01404001", path
    status, body = await call(started, "PUT", f"/clusters/{cluster}/nodepools/{pool}", {"spec": {}})
    assert status == 400 and body["errorCode"] == "CCE.01400001"


async def test_post_nodes_and_route_statistics(started: Started, clock: FakeClock) -> None:
    sim, endpoint, session = started
    cluster = sim.add_cluster()
    status, body = await call(
        started, "POST", f"/clusters/{cluster}/nodes", {"kind": "Node", "spec": {"flavor": "s3.large.2", "count": 2}}
    )
    assert status == 201 and body["status"]["jobID"] and body["spec"]["count"] == 2
    assert len((await job(started, body["status"]["jobID"]))["spec"]["subJobs"]) == 2
    await phases(started, cluster)
    sim.set_faults(p_500=1.0)
    status, _ = await call(started, "POST", f"/clusters/{cluster}/nodes", {"spec": {}})
    assert status == 500  # nothing was done
    sim.set_faults(p_500=0.0)
    async with session.post(endpoint + "/_sim/nodepools", json={"cluster_id": cluster, "nodes": 1}) as response:
        pool = (await response.json())["nodepool_id"]
    async with session.post(endpoint + f"/_sim/nodepools/{pool}/scale", json={"target": 2}) as response:
        assert response.status == 200
    async with session.post(endpoint + "/_sim/nodes", json={"count": 3, "fail": 0.34}) as response:
        created = await response.json()
    async with session.get(endpoint + "/_sim/node_truth", params={"cluster_id": created["cluster_id"]}) as response:
        assert {t["phase"] for t in (await response.json())["transitions"]} >= {"Build"}
    await call(started, "GET", f"/clusters/{cluster}/nodepools/{pool}")
    assert sim.stats.by_route == {"create_nodes": 2, "job": 1, "node_list": 1, "nodepool": 1}
    assert sim.stats.requests == 5 and len(sim.job_ids) == 0
    clock.advance(300)
    assert sim.truth(created["job_id"])[-1].phase == "Failed"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), samples=st.lists(st.floats(0, 120), min_size=1, max_size=8))
def test_served_phases_follow_the_truth(seed: int, samples: list[float]) -> None:
    async def run() -> None:
        clock = FakeClock()
        async with Simulators(clock=clock) as simulators, aiohttp.ClientSession() as session:
            sim, endpoint = await simulators.start(SimulatorConfig(seed=seed))
            cluster = sim.add_cluster()
            sim.create_nodes(cluster, 4, fail=1, abnormal=1, duration=30)
            pool = sim.add_nodepool(cluster, nodes=2, capacity=2, node_duration=25)
            started = (sim, endpoint, session)
            truth = sim.node_truth(cluster)
            seen: dict[str, str] = {}
            base = clock.now
            for at in sorted(samples):
                clock.now = base + at
                if at > 60 and at < 62:
                    sim.scale_nodepool(cluster, pool, 0)
                    truth = sim.node_truth(cluster)
                now = sim.now_ns()
                served = await phases(started, cluster)
                expected = {}
                for t in truth:
                    if t.at_ns <= now:
                        expected[t.node_id] = t.phase
                assert served == {k: v for k, v in expected.items() if v != "Deleted"}
                for node_id, phase in served.items():
                    assert ORDER[phase] >= ORDER.get(seen.get(node_id, "Build"), 0)
                    seen[node_id] = phase

    asyncio.run(run())


async def test_vendor_sdk_reads_nodes_and_pools(clock: FakeClock) -> None:
    async with Simulators(clock=clock) as simulators, aiohttp.ClientSession() as session:
        sim, endpoint = await simulators.start(SimulatorConfig(seed=9, ak=AK, sk=SK))
        cluster = sim.add_cluster()
        job_id = sim.create_nodes(cluster, 3, fail=1, duration=40)
        pool = sim.add_nodepool(cluster, nodes=2, capacity=1, node_duration=30)
        clock.advance(25)
        started = (sim, endpoint, session)
        client = vendor_client(endpoint, sim.config.project_id)
        for _ in range(2):
            served_job = await job(started, job_id)
            response = await asyncio.to_thread(client.show_job, ShowJobRequest(job_id=job_id))
            assert sdk_to_wire(response) == served_job
            served_nodes = (await call(started, "GET", f"/clusters/{cluster}/nodes"))[1]
            nodes = await asyncio.to_thread(client.list_nodes, ListNodesRequest(cluster_id=cluster))
            assert sdk_to_wire(nodes) == served_nodes
            served_pool = (await call(started, "GET", f"/clusters/{cluster}/nodepools/{pool}"))[1]
            shown = await asyncio.to_thread(
                client.show_node_pool, ShowNodePoolRequest(cluster_id=cluster, nodepool_id=pool)
            )
            assert sdk_to_wire(shown) == served_pool
            clock.advance(100)
        assert shown.status.phase == "SoldOut" and nodes.items[0].status.phase in {"Active", "Error"}


async def test_vendor_sdk_scales_a_pool_and_removes_nodes(clock: FakeClock) -> None:
    """The scale operation answers no job id (only an order id); a removal answers one job of a DeleteNode per
    node. Both sent and read through the vendor's own request and response models."""
    async with Simulators(clock=clock) as simulators, aiohttp.ClientSession() as session:
        sim, endpoint = await simulators.start(SimulatorConfig(seed=5, ak=AK, sk=SK))
        started = (sim, endpoint, session)
        cluster = sim.add_cluster()
        pool = sim.add_nodepool(cluster, node_duration=20)
        client = vendor_client(endpoint, sim.config.project_id)
        body = ScaleNodePoolRequestBody(
            kind="NodePool", api_version="v3", spec=ScaleNodePoolSpec(desired_node_count=3, scale_groups=["default"])
        )
        scaled = await asyncio.to_thread(
            client.scale_node_pool, ScaleNodePoolRequest(cluster_id=cluster, nodepool_id=pool, body=body)
        )
        assert scaled.order_id == "" and "jobID" not in str(sdk_to_wire(scaled))
        shown = (await call(started, "GET", f"/clusters/{cluster}/nodepools/{pool}"))[1]
        assert shown["spec"]["initialNodeCount"] == 3 and shown["status"]["phase"] == "Synchronizing"
        clock.advance(60)
        listed = await phases(started, cluster)
        assert sorted(listed.values()) == ["Active"] * 3

        task = RemoveNodesTask(
            api_version="v3",
            kind="RemoveNodesTask",
            spec=RemoveNodesSpec(login=Login(ssh_key="KeyPair-sim"), nodes=[NodeItem(uid=uid) for uid in listed]),
        )
        removed = await asyncio.to_thread(client.remove_node, RemoveNodeRequest(cluster_id=cluster, body=task))
        job_id = removed.status.job_id
        clock.advance(1.5)  # the deletions (and their job) begin at the next whole second (monitor.sim.nodes)
        served = await job(started, job_id)
        assert served["spec"]["type"] == "ScaledownCluster"
        deletes = served["spec"]["subJobs"]
        assert [sub["spec"]["type"] for sub in deletes] == ["DeleteNode"] * 3
        assert {sub["spec"]["resourceID"] for sub in deletes} == set(listed)
        vendor = await asyncio.to_thread(client.show_job, ShowJobRequest(job_id=job_id))
        assert sdk_to_wire(vendor) == served
        assert set((await phases(started, cluster)).values()) == {"Deleting"}
        clock.advance(60)
        assert await phases(started, cluster) == {}
        assert (await job(started, job_id))["status"]["phase"] == "Success"
        # A node not listed (deleted already) is CCE's 404; an empty list is a 400.
        status, _ = await call(started, "PUT", f"/clusters/{cluster}/nodes/operation/remove", task.to_dict())
        assert status == 404
        status, _ = await call(started, "PUT", f"/clusters/{cluster}/nodes/operation/remove", {"spec": {"nodes": []}})
        assert status == 400


async def test_node_plans_are_deterministic_under_the_seed() -> None:
    runs = []
    for seed in (3, 3, 4):
        clock = FakeClock()
        async with Simulators(clock=clock) as simulators, aiohttp.ClientSession() as session:
            sim, endpoint = await simulators.start(SimulatorConfig(seed=seed), epoch_ns=1_700_000_000_000_000_000)
            cluster = sim.add_cluster()
            job_id = sim.create_nodes(cluster, 3, fail=1)
            pool = sim.add_nodepool(cluster, nodes=2, capacity=1)
            clock.advance(15)
            bodies = [await job((sim, endpoint, session), job_id), await phases((sim, endpoint, session), cluster)]
            runs.append((cluster, pool, sim.node_truth(cluster), bodies))
    assert runs[0] == runs[1] and runs[0][2] != runs[2][2]
