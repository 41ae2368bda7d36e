"""What a replica does when the cluster (:mod:`monitor.daemon.pgcluster`) moves work to or from it: the daemon's
scheduler, rollout tracker and deliverers, wired to the cluster's hooks. Imported only with
``state.backend: postgres``."""

from __future__ import annotations

import time
from collections.abc import Sequence

from monitor.daemon.delivery import Deliverer
from monitor.daemon.pgcluster import Cluster, ClusterHooks, RolloutView
from monitor.daemon.pgstore import PgState
from monitor.daemon.storage import StoredJob, StoredNodePool
from monitor.engine.fleet import AwaitedNode, PoolNode
from monitor.engine.pipeline import Pipeline

__all__ = ["join"]


def join(state: PgState, replica: str, pipeline: Pipeline, deliverers: Sequence[Deliverer], ttl: float) -> Cluster:
    """This daemon as replica ``replica`` of the cluster on ``state``'s database (``await cluster.run()``)."""
    return Cluster(state, replica, _Replica(pipeline, deliverers).hooks(), heartbeat=ttl / 3, ttl=ttl)


class _Replica:
    def __init__(self, pipeline: Pipeline, deliverers: Sequence[Deliverer]) -> None:
        self._scheduler = pipeline.scheduler
        self._rollouts = pipeline.rollouts
        self._deliverers = deliverers

    def hooks(self) -> ClusterHooks:
        return ClusterHooks(
            adopt=self.adopt,
            drop=self.drop,
            adopt_pool=self.adopt_pool,
            adopt_awaited=self.adopt_awaited,
            rollout_view=self.rollout_view,
            coordinating=self.coordinating,
            open_rollouts=self.open_rollouts,
            outbox=self.outbox,
            rewind=self.rewind,
        )

    def adopt(self, jobs: list[StoredJob]) -> None:
        """Poll jobs just claimed, from their stored snapshot (a transition missed meanwhile is found at once)."""
        now = time.time()
        for job in jobs:
            self._scheduler.add(job.job_id, job.labels, previous=job.snapshot, age=now - job.added_at)
            if job.rollout:
                self._rollouts.add(job.rollout, [job.job_id])

    def drop(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            self._scheduler.remove(job_id)

    def adopt_pool(self, pool: StoredNodePool, nodes: list[PoolNode]) -> None:
        """Follow a pool another replica followed, from the nodes it had found."""
        for found in nodes:
            self._scheduler.fleet.remember(found)
            if pool.rollout:
                self._pool_node(pool.rollout, found)
        self._scheduler.follow_nodepool(
            pool.cluster_id,
            pool.nodepool_id,
            target=pool.target,
            labels=pool.labels,
            since=pool.added_at,
            seen=[(f.node.id, f.node.job_id) for f in nodes],
        )
        if pool.rollout:
            self._rollouts.add_pool(pool.rollout, pool.nodepool_id)

    def adopt_awaited(self, awaited: list[AwaitedNode]) -> None:
        for waited in awaited:
            self._scheduler.fleet.restore(waited)

    def _pool_node(self, rollout: str, found: PoolNode) -> None:
        node = found.node
        self._rollouts.add(rollout, [node.job_id])
        self._rollouts.add_node(rollout, node.job_id, node_id=node.id, node_name=node.name, deleting=found.deleting)

    def rollout_view(self, view: RolloutView) -> None:
        """Other replicas' news of rollouts, into this replica's view (what ``/v1/rollouts`` answers)."""
        rollouts = self._rollouts
        for rollout, nodepool_id, settled in view.pools:  # a pool another replica follows holds its rollout open
            rollouts.pool_state(rollout, nodepool_id, settled=settled)
        for rollout, found in view.pool_nodes:
            self._pool_node(rollout, found)
        for c in view.changes:
            phase = c.outcome or c.phase
            rollouts.merge(
                c.rollout, c.job_id, added_at=c.added_at, phase=phase, ended=c.finished_at, snapshot=c.snapshot
            )
        for event in view.confirmations:
            rollouts.on_event(event)

    def coordinating(self) -> None:
        """Now the digest publisher: announce what finished while nobody published (a repeat's id is dropped)."""
        for rollout in self._rollouts.rollouts():
            self._rollouts.recheck(rollout.name)

    def open_rollouts(self) -> list[str]:
        return [r.name for r in self._rollouts.rollouts() if r.ended is None]

    def outbox(self) -> None:
        for d in self._deliverers:
            d.notify()

    def rewind(self, sink: str) -> None:
        for d in self._deliverers:
            if d.name == sink:
                d.rewind()
