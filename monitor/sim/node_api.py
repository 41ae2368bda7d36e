"""The node and node pool routes of the simulated region, served from :class:`~monitor.sim.nodes.Fleet`.

CCE API (through the simulator's one path: auth, throttle, fault draw, statistics per route kind):

* ``GET  /api/v3/projects/{project_id}/clusters/{cluster_id}/nodes`` (``node_list``): ``{"kind": "List", ...}``
* ``POST /api/v3/projects/{project_id}/clusters/{cluster_id}/nodes`` (``create_nodes``): a Node body, its
  ``spec.count`` nodes (default 1); answers 201 with the Node and ``status.jobID``, the ScaleupCluster job
  (huaweicloudsdkcce CreateNodeResponse; the OTC API reference "Creating a Node").
* ``GET  .../clusters/{cluster_id}/nodes/{node_id}`` (``node``)
* ``GET  .../clusters/{cluster_id}/nodepools/{nodepool_id}`` (``nodepool``)
* ``PUT  .../clusters/{cluster_id}/nodepools/{nodepool_id}`` (``update_nodepool``): ``spec.initialNodeCount``
  is the scale; answers 200 with the NodePool and no job id (huaweicloudsdkcce UpdateNodePoolResponse).
* ``POST .../clusters/{cluster_id}/nodepools/{nodepool_id}/operation/scale`` (``scale_nodepool``): the scale
  operation, ``spec.desiredNodeCount``; answers 200 with ``{"orderID": ""}`` and no job id either
  (huaweicloudsdkcce ScaleNodePoolRequestBody / ScaleNodePoolResponse: only a pay-per-use order id).
* ``PUT  .../clusters/{cluster_id}/nodes/operation/remove`` (``remove_nodes``): ``spec.nodes[].uid``; answers
  200 with a ``RemoveNodesTask`` whose ``status.jobID`` is one job of a DeleteNode per node
  (huaweicloudsdkcce RemoveNodeRequest / RemoveNodeResponse, RemoveNodesSpec, TaskStatus).

Unknown clusters, nodes and pools answer CCE's 404 (``CCE.01404001``); a body that is not a Node / NodePool
answers 400 ``CCE.01400001``. Control endpoints (no auth, not counted): ``POST /_sim/clusters``,
``POST /_sim/nodes``, ``POST /_sim/nodepools``, ``POST /_sim/nodepools/{nodepool_id}/scale``,
``POST /_sim/remove`` and ``GET /_sim/node_truth?cluster_id=``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from monitor.sim.server import Resolved, Simulator

__all__ = ["add_node_routes"]

_CLUSTER = "/api/v3/projects/{project_id}/clusters/{cluster_id}"


def add_node_routes(app: web.Application, sim: Simulator) -> None:
    """Add the node and node pool routes of ``sim`` to ``app``."""
    api = _NodeApi(sim)
    app.router.add_get(_CLUSTER + "/nodes", api.list_nodes)
    app.router.add_post(_CLUSTER + "/nodes", api.create_nodes)
    app.router.add_get(_CLUSTER + "/nodes/{node_id}", api.node)
    app.router.add_get(_CLUSTER + "/nodepools/{nodepool_id}", api.nodepool)
    app.router.add_put(_CLUSTER + "/nodepools/{nodepool_id}", api.update_nodepool)
    app.router.add_post(_CLUSTER + "/nodepools/{nodepool_id}/operation/scale", api.scale_operation)
    app.router.add_put(_CLUSTER + "/nodes/operation/remove", api.remove_nodes)
    app.router.add_post("/_sim/remove", api.sim_remove)
    app.router.add_post("/_sim/clusters", api.sim_cluster)
    app.router.add_post("/_sim/nodes", api.sim_nodes)
    app.router.add_post("/_sim/nodepools", api.sim_nodepools)
    app.router.add_post("/_sim/nodepools/{nodepool_id}/scale", api.sim_scale)
    app.router.add_get("/_sim/node_truth", api.sim_node_truth)


def _bad_request(message: str) -> web.Response:
    body = {"errorCode": "CCE.01400001", "errorMessage": f"Invalid request parameter: {message}"}
    return web.Response(status=400, body=orjson.dumps(body), content_type="application/json")


async def _json_object(request: web.Request) -> dict[str, Any]:
    body = orjson.loads(await request.read() or b"{}")
    if not isinstance(body, dict):
        raise TypeError("expected a JSON object")
    return body


class _NodeApi:
    __slots__ = ("sim",)

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def _cluster(self, request: web.Request) -> str | None:
        """The cluster id of the request if the project is ours and the cluster known, else ``None``."""
        cluster_id = request.match_info["cluster_id"]
        if request.match_info["project_id"] != self.sim.config.project_id:
            return None
        return cluster_id if self.sim._fleet.has_cluster(cluster_id) else None

    def _no_cluster(self, request: web.Request) -> web.Response:
        return self.sim._not_found(f"cluster {request.match_info['cluster_id']} not found")

    # --- CCE API ------------------------------------------------------------------------------------------

    async def list_nodes(self, request: web.Request) -> web.Response:
        async def resolve(request: web.Request, now: int) -> Resolved:
            cluster_id = self._cluster(request)
            listed = None if cluster_id is None else self.sim._fleet.node_list(cluster_id, now)
            if listed is None:
                return self._no_cluster(request)
            return lambda: (200, listed)

        return await self.sim._serve(request, "node_list", resolve)

    async def node(self, request: web.Request) -> web.Response:
        async def resolve(request: web.Request, now: int) -> Resolved:
            cluster_id = self._cluster(request)
            if cluster_id is None:
                return self._no_cluster(request)
            node_id = request.match_info["node_id"]
            if (found := self.sim._fleet.node(cluster_id, node_id, now)) is None:
                return self.sim._not_found(f"node {node_id} not found")
            return lambda: (200, found)

        return await self.sim._serve(request, "node", resolve)

    async def nodepool(self, request: web.Request) -> web.Response:
        async def resolve(request: web.Request, now: int) -> Resolved:
            cluster_id = self._cluster(request)
            if cluster_id is None:
                return self._no_cluster(request)
            pool_id = request.match_info["nodepool_id"]
            if (found := self.sim._fleet.nodepool(cluster_id, pool_id, now)) is None:
                return self.sim._not_found(f"nodepool {pool_id} not found")
            return lambda: (200, found)

        return await self.sim._serve(request, "nodepool", resolve)

    async def create_nodes(self, request: web.Request) -> web.Response:
        async def resolve(request: web.Request, now: int) -> Resolved:
            cluster_id = self._cluster(request)
            if cluster_id is None:
                return self._no_cluster(request)
            try:
                body = await _json_object(request)
                metadata, spec = body.get("metadata") or {}, body.get("spec")
                if body.get("kind", "Node") != "Node" or not isinstance(spec, dict) or not isinstance(metadata, dict):
                    raise TypeError("a Node with a spec is expected")
                count = int(spec.get("count", 1))
                if not 1 <= count <= 100:  # a real CCE limit per call (huaweicloudsdkcce NodeSpec.count)
                    raise ValueError("spec.count must be within [1, 100]")
            except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
                return _bad_request(str(exc))

            def act() -> tuple[int, Any]:
                job_id = self.sim.create_nodes(cluster_id, count)
                answer = {
                    "kind": "Node",
                    "apiVersion": "v3",
                    "metadata": {"name": str(metadata.get("name", ""))},
                    "spec": {**spec, "count": count},
                    "status": {"jobID": job_id},
                }
                return 201, answer

            return act

        return await self.sim._serve(request, "create_nodes", resolve)

    async def update_nodepool(self, request: web.Request) -> web.Response:
        def answer(cluster_id: str, pool_id: str) -> Any:
            return self.sim._fleet.nodepool(cluster_id, pool_id, self.sim.now_ns())

        return await self._scale(request, "update_nodepool", "initialNodeCount", answer)

    async def scale_operation(self, request: web.Request) -> web.Response:
        return await self._scale(request, "scale_nodepool", "desiredNodeCount", lambda *_: {"orderID": ""})

    async def _scale(
        self, request: web.Request, kind: str, field: str, answer: Callable[[str, str], Any]
    ) -> web.Response:
        """A pool's scale: ``spec.{field}`` is the new node count; the answer carries no job id."""

        async def resolve(request: web.Request, now: int) -> Resolved:
            cluster_id = self._cluster(request)
            if cluster_id is None:
                return self._no_cluster(request)
            pool_id = request.match_info["nodepool_id"]
            if self.sim._fleet.nodepool(cluster_id, pool_id, now) is None:
                return self.sim._not_found(f"nodepool {pool_id} not found")
            try:
                spec = (await _json_object(request)).get("spec")
                target = spec.get(field) if isinstance(spec, dict) else None
                if not isinstance(target, int) or isinstance(target, bool) or target < 0:
                    raise ValueError(f"spec.{field} must be an integer >= 0")
            except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
                return _bad_request(str(exc))

            def act() -> tuple[int, Any]:
                self.sim.scale_nodepool(cluster_id, pool_id, target)
                return 200, answer(cluster_id, pool_id)

            return act

        return await self.sim._serve(request, kind, resolve)

    async def remove_nodes(self, request: web.Request) -> web.Response:
        async def resolve(request: web.Request, now: int) -> Resolved:
            cluster_id = self._cluster(request)
            if cluster_id is None:
                return self._no_cluster(request)
            try:
                spec = (await _json_object(request)).get("spec")
                items = spec.get("nodes") if isinstance(spec, dict) else None
                if not isinstance(items, list) or not items:
                    raise ValueError("spec.nodes must be a non-empty list of {uid}")
                node_ids = [str(item["uid"]) if isinstance(item, dict) and "uid" in item else "" for item in items]
                if "" in node_ids or len(set(node_ids)) != len(node_ids):
                    raise ValueError("each of spec.nodes needs its own uid")
            except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
                return _bad_request(str(exc))
            for node_id in node_ids:
                if self.sim._fleet.node(cluster_id, node_id, now) is None:
                    return self.sim._not_found(f"node {node_id} not found")

            def act() -> tuple[int, Any]:
                try:
                    job_id = self.sim.remove_nodes(cluster_id, node_ids)
                except KeyError as exc:  # being deleted already
                    return 400, {"errorCode": "CCE.01400001", "errorMessage": f"Invalid request parameter: {exc}"}
                task = {"nodes": [{"uid": node_id} for node_id in node_ids]}
                return 200, {"kind": "RemoveNodesTask", "apiVersion": "v3", "spec": task, "status": {"jobID": job_id}}

            return act

        return await self.sim._serve(request, "remove_nodes", resolve)

    # --- control endpoints (no auth, not counted) ---------------------------------------------------------

    async def sim_cluster(self, request: web.Request) -> web.Response:
        try:
            cluster_id = (await _json_object(request)).get("cluster_id")
            return self.sim._json(
                200, {"cluster_id": self.sim.add_cluster(None if cluster_id is None else str(cluster_id))}
            )
        except (orjson.JSONDecodeError, TypeError) as exc:
            return self.sim._json(400, {"error": str(exc)})

    async def sim_nodes(self, request: web.Request) -> web.Response:
        try:
            spec = await _json_object(request)
            cluster_id = self.sim.add_cluster(spec.get("cluster_id"))
            duration = spec.get("duration")
            fail = spec.get("fail", 0)
            job_id = self.sim.create_nodes(
                cluster_id,
                int(spec.get("count", 1)),
                fail=float(fail) if isinstance(fail, float) else int(fail),
                duration=None if duration is None else float(duration),
                nodepool_id=spec.get("nodepool_id"),
                omit_nested=bool(spec.get("omit_nested", False)),
                abnormal=int(spec.get("abnormal", 0)),
            )
        except (orjson.JSONDecodeError, TypeError, ValueError, KeyError) as exc:
            return self.sim._json(400, {"error": str(exc)})
        return self.sim._json(200, {"cluster_id": cluster_id, "job_id": job_id})

    async def sim_nodepools(self, request: web.Request) -> web.Response:
        try:
            spec = await _json_object(request)
            cluster_id = self.sim.add_cluster(spec.get("cluster_id"))
            capacity, duration = spec.get("capacity"), spec.get("node_duration")
            pool_id = self.sim.add_nodepool(
                cluster_id,
                name=spec.get("name"),
                nodes=int(spec.get("nodes", 0)),
                capacity=None if capacity is None else int(capacity),
                fail=int(spec.get("fail", 0)),
                abnormal=int(spec.get("abnormal", 0)),
                node_duration=None if duration is None else float(duration),
                wait=float(spec.get("wait", 0.0)),
                fail_delete=int(spec.get("fail_delete", 0)),
            )
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            return self.sim._json(400, {"error": str(exc)})
        return self.sim._json(200, {"cluster_id": cluster_id, "nodepool_id": pool_id})

    async def sim_scale(self, request: web.Request) -> web.Response:
        pool_id = request.match_info["nodepool_id"]
        cluster_id = self.sim._fleet.pool_cluster(pool_id)
        if cluster_id is None:
            return self.sim._json(404, {"error": f"unknown node pool {pool_id!r}"})
        try:
            self.sim.scale_nodepool(cluster_id, pool_id, int((await _json_object(request))["target"]))
        except (orjson.JSONDecodeError, TypeError, ValueError, KeyError) as exc:
            return self.sim._json(400, {"error": str(exc)})
        return self.sim._json(200, {"cluster_id": cluster_id, "nodepool_id": pool_id})

    async def sim_remove(self, request: web.Request) -> web.Response:
        try:
            spec = await _json_object(request)
            cluster_id = str(spec["cluster_id"])
            job_id = self.sim.remove_nodes(
                cluster_id, [str(n) for n in spec["node_ids"]], fail=int(spec.get("fail", 0))
            )
        except (orjson.JSONDecodeError, TypeError, ValueError, KeyError) as exc:
            return self.sim._json(400, {"error": str(exc)})
        return self.sim._json(200, {"cluster_id": cluster_id, "job_id": job_id})

    async def sim_node_truth(self, request: web.Request) -> web.Response:
        cluster_id = request.query.get("cluster_id", "")
        if not self.sim._fleet.has_cluster(cluster_id):
            return self.sim._json(404, {"error": f"unknown cluster {cluster_id!r}"})
        transitions = [dataclasses.asdict(t) for t in self.sim.node_truth(cluster_id)]
        return self.sim._json(200, {"cluster_id": cluster_id, "transitions": transitions})
