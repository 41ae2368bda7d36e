"""Node and node-pool snapshots: the shapes the API documents, the mess it may send, and per-node jobs."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.errors import MalformedResponseError
from monitor.core.model import parse_job
from monitor.core.nodes import (
    NODEPOOL_ANNOTATION,
    Condition,
    NodePool,
    deepest_failure,
    node_id_of,
    node_jobs,
    parse_node_list,
    parse_nodepool,
)

# The shape of "Listing All Nodes in a Cluster" in the OTC API reference (trimmed), trailing comma included.
NODE_LIST = b"""{"kind": "List", "apiVersion": "v3", "items": [
  {"kind": "Node", "apiversion": "v3",
   "metadata": {"name": "node-1", "uid": "4d1ecb2c-229a-11e8-9c75-0255ac100ceb",
                "annotations": {"kubernetes.io/node-pool.id": "eu-de-01#s1.medium#EulerOS 2.5"}},
   "spec": {"flavor": "s1.medium", "az": "eu-de-01"},
   "status": {"phase": "Active", "serverId": "456789abc", "privateIP": "192.168.1.23",
              "jobID": "2ec9b78d-9368-46f3-8f29-d1a95622a568"},},
]}"""

NODEPOOL = {
    "kind": "NodePool",
    "metadata": {"name": "workers", "uid": "pool-1"},
    "spec": {"initialNodeCount": 5},
    "status": {
        "currentNode": 3,
        "creatingNode": 0,
        "deletingNode": 0,
        "phase": "SoldOut",
        "conditions": [
            {"type": "Scalable", "status": "False", "reason": "ResourceInsufficient", "message": "no capacity"},
            {"type": "QuotaInsufficient", "status": "True", "reason": "Ecs.0319", "message": "quota"},
        ],
    },
}


def test_node_list_as_documented() -> None:
    [node] = parse_node_list(NODE_LIST)
    assert (node.id, node.name, node.phase, node.job_id) == (
        "4d1ecb2c-229a-11e8-9c75-0255ac100ceb",
        "node-1",
        "Active",
        "2ec9b78d-9368-46f3-8f29-d1a95622a568",
    )
    assert node.nodepool_id == "eu-de-01#s1.medium#EulerOS 2.5"
    assert (node.server_id, node.private_ip) == ("456789abc", "192.168.1.23")
    assert parse_node_list(b'{"kind": "List", "items": null}') == ()


def test_nodepool_with_conditions() -> None:
    pool = parse_nodepool(orjson.dumps(NODEPOOL))
    assert pool == NodePool(
        "pool-1",
        "workers",
        "SoldOut",
        5,
        3,
        0,
        0,
        (
            Condition("Scalable", "False", "ResourceInsufficient", "no capacity"),
            Condition("QuotaInsufficient", "True", "Ecs.0319", "quota"),
        ),
    )
    assert pool.problems == "ResourceInsufficient: no capacity; Ecs.0319: quota"
    settled = parse_nodepool(b'{"metadata": {"uid": "p"}, "status": {"currentNode": 0, "phase": ""}}')
    assert (settled.phase, settled.target, settled.problems) == ("", None, "")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "body is list"),
        (b'{"items": {}}', "items is dict"),
        (b'{"kind": "Node"}', "not a node list"),
        (b'{"items": [{"metadata": {}}]}', "items[0] has no metadata.uid"),
        (b'{"items": [[]]}', "items[0] is list"),
        (b'{"status": {"currentNode": "three"}}', "status.currentNode is 'three'"),
        (b'{"status": {"currentNode": 1.5}}', "expected a whole number"),
        (b'{"status": {"phase": 7}}', "status.phase is int"),
        (b'{"status": {"conditions": {}}}', "status.conditions is dict"),
        (b"{}", "not a node pool"),
        (b"<html>", "not valid JSON"),
    ],
)
def test_bad_bodies_are_one_line_errors(body: bytes, message: str) -> None:
    parse = parse_nodepool if b"status" in body or body in (b"{}", b"<html>") else parse_node_list
    with pytest.raises(MalformedResponseError) as info:
        parse(body)
    assert message in info.value.message and "\n" not in info.value.message


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
_keys = st.sampled_from(["items", "kind", "metadata", "spec", "status", "uid", "phase", "jobID", "currentNode"])
_shaped = st.recursive(
    _json, lambda children: st.dictionaries(_keys, children, max_size=5) | st.lists(children, max_size=3), max_leaves=30
)


@settings(max_examples=300, deadline=None)
@given(_shaped)
def test_any_json_is_a_snapshot_or_a_malformed_error(value: object) -> None:
    body = orjson.dumps(value)
    for parse in (parse_node_list, parse_nodepool):
        try:
            parse(body)
        except MalformedResponseError as exc:
            assert exc.message and "\n" not in exc.message


SCALEUP = {
    "metadata": {"uid": "job"},
    "spec": {
        "type": "ScaleupCluster",
        "resourceID": "cluster",
        "subJobs": [
            {
                "metadata": {"uid": "cn-1"},
                "spec": {
                    "type": "CreateNode",
                    "resourceName": "node-1",
                    "subJobs": [
                        {"metadata": {"uid": "vm-1"}, "spec": {"type": "CreateNodeVM", "resourceID": "n-1"}},
                        {
                            "metadata": {"uid": "in-1"},
                            "spec": {"type": "InstallNode", "resourceID": "n-1"},
                            "status": {"phase": "Failed", "reason": "install kubelet failed"},
                        },
                    ],
                },
                "status": {"phase": "Failed", "reason": "recycle resource"},
            },
            {"metadata": {"uid": "cn-2"}, "spec": {"type": "CreateNode"}, "status": {"phase": "Running"}},
            {"metadata": {"uid": "other"}, "spec": {"type": "ScaleupMaster"}},
        ],
    },
    "status": {"phase": "Failed", "reason": "recycle resource"},
}


def test_per_node_jobs_their_node_ids_and_the_deepest_reason() -> None:
    job = parse_job(orjson.dumps(SCALEUP))
    first, second = node_jobs(job)
    assert (first.id, second.id) == ("cn-1", "cn-2")
    assert node_id_of(first) == "n-1", "from CreateNodeVM, as the OTC provider reads it"
    assert node_id_of(second) == "", "not named yet"
    assert deepest_failure(first) == "install kubelet failed"
    assert deepest_failure(job) == "install kubelet failed"
    assert node_jobs(parse_job(b'{"metadata": {"uid": "x"}, "spec": {"type": "CreateNode"}}')) == ()
    assert NODEPOOL_ANNOTATION == "kubernetes.io/node-pool.id"
