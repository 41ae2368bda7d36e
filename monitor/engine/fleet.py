"""Following nodes and node pools: readiness of new nodes, and node pools that scale without a job id.

What the real API and its users do (sources in :mod:`monitor.core.nodes`):

* A node job's ``Success`` does not mean the node is usable: both Terraform providers then wait for the node's
  ``status.phase`` to become ``Active`` (OTC ``waitForCceNodeActive``: pending ``Build``, ``Installing``;
  ``Abnormal`` or ``Error`` fail). So once a ``CreateNode`` job (or a ``ScaleupCluster``'s ``CreateNode``
  sub-job) succeeds, its node is **awaited**: ``node.active`` when it is seen ``Active``, ``node.failed`` when
  it is seen ``Abnormal`` or ``Error`` or is not ``Active`` within ``node_timeout``.
* Scaling a node pool (``PUT .../nodepools/{id}``) returns no job id. Terraform follows the pool until its
  phase is empty again; the node list, filtered by the ``kubernetes.io/node-pool.id`` annotation, shows each
  node with ``status.jobID``, the job that creates (or deletes) it. A :class:`PoolProbe` reads the pool and
  reports ``nodepool.phase_changed`` and, once it stops changing, one ``nodepool.settled``: phase empty, no
  node being created or deleted and ``currentNode`` at the target (given, else the pool's
  ``initialNodeCount``) — or ``SoldOut``/``Error``, a failure whose reason is the pool's conditions.
* One node-list read (``GET .../clusters/{id}/nodes``) serves every awaited node and every followed pool of a
  cluster: a :class:`ClusterNodes` probe per cluster reads it while anything there needs it. The pool's nodes
  found there are handed to the scheduler as jobs to follow (``ProbeResult.discovered``), like any other job.

Probes are polled by the scheduler like jobs — same heap, same rate limit, same error handling and backoff —
one request per poll. They never sleep or loop on their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from monitor.cce.client import CCEClient
from monitor.core.events import Event, EventType, Outcome, event_id
from monitor.core.model import ID_PATTERN, Job, Phase
from monitor.core.nodes import (
    NODE_FAILED,
    NODE_READY,
    NODEPOOL_FAILED,
    Node,
    NodePool,
    node_id_of,
    node_jobs,
)

__all__ = ["AwaitedNode", "ClusterNodes", "Fleet", "PoolNode", "PoolProbe", "Probe", "ProbeResult"]

logger = logging.getLogger(__name__)

Permit = Callable[[], Awaitable[None]]
_ID_RE = ID_PATTERN  # a job id from the node list goes into a URL, and into the state database


@dataclass(slots=True)
class ProbeResult:
    """What one poll of a probe found: events to publish, whether anything moved, whether it is done, and how
    the things it followed ended (``(key, outcome)``: ``nodepool/<id>``, ``node/<id>``)."""

    events: list[Event] = field(default_factory=list)
    changed: bool = False
    done: bool = False
    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)
    discovered: list[PoolNode] = field(default_factory=list)  # jobs for the scheduler to follow


class Probe(Protocol):
    """Something the scheduler polls besides jobs: one request per :meth:`poll`."""

    @property
    def key(self) -> str: ...

    async def poll(self, client: CCEClient, permit: Permit) -> ProbeResult: ...

    def gone(self, detail: str, outcome: Outcome = Outcome.NOT_FOUND) -> ProbeResult:
        """What to report when the thing probed answers 404 for good (or, ``timed_out``, took too long)."""
        ...


@dataclass(slots=True)
class AwaitedNode:
    """A node whose job succeeded, awaited until it is ``Active`` (the daemon keeps these across restarts;
    ``since`` is Unix time, so a restart does not restart the node's timeout)."""

    cluster_id: str
    node_id: str
    job_id: str
    subjob_id: str | None
    labels: Mapping[str, str]
    name: str | None
    nodepool_id: str | None
    since: float
    last_phase: str = ""


@dataclass(frozen=True, slots=True)
class PoolNode:
    """A node of a followed pool, being created or deleted by job ``job_id``."""

    cluster_id: str
    nodepool_id: str
    node: Node
    labels: Mapping[str, str]

    @property
    def deleting(self) -> bool:
        return self.node.phase == "Deleting"


class ClusterNodes:
    """The node list of one cluster, read for the nodes awaited there and for the pools followed there."""

    def __init__(self, fleet: Fleet, cluster_id: str) -> None:
        self._fleet = fleet
        self.cluster_id = cluster_id
        self.key = f"nodes/{cluster_id}"
        self.awaiting: dict[str, AwaitedNode] = {}
        self.pools: list[PoolProbe] = []
        self._last: tuple[tuple[str, str], ...] = ()

    async def poll(self, client: CCEClient, permit: Permit) -> ProbeResult:
        nodes = await client.nodes(self.cluster_id, permit=permit)
        result = ProbeResult()
        by_id = {n.id: n for n in nodes}
        for node_id, waited in list(self.awaiting.items()):
            node = by_id.get(node_id)
            if node is not None:
                waited.last_phase = node.phase
            if node is not None and node.phase == NODE_READY:
                self._resolve(result, node_id, EventType.NODE_ACTIVE, Outcome.SUCCESS, node.phase, None, node)
            elif node is not None and node.phase in NODE_FAILED:
                reason = f"node is {node.phase} after its job succeeded"
                self._resolve(result, node_id, EventType.NODE_FAILED, Outcome.FAILED, node.phase, reason, node)
        self.expire(result)
        for pool in self.pools:
            result.discovered += pool.discover(nodes)
        seen_now = tuple(sorted((n.id, n.phase) for n in nodes))
        result.changed, self._last = seen_now != self._last, seen_now
        kept = []
        for pool in self.pools:  # a settled pool gets one more read: nodes created just before it settled
            if pool.settled:
                pool.final_reads -= 1
            if not pool.settled or pool.final_reads >= 0:
                kept.append(pool)
        self.pools = kept
        result.done = not self.awaiting and not self.pools
        if result.done:
            self._fleet.forget(self)
        return result

    def expire(self, result: ProbeResult) -> ProbeResult:
        """Fail the awaited nodes past ``node_timeout`` (also when the node list cannot be read)."""
        timeout = self._fleet.settings.node_timeout
        now = self._fleet.clock()
        for node_id, waited in list(self.awaiting.items()):
            if now - waited.since >= timeout:
                seen = f"last seen {waited.last_phase}" if waited.last_phase else "not seen in the node list"
                reason = f"not Active {timeout:g}s after its job succeeded ({seen})"
                self._resolve(result, node_id, EventType.NODE_FAILED, Outcome.TIMED_OUT, "not_active", reason, None)
        if not self.awaiting and not self.pools:
            result.done = True
            self._fleet.forget(self)
        return result

    def _resolve(
        self,
        result: ProbeResult,
        node_id: str,
        kind: EventType,
        outcome: Outcome,
        phase: str,
        reason: str | None,
        node: Node | None,
    ) -> None:
        waited = self.awaiting.pop(node_id)
        self._fleet.resolved.append(waited)
        result.events.append(self._fleet.node_event(kind, node_id, waited, phase, reason, node))
        result.outcomes.append((f"node/{node_id}", outcome))

    def gone(self, detail: str, outcome: Outcome = Outcome.NOT_FOUND) -> ProbeResult:
        """The cluster answers 404: every node awaited there fails."""
        result = ProbeResult(done=True)
        for node_id in list(self.awaiting):
            self._resolve(result, node_id, EventType.NODE_FAILED, outcome, str(outcome), detail, None)
        self.pools.clear()
        self._fleet.forget(self)
        return result


class PoolProbe:
    """One node pool followed until it settles; its new nodes' jobs are found in the cluster's node list."""

    def __init__(
        self,
        fleet: Fleet,
        cluster_id: str,
        nodepool_id: str,
        *,
        target: int | None,
        labels: Mapping[str, str],
        since: float,
        seen: Iterable[tuple[str, str]] = (),
    ) -> None:
        """``since``: when following began (Unix time; one scale's event ids differ from the next one's);
        ``seen``: (node id, job id) pairs already handed over (a daemon resuming the pool)."""
        self._fleet = fleet
        self.cluster_id = cluster_id
        self.nodepool_id = nodepool_id
        self.since = since
        self.key = f"nodepool/{cluster_id}/{nodepool_id}"
        self.target = target
        self.labels = labels
        self.last: NodePool | None = None
        self.settled = False
        self.final_reads = 1  # one more node-list read after settling: nodes created just before it
        self._seen: set[tuple[str, str]] = set(seen)  # (node id, job id): handed over, or there before
        self._first = True

    async def poll(self, client: CCEClient, permit: Permit) -> ProbeResult:
        pool = await client.nodepool(self.cluster_id, self.nodepool_id, permit=permit)
        previous, self.last = self.last, pool
        result = ProbeResult(changed=previous != pool)
        if previous is None or previous.phase != pool.phase:
            result.events.append(self._event(EventType.NODEPOOL_PHASE_CHANGED, pool, previous))
        target = self.target if self.target is not None else pool.target
        at_target = target is None or pool.current == target
        ok = pool.phase == "" and pool.creating == 0 and pool.deleting == 0 and at_target
        if ok or pool.phase in NODEPOOL_FAILED:
            self.settled = result.done = True
            result.events.append(self._event(EventType.NODEPOOL_SETTLED, pool, previous))
            result.outcomes.append((self.key, Outcome.SUCCESS if ok else Outcome.FAILED))
        return result

    def gone(self, detail: str, outcome: Outcome = Outcome.NOT_FOUND) -> ProbeResult:
        """The pool answers 404 for good (``not_found``), or did not settle in time (``timed_out``)."""
        self.settled = True
        previous = self.last.phase if self.last is not None else None
        phase = str(outcome)
        event = self._fleet.pool_event(self, EventType.NODEPOOL_SETTLED, phase, previous, detail, None, self.last)
        return ProbeResult([event], done=True, outcomes=[(self.key, outcome)])

    def _event(self, kind: EventType, pool: NodePool, previous: NodePool | None) -> Event:
        target = self.target if self.target is not None else pool.target
        counts = f"{pool.current}/{target if target is not None else '?'} nodes"
        counts += f", {pool.creating} creating, {pool.deleting} deleting"
        if kind is EventType.NODEPOOL_SETTLED:
            detail = f"settled at {counts}" if pool.phase == "" else f"ended {pool.phase} at {counts}"
        else:
            detail = counts
        previous_phase = previous.phase if previous is not None else None
        return self._fleet.pool_event(self, kind, pool.phase, previous_phase, pool.problems or None, detail, pool)

    def discover(self, nodes: Sequence[Node]) -> list[PoolNode]:
        """The jobs that create or delete a node of the pool, each once. At the first read, a node already at
        an end (``Active``, ``Abnormal``, ``Error``) was there before: only a later job of it (a deletion)
        counts; a node being built, installed or deleted is this scale's."""
        first, self._first = self._first, False
        found = []
        for node in nodes:
            pair = (node.id, node.job_id)
            if node.nodepool_id != self.nodepool_id or pair in self._seen:
                continue
            self._seen.add(pair)
            if first and (node.phase == NODE_READY or node.phase in NODE_FAILED):
                continue
            if not node.job_id or not _ID_RE.fullmatch(node.job_id):
                logger.warning("node pool %s: node %s has no usable job id; not followed", self.nodepool_id, node.id)
                continue
            found.append(PoolNode(self.cluster_id, self.nodepool_id, node, self.labels))
        return found


class Fleet:
    """The scheduler's node and node-pool probes (one :class:`ClusterNodes` per cluster in use)."""

    def __init__(
        self,
        *,
        project_id: str,
        settings: FleetSettings,
        start: Callable[[Probe], None],
        now: Callable[[], datetime],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock``: Unix seconds (node timeouts survive a restart of the daemon)."""
        self.project_id = project_id
        self.settings = settings
        self._start = start
        self.now = now
        self.clock = clock
        self.awaited: list[AwaitedNode] = []  # since the last take_changes(): for the store
        self.resolved: list[AwaitedNode] = []
        self._clusters: dict[str, ClusterNodes] = {}
        self._pools: dict[str, PoolProbe] = {}  # the last probe of each pool followed (its last state)
        self._pool_nodes: dict[str, tuple[str, str, str, str]] = {}  # job id -> cluster, node id, pool, name
        self._awaited: set[tuple[str, str]] = set()  # (job id, sub-job key): never awaited twice

    def _cluster(self, cluster_id: str) -> ClusterNodes:
        probe = self._clusters.get(cluster_id)
        if probe is None:
            probe = self._clusters[cluster_id] = ClusterNodes(self, cluster_id)
            self._start(probe)
        return probe

    def awaited_keys(self) -> list[str]:
        return [f"node/{node_id}" for probe in self._clusters.values() for node_id in probe.awaiting]

    def forget(self, probe: ClusterNodes) -> None:
        if self._clusters.get(probe.cluster_id) is probe:
            del self._clusters[probe.cluster_id]

    def pool(self, cluster_id: str, nodepool_id: str) -> PoolProbe | None:
        """The probe of a pool followed in this process (its ``last`` state), if any."""
        return self._pools.get(f"nodepool/{cluster_id}/{nodepool_id}")

    def follow_pool(
        self,
        cluster_id: str,
        nodepool_id: str,
        *,
        target: int | None,
        labels: Mapping[str, str],
        since: float | None = None,
        seen: Iterable[tuple[str, str]] = (),
    ) -> PoolProbe:
        since = self.clock() if since is None else since
        pool = PoolProbe(self, cluster_id, nodepool_id, target=target, labels=labels, since=since, seen=seen)
        self._pools[pool.key] = pool
        self._start(pool)
        self._cluster(cluster_id).pools.append(pool)
        return pool

    def remember(self, found: PoolNode) -> None:
        """A pool's node is followed through its job: once that job succeeds, the node is awaited."""
        if not found.deleting:
            node = found.node
            self._pool_nodes[node.job_id] = (found.cluster_id, node.id, found.nodepool_id, node.name)

    def restore(self, waited: AwaitedNode) -> None:
        """Await a node again after a restart (as it was stored when first awaited)."""
        self._awaited.add((waited.job_id, waited.subjob_id or ""))
        self._cluster(waited.cluster_id).awaiting.setdefault(waited.node_id, waited)

    def take_changes(self) -> tuple[list[AwaitedNode], list[AwaitedNode]]:
        """Nodes awaited and nodes resolved since the last call (the scheduler hands them to its store)."""
        changes = (self.awaited, self.resolved)
        self.awaited, self.resolved = [], []
        return changes

    def on_job(self, job_id: str, labels: Mapping[str, str], job: Job) -> list[Event]:
        """A tracked job's new snapshot: await the node of every node job in it that has just succeeded."""
        if not self.settings.node_check:
            return []
        events: list[Event] = []
        hint = self._pool_nodes.get(job_id)
        if hint is not None and job.phase is Phase.SUCCESS and (job_id, "") not in self._awaited:
            cluster, node, pool_id, pool_node_name = hint
            self._awaited.add((job_id, ""))
            self._await(AwaitedNode(cluster, node, job_id, None, labels, pool_node_name, pool_id, self.clock()))
        for index, sub in enumerate(node_jobs(job)):
            key = sub.id or f"{sub.type}#{index}"
            if sub.type != "CreateNode" or sub.phase is not Phase.SUCCESS or (job_id, key) in self._awaited:
                continue
            self._awaited.add((job_id, key))
            node_id = node_id_of(sub)
            cluster_id = sub.cluster_id or job.cluster_id
            name = sub.resource_name or None
            waited = AwaitedNode(cluster_id, node_id, job_id, key, labels, name, None, self.clock())
            if node_id and cluster_id:
                self._await(waited)
            else:  # nothing to read: saying it is fine would be a guess
                reason = "CCE named no node id for this node job: cannot confirm the node is Active"
                events.append(self.node_event(EventType.NODE_FAILED, node_id, waited, "not_active", reason, None))
        return events

    def _await(self, waited: AwaitedNode) -> None:
        awaiting = self._cluster(waited.cluster_id).awaiting
        if waited.node_id not in awaiting:
            awaiting[waited.node_id] = waited
            self.awaited.append(waited)

    def node_event(
        self, kind: EventType, node_id: str, waited: AwaitedNode, phase: str, reason: str | None, node: Node | None
    ) -> Event:
        return Event(
            id=event_id(self.project_id, waited.job_id, node_id or waited.subjob_id, kind.value, phase),
            type=kind,
            time=self.now(),
            project_id=self.project_id,
            job_id=waited.job_id,
            phase=phase,
            reason=reason,
            subjob_id=waited.subjob_id,
            resource_name=(node.name if node is not None else None) or waited.name,
            node_id=node_id or None,
            nodepool_id=waited.nodepool_id or ((node.nodepool_id or None) if node is not None else None),
            labels=waited.labels,
            rollout=waited.labels.get("rollout"),
        )

    def pool_event(
        self,
        probe: PoolProbe,
        kind: EventType,
        phase: str,
        previous_phase: str | None,
        reason: str | None,
        detail: str | None,
        pool: NodePool | None,
    ) -> Event:
        # A pool scales many times in its life: when following began, what it was asked for (and, settled,
        # what it reached) tell one scale's events from the next one's.
        key = f"{probe.since:.6f}:{pool.current}/{pool.target}" if pool is not None else f"{probe.since:.6f}"
        if kind is not EventType.NODEPOOL_SETTLED:
            key = f"{probe.since:.6f}:{pool.target if pool is not None else ''}:{previous_phase}"
        return Event(
            id=event_id(self.project_id, None, probe.key, kind.value, key, phase),
            type=kind,
            time=self.now(),
            project_id=self.project_id,
            job_id=None,
            phase=phase,
            previous_phase=previous_phase,
            reason=reason,
            resource_name=(pool.name or None) if pool is not None else None,
            cluster_id=probe.cluster_id,
            nodepool_id=probe.nodepool_id,
            labels=probe.labels,
            detail=detail,
            rollout=probe.labels.get("rollout"),
        )


class FleetSettings(Protocol):
    """The settings the fleet reads (``SchedulerSettings`` has them)."""

    @property
    def node_check(self) -> bool: ...

    @property
    def node_timeout(self) -> float: ...
