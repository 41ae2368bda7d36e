"""Job shapes: the job types the simulator knows, the sub-job tree of each, and the resources a job's spec
names.

A job type's template gives its duration factor, the shape of the job itself and of its sub-jobs (in run
order, each with its share of the running time and the failure reasons CCE gives for it). A job's *context*
is the set of resource ids and names (cluster, node, server, ...) its spec and its sub-jobs' specs are
filled from; all of it is drawn from the simulator's job random stream.
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GENERIC_FAILURE",
    "JOB_TYPES",
    "NODE_CREATE",
    "NODE_DELETE",
    "NODE_REMOVE",
    "NODE_SCALEUP",
    "PREPAID_MESSAGE",
    "VARIANTS",
    "Shape",
    "Template",
    "job_context",
    "job_spec",
    "new_uid",
    "template",
]


@dataclass(frozen=True, slots=True)
class Shape:
    """How a (sub-)job of one type looks: which context values fill its spec, how it can fail."""

    job_type: str
    weight: float = 1.0  # share of the parent's running time
    resource_id: str | None = None  # context keys
    resource_name: str | None = None
    extend: tuple[tuple[str, str], ...] = ()
    failures: tuple[str, ...] = ()
    rollup: str | None = None  # a root's own reason when a sub-job fails (None: it copies the sub-job's)
    # A root's variants (see VARIANTS): its updateTimestamp is its own phase change's, not its latest sub-job's;
    # it is a yearly/monthly job waiting on its billing order.
    own_timestamp: bool = False
    prepaid: bool = False


# job type -> (duration factor, root shape, sub-job shapes, whether the last sub-job is optional)
Template = tuple[float, Shape, tuple[Shape, ...], bool]
_SERVER = (("serverID", "server"),)
_MASTER = (("serverID", "master"),)
# The sub-jobs of creating and deleting one node, shared by the CreateNode template and by the node module.
_CREATE_NODE_VM = Shape(
    "CreateNodeVM",
    0.45,
    "node",
    "node_name",
    _SERVER,
    (
        'Create node vm failed: {"error":{"code":"Ecs.0000","message":"Insufficient resources '
        'for the flavor c7.large.2 in availability zone eu-de-01."}}',
        'Create node vm failed: {"error":{"code":"Ecs.0319","message":"The ECS quota is insufficient."}}',
    ),
)
_INSTALL_NODE = Shape(
    "InstallNode",
    0.55,
    "node",
    extend=_SERVER,
    failures=(
        "Install node failed: wait for node to be ready timeout, node status: NotReady",
        "Install node failed: install kubelet failed: exit status 1",
    ),
)
_DELETE_NODE_VM = Shape(
    "DeleteNodeVM",
    1.0,
    "node",
    "node_name",
    _SERVER,
    ("Delete node vm failed: the ECS server is locked by another operation, retry later",),
)
_TEMPLATES: dict[str, Template] = {
    "CreateCluster": (
        3.0,
        Shape("CreateCluster", resource_id="resource", resource_name="cluster_name", extend=_MASTER),
        (
            Shape("CreatePSMCert", 0.05, failures=("create psm cert failed: certificate service unavailable",)),
            Shape(
                "InstallMaster",
                0.8,
                "master",
                extend=_MASTER,
                failures=(
                    "install master failed: etcd cluster is unhealthy: context deadline exceeded",
                    "install master failed: wait for kube-apiserver ready timeout after 600s",
                ),
            ),
            Shape(
                "InstallAddons",
                0.15,
                "cluster",
                failures=("install addon coredns failed: helm release coredns timed out waiting for condition",),
            ),
        ),
        True,
    ),
    "CreateNode": (
        1.0,
        Shape("CreateNode", resource_id="node", resource_name="node_name", extend=_SERVER),
        (
            _CREATE_NODE_VM,
            _INSTALL_NODE,
        ),
        False,
    ),
    "DeleteNode": (
        0.5,
        Shape("DeleteNode", resource_id="node", resource_name="node_name", extend=_SERVER),
        (_DELETE_NODE_VM,),
        False,
    ),
    "ScaleupCluster": (
        2.0,
        Shape("ScaleupCluster", resource_id="cluster", resource_name="cluster_name", extend=(("flavor", "flavor"),)),
        (
            Shape(
                "ScaleupMaster",
                0.7,
                "master",
                extend=_MASTER,
                failures=("Scale up master failed: the flavor cce.s2.large is sold out in this region",),
            ),
            Shape(
                "UpdateClusterConfig",
                0.3,
                failures=("update cluster config failed: kube-apiserver did not restart in time",),
            ),
        ),
        False,
    ),
}
JOB_TYPES: tuple[str, ...] = tuple(_TEMPLATES)
GENERIC_FAILURE = "job failed: internal error, please contact technical support"

# The jobs of the node module (monitor.sim.nodes), root first. A node's creation as CCE reports it: the
# golangsdk fixture (huaweicloud/golangsdk openstack/cce/v3/nodes/testing/fixtures.go, JobOutput) shows a
# ScaleupCluster whose CreateNode sub-jobs have their own GetPSMCert and InstallNode sub-jobs; the Terraform
# provider (terraform-provider-huaweicloud resource_huaweicloud_cce_node_v3.go, getResourceIDFromJob) reads
# the node id from the CreateNodeVM sub-job of the CreateNode sub-job, so all three are there.
NODE_SCALEUP = Shape("ScaleupCluster", resource_id="cluster", resource_name="cluster_name")
# The job of a bulk removal (PUT .../nodes/operation/remove answers a status.jobID: huaweicloudsdkcce
# RemoveNodeResponse/TaskStatus) holds a DeleteNode per node, as the issue tracker describes it. Its own type is
# not in the public record: ours mirrors ScaleupCluster. The monitor reads the sub-jobs' types, never this one.
NODE_REMOVE = Shape("ScaledownCluster", resource_id="cluster", resource_name="cluster_name")
# A failed node job's own reason is generic while its failed step says what went wrong (the issue's "recycle
# resource"): the monitor must report the deepest failed sub-job's reason, so the simulator makes it differ.
NODE_ROLLUP = "create node failed, recycle resource"
NODE_CREATE: tuple[Shape, ...] = (
    Shape("CreateNode", resource_id="node", resource_name="node_name", rollup=NODE_ROLLUP),
    Shape("GetPSMCert", 0.05, failures=("get psm cert failed: certificate service unavailable, retry later",)),
    _CREATE_NODE_VM,
    _INSTALL_NODE,
)
NODE_DELETE: tuple[Shape, ...] = (
    Shape("DeleteNode", resource_id="node", resource_name="node_name", extend=_SERVER),
    _DELETE_NODE_VM,
)


# Variants of any job type, asked for as "CreateNode/quiet-parent" (spec.type stays "CreateNode"):
# * quiet-parent: the job's own updateTimestamp moves only with its own phase, while its sub-jobs move. The
#   documented Job object does not say that a parent's updateTimestamp follows its sub-jobs, and a poller must
#   not rely on it: we decided that CCE may leave it put, so this variant does (the default follows them).
# * prepaid: a yearly/monthly job (extendParam.orderID, as huaweicloudsdkcce's NodeExtendParam and
#   ClusterExtendParam name it) that waits on its billing order: it stays Initializing for the job's
#   start_delay with a status.message (golangsdk's JobStatus has Message; the vendor's wording of it is not in
#   the record: ours is PREPAID_MESSAGE), then runs as any job.
VARIANTS: dict[str, Callable[[Shape], Shape]] = {
    "quiet-parent": lambda root: dataclasses.replace(root, own_timestamp=True),
    "prepaid": lambda root: dataclasses.replace(root, prepaid=True),
}
PREPAID_MESSAGE = "Waiting for the order to be paid"


def template(job_type: str) -> Template:
    """The template of ``job_type``; an unknown type is a job on a cluster without sub-jobs. ``Type/variant``
    (each of :data:`VARIANTS`, several joined by ``/``) changes the job itself, not its type."""
    base, *variants = job_type.split("/")
    if not variants or not all(v in VARIANTS for v in variants):
        base, variants = job_type, []
    factor, root, subs, optional = _TEMPLATES.get(base, (1.0, Shape(base, resource_id="cluster"), (), False))
    for variant in variants:
        root = VARIANTS[variant](root)
    return factor, root, subs, optional


def new_uid(rng: random.Random) -> str:
    """A job, cluster or node id as CCE writes them (a version-1 UUID)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=1))


def job_context(rng: random.Random, cluster: str, cluster_names: dict[str, str]) -> dict[str, str]:
    """The resources of one job on ``cluster``; a cluster's name is drawn once and kept in ``cluster_names``."""
    if cluster not in cluster_names:
        env = rng.choice(("prod", "stage", "dev", "ci"))
        cluster_names[cluster] = f"cluster-{env}-{rng.randrange(100):02d}"
    name = cluster_names[cluster]
    suffix = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=5))
    return {
        "cluster": cluster,
        "cluster_name": name,
        "resource": new_uid(rng),
        "node": new_uid(rng),
        "node_name": f"{name}-{suffix}",
        "server": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "master": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "flavor": rng.choice(("cce.s2.medium", "cce.s2.large", "cce.s2.xlarge")),
    }


def job_spec(shape: Shape, context: Mapping[str, str]) -> dict[str, Any]:
    """The ``spec`` of a (sub-)job of ``shape`` (without ``subJobs``), filled from ``context``."""
    result: dict[str, Any] = {"type": shape.job_type, "clusterUID": context["cluster"]}
    if shape.resource_id:
        result["resourceID"] = context[shape.resource_id]
    if shape.resource_name:
        result["resourceName"] = context[shape.resource_name]
    if shape.extend:
        result["extendParam"] = {name: context[key] for name, key in shape.extend}
    return result
