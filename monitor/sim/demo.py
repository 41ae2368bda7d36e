"""The demo rollout: what ``cce-monitor demo`` watches, and what the page and report tests look at.

One cluster; a ``ScaleupCluster`` job of ``scaleup`` nodes (``POST .../nodes`` with ``count``: one job, a
``CreateNode`` per node) of which about one in ten fails; and a node pool scaled from 0 to ``nodes``
(``PUT .../nodepools/{id}``: no job id) whose availability zone has room for all but a few, so it ends
``SoldOut``, with a couple of nodes failing and one turning ``Abnormal`` after its job succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass

from monitor.sim.server import Simulator

__all__ = ["DemoRollout", "plan_demo"]


@dataclass(frozen=True, slots=True)
class DemoRollout:
    cluster_id: str
    job_ids: list[str]
    """The ScaleupCluster job (none when ``scaleup`` is 0)."""
    pools: list[tuple[str, str, int]]
    """(cluster id, node pool id, target) of the pool scaled (none when ``nodes`` is 0)."""


def plan_demo(sim: Simulator, *, scaleup: int, nodes: int) -> DemoRollout:
    """Plan the demo rollout on ``sim`` (started or not); raises ``ValueError`` for counts below 0 or both 0."""
    if scaleup < 0 or nodes < 0 or not scaleup + nodes:
        raise ValueError("give scaleup and nodes as whole numbers >= 0, not both 0")
    cluster = sim.add_cluster()
    job_ids, pools = [], []
    if scaleup:
        job_ids.append(sim.create_nodes(cluster, scaleup, fail=max(1, scaleup // 10) if scaleup > 1 else 0))
    if nodes:
        short = max(1, nodes // 15) if nodes > 1 else 0
        failing = min(2, max(0, nodes - short - 1))
        pool = sim.add_nodepool(cluster, name="workers", capacity=nodes - short, fail=failing, abnormal=1)
        sim.scale_nodepool(cluster, pool, nodes)
        pools.append((cluster, pool, nodes))
    return DemoRollout(cluster, job_ids, pools)
