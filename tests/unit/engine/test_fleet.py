"""Node rollouts end to end against the simulator over 127.0.0.1: a ScaleupCluster job counted per node, nodes
confirmed Active, node pools that scale without a job id (to their target, to SoldOut, down)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from monitor.core.events import Event, EventType, Outcome
from monitor.engine.pipeline import NodePoolTarget, WatchResult, watch
from monitor.engine.rollout import describe
from monitor.engine.settings import SchedulerSettings
from monitor.sim import Simulator
from tests.conftest import Recorder, SimFactory, client_for

FAST = SchedulerSettings(
    rate=200.0,
    interval=0.1,
    min_interval=0.05,
    max_interval=0.2,
    error_backoff=0.05,
    error_backoff_max=0.2,
    job_timeout=30.0,
    node_timeout=10.0,
)


async def run(
    sim: Simulator,
    job_ids: list[str],
    *,
    settings: SchedulerSettings = FAST,
    nodepools: tuple[NodePoolTarget, ...] = (),
    rollout: str = "bulk",
) -> tuple[WatchResult, Recorder]:
    recorder = Recorder()
    async with client_for(sim) as client:
        result = await asyncio.wait_for(
            watch(
                job_ids,
                client=client,
                settings=settings,
                observers=[recorder],
                rollout=rollout,
                rollout_interval=0.2,
                nodepools=nodepools,
            ),
            60,
        )
    return result, recorder


def final_summary(recorder: Recorder) -> dict[str, Any]:
    finished = recorder.of("rollout.finished")
    assert len(finished) == 1, [e.type for e in recorder.events]
    assert finished[0].summary is not None
    return dict(finished[0].summary)


async def test_a_scaleup_job_is_a_rollout_of_its_nodes(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    job_id = sim.create_nodes(cluster, 6, fail=1, abnormal=1, duration=1.0)
    result, recorder = await run(sim, [job_id])

    summary = final_summary(recorder)
    assert summary["unit"] == "nodes" and summary["total"] == 6
    assert summary["counts"] == {"Active": 4, "Failed": 1, "Abnormal": 1}
    failed = {f["outcome"]: f for f in summary["failed"]}
    assert failed["Failed"]["reason"] and failed["Failed"]["resource_name"]
    assert failed["Abnormal"]["node_id"] and failed["Abnormal"]["reason"] == "node is Abnormal after its job succeeded"
    assert describe(summary).startswith("bulk: 4/6 nodes Active, 1 Failed, 1 Abnormal")

    # Each node confirmed once, by the one node-list read per poll, against the simulator's own truth.
    active = {e.node_id for e in recorder.of("node.active")}
    truth = {t.node_id for t in sim.node_truth(cluster) if t.phase == "Active"}
    assert active == truth and len(active) == 4
    assert [e.phase for e in recorder.of("node.failed")] == ["Abnormal"]
    assert all(e.job_id == job_id and e.rollout == "bulk" for e in recorder.of("node.active"))
    # Sub-job events name their own node.
    create_nodes = [e for e in recorder.of("subjob.phase_changed") if e.subjob_type == "CreateNode"]
    assert {e.node_id for e in create_nodes if e.phase == "Success"} >= active
    assert result.exit_code == 1
    assert result.outcomes[job_id] is Outcome.FAILED
    assert sum(1 for k, o in result.outcomes.items() if k.startswith("node/") and o is Outcome.SUCCESS) == 4


async def test_nested_sub_jobs_left_out_still_give_node_ids(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    job_id = sim.create_nodes(cluster, 3, duration=1.0, omit_nested=True)
    result, recorder = await run(sim, [job_id])
    summary = final_summary(recorder)
    assert summary["counts"] == {"Active": 3}
    assert result.exit_code == 0
    # Each CreateNode was read by id, so its own steps (left out of the ScaleupCluster's body) were seen too.
    steps = {e.subjob_type for e in recorder.of("subjob.phase_changed")}
    assert {"GetPSMCert", "CreateNodeVM", "InstallNode"} <= steps, steps


async def test_without_the_node_check_a_succeeded_job_is_the_end(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    job_id = sim.create_nodes(cluster, 3, abnormal=1, duration=1.0)
    settings = dataclasses.replace(FAST, node_check=False)
    result, recorder = await run(sim, [job_id], settings=settings)
    summary = final_summary(recorder)
    assert summary["counts"] == {"Success": 3}
    assert describe(summary).startswith("bulk: 3/3 nodes created")
    assert not recorder.of("node.active") and not recorder.of("node.failed")
    assert sim.stats.by_route.get("node_list", 0) == 0, "no node reads at all"
    assert result.exit_code == 0


async def test_a_node_pool_scaled_to_its_target(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, name="workers", node_duration=1.0)
    sim.scale_nodepool(cluster, pool, 4)
    result, recorder = await run(sim, [], nodepools=(NodePoolTarget(cluster, pool),), rollout="workers")

    settled = recorder.of("nodepool.settled")
    assert len(settled) == 1 and settled[0].phase == "" and settled[0].nodepool_id == pool
    assert "4/4 nodes" in (settled[0].detail or "")
    phases = [e.phase for e in recorder.of("nodepool.phase_changed")]
    assert "Synchronizing" in phases
    assert len(recorder.of("node.active")) == 4
    summary = final_summary(recorder)
    assert summary["unit"] == "nodes" and summary["counts"] == {"Active": 4}
    assert result.exit_code == 0, result.outcomes
    assert result.outcomes[f"nodepool/{cluster}/{pool}"] is Outcome.SUCCESS
    jobs = {t.job_id for t in sim.node_truth(cluster)}
    assert jobs <= set(result.outcomes), "every node's own job was followed"


async def test_a_pool_that_sells_out_fails_with_its_condition(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, capacity=2, node_duration=1.0)
    sim.scale_nodepool(cluster, pool, 5)
    result, recorder = await run(sim, [], nodepools=(NodePoolTarget(cluster, pool, target=5),), rollout="pool")

    settled = recorder.of("nodepool.settled")
    assert [e.phase for e in settled] == ["SoldOut"]
    assert settled[0].reason and "capacity" in settled[0].reason
    assert len(recorder.of("node.active")) == 2, "the nodes that fit are still confirmed"
    assert result.outcomes[f"nodepool/{cluster}/{pool}"] is Outcome.FAILED
    assert result.exit_code == 1


async def test_a_pool_scaled_down_follows_the_delete_jobs(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, nodes=3, node_duration=1.0)
    await _until_active(sim, cluster, 3)
    sim.scale_nodepool(cluster, pool, 1)
    result, recorder = await run(sim, [], nodepools=(NodePoolTarget(cluster, pool),), rollout="down")

    assert [e.phase for e in recorder.of("nodepool.settled")] == [""]
    deletes = {e.job_id for e in recorder.of("job.phase_changed") if e.job_type == "DeleteNode"}
    assert len(deletes) == 2 and not recorder.of("node.active"), "a deleted node is not awaited"
    summary = final_summary(recorder)
    assert summary["counts"] == {"Success": 2}
    assert result.exit_code == 0, result.outcomes


async def test_node_and_pool_reads_share_the_one_rate_limit(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, node_duration=1.0)
    sim.scale_nodepool(cluster, pool, 3)
    job_id = sim.create_nodes(cluster, 3, duration=1.0)
    settings = dataclasses.replace(FAST, rate=5.0)
    result, _ = await run(sim, [job_id], settings=settings, nodepools=(NodePoolTarget(cluster, pool),))
    assert result.exit_code == 0
    assert max(sim.stats.per_second.values()) <= 5, sim.stats.per_second


async def _until(condition: Any) -> None:
    async with asyncio.timeout(20):
        while not condition():
            await asyncio.sleep(0.05)


async def _until_active(sim: Simulator, cluster: str, count: int) -> None:
    """Until ``count`` of the cluster's nodes are Active now (by the simulator's truth)."""
    await _until(
        lambda: sum(1 for t in sim.node_truth(cluster) if t.phase == "Active" and t.at_ns <= sim.now_ns()) == count
    )


async def test_a_node_sub_job_is_read_by_id_once_per_phase(sim_factory: SimFactory) -> None:
    """Polled many times while its CreateNodes stay in one phase, the job costs one by-id read per CreateNode
    phase, not one per poll."""
    from monitor.engine.scheduler import Scheduler  # noqa: PLC0415

    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    job_id = sim.create_nodes(cluster, 2, duration=3.0, omit_nested=True)
    recorder = Recorder()
    settings = dataclasses.replace(FAST, interval=0.05, max_interval=0.05, jitter=0.0)
    async with client_for(sim) as client:
        scheduler = Scheduler(client, recorder, settings)
        task = asyncio.create_task(scheduler.run(drain=1.0))
        scheduler.add(job_id)
        await asyncio.sleep(1.0)
        scheduler.stop()
        await task
    tracked_reads = sim.stats.by_route["job"]
    create_nodes = {e.subjob_id for e in recorder.of("subjob.phase_changed") if e.subjob_type == "CreateNode"}
    phases = {(e.subjob_id, e.phase) for e in recorder.of("subjob.phase_changed") if e.subjob_id in create_nodes}
    assert scheduler.stats.polls >= 10
    assert tracked_reads == scheduler.stats.polls + len(phases), (tracked_reads, scheduler.stats.polls, phases)


async def test_a_pool_that_is_not_there_ends_not_found(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory()
    cluster = sim.add_cluster()
    result, recorder = await run(sim, [], nodepools=(NodePoolTarget(cluster, "no-such-pool"),), rollout="gone")
    [settled] = recorder.of("nodepool.settled")
    assert settled.phase == "not_found" and "404" in (settled.reason or "")
    assert result.outcomes[f"nodepool/{cluster}/no-such-pool"] is Outcome.NOT_FOUND
    assert result.exit_code == 1


async def test_awaited_nodes_time_out_while_the_node_list_cannot_be_read(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    job_id = sim.create_nodes(cluster, 2, duration=0.5)
    recorder = Recorder()

    async def break_node_reads(event: Event) -> None:
        if event.type is EventType.JOB_PHASE_CHANGED and event.phase == "Success":
            sim.set_faults(p_500=1.0)  # from now on every read fails: only the node list is still read

    settings = dataclasses.replace(FAST, node_timeout=1.0, failure_threshold=100)
    async with client_for(sim) as client:
        result = await asyncio.wait_for(
            watch([job_id], client=client, settings=settings, observers=[break_node_reads, recorder], rollout="r"),
            30,
        )
    failed = recorder.of("node.failed")
    assert [e.phase for e in failed] == ["not_active", "not_active"], [e.type for e in recorder.events]
    assert all("not Active 1s after its job succeeded" in (e.reason or "") for e in failed)
    assert result.exit_code == 1


async def test_a_failed_pool_node_names_its_deepest_reason(sim_factory: SimFactory) -> None:
    """A pool node's CreateNode fails with a generic reason of its own; the rollout names the failed step's."""
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, fail=1, node_duration=1.0)
    sim.scale_nodepool(cluster, pool, 3)
    result, recorder = await run(sim, [], nodepools=(NodePoolTarget(cluster, pool),), rollout="deep")

    [failed_job] = [e for e in recorder.of("job.phase_changed") if e.phase == "Failed"]
    steps = [t for t in sim.truth(failed_job.job_id) if t.phase == "Failed" and t.uid != failed_job.job_id]
    assert len(steps) == 1 and failed_job.reason != steps[0].reason, "the job's own reason is the generic one"
    [named] = final_summary(recorder)["failed"]
    assert named["reason"] == steps[0].reason
    assert named["resource_name"] and named["node_id"]
    assert result.exit_code == 1


async def test_a_pool_waiting_to_scale_is_waited_through(sim_factory: SimFactory) -> None:
    """``Synchronized`` (waiting to scale) is not an end: the pool goes on to its target."""
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, wait=2.0, node_duration=0.5)
    sim.scale_nodepool(cluster, pool, 2)
    result, recorder = await run(sim, [], nodepools=(NodePoolTarget(cluster, pool),), rollout="waits")

    phases = [e.phase for e in recorder.of("nodepool.phase_changed")]
    assert phases[0] == "Synchronized" and "Synchronizing" in phases, phases
    assert [e.phase for e in recorder.of("nodepool.settled")] == [""]
    assert len(recorder.of("node.active")) == 2
    assert result.exit_code == 0, result.outcomes


async def test_a_pool_whose_deletion_fails_ends_in_error(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, nodes=2, fail_delete=1, node_duration=0.5)
    await _until_active(sim, cluster, 2)
    sim.scale_nodepool(cluster, pool, 0)
    result, recorder = await run(sim, [], nodepools=(NodePoolTarget(cluster, pool),), rollout="down")

    [settled] = recorder.of("nodepool.settled")
    assert settled.phase == "Error" and "failed to delete node" in (settled.reason or ""), settled
    summary = final_summary(recorder)
    assert summary["counts"] == {"Success": 1, "Failed": 1}, summary["counts"]
    assert result.outcomes[f"nodepool/{cluster}/{pool}"] is Outcome.FAILED
    assert result.exit_code == 1


async def test_a_bulk_removal_is_a_rollout_of_its_deletions(sim_factory: SimFactory) -> None:
    """``PUT .../nodes/operation/remove``: one job of a DeleteNode per node, counted per node; a deleted node is
    done with its job (never awaited Active)."""
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    created = sim.create_nodes(cluster, 3, duration=0.5)
    await _until_active(sim, cluster, 3)
    node_ids = sorted({t.node_id for t in sim.node_truth(cluster) if t.job_id == created})
    job_id = sim.remove_nodes(cluster, node_ids, fail=1)
    result, recorder = await run(sim, [job_id], rollout="remove")

    summary = final_summary(recorder)
    assert summary["unit"] == "nodes" and summary["total"] == 3
    assert summary["counts"] == {"Success": 2, "Failed": 1}, summary["counts"]
    [failed] = summary["failed"]
    assert failed["node_id"] in node_ids and "Delete node vm failed" in failed["reason"]
    assert not recorder.of("node.active") and not recorder.of("node.failed")
    gone = {t.node_id for t in sim.node_truth(cluster) if t.phase == "Deleted"}
    assert len(gone) == 2 and failed["node_id"] not in gone
    assert result.exit_code == 1
