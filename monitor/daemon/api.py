"""The daemon's HTTP control API: rollout tooling adds, lists, inspects and removes jobs over JSON.

The API runs in the daemon's process (``aiohttp.web``) and reaches the daemon only through :class:`Control`,
which the daemon implements::

    @dataclass(frozen=True, slots=True)
    class AddResult:
        accepted: list[str]   # newly tracked
        known: list[str]      # already tracked or known (not an error)

    class Control(Protocol):
        async def add_jobs(self, job_ids: Sequence[str], labels: Mapping[str, str],
                           rollout: str | None) -> AddResult: ...
        async def list_jobs(self, *, phase: str | None, rollout: str | None,
                            labels: Mapping[str, str]) -> list[StoredJob]: ...
        async def get_job(self, job_id: str) -> tuple[StoredJob, list[Event]] | None: ...
        async def remove_job(self, job_id: str) -> bool: ...
        async def deliveries(self, state: Literal["pending", "rejected"], *, sink: str | None,
                             job_id: str | None, limit: int) -> list[DeliveryRecord]: ...
        async def replay(self, *, sink: str | None, event_ids: Sequence[str] | None,
                         job_id: str | None) -> list[DeliveryRecord]: ...   # ConfigError: not a durable sink
        def readiness(self) -> dict[str, bool]: ...   # e.g. {"state": True, "scheduler": True, "cce": False}
        def metrics(self) -> tuple[bytes, str]: ...   # Prometheus exposition body and its content type

Everything :class:`Control` receives is already validated: job ids and the rollout name pass
:func:`~monitor.core.model.validate_id`, ``job_ids`` is non-empty and free of duplicates, labels are checked as
below. ``readiness`` and ``metrics`` are called on the event loop and must not block.

Routes (every body is JSON, every error is ``{"error": "<one line>"}``)::

    POST   /v1/jobs            {"job_ids": [...], "labels": {...}, "rollout": "name"}
                               -> 202 {"accepted": [...], "known": [...]}
    GET    /v1/jobs            ?phase=Running&rollout=r1&label=k=v&label=k2=v2
                               -> 200 {"jobs": [job, ...]}
    GET    /v1/jobs/{job_id}   -> 200 {"job": job + {"snapshot": ...}, "history": [event, ...]} | 404
    DELETE /v1/jobs/{job_id}   -> 200 {"removed": true} | 404
    POST   /v1/nodepools       {"cluster_id", "nodepool_id", "target": N, "labels": {...}, "rollout": "name"}
                               -> 202 {"followed": true, "rollout": ...} | 200 {"followed": false, ...}
    GET    /v1/nodepools       -> 200 {"nodepools": [pool, ...]}
    GET    /v1/deliveries      ?state=rejected|pending&sink=NAME&job_id=ID&limit=N     (see api_deliveries)
                               -> 200 {"deliveries": [delivery, ...]}
    POST   /v1/deliveries/replay  {"ids": [...], "sink": NAME, "job_id": ID}  -> 200 {"replayed": [...]}
    GET    /v1/rollouts        -> 200 {"rollouts": [summary + {"line": "pool-a: 37/100 nodes Active, ..."}, ...]}
    GET    /v1/rollouts/{name} -> 200 {"rollout": summary + {"line"}} | 404
    GET    /v1/events/stream   ?rollout=NAME -> text/event-stream        (see api_live, with the next two)
    GET    /v1/rollouts/{name}/timeline  -> 200 {"timeline": {...}}
    GET    /v1/failures        ?limit=N  -> 200 {"failures": [event, ...]}
    GET    /ui/                the status page (monitor.ui.page); / and /ui redirect there
    GET    /healthz            -> 200 {"status": "ok"}                     (the process is up)
    GET    /readyz             -> 200 | 503 {"ready": bool, "checks": {...}}
    GET    /metrics            -> control.metrics() as it is

A job is ``{"job_id", "labels", "rollout", "added_at", "phase", "outcome", "finished_at"}`` with times in
RFC 3339 UTC (``2024-05-01T12:00:00.123456Z``) or ``null``; ``snapshot`` is the last :class:`~monitor.core.model.Job`
as :func:`~monitor.core.model.job_to_json` writes it, or ``null``; events are ``Event.to_dict()``.

Statuses:

* 400: the body is not JSON, not an object, has keys other than ``job_ids``, ``labels``, ``rollout``; ``job_ids``
  is missing, empty, not a list of strings, longer than ``max_jobs_per_request``, or holds an invalid id (the
  message names its index and shows it truncated); ``labels`` is not an object of string to string, has more than
  64 entries, a key not matching ``[A-Za-z0-9_.-]{1,63}``, a value over 256 characters or with a control or
  format character (Unicode Cc, Cf, Zl, Zp, Cs); ``rollout`` is not a valid id. ``null`` for ``labels`` or
  ``rollout`` means "not given". The same rules apply to the path's job id and to the query of
  ``GET /v1/jobs``, which also rejects unknown or repeated parameters and a ``phase`` not matching
  ``[A-Za-z0-9_.-]{1,64}``.
* 401 with ``WWW-Authenticate: Bearer``: a token is configured and the request lacks it or has another one.
* 404: no such route, or the job is not tracked. 405: wrong method (with ``Allow``).
* 413: the body is longer than ``max_body`` (checked on ``Content-Length`` and while reading).
* 415: a ``POST`` whose ``Content-Type`` is not ``application/json``. This also makes every cross-site ``POST``
  from a browser need a CORS preflight, which this API never grants, so a web page cannot add jobs to a daemon
  that listens on loopback without a token.
* 503 ``{"error": "state database unavailable; try again"}`` with ``Retry-After``: the state database failed
  (PostgreSQL down); the reason is logged.
* 500 ``{"error": "internal error"}``: anything else raised, logged here with its traceback; the exception's
  text never reaches the client.

Authentication: with a ``token`` configured, every route except ``/healthz``, ``/readyz``, ``/metrics`` and the
page's own files (``/ui/...``: no data in them) needs
``Authorization: Bearer <token>`` — reads too, since jobs carry labels and rollout names — and so do unknown
paths (401 before 404: the API does not show its routes to strangers). Tokens are compared in constant time.
Neither the token nor the ``Authorization`` header is ever logged; the access log is off.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from monitor.core.errors import ConfigError, StateError
from monitor.core.events import Event
from monitor.core.model import job_to_json
from monitor.core.secret import Secret
from monitor.daemon import api_deliveries, api_live
from monitor.daemon.feed import EventFeed
from monitor.daemon.replies import (
    Reject,
    check_id,
    check_label,
    error_reply,
    json_reply,
    json_type,
    one_line,
    rfc3339,
    shown,
    single,
)
from monitor.daemon.storage import DeliveryRecord, StoredJob
from monitor.engine.rollout import describe
from monitor.ui import page

__all__ = ["AddResult", "Control", "make_app", "serve"]

logger = logging.getLogger(__name__)

_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/", page.UI_PREFIX})
_BODY_KEYS = ("job_ids", "labels", "rollout")
_MAX_TARGET = 100_000  # nodes; CCE clusters are far smaller
_POOL_KEYS = frozenset({"cluster_id", "nodepool_id", "target", "labels", "rollout"})
_QUERY_KEYS = frozenset({"phase", "rollout", "label"})
_PHASE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_LABELS = 64
# Headers of an aiohttp HTTPException that describe its own plain-text body, not ours.
_BODY_HEADERS = frozenset({"content-type", "content-length", "content-encoding", "transfer-encoding"})
_REALM = 'Bearer realm="cce-monitor"'


@dataclass(frozen=True, slots=True)
class AddResult:
    """What :meth:`Control.add_jobs` did with the ids it was given."""

    accepted: list[str]
    """Newly tracked."""
    known: list[str]
    """Already tracked or known (not an error)."""


class Control(Protocol):
    """The daemon as the API sees it; see the module docstring for what each method receives."""

    async def add_jobs(self, job_ids: Sequence[str], labels: Mapping[str, str], rollout: str | None) -> AddResult:
        """Track the jobs not yet known; say which were new and which were known."""
        ...

    async def list_jobs(self, *, phase: str | None, rollout: str | None, labels: Mapping[str, str]) -> list[StoredJob]:
        """Known jobs matching every filter given (``None`` / empty: no filter)."""
        ...

    async def get_job(self, job_id: str) -> tuple[StoredJob, list[Event]] | None:
        """The job and its history, oldest event first; ``None`` if the job is not known."""
        ...

    async def remove_job(self, job_id: str) -> bool:
        """Stop tracking and forget the job; ``False`` if it was not known."""
        ...

    async def deliveries(
        self, state: Literal["pending", "rejected"], *, sink: str | None, job_id: str | None, limit: int
    ) -> list[DeliveryRecord]:
        """Outbox rows still ``pending`` or ``rejected`` for good (dead letters), oldest first."""
        ...

    async def replay(
        self, *, sink: str | None, event_ids: Sequence[str] | None, job_id: str | None
    ) -> list[DeliveryRecord]:
        """Dead letters of ``sink`` (``None``: every durable sink), filtered by event ids or job, become due again;
        raises :class:`~monitor.core.errors.ConfigError` for a sink that is not a configured durable sink."""
        ...

    async def add_nodepool(
        self, cluster_id: str, nodepool_id: str, target: int | None, labels: Mapping[str, str], rollout: str | None
    ) -> bool:
        """Follow a node pool until it settles, and the jobs and nodes it creates; ``False`` if followed already."""
        ...

    async def list_nodepools(self) -> list[dict[str, Any]]:
        """Every followed node pool, with its last state while it is followed."""
        ...

    def readiness(self) -> dict[str, bool]:
        """Named checks, e.g. ``{"state": True, "scheduler": True, "cce": False}``; must not block."""
        ...

    def rollouts(self) -> list[dict[str, Any]]:
        """The summary of every known rollout (see :meth:`monitor.engine.rollout.Rollout.summary`); must not block."""
        ...

    def rollout(self, name: str) -> dict[str, Any] | None:
        """One rollout's summary, or ``None``; must not block."""
        ...

    def delivery_lag(self) -> dict[str, dict[str, Any]]:
        """Per durable sink: ``depth`` (undelivered events), ``oldest_age_s`` (how long the oldest has waited
        since its detection), ``behind`` (longer than ``delivery.behind_after``) and ``delivering`` (this daemon
        delivers it: with daemons sharing a database, one at a time does); must not block."""
        ...

    def metrics(self) -> tuple[bytes, str]:
        """The Prometheus exposition body and its content type; must not block."""
        ...

    def cluster(self) -> dict[str, Any] | None:
        """Replicas sharing the jobs: this replica, the live members, the jobs it owns (``None`` on its own)."""
        ...

    def feed(self) -> EventFeed | None:
        """The live events for ``/v1/events/stream`` and the recent failures (``None`` until the daemon runs)."""
        ...


def _job_dict(job: StoredJob, *, snapshot: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "job_id": job.job_id,
        "labels": dict(job.labels),
        "rollout": job.rollout,
        "added_at": rfc3339(job.added_at),
        "phase": job.phase,
        "outcome": job.outcome,
        "finished_at": rfc3339(job.finished_at),
    }
    if snapshot:
        out["snapshot"] = orjson.loads(job_to_json(job.snapshot)) if job.snapshot is not None else None
    return out


def _with_line(summary: dict[str, Any]) -> dict[str, Any]:
    """A rollout summary with ``line``: its progress as one readable line, as ``status``, chat and the page show it."""
    return summary | {"line": describe(summary)}


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every exception into a JSON error; only unexpected ones are logged, and never shown."""
    try:
        return await handler(request)
    except Reject as exc:
        return error_reply(exc.status, exc.message, exc.headers)
    except StateError as exc:  # the database is down or failed: say so, try again later (no secret in it)
        logger.warning("api: %s %s: %s", request.method, shown(request.rel_url.raw_path, 200), exc)
        return error_reply(503, "state database unavailable; try again", {"Retry-After": "5"})
    except web.HTTPException as exc:  # aiohttp's own: 404, 405, 413 from request.read(), ...
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS}
        return error_reply(exc.status, exc.reason, headers)
    except Exception:
        # The raw path is percent-encoded (no control characters); the query is left out.
        logger.exception("api: %s %s failed", request.method, shown(request.rel_url.raw_path, 200))
        return error_reply(500, "internal error")


def _bearer_guard(token: Secret) -> Middleware:
    expected = token.reveal().encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The page's own files hold no data: they load for anyone, then ask for the token.
        if request.path not in _OPEN_PATHS and not request.path.startswith(page.UI_PREFIX + "/"):
            header = request.headers.get(hdrs.AUTHORIZATION)
            if header is None:
                raise Reject(401, "missing bearer token", {hdrs.WWW_AUTHENTICATE: _REALM})
            scheme, _, given = header.strip().partition(" ")
            # surrogatepass: a header that is not valid UTF-8 compares unequal instead of raising.
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode("utf-8", "surrogatepass"), expected
            ):
                raise Reject(401, "invalid bearer token", {hdrs.WWW_AUTHENTICATE: _REALM + ', error="invalid_token"'})
        return await handler(request)

    return guard


class _API:
    __slots__ = ("_control", "_max_body", "_max_jobs")

    def __init__(self, control: Control, max_body: int, max_jobs: int) -> None:
        self._control = control
        self._max_body = max_body
        self._max_jobs = max_jobs

    # ----------------------------------------------------------------------------------- /v1/jobs

    async def add_jobs(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        job_ids, labels, rollout = self._parse_add(body)
        result = await self._control.add_jobs(job_ids, labels, rollout)
        logger.info(
            "api: %d jobs added, %d already known (rollout %s)", len(result.accepted), len(result.known), rollout
        )
        return json_reply({"accepted": list(result.accepted), "known": list(result.known)}, 202)

    async def list_jobs(self, request: web.Request) -> web.Response:
        query = request.query
        for key in query:
            if key not in _QUERY_KEYS:
                raise Reject(400, f"unknown query parameter {shown(key)}; use phase, rollout, label")
        phase = single(request, "phase")
        if phase is not None and not _PHASE_RE.fullmatch(phase):
            raise Reject(400, f"invalid phase {shown(phase)}: use 1-64 letters, digits, '_', '.' or '-'")
        rollout = single(request, "rollout")
        if rollout is not None:
            check_id(rollout, "rollout name")
        labels: dict[str, str] = {}
        for item in query.getall("label", []):
            key, sep, value = item.partition("=")
            if not sep:
                raise Reject(400, f"invalid label filter {shown(item)}: use label=key=value")
            check_label(key, value)
            if key in labels:
                raise Reject(400, f"label {key} given more than once")
            labels[key] = value
        jobs = await self._control.list_jobs(phase=phase, rollout=rollout, labels=labels)
        return json_reply({"jobs": [_job_dict(job) for job in jobs]})

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = check_id(request.match_info["job_id"], "job id")
        found = await self._control.get_job(job_id)
        if found is None:
            raise Reject(404, f"job {job_id} is not tracked")
        job, history = found
        return json_reply({"job": _job_dict(job, snapshot=True), "history": [event.to_dict() for event in history]})

    async def remove_job(self, request: web.Request) -> web.Response:
        job_id = check_id(request.match_info["job_id"], "job id")
        if not await self._control.remove_job(job_id):
            raise Reject(404, f"job {job_id} is not tracked")
        logger.info("api: job %s removed", job_id)
        return json_reply({"removed": True})

    # ------------------------------------------------------------------------------ /v1/nodepools

    async def add_nodepool(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        if not isinstance(body, dict):
            raise Reject(400, f"body must be a JSON object, not {json_type(body)}")
        for key in body:
            if key not in _POOL_KEYS:
                raise Reject(400, f"unknown key {shown(key)} in body; use {', '.join(sorted(_POOL_KEYS))}")
        ids = []
        for key, what in (("cluster_id", "cluster id"), ("nodepool_id", "node pool id")):
            value = body.get(key)
            if not isinstance(value, str):
                raise Reject(400, f"{key} is required (a string)")
            ids.append(check_id(value, what, f"{key}: "))
        target = body.get("target")
        if target is not None and (
            isinstance(target, bool) or not isinstance(target, int) or not 0 <= target <= _MAX_TARGET
        ):
            raise Reject(400, f"target must be a whole number from 0 to {_MAX_TARGET}")
        labels, rollout = self._parse_labels(body.get("labels")), self._parse_rollout(body.get("rollout"))
        followed = await self._control.add_nodepool(ids[0], ids[1], target, labels, rollout)
        logger.info("api: node pool %s %s", ids[1], "followed" if followed else "already followed")
        return json_reply({"followed": followed, "rollout": rollout or ids[1]}, 202 if followed else 200)

    async def list_nodepools(self, request: web.Request) -> web.Response:
        return json_reply({"nodepools": await self._control.list_nodepools()})

    async def list_rollouts(self, request: web.Request) -> web.Response:
        return json_reply({"rollouts": [_with_line(s) for s in self._control.rollouts()]})

    async def get_rollout(self, request: web.Request) -> web.Response:
        name = check_id(request.match_info["name"], "rollout name")
        summary = self._control.rollout(name)
        if summary is None:
            raise Reject(404, f"rollout {name} is not known")
        return json_reply({"rollout": _with_line(summary)})

    # ------------------------------------------------------------------------------------- probes

    async def healthz(self, request: web.Request) -> web.Response:
        return json_reply({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        checks = {str(name): bool(ok) for name, ok in self._control.readiness().items()}
        ready = all(checks.values())
        # A sink behind is shown, not a reason to be unready: the API and polling work; the receiver is slow.
        sinks = self._control.delivery_lag()
        behind = sorted(name for name, lag in sinks.items() if lag.get("behind"))
        body: dict[str, Any] = {"ready": ready, "checks": checks, "sinks": sinks, "behind": behind}
        cluster = self._control.cluster()
        if cluster is not None:
            body["cluster"] = cluster
        return json_reply(body, 200 if ready else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = self._control.metrics()
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})

    # ------------------------------------------------------------------------------------ parsing

    async def _read_json(self, request: web.Request) -> object:
        if request.content_type != "application/json":
            raise Reject(415, "Content-Type must be application/json")
        too_large = Reject(413, f"request body is larger than {self._max_body} bytes")
        if request.content_length is not None and request.content_length > self._max_body:
            raise too_large
        try:
            raw = await request.read()  # enforces client_max_size for chunked bodies too
        except web.HTTPRequestEntityTooLarge:
            raise too_large from None
        try:
            return orjson.loads(raw)
        except (orjson.JSONDecodeError, RecursionError) as exc:
            raise Reject(400, f"body is not valid JSON: {one_line(str(exc))}") from None

    def _parse_add(self, body: object) -> tuple[list[str], dict[str, str], str | None]:
        if not isinstance(body, dict):
            raise Reject(400, f"body must be a JSON object, not {json_type(body)}")
        for key in body:
            if key not in _BODY_KEYS:
                raise Reject(400, f"unknown key {shown(key)} in body; use job_ids, labels, rollout")
        if "job_ids" not in body:
            raise Reject(400, "job_ids is required")
        raw_ids = body["job_ids"]
        if not isinstance(raw_ids, list):
            raise Reject(400, f"job_ids must be an array of strings, not {json_type(raw_ids)}")
        if not raw_ids:
            raise Reject(400, "job_ids must not be empty")
        if len(raw_ids) > self._max_jobs:
            raise Reject(400, f"job_ids has {len(raw_ids)} ids; at most {self._max_jobs} per request")
        for i, job_id in enumerate(raw_ids):
            if not isinstance(job_id, str):
                raise Reject(400, f"job_ids[{i}] must be a string, not {json_type(job_id)}")
            check_id(job_id, "job id", f"job_ids[{i}]: ")
        job_ids = list(dict.fromkeys(raw_ids))  # drop repeats, keep order
        return job_ids, self._parse_labels(body.get("labels")), self._parse_rollout(body.get("rollout"))

    @staticmethod
    def _parse_rollout(raw: object) -> str | None:
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise Reject(400, f"rollout must be a string, not {json_type(raw)}")
        return check_id(raw, "rollout name", "rollout: ")

    @staticmethod
    def _parse_labels(raw: object) -> dict[str, str]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise Reject(400, f"labels must be an object of string to string, not {json_type(raw)}")
        if len(raw) > _MAX_LABELS:
            raise Reject(400, f"labels has {len(raw)} entries; at most {_MAX_LABELS}")
        for key, value in raw.items():
            if not isinstance(value, str):
                raise Reject(400, f"label {shown(key)}: value must be a string, not {json_type(value)}")
            check_label(key, value)
        return dict(raw)


def make_app(
    control: Control,
    *,
    token: Secret | None,
    max_body: int = 1 << 20,
    max_jobs_per_request: int = 10_000,
) -> web.Application:
    """The control API over ``control``; with ``token``, every route but the probes needs it as a bearer token.

    Raises :class:`~monitor.core.errors.ConfigError` for an empty token or a limit below 1.
    """
    if token is not None and not token:
        raise ConfigError("api token is empty; give a token or none")
    if max_body < 1:
        raise ConfigError(f"api max_body must be at least 1, not {max_body}")
    if max_jobs_per_request < 1:
        raise ConfigError(f"api max_jobs_per_request must be at least 1, not {max_jobs_per_request}")
    middlewares: list[Middleware] = [_errors]
    if token is not None:
        middlewares.append(_bearer_guard(token))
    app = web.Application(client_max_size=max_body, middlewares=middlewares)
    api = _API(control, max_body, max_jobs_per_request)
    app.router.add_post("/v1/jobs", api.add_jobs)
    app.router.add_get("/v1/jobs", api.list_jobs)
    app.router.add_get("/v1/jobs/{job_id}", api.get_job)
    app.router.add_delete("/v1/jobs/{job_id}", api.remove_job)
    app.router.add_post("/v1/nodepools", api.add_nodepool)
    app.router.add_get("/v1/nodepools", api.list_nodepools)
    app.router.add_get("/v1/rollouts", api.list_rollouts)
    app.router.add_get("/v1/rollouts/{name}", api.get_rollout)
    api_deliveries.add_routes(app, control, api._read_json, max_jobs_per_request)
    api_live.add_routes(app, control)
    page.add_routes(app, token_required=token is not None)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    return app


async def serve(
    app: web.Application, host: str, port: int, *, shutdown_timeout: float = 5.0
) -> tuple[web.AppRunner, str]:
    """Start ``app`` on ``host:port`` (``0``: any free port); return its runner and ``http://host:port``.

    Stop it with ``await runner.cleanup()``, which waits up to ``shutdown_timeout`` for requests in flight.
    With port 0, give an IP address: a name like ``localhost`` may bind one port per address family.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]
    except BaseException:
        await runner.cleanup()
        raise
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{bound}"
