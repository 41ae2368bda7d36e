"""The documents the node API serves: a Node, a pool's node template and its status conditions, and the
blanking of a (sub-)job's node fields before it runs. Pure functions of what :mod:`monitor.sim.nodes` planned.
"""

from __future__ import annotations

from typing import Any

from monitor.sim.timeline import INITIALIZING, Job, format_go_timestamp

__all__ = ["OS", "POOL_ANNOTATION", "blank_until_running", "node_document", "node_spec", "pool_conditions", "updated"]

# The annotation naming a node's pool: huaweicloudsdkcce NodeMetadata.annotations, and the node examples of the
# OTC API reference (opentelekomcloud-docs/cloud-container-engine, reading_a_specified_node.rst), where a node
# outside any user pool carries the default pool "az#flavor#os".
POOL_ANNOTATION = "kubernetes.io/node-pool.id"
OS = "EulerOS 2.9"


def updated(job: Job, now_ns: int) -> int:
    """When ``job`` or one of its sub-jobs last changed, as of ``now_ns``."""
    return max([job.root.step_at(now_ns).at_ns, *(sub.step_at(now_ns).at_ns for sub in job.subs)])


def blank_until_running(document: dict[str, Any]) -> None:
    """Before a (sub-)job runs CCE does not know the node yet: its id, name and server are ``""`` (our choice;
    the golangsdk fixture shows CreateNode with a name and InstallNode with the node id once they ran). A
    deletion knows its node from the start."""
    if document["status"]["phase"] != INITIALIZING or document["spec"]["type"].startswith("Delete"):
        return
    spec = document["spec"]
    for key in ("resourceID", "resourceName"):
        if key in spec:
            spec[key] = ""
    if "extendParam" in spec:
        spec["extendParam"] = dict.fromkeys(spec["extendParam"], "")


def node_spec(flavor: str, az: str) -> dict[str, Any]:
    """A node's (or pool's node template's) spec, with the fields of huaweicloudsdkcce NodeSpec / NodeTemplate."""
    return {
        "flavor": flavor,
        "az": az,
        "os": OS,
        "login": {"sshKey": "KeyPair-sim"},
        "rootVolume": {"volumetype": "SSD", "size": 50},
        "dataVolumes": [{"volumetype": "SSD", "size": 100}],
        "billingMode": 0,
    }


def node_document(
    *,
    uid: str,
    name: str,
    pool_id: str | None,
    flavor: str,
    az: str,
    phase: str,
    job_id: str,
    created_ns: int,
    changed_ns: int,
    vm: tuple[str, str] | None,
) -> dict[str, Any]:
    """One Node as ``GET .../nodes`` lists it; ``vm`` (server id, private IP) once its VM exists."""
    pool = pool_id or f"{az}#{flavor}#{OS}"
    status: dict[str, Any] = {"phase": phase, "jobID": job_id}
    if vm is not None:
        status["serverId"], status["privateIP"] = vm
    return {
        "kind": "Node",
        "apiVersion": "v3",
        "metadata": {
            "name": name,
            "uid": uid,
            "annotations": {POOL_ANNOTATION: pool},
            "creationTimestamp": format_go_timestamp(created_ns),
            "updateTimestamp": format_go_timestamp(changed_ns),
        },
        "spec": node_spec(flavor, az),
        "status": status,
    }


def pool_conditions(
    *, now_ns: int, created_ns: int, sold_out_ns: int | None, error: tuple[int, str] | None, flavor: str, az: str,
    name: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """A pool's ``status.conditions`` at ``now_ns``: ``Scalable`` (``False`` once sold out, since
    ``sold_out_ns``), and an ``Error`` condition since a deletion failed (``error``: its instant and reason).

    Condition types from huaweicloudsdkcce NodePoolCondition (Scalable, ResourceInsufficient); the sold-out
    message follows the ECS error that CreateNodeVM reports (shapes.py). The texts and the ``Error`` condition
    of a failed deletion are our own: the SDK documents the pool phase ``Error`` but not its condition."""
    probe = format_go_timestamp(now_ns)

    def condition(kind: str, status: str, since: int, reason: str, message: str) -> dict[str, Any]:
        return {"type": kind, "status": status, "lastProbeTime": probe, "lastTransitTime": format_go_timestamp(since),
                "reason": reason, "message": message}  # fmt: skip

    if sold_out_ns is not None:
        message = (
            f"no capacity: Ecs.0000 Insufficient resources for the flavor {flavor} in availability zone "
            f"{az}, node pool {name} cannot be scaled out"
        )
        out = [
            condition("Scalable", "False", sold_out_ns, "ResourceInsufficient", message),
            condition("ResourceInsufficient", "True", sold_out_ns, "Ecs.0000", message),
        ]
    else:
        out = [condition("Scalable", "True", created_ns, "", "")]
    if error is not None:
        out.append(condition("Error", "True", error[0], "DeleteNodeFailed", error[1]))
    return out
