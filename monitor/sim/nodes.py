"""Nodes and node pools: bulk node creation (one ``ScaleupCluster`` job of ``CreateNode`` sub-jobs), the node
list, node pools that scale up (to ``SoldOut`` past their capacity) and down, all planned up front.

:class:`Fleet` plans, like :func:`~monitor.sim.timeline.plan_job`, the whole life of every node when it is
asked for (creation, or a pool's scale), draws from the simulator's job random stream only, and answers any
instant from the plan: the node list, one node, one pool and the jobs it planned. The truth is
:meth:`Fleet.node_truth`: every node phase change with its exact instant, equal to what is served.

Decisions where the public record is silent (each also noted where it is made):

* A node appears (phase ``Build``) at the instant its ``CreateNode`` job goes Running, the instant its id
  and name appear in that job (``resourceID``/``resourceName`` are ``""`` before), so an id a poller can
  read is always an id it can GET. ``Installing`` from its ``InstallNode`` sub-job's Running; ``Active``
  (``Abnormal`` for the ``abnormal`` ones) a planned 1-3 s (times ``time_scale``) after its CreateNode's
  Success; ``Error`` at its CreateNode's failure. ``serverId``/``privateIP`` appear with ``Installing``.
* A ScaleupCluster job goes Running with its first CreateNode and ends just after its last one: Success if
  every CreateNode succeeded, else Failed with the reason of the CreateNode that failed first (as CCE copies
  a failed sub-job's reason to the job). Nodes listed by a POST carry that job's id as ``status.jobID``.
* Each node a pool creates has its own CreateNode job (the pool's PUT answers without a job id); each node
  it deletes has its own DeleteNode job, goes ``Deleting`` (no earlier than the end of its creation, at a
  whole second) and disappears (404) when that job succeeds. Scale-down removes the newest nodes first.
* A removal (``PUT .../nodes/operation/remove``) is one ScaledownCluster job of a DeleteNode per node. A
  deletion that fails leaves its node listed in ``Error`` (it can be deleted again).
* Pool status: ``currentNode`` counts listed pool nodes (any phase, ``Deleting`` too), ``creatingNode``
  those being created, ``deletingNode`` those being deleted, ``activeNode`` the ``Active`` ones. Phase
  ``Synchronizing`` while any node is created or deleted; ``Synchronized`` (waiting to scale) for the pool's
  ``wait`` after a scale; ``Error`` once a deletion of its scale-down failed (until the next scale), with an
  ``Error`` condition; ``SoldOut`` once a scale-up past ``capacity`` has created the nodes that fit (until the
  next scale); else ``""``. Nodes whose creation failed stay listed in ``Error`` and do not make the pool
  ``Error``.
* Clusters: :meth:`Fleet.add_cluster`, or implicitly by the Python API; the HTTP API 404s for others.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from monitor.sim.node_docs import blank_until_running, node_document, node_spec, pool_conditions, updated
from monitor.sim.shapes import (
    NODE_CREATE,
    NODE_DELETE,
    NODE_REMOVE,
    NODE_SCALEUP,
    Shape,
    job_context,
    job_spec,
    new_uid,
)
from monitor.sim.timeline import (
    FAILED,
    INITIALIZING,
    NS,
    RUNNING,
    SUCCESS,
    Job,
    Node,
    Step,
    Transition,
    format_go_timestamp,
    plan_job,
    render,
    snap_up,
    wall_time,
)

__all__ = ["Fleet", "NodeTransition"]

BUILD, INSTALLING, ACTIVE, ABNORMAL, ERROR, DELETING = "Build", "Installing", "Active", "Abnormal", "Error", "Deleting"
DELETED = "Deleted"  # only in the truth: the node answers 404 from this instant


@dataclass(frozen=True, slots=True)
class NodeTransition:
    """One phase change of a node at the exact instant it is served (``Deleted``: gone, 404 from then on)."""

    cluster_id: str
    node_id: str
    name: str
    pool_id: str | None
    phase: str
    job_id: str
    at_ns: int

    @property
    def at(self) -> Any:
        """The same instant as an aware UTC datetime, to the microsecond."""
        return wall_time(self.at_ns)


@dataclass(frozen=True, slots=True)
class _NodeStep:
    at_ns: int
    phase: str
    job_id: str


@dataclass(slots=True)
class _Node:
    uid: str
    name: str
    cluster_id: str
    pool_id: str | None
    flavor: str
    az: str
    server_id: str
    private_ip: str
    steps: list[_NodeStep]
    creating_from_ns: int  # when its creation was asked for
    settled_ns: int  # when it reached Active, Abnormal or Error
    vm_ns: int | None  # when its VM exists (serverId, privateIP served)
    delete_requested_ns: int | None = None
    gone_ns: int | None = None
    deletion_failed_ns: int | None = None

    def step_at(self, now_ns: int) -> _NodeStep | None:
        if self.gone_ns is not None and now_ns >= self.gone_ns:
            return None
        current = None
        for step in self.steps:
            if step.at_ns > now_ns:
                break
            current = step
        return current


@dataclass(slots=True)
class _Pool:
    uid: str
    name: str
    cluster_id: str
    flavor: str
    az: str
    created_ns: int
    capacity: int | None
    fail: int
    abnormal: int
    node_duration: float | None
    wait_ns: int = 0  # each scale waits this long (phase Synchronized) before its nodes are created or deleted
    fail_delete: int = 0  # how many of its next deletions fail (the node stays in Error, the pool goes Error)
    error: tuple[int, str] | None = None  # (from when, why) the pool is in Error: a deletion failed
    members: list[str] = field(default_factory=list)
    scales: list[tuple[int, int, int | None]] = field(default_factory=list)  # (at, target, SoldOut from)


@dataclass(slots=True)
class _Cluster:
    uid: str
    name: str
    flavor: str
    az: str
    nodes: dict[str, _Node] = field(default_factory=dict)
    pools: dict[str, _Pool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Scaleup:
    root: Job  # the ScaleupCluster (or ScaledownCluster) itself, without sub-jobs
    children: tuple[str, ...]  # its CreateNode (DeleteNode) jobs
    omit_nested: bool


class Fleet:
    """Every cluster's nodes and pools, and the jobs that create and delete them, planned up front."""

    def __init__(self, rng: random.Random, cluster_names: dict[str, str], *, job_duration: float, time_scale: float):
        self._rng = rng
        self._cluster_names = cluster_names
        self._job_duration = job_duration
        self._time_scale = time_scale
        self._clusters: dict[str, _Cluster] = {}
        self._pools: dict[str, _Pool] = {}
        self._jobs: dict[str, Job] = {}  # CreateNode and DeleteNode jobs
        self._deletions: dict[str, str] = {}  # a failed DeleteNode job -> its reason
        self._leaves: dict[str, tuple[Job, int]] = {}  # their sub-jobs, by id
        self._scaleups: dict[str, _Scaleup] = {}

    # --- planning -----------------------------------------------------------------------------------------

    def add_cluster(self, cluster_id: str | None = None) -> str:
        """Register a cluster (a new id by default) and return its id; registering twice is harmless."""
        rng = self._rng
        uid = cluster_id or new_uid(rng)
        if uid not in self._clusters:
            name = job_context(rng, uid, self._cluster_names)["cluster_name"]
            flavor = rng.choice(("s3.large.2", "c7.large.2", "s6.xlarge.2"))
            self._clusters[uid] = _Cluster(uid, name, flavor, rng.choice(("eu-de-01", "eu-de-02", "eu-de-03")))
        return uid

    def has_cluster(self, cluster_id: str) -> bool:
        return cluster_id in self._clusters

    def pool_cluster(self, pool_id: str) -> str | None:
        pool = self._pools.get(pool_id)
        return None if pool is None else pool.cluster_id

    def create_nodes(
        self,
        cluster_id: str,
        count: int,
        now_ns: int,
        *,
        fail: float = 0,
        duration: float | None = None,
        nodepool_id: str | None = None,
        omit_nested: bool = False,
        abnormal: int = 0,
    ) -> str:
        """Plan one ScaleupCluster job creating ``count`` nodes; ``fail`` nodes fail (a float below 1 is a
        ratio of ``count``, rounded), ``abnormal`` others go Abnormal after their job's Success."""
        failing = round(count * fail) if isinstance(fail, float) and fail < 1 else int(fail)
        if count < 1 or failing < 0 or abnormal < 0 or failing + abnormal > count:
            raise ValueError("count must be >= 1, fail and abnormal >= 0 and together at most count")
        cluster = self._clusters[self.add_cluster(cluster_id)]
        pool = None
        if nodepool_id is not None:
            pool = self._pools.get(nodepool_id)
            if pool is None or pool.cluster_id != cluster.uid:
                raise KeyError(f"node pool {nodepool_id} is not in cluster {cluster.uid}")
        rng = self._rng
        chosen = rng.sample(range(count), failing + abnormal)
        fails, abnormals = set(chosen[:failing]), set(chosen[failing:])
        scaleup_id = new_uid(rng)
        children = [
            self._plan_node(cluster, pool, now_ns, duration, i in fails, i in abnormals, scaleup_id)
            for i in range(count)
        ]
        jobs = [self._jobs[child] for child in children]
        self._scaleups[scaleup_id] = _Scaleup(
            self._plan_parent(scaleup_id, cluster, jobs, NODE_SCALEUP), tuple(children), omit_nested
        )
        return scaleup_id

    def remove_nodes(self, cluster_id: str, node_ids: list[str], now_ns: int, *, fail: int = 0) -> str:
        """Plan one ScaledownCluster job deleting ``node_ids`` (a DeleteNode sub-job each; ``fail`` of them fail,
        their nodes staying in ``Error``), as ``PUT .../nodes/operation/remove`` asks; returns its id."""
        cluster = self._clusters.get(cluster_id)
        if cluster is None:
            raise KeyError(f"cluster {cluster_id} is not known")
        if not node_ids or len(set(node_ids)) != len(node_ids) or not 0 <= fail <= len(node_ids):
            raise ValueError("node ids must be distinct and at least one, and fail within [0, their number]")
        nodes = []
        for node_id in node_ids:
            node = cluster.nodes.get(node_id)
            if node is None or node.step_at(now_ns) is None or _being_deleted(node, now_ns):
                raise KeyError(f"node {node_id} is not listed, or is being deleted already")
            nodes.append(node)
        rng = self._rng
        fails = set(rng.sample(range(len(nodes)), fail))
        uid = new_uid(rng)
        children = [self._plan_deletion(cluster, node, now_ns, i in fails, uid) for i, node in enumerate(nodes)]
        jobs = [self._jobs[child] for child in children]
        self._scaleups[uid] = _Scaleup(self._plan_parent(uid, cluster, jobs, NODE_REMOVE), tuple(children), False)
        return uid

    def _plan_parent(self, uid: str, cluster: _Cluster, jobs: list[Job], shape: Shape) -> Job:
        """The ScaleupCluster (ScaledownCluster) around ``jobs``: created with the first (a removal's DeleteNodes
        begin at the next whole second: until then its id answers 404, as CCE's can for a moment after it made a
        job), Running with the first, ended just after the last (see module)."""
        rng = self._rng
        created = min(job.root.steps[0].at_ns for job in jobs)
        running = min(job.root.steps[1].at_ns for job in jobs)
        last = max(job.root.steps[-1].at_ns for job in jobs)
        failures = sorted(
            (job.root.steps[-1].at_ns, job.root.steps[-1].reason) for job in jobs if job.root.steps[-1].phase == FAILED
        )
        end = snap_up(rng, last + round((last - created) / 500) + 1)
        final = Step(end, FAILED, failures[0][1]) if failures else Step(end, SUCCESS, "")
        steps = (Step(created, INITIALIZING, ""), Step(running, RUNNING, ""), final)
        context = {"cluster": cluster.uid, "cluster_name": cluster.name}
        root = Node(uid, job_spec(shape, context), True, steps, tuple(s.at_ns for s in steps))
        truth = tuple(
            Transition(uid, uid, shape.job_type, s.phase, s.reason, wall_time(s.at_ns), s.at_ns) for s in steps
        )
        return Job(root, (), created, truth)

    def _plan_node(
        self,
        cluster: _Cluster,
        pool: _Pool | None,
        now_ns: int,
        duration: float | None,
        fail: bool,
        abnormal: bool,
        listed_job: str | None,
    ) -> str:
        """Plan one node's CreateNode job and its phases; returns the job id. The node lists ``listed_job``
        as its ``jobID`` (its ScaleupCluster), else its own CreateNode."""
        rng = self._rng
        if duration is None:
            duration = self._job_duration * rng.uniform(0.8, 1.2) * self._time_scale
        context = job_context(rng, cluster.uid, self._cluster_names)
        if pool is not None:  # pool nodes are named after their pool
            context["node_name"] = f"{pool.name}-{context['node_name'].rsplit('-', 1)[-1]}"
        uids = [new_uid(rng) for _ in NODE_CREATE]
        job = plan_job(
            rng,
            uids,
            NODE_CREATE,
            context,
            created=now_ns,
            duration=duration,
            start_delay=0.0,
            fail=fail,
            not_found_for=0.0,
        )
        self._jobs[uids[0]] = job
        for index, uid in enumerate(uids[1:]):
            self._leaves[uid] = (job, index)
        shown_job = listed_job or uids[0]
        by_type = {shape.job_type: sub for shape, sub in zip(NODE_CREATE[1:], job.subs, strict=True)}
        steps = [_NodeStep(job.root.steps[1].at_ns, BUILD, shown_job)]
        install = by_type["InstallNode"].steps
        vm_ns = install[1].at_ns if len(install) > 1 else None
        if vm_ns is not None:
            steps.append(_NodeStep(vm_ns, INSTALLING, shown_job))
        final = job.root.steps[-1]
        if final.phase == FAILED:
            steps.append(_NodeStep(final.at_ns, ERROR, shown_job))
        else:
            ready = snap_up(rng, final.at_ns + round(rng.uniform(1.0, 3.0) * self._time_scale * NS))
            steps.append(_NodeStep(ready, ABNORMAL if abnormal else ACTIVE, shown_job))
        flavor, az = (pool.flavor, pool.az) if pool is not None else (cluster.flavor, cluster.az)
        ip = f"192.168.{rng.randrange(256)}.{rng.randrange(2, 255)}"
        node = _Node(
            context["node"], context["node_name"], cluster.uid, pool.uid if pool else None, flavor, az,
            context["server"], ip, steps, now_ns, steps[-1].at_ns, vm_ns,
        )  # fmt: skip
        cluster.nodes[node.uid] = node
        if pool is not None:
            pool.members.append(node.uid)
        return uids[0]

    def add_nodepool(
        self,
        cluster_id: str,
        now_ns: int,
        *,
        name: str | None = None,
        nodes: int = 0,
        capacity: int | None = None,
        fail: int = 0,
        abnormal: int = 0,
        node_duration: float | None = None,
        wait: float = 0.0,
        fail_delete: int = 0,
    ) -> str:
        """A pool, scaled at once to ``nodes`` (those nodes are created as by a scale-up). Each scale first waits
        ``wait`` seconds in ``Synchronized``; ``fail_delete`` of its deletions fail (see :meth:`scale_nodepool`)."""
        if min(nodes, fail, abnormal, fail_delete, wait, 0 if capacity is None else capacity) < 0:
            raise ValueError("nodes, capacity, fail, abnormal, fail_delete and wait must be >= 0")
        cluster = self._clusters[self.add_cluster(cluster_id)]
        rng = self._rng
        uid = new_uid(rng)
        suffix = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=5))
        pool = _Pool(
            uid, name or f"{cluster.name}-nodepool-{suffix}", cluster.uid, cluster.flavor, cluster.az, now_ns,
            capacity, fail, abnormal, node_duration, round(wait * NS), fail_delete,
        )  # fmt: skip
        pool.scales.append((now_ns, 0, None))
        cluster.pools[uid] = pool
        self._pools[uid] = pool
        if nodes:
            self.scale_nodepool(cluster.uid, uid, nodes, now_ns)
        return uid

    def scale_nodepool(self, cluster_id: str, pool_id: str, target: int, now_ns: int) -> None:
        """Set the pool's ``initialNodeCount``: create the nodes that fit its capacity, or delete the newest.

        The pool shows ``Synchronized`` (waiting to scale, huaweicloudsdkcce NodePoolStatus) for its ``wait``
        first. A failed deletion leaves its node in ``Error`` and the pool ``Error`` (the SDK documents the pool
        phase; our reading: a deletion that failed) with an ``Error`` condition, until a later scale."""
        if target < 0:
            raise ValueError("target must be >= 0")
        pool = self._pools.get(pool_id)
        if pool is None or pool.cluster_id != cluster_id:
            raise KeyError(f"node pool {pool_id} is not in cluster {cluster_id}")
        cluster = self._clusters[cluster_id]
        rng = self._rng
        pool.error = None
        begin = now_ns + pool.wait_ns
        live = [uid for uid in pool.members if not _being_deleted(cluster.nodes[uid], now_ns)]
        sold_out_at: int | None = None
        if target > len(live):
            wanted = target - len(live)
            fit = wanted if pool.capacity is None else min(wanted, pool.capacity)
            if pool.capacity is not None:
                pool.capacity -= fit
            chosen = rng.sample(range(fit), min(fit, pool.fail + pool.abnormal))
            fails = set(chosen[: pool.fail])
            abnormals = set(chosen[pool.fail :])
            pool.fail -= len(fails)
            pool.abnormal -= len(abnormals)
            for i in range(fit):
                self._plan_node(cluster, pool, begin, pool.node_duration, i in fails, i in abnormals, None)
            if fit < wanted:  # settles at SoldOut once the nodes that fit are created
                ends = [cluster.nodes[uid].settled_ns for uid in pool.members[len(pool.members) - fit :]]
                sold_out_at = max([begin, *ends])
        else:
            for uid in reversed(live[target:]):
                failing = pool.fail_delete > 0
                pool.fail_delete -= failing
                job_id = self._plan_deletion(cluster, cluster.nodes[uid], begin, failing, None)
                if failing:
                    at = self._jobs[job_id].root.steps[-1].at_ns
                    why = f"failed to delete node {cluster.nodes[uid].name}: {self._deletions[job_id]}"
                    pool.error = min(pool.error or (at, why), (at, why))
        pool.scales.append((now_ns, target, sold_out_at))

    def _plan_deletion(self, cluster: _Cluster, node: _Node, now_ns: int, fail: bool, listed_job: str | None) -> str:
        """A DeleteNode job for ``node`` from a whole second after both now and the end of its creation (a
        whole second is a multiple of every snapping unit, so the job's creation is not moved before it);
        returns its id. The node lists ``listed_job`` (its ScaledownCluster), else the DeleteNode, as its
        ``jobID``; a failed deletion leaves it listed in ``Error``."""
        rng = self._rng
        start = (max(now_ns, node.steps[-1].at_ns) // NS + 1) * NS
        context = job_context(rng, cluster.uid, self._cluster_names)
        context.update(node=node.uid, node_name=node.name, server=node.server_id)
        uids = [new_uid(rng) for _ in NODE_DELETE]
        duration = self._job_duration * 0.5 * rng.uniform(0.8, 1.2) * self._time_scale
        job = plan_job(
            rng,
            uids,
            NODE_DELETE,
            context,
            created=start,
            duration=duration,
            start_delay=0.0,
            fail=fail,
            not_found_for=0.0,
        )
        self._jobs[uids[0]] = job
        for index, uid in enumerate(uids[1:]):
            self._leaves[uid] = (job, index)
        node.delete_requested_ns, node.deletion_failed_ns = now_ns, None
        shown = listed_job or uids[0]
        node.steps.append(_NodeStep(job.root.steps[0].at_ns, DELETING, shown))
        final = job.root.steps[-1]
        if final.phase == FAILED:
            self._deletions[uids[0]] = final.reason
            node.steps.append(_NodeStep(final.at_ns, ERROR, shown))
            node.deletion_failed_ns = final.at_ns
        else:
            node.gone_ns = final.at_ns
        return uids[0]

    # --- truth --------------------------------------------------------------------------------------------

    def node_truth(self, cluster_id: str) -> list[NodeTransition]:
        """Every node phase change in the cluster, in time order; ``KeyError`` for an unknown cluster."""
        cluster = self._clusters[cluster_id]
        out = []
        for node in cluster.nodes.values():
            for step in node.steps:
                out.append(
                    NodeTransition(cluster_id, node.uid, node.name, node.pool_id, step.phase, step.job_id, step.at_ns)
                )
            if node.gone_ns is not None:
                out.append(
                    NodeTransition(
                        cluster_id, node.uid, node.name, node.pool_id, DELETED, node.steps[-1].job_id, node.gone_ns
                    )
                )
        return sorted(out, key=lambda t: t.at_ns)

    def job_truth(self, job_id: str) -> list[Transition] | None:
        """The truth of a job this fleet planned (a ScaleupCluster with its CreateNodes'), else ``None``."""
        if (job := self._jobs.get(job_id)) is not None:
            return list(job.truth)
        if (scaleup := self._scaleups.get(job_id)) is None:
            return None
        every = [*scaleup.root.truth, *(t for child in scaleup.children for t in self._jobs[child].truth)]
        return sorted(every, key=lambda t: t.at_ns)

    # --- serving ------------------------------------------------------------------------------------------

    def render_job(self, job_id: str, now_ns: int, *, live_timestamps: bool = False) -> dict[str, Any] | None:
        """The Job document of a job or sub-job this fleet planned, at ``now_ns``; ``None``: unknown or not yet."""
        if (scaleup := self._scaleups.get(job_id)) is not None:
            if now_ns < scaleup.root.visible_ns:
                return None
            document = render(scaleup.root, now_ns, live_timestamps=live_timestamps)
            subs = [self._render_one(self._jobs[child], now_ns, live_timestamps) for child in scaleup.children]
            if not live_timestamps or document["status"]["phase"] not in (INITIALIZING, RUNNING):
                changed = max(updated(self._jobs[child], now_ns) for child in scaleup.children)
                changed = max(changed, scaleup.root.root.step_at(now_ns).at_ns)
                document["metadata"]["updateTimestamp"] = format_go_timestamp(changed)
            for sub in subs:
                if scaleup.omit_nested:  # as the real API sometimes lists them: read the CreateNode by id
                    del sub["spec"]["subJobs"]
            document["spec"]["subJobs"] = subs
            return document
        if (job := self._jobs.get(job_id)) is not None:
            return None if now_ns < job.visible_ns else self._render_one(job, now_ns, live_timestamps)
        if (leaf := self._leaves.get(job_id)) is not None:
            parent, index = leaf
            alone = Job(parent.subs[index], (), parent.visible_ns, ())
            return None if now_ns < alone.visible_ns else self._render_one(alone, now_ns, live_timestamps)
        return None

    @staticmethod
    def _render_one(job: Job, now_ns: int, live_timestamps: bool) -> dict[str, Any]:
        document = render(job, now_ns, live_timestamps=live_timestamps)
        for part in (document, *document["spec"]["subJobs"]):
            blank_until_running(part)
        return document

    def node_list(self, cluster_id: str, now_ns: int) -> dict[str, Any] | None:
        """``{"kind": "List", ...}`` of the cluster's nodes listed at ``now_ns``; ``None``: unknown cluster."""
        cluster = self._clusters.get(cluster_id)
        if cluster is None:
            return None
        listed = [(node, step) for node in cluster.nodes.values() if (step := node.step_at(now_ns)) is not None]
        listed.sort(key=lambda pair: pair[0].steps[0].at_ns)
        return {"kind": "List", "apiVersion": "v3", "items": [_node_doc(node, step, now_ns) for node, step in listed]}

    def node(self, cluster_id: str, node_id: str, now_ns: int) -> dict[str, Any] | None:
        """One Node at ``now_ns``; ``None``: unknown cluster or node, not yet listed, or gone."""
        cluster = self._clusters.get(cluster_id)
        node = None if cluster is None else cluster.nodes.get(node_id)
        step = None if node is None else node.step_at(now_ns)
        return None if node is None or step is None else _node_doc(node, step, now_ns)

    def nodepool(self, cluster_id: str, pool_id: str, now_ns: int) -> dict[str, Any] | None:
        """One NodePool at ``now_ns``; ``None``: unknown cluster or pool, or created later."""
        cluster = self._clusters.get(cluster_id)
        pool = None if cluster is None else cluster.pools.get(pool_id)
        if cluster is None or pool is None or now_ns < pool.created_ns:
            return None
        scales = [scale for scale in pool.scales if scale[0] <= now_ns]
        scaled_at, target, sold_out_at = scales[-1]
        members = [cluster.nodes[uid] for uid in pool.members]
        steps = [(node, node.step_at(now_ns)) for node in members]
        creating = sum(1 for node in members if node.creating_from_ns <= now_ns < node.settled_ns)
        deleting = sum(
            1
            for node in members
            if node.delete_requested_ns is not None
            and node.delete_requested_ns <= now_ns < (node.gone_ns or node.deletion_failed_ns or 0)
        )
        sold_out_now = sold_out_at is not None and sold_out_at <= now_ns
        current = sum(1 for _, step in steps if step is not None)
        waiting = scaled_at <= now_ns < scaled_at + pool.wait_ns and current != target
        error = pool.error if pool.error is not None and pool.error[0] <= now_ns else None
        phase = (
            "Synchronizing" if creating or deleting
            else "Synchronized" if waiting
            else "Error" if error
            else "SoldOut" if sold_out_now
            else ""
        )  # fmt: skip
        changed = [step.at_ns for _, step in steps if step is not None] + [scaled_at]
        if sold_out_now and sold_out_at is not None:
            changed.append(sold_out_at)
        if error is not None:
            changed.append(error[0])
        conditions = pool_conditions(
            now_ns=now_ns, created_ns=pool.created_ns, sold_out_ns=sold_out_at if sold_out_now else None,
            error=error, flavor=pool.flavor, az=pool.az, name=pool.name,
        )  # fmt: skip
        return {
            "kind": "NodePool",
            "apiVersion": "v3",
            "metadata": {
                "name": pool.name,
                "uid": pool.uid,
                "creationTimestamp": format_go_timestamp(pool.created_ns),
                "updateTimestamp": format_go_timestamp(max(changed)),
            },
            "spec": {
                "type": "vm",
                "nodeTemplate": node_spec(pool.flavor, pool.az),
                "initialNodeCount": target,
                "autoscaling": {"enable": False},
            },
            "status": {
                "currentNode": current,
                "creatingNode": creating,
                "deletingNode": deleting,
                "activeNode": sum(1 for _, step in steps if step is not None and step.phase == ACTIVE),
                "phase": phase,
                "conditions": conditions,
            },
        }


def _node_doc(node: _Node, step: _NodeStep, now_ns: int) -> dict[str, Any]:
    vm = (node.server_id, node.private_ip) if node.vm_ns is not None and node.vm_ns <= now_ns else None
    return node_document(
        uid=node.uid, name=node.name, pool_id=node.pool_id, flavor=node.flavor, az=node.az, phase=step.phase,
        job_id=step.job_id, created_ns=node.steps[0].at_ns, changed_ns=step.at_ns, vm=vm,
    )  # fmt: skip


def _being_deleted(node: _Node, now_ns: int) -> bool:
    """Asked to be deleted, and that deletion has not failed by ``now_ns`` (such a node can be deleted again)."""
    failed = node.deletion_failed_ns
    return node.delete_requested_ns is not None and (failed is None or failed > now_ns)
