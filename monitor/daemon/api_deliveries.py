"""The control API's dead-letter routes: list outbox rows a receiver refused for good (or that still wait), and
send refused ones again. Part of :mod:`monitor.daemon.api` (its error middleware, token guard and
:class:`~monitor.daemon.api.Control`), kept apart for size, with the replies and checks of
:mod:`monitor.daemon.replies`; ``make_app`` serves them::

    GET  /v1/deliveries         ?state=rejected|pending&sink=NAME&job_id=ID&limit=N
                                -> 200 {"deliveries": [delivery, ...]}
    POST /v1/deliveries/replay  {"ids": [event id, ...], "sink": NAME, "job_id": ID}   (at least one of them)
                                -> 200 {"replayed": [{"seq", "sink", "event_id"}, ...]}

``state`` defaults to ``rejected``, ``limit`` to 100 (1 to 1000). A delivery is ``{"seq", "sink", "state",
"attempts", "last_error", "rejected_at", "event"}``: ``rejected_at`` in RFC 3339 UTC or ``null`` (pending),
``event`` as ``Event.to_dict()``. Sink names are the sinks' own (``webhook:https://host/path``: no userinfo, query
or fragment), so in a query they must be URL-encoded.

A replay keeps each event and its id (a webhook's ``webhook-id``): a receiver that saw it before recognises it.
Without ``sink`` it covers every configured durable sink. 400s: unknown, repeated or invalid parameters or keys;
an empty filter (``{}``: replaying every dead letter must be asked for, with ``sink``); ``ids`` empty, too many
(``max_jobs_per_request``) or not valid ids; a ``sink`` that is not a configured durable sink (the message lists
those that are).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web

from monitor.core.errors import ConfigError
from monitor.core.text import has_control
from monitor.daemon.replies import Reject, check_id, check_limit, json_reply, json_type, rfc3339, shown
from monitor.daemon.storage import DeliveryRecord

if TYPE_CHECKING:
    from monitor.daemon.api import Control  # (api imports this module to serve its routes)

__all__ = ["add_routes"]

logger = logging.getLogger(__name__)

_QUERY_KEYS = ("state", "sink", "job_id", "limit")
_BODY_KEYS = ("ids", "sink", "job_id")
_STATES: tuple[Literal["rejected"], Literal["pending"]] = ("rejected", "pending")
_MAX_LIMIT = 1000
_MAX_SINK = 2048

_ReadJSON = Callable[[web.Request], Awaitable[object]]


def _delivery(record: DeliveryRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "sink": record.sink,
        "state": record.state,
        "attempts": record.attempts,
        "last_error": record.last_error,
        "rejected_at": rfc3339(record.rejected_at),
        "event": record.event.to_dict(),
    }


def _check_sink(value: object) -> str:
    if not isinstance(value, str):
        raise Reject(400, f"sink must be a string, not {json_type(value)}")
    if not value or len(value) > _MAX_SINK or has_control(value):
        raise Reject(400, f"invalid sink {shown(value)}: use a sink's name, e.g. webhook:https://host/path")
    return value


class _Deliveries:
    __slots__ = ("_control", "_max_ids", "_read_json")

    def __init__(self, control: Control, read_json: _ReadJSON, max_ids: int) -> None:
        self._control = control
        self._read_json = read_json
        self._max_ids = max_ids

    async def list(self, request: web.Request) -> web.Response:
        query = request.query
        for key in query:
            if key not in _QUERY_KEYS:
                raise Reject(400, f"unknown query parameter {shown(key)}; use {', '.join(_QUERY_KEYS)}")
            if len(query.getall(key)) > 1:
                raise Reject(400, f"query parameter {key} given more than once")
        raw_state = query.get("state", "rejected")
        state = next((s for s in _STATES if s == raw_state), None)
        if state is None:
            raise Reject(400, f"invalid state {shown(raw_state)}: use rejected or pending")
        sink = _check_sink(query["sink"]) if "sink" in query else None
        job_id = check_id(query["job_id"], "job id") if "job_id" in query else None
        limit = check_limit(query.get("limit"), 100, _MAX_LIMIT)
        found = await self._control.deliveries(state, sink=sink, job_id=job_id, limit=limit)
        return json_reply({"deliveries": [_delivery(record) for record in found]})

    async def replay(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        if not isinstance(body, dict):
            raise Reject(400, f"body must be a JSON object, not {json_type(body)}")
        for key in body:
            if key not in _BODY_KEYS:
                raise Reject(400, f"unknown key {shown(key)} in body; use {', '.join(_BODY_KEYS)}")
        ids, sink, job_id = body.get("ids"), body.get("sink"), body.get("job_id")
        if ids is None and sink is None and job_id is None:
            raise Reject(400, "give ids, sink or job_id; to replay every dead letter of a sink, name the sink")
        if ids is not None:
            if not isinstance(ids, list):
                raise Reject(400, f"ids must be an array of event ids, not {json_type(ids)}")
            if not ids:
                raise Reject(400, "ids must not be empty")
            if len(ids) > self._max_ids:
                raise Reject(400, f"ids has {len(ids)} ids; at most {self._max_ids} per request")
            for i, event_id in enumerate(ids):
                if not isinstance(event_id, str):
                    raise Reject(400, f"ids[{i}] must be a string, not {json_type(event_id)}")
                check_id(event_id, "event id", f"ids[{i}]: ")
        if sink is not None:
            sink = _check_sink(sink)
        if job_id is not None:
            if not isinstance(job_id, str):
                raise Reject(400, f"job_id must be a string, not {json_type(job_id)}")
            job_id = check_id(job_id, "job id")
        try:
            replayed = await self._control.replay(sink=sink, event_ids=ids, job_id=job_id)
        except ConfigError as exc:
            raise Reject(400, str(exc)) from None
        logger.info("api: %d rejected events replayed", len(replayed))
        return json_reply({"replayed": [{"seq": r.seq, "sink": r.sink, "event_id": r.event.id} for r in replayed]})


def add_routes(app: web.Application, control: Control, read_json: _ReadJSON, max_ids: int) -> None:
    """Serve the dead-letter routes of ``control`` on ``app``; ``read_json(request)`` reads a checked body."""
    routes = _Deliveries(control, read_json, max_ids)
    app.router.add_get("/v1/deliveries", routes.list)
    app.router.add_post("/v1/deliveries/replay", routes.replay)
