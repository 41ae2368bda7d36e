"""Typed snapshots of CCE nodes and node pools, parsed as leniently as jobs are (:mod:`monitor.core.model`).

Sources — the OTC API reference (opentelekomcloud-docs/cloud-container-engine, ``api-ref``: "Listing All
Nodes in a Cluster", "Reading a Specified Node", "Querying a Specified Node Pool") and the vendor SDK models
(huaweicloud-sdk-go-v3 ``services/cce/v3/model``: ``Node``, ``NodeStatus``, ``NodePoolStatus``,
``NodePoolCondition``):

* ``GET .../clusters/{cluster_id}/nodes`` answers ``{"kind": "List", "items": [Node, ...]}``. A node's
  ``status.phase`` is one of ``Build``, ``Installing``, ``Installed``, ``ShutDown``, ``Upgrading``, ``Active``,
  ``Abnormal``, ``Deleting``, ``Error``; ``status.jobID`` is the job that created it (or deletes it). A node
  belongs to a pool by its annotation ``kubernetes.io/node-pool.id`` — the list has no pool filter, so the
  Huawei Terraform provider filters on that annotation (``resource_huaweicloud_cce_node_pool_nodes_add.go``).
* ``GET .../clusters/{cluster_id}/nodepools/{id}`` answers a pool whose ``status.phase`` is empty when it is
  settled ("If the status is blank, the status is normal"), ``Synchronizing`` while it scales,
  ``Synchronized`` while it waits to scale, ``SoldOut``, ``Deleting`` or ``Error``; ``currentNode``,
  ``creatingNode``, ``deletingNode`` count its nodes and ``conditions`` say why it cannot scale
  (``{type, status, reason, message}``; Huawei's ``Scalable`` condition replaces ``SoldOut``).

Unknown fields are ignored; a count that is not a whole number, or a body without the shape, raises
:class:`~monitor.core.errors.MalformedResponseError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from monitor.core.errors import MalformedResponseError
from monitor.core.model import Job, Phase, decode_body, json_object, json_text

__all__ = [
    "NODEPOOL_ANNOTATION",
    "NODEPOOL_FAILED",
    "NODEPOOL_PENDING",
    "NODE_FAILED",
    "NODE_JOB_TYPES",
    "NODE_READY",
    "Condition",
    "Node",
    "NodePool",
    "deepest_failure",
    "node_id_of",
    "node_jobs",
    "parse_node_list",
    "parse_nodepool",
]

NODEPOOL_ANNOTATION = "kubernetes.io/node-pool.id"
NODE_READY = "Active"
# Both Terraform providers stop waiting for a new node at these (OTC: ``waitForCceNodeActive``, PR #266 took
# ``Abnormal`` out of the targets; Huawei: ``nodeStateRefreshFunc`` errors on ``Error``).
NODE_FAILED = frozenset({"Abnormal", "Error"})
# The OTC provider waits through these for a pool to settle (``Pending: Synchronizing, Synchronized``) and fails
# on anything else; ``Synchronized`` is "waiting to scale" in the Huawei SDK, not an end (FlexibleEngine #787).
NODEPOOL_PENDING = frozenset({"Synchronizing", "Synchronized"})
NODEPOOL_FAILED = frozenset({"SoldOut", "Error"})
# A job of one of these types is about one node; a job whose sub-jobs are of these types (``ScaleupCluster``
# with a ``CreateNode`` per node: the golangsdk fixture ``openstack/cce/v3/nodes/testing/fixtures.go``) is a
# rollout of those nodes.
NODE_JOB_TYPES = frozenset({"CreateNode", "DeleteNode", "UpgradeNode", "ResetNode", "RemoveNode"})
# The sub-jobs of a node's job whose ``resourceID`` is the node's id once they run: the OTC provider reads
# ``CreateNodeVM``'s, the Huawei provider ``InstallNode``'s (``getResourceIDFromJob``, since PR #4323).
_NODE_ID_STEPS = ("CreateNodeVM", "InstallNode", "DeleteNodeVM")


def node_jobs(job: Job) -> tuple[Job, ...]:
    """The per-node sub-jobs of ``job`` (one ``CreateNode`` per node ...), or ``()`` if it is not a multi-node job."""
    return tuple(sub for sub in job.sub_jobs if sub.type in NODE_JOB_TYPES)


def node_id_of(job: Job) -> str:
    """The id of the node a node job is about: its own ``resourceID``, else the one of the sub-job that creates
    or installs the node; ``""`` until CCE fills it in (when that sub-job runs)."""
    if job.resource_id:
        return job.resource_id
    for sub in job.sub_jobs:
        if sub.type in _NODE_ID_STEPS and sub.resource_id:
            return sub.resource_id
    return ""


def deepest_failure(job: Job) -> str:
    """The reason of the deepest failed sub-job below ``job``, else ``job``'s own: a parent's reason is often
    generic ("recycle resource") while the step that failed says what went wrong."""
    best, best_depth = job.reason, 0
    stack = [(sub, 1) for sub in job.sub_jobs]
    while stack:
        node, depth = stack.pop()
        if node.phase is Phase.FAILED and node.reason and depth > best_depth:
            best, best_depth = node.reason, depth
        stack.extend((sub, depth + 1) for sub in node.sub_jobs)
    return best


@dataclass(frozen=True, slots=True)
class Node:
    """One node as the node list shows it. Strings are ``""`` when the API leaves them out."""

    id: str
    name: str
    phase: str
    job_id: str = ""
    nodepool_id: str = ""
    server_id: str = ""
    private_ip: str = ""


@dataclass(frozen=True, slots=True)
class Condition:
    """Why a pool cannot do what it was asked (``Scalable`` / ``False`` / ``SoldOut`` / "...")."""

    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class NodePool:
    """One node pool's state. ``target`` is ``spec.initialNodeCount`` (what a scale asked for)."""

    id: str
    name: str
    phase: str
    target: int | None
    current: int = 0
    creating: int = 0
    deleting: int = 0
    conditions: tuple[Condition, ...] = ()

    @property
    def problems(self) -> str:
        """The messages of the conditions that are not met, in one line (``""`` when there are none)."""
        parts = [
            f"{c.reason or c.type}: {c.message}" if c.message else (c.reason or c.type)
            for c in self.conditions
            if c.status.lower() == "false" or c.type in ("QuotaInsufficient", "ResourceInsufficient", "Error")
        ]
        return "; ".join(parts)


def _count(value: object, where: str) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise MalformedResponseError(f"{where} is {type(value).__name__}, expected a whole number")
    try:
        number = float(value)
    except ValueError:
        raise MalformedResponseError(f"{where} is {str(value)[:40]!r}, expected a whole number") from None
    if not number.is_integer() or number < 0:
        raise MalformedResponseError(f"{where} is {value!r}, expected a whole number")
    return int(number)


def _node(item: object, index: int) -> Node:
    where = f"items[{index}]"
    data = json_object(item, where)
    metadata = json_object(data.get("metadata"), f"{where}.metadata")
    status = json_object(data.get("status"), f"{where}.status")
    annotations = json_object(metadata.get("annotations"), f"{where}.metadata.annotations")
    uid = json_text(metadata.get("uid"))
    if not uid:
        raise MalformedResponseError(f"{where} has no metadata.uid: not a node")
    return Node(
        id=uid,
        name=json_text(metadata.get("name")),
        phase=json_text(status.get("phase")),
        job_id=json_text(status.get("jobID")),
        nodepool_id=json_text(annotations.get(NODEPOOL_ANNOTATION)),
        server_id=json_text(status.get("serverId")),
        private_ip=json_text(status.get("privateIP")),
    )


def parse_node_list(body: bytes | str) -> tuple[Node, ...]:
    """The nodes of a ``GET .../clusters/{cluster_id}/nodes`` answer."""
    data = json_object(decode_body(body), "body")
    items = data.get("items")
    if items is None:
        if data.get("kind") not in ("List", "NodeList") and "items" not in data:
            raise MalformedResponseError("body has no items: not a node list")
        return ()
    if not isinstance(items, list):
        raise MalformedResponseError(f"items is {type(items).__name__}, expected a list")
    return tuple(_node(item, i) for i, item in enumerate(items))


def _conditions(value: object) -> tuple[Condition, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MalformedResponseError(f"status.conditions is {type(value).__name__}, expected a list")
    out = []
    for i, item in enumerate(value):
        c: dict[str, Any] = json_object(item, f"status.conditions[{i}]")
        out.append(
            Condition(
                json_text(c.get("type")),
                json_text(c.get("status")),
                json_text(c.get("reason")),
                json_text(c.get("message")),
            )
        )
    return tuple(out)


def parse_nodepool(body: bytes | str) -> NodePool:
    """A ``GET .../clusters/{cluster_id}/nodepools/{id}`` answer."""
    data = json_object(decode_body(body), "body")
    metadata = json_object(data.get("metadata"), "metadata")
    spec = json_object(data.get("spec"), "spec")
    status = json_object(data.get("status"), "status")
    if not metadata and not spec and not status:
        raise MalformedResponseError("body has none of metadata, spec, status: not a node pool")
    phase = status.get("phase")
    if phase is not None and not isinstance(phase, str):
        raise MalformedResponseError(f"status.phase is {type(phase).__name__}, expected a string")
    target = spec.get("initialNodeCount")
    return NodePool(
        id=json_text(metadata.get("uid")),
        name=json_text(metadata.get("name")),
        phase=phase or "",
        target=None if target is None else _count(target, "spec.initialNodeCount"),
        current=_count(status.get("currentNode"), "status.currentNode"),
        creating=_count(status.get("creatingNode"), "status.creatingNode"),
        deleting=_count(status.get("deletingNode"), "status.deletingNode"),
        conditions=_conditions(status.get("conditions")),
    )
