"""The control API's routes for people looking: the live event stream, a rollout's timeline, recent failures.
Part of :mod:`monitor.daemon.api` (its error middleware, token guard and :class:`~monitor.daemon.api.Control`),
kept apart for size; the page itself (``/ui/``) is :mod:`monitor.ui.page`::

    GET /v1/events/stream             ?rollout=NAME    -> 200 text/event-stream
    GET /v1/rollouts/{name}/timeline                   -> 200 {"timeline": {...}} | 404
    GET /v1/failures                  ?limit=N         -> 200 {"failures": [event, ...]}   (newest first)

The stream is server-sent events: ``id:`` the event id, ``event:`` its type, ``data:`` the event as
``Event.to_json()``; ``event: lagged`` when this listener fell behind and lost events (read the API again); a
comment every 15 s keeps proxies from closing it. It ends when the daemon stops (``retry:`` tells an
``EventSource`` to come back after 3 s). With a token configured it needs the token like every data route — in
the ``Authorization`` header, which is why the page reads it with ``fetch`` rather than ``EventSource`` (which
cannot send headers; a token in the URL would end up in logs and history). At most 64 listeners (503 beyond).

A timeline is ``{"rollout", "start", "end", "counts", "rows": [row, ...], "svg"}``: times in Unix seconds, a row
``{"key", "job_id", "subjob_id", "name", "node_id", "job_type", "state", "reason", "ended", "spans": [[state,
start, end], ...]}`` (:mod:`monitor.engine.timeline`) and ``svg`` the picture drawn from them
(:func:`monitor.ui.svg.timeline_svg`, every outside text escaped). It is built from the stored history of the
rollout's jobs, the first 2,000 of them.

Failures are the latest 200 this process saw (jobs and nodes that failed, timed out or were not found), kept in
memory: after a restart the list starts empty, while the timelines, read from the store, keep every failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import hdrs, web

from monitor.core.events import Event
from monitor.daemon.feed import LAGGED
from monitor.daemon.replies import Reject, check_id, check_limit, json_reply, shown, single
from monitor.engine.timeline import Timeline, build_timeline
from monitor.ui.svg import timeline_svg

if TYPE_CHECKING:
    from monitor.daemon.api import Control  # (api imports this module to serve its routes)

__all__ = ["add_routes"]

logger = logging.getLogger(__name__)

_KEEPALIVE = 15.0
_MAX_TIMELINE_JOBS = 2000


def timeline_dict(timeline: Timeline) -> dict[str, Any]:
    return {
        "rollout": timeline.rollout,
        "start": timeline.start,
        "end": timeline.end,
        "counts": timeline.counts,
        "rows": [
            {
                "key": r.key,
                "job_id": r.job_id,
                "subjob_id": r.subjob_id,
                "name": r.name,
                "node_id": r.node_id,
                "job_type": r.job_type,
                "state": r.state,
                "reason": r.reason,
                "ended": r.ended,
                "spans": [[s.state, s.start, s.end] for s in r.spans],
            }
            for r in timeline.rows
        ],
        "svg": timeline_svg(timeline),
    }


def _sse(event: Event) -> bytes:
    # One data line: to_json() never holds a raw newline (JSON escapes them).
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event.id.encode(), event.type.value.encode(), event.to_json())


class _Live:
    __slots__ = ("_control",)

    def __init__(self, control: Control) -> None:
        self._control = control

    async def stream(self, request: web.Request) -> web.StreamResponse:
        for key in request.query:
            if key != "rollout":
                raise Reject(400, f"unknown query parameter {shown(key)}; use rollout")
        rollout = single(request, "rollout")
        if rollout is not None:
            check_id(rollout, "rollout name")
        feed = self._control.feed()
        if feed is None:
            raise Reject(503, "the daemon is not running yet; try again", {hdrs.RETRY_AFTER: "3"})
        if feed.listeners >= feed.max_listeners:
            raise Reject(503, "too many event stream listeners; try again later", {hdrs.RETRY_AFTER: "10"})
        async with feed.listen() as queue:
            response = web.StreamResponse(
                headers={
                    hdrs.CONTENT_TYPE: "text/event-stream",
                    hdrs.CACHE_CONTROL: "no-store",
                    "X-Accel-Buffering": "no",  # nginx: pass events on at once
                }
            )
            await response.prepare(request)
            await response.write(b"retry: 3000\n: connected\n\n")
            with contextlib.suppress(ConnectionResetError):  # the listener went away
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), _KEEPALIVE)
                    except TimeoutError:
                        await response.write(b": keep-alive\n\n")
                        continue
                    if item is None:
                        break
                    if item == LAGGED:
                        await response.write(b"event: lagged\ndata: {}\n\n")
                    elif rollout is None or item.rollout == rollout:
                        await response.write(_sse(item))
            return response

    async def timeline(self, request: web.Request) -> web.Response:
        name = check_id(request.match_info["name"], "rollout name")
        summary = self._control.rollout(name)
        jobs = await self._control.list_jobs(phase=None, rollout=name, labels={})
        if summary is None and not jobs:
            raise Reject(404, f"rollout {name} is not known")
        events: list[Event] = []
        for job in jobs[:_MAX_TIMELINE_JOBS]:
            found = await self._control.get_job(job.job_id)
            if found is not None:
                events.extend(found[1])
        ended = summary is not None and summary.get("ended")
        timeline = build_timeline(events, summary=summary, now=None if ended else time.time())
        return json_reply({"timeline": timeline_dict(dataclasses.replace(timeline, rollout=name))})

    async def failures(self, request: web.Request) -> web.Response:
        for key in request.query:
            if key != "limit":
                raise Reject(400, f"unknown query parameter {shown(key)}; use limit")
        limit = check_limit(single(request, "limit"), 50, 200)
        feed = self._control.feed()
        failures = feed.failures(limit) if feed is not None else []
        return json_reply({"failures": [e.to_dict() for e in failures]})


def add_routes(app: web.Application, control: Control) -> None:
    live = _Live(control)
    app.router.add_get("/v1/events/stream", live.stream)
    app.router.add_get("/v1/rollouts/{name}/timeline", live.timeline)
    app.router.add_get("/v1/failures", live.failures)
