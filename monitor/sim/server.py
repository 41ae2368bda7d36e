"""The simulated region behind one aiohttp application: :class:`Simulator`.

Routes: the job API (``GET /api/v3/projects/{project_id}/jobs/{job_id}``), the node and node pool API
(:mod:`~monitor.sim.node_api`), IAM (:mod:`~monitor.sim.iam`: ``POST /v3/auth/tokens``,
``GET /v3/projects``), and the ``/_sim/`` control endpoints (add jobs, truth, statistics, faults).
Requests to the job API are authenticated by token or AK/SK signature, throttled, and put through the
fault draw; every answer carries an ``X-Request-Id`` and, outside ``/_sim/``, is counted in the statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import hmac
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from monitor.cce.signing import DATE_FORMAT, parse_authorization, signature
from monitor.sim.config import FaultSettings, SimulatorConfig
from monitor.sim.faults import Draw, JobAnswers, TokenBucket, bucket_for, draw_faults, not_found_body
from monitor.sim.iam import add_iam_routes, security_token_problem
from monitor.sim.node_api import add_node_routes
from monitor.sim.nodes import Fleet, NodeTransition
from monitor.sim.shapes import job_context, new_uid, template
from monitor.sim.stats import Counters, SimulatorStats
from monitor.sim.timeline import NS, Job, Transition, plan_job, render, wall_time

__all__ = ["Simulator"]

# The package's logger, as before the split into modules: log lines keep the name ``monitor.sim``.
logger = logging.getLogger("monitor.sim")

_MAX_SDK_DATE_SKEW = timedelta(minutes=15)
_MAX_HEADER = 64 * 1024  # request headers up to 64 KiB: an X-Auth-Token can be 16 KB
_HTML_503 = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)

Clock = Callable[[], float]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What a route's resolver gives the shared path: an early answer (404, 400), or the action that makes the answer
# (status, payload), run only once the CCE 500 fault has been drawn and has not struck.
Resolved = web.Response | Callable[[], tuple[int, Any]]
Resolver = Callable[[web.Request, int], Awaitable[Resolved]]


class _Dropped(web.Response):
    """Returned for a dropped connection; never sent, the transport is already closed."""


# The id of the request being served (set by the middleware; handlers run in its context).
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("cce_simulator_request_id", default="")


class Simulator:
    """The simulated region: jobs, tokens, throttle and faults behind one aiohttp application."""

    def __init__(
        self, config: SimulatorConfig | None = None, *, clock: Clock | None = None, epoch_ns: int | None = None
    ) -> None:
        """``clock`` drives everything (default :func:`time.monotonic`); its reading now is wall time
        ``epoch_ns`` (nanoseconds since the Unix epoch, default: the real time now)."""
        self.config = config or SimulatorConfig()
        self._clock: Clock = clock or time.monotonic
        self._epoch_clock = self._clock()
        self._epoch_ns = time.time_ns() if epoch_ns is None else epoch_ns
        seed = self.config.seed
        self._rng_jobs = random.Random(f"{seed}:jobs")
        self._rng_faults = random.Random(f"{seed}:faults")
        self._rng_tokens = random.Random(f"{seed}:tokens")
        self._rng_ids = random.Random(f"{seed}:request-ids")
        self._jobs: dict[str, Job] = {}
        self.answers = JobAnswers()
        self._cluster_names: dict[str, str] = {}
        self._fleet = Fleet(
            self._rng_jobs,
            self._cluster_names,
            job_duration=self.config.job_duration,
            time_scale=self.config.time_scale,
        )
        self._token_ttl = self.config.token_ttl
        self._tokens: dict[str, float] = {self.config.token: self._epoch_clock + self._token_ttl}
        self.project_lookups = 0  # GET /v3/projects requests, answered or refused
        self._faults = self.config.faults()
        self._bucket: TokenBucket | None = bucket_for(self._faults, self._clock)
        self._counters = Counters()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.endpoint: str | None = None
        """``http://host:port`` once started."""
        self.app = self._build_app()

    def __repr__(self) -> str:
        return f"Simulator(jobs={len(self._jobs)}, project_id={self.config.project_id!r})"

    # --- time ---------------------------------------------------------------------------------------------

    def now_ns(self) -> int:
        """The simulator's current wall time in nanoseconds since the epoch (follows the clock)."""
        return self._epoch_ns + round((self._clock() - self._epoch_clock) * NS)

    # --- jobs ---------------------------------------------------------------------------------------------

    def add_job(
        self,
        job_type: str = "CreateNode",
        *,
        fail: bool | str = False,
        duration: float | None = None,
        not_found_for: float = 0.0,
        start_delay: float = 0.0,
        cluster_uid: str | None = None,
        spread: float = 0.0,
    ) -> str:
        """Plan a job starting now and return its id (``spread``: see :func:`~monitor.sim.timeline.plan_job`).

        ``duration`` (seconds, exact) defaults to the config's jittered per-type duration. The job stays
        Initializing for ``start_delay`` more seconds, and answers 404 for its first ``not_found_for``
        seconds. Unknown job types are served too, without sub-jobs. ``fail`` as text: fail with that reason.
        """
        if min(not_found_for, start_delay, 0.0 if duration is None else duration) < 0:
            raise ValueError("duration, not_found_for and start_delay must be >= 0")
        rng = self._rng_jobs
        factor, root_shape, sub_shapes, optional_last = template(job_type)
        if optional_last and rng.random() < 0.5:
            sub_shapes = sub_shapes[:-1]
        if duration is None:
            duration = self.config.job_duration * factor * rng.uniform(0.8, 1.2) * self.config.time_scale
        context = job_context(rng, cluster_uid or new_uid(rng), self._cluster_names)
        uids = [new_uid(rng) for _ in range(1 + len(sub_shapes))]
        self._jobs[uids[0]] = plan_job(
            rng,
            uids,
            (root_shape, *sub_shapes),
            context,
            created=self.now_ns(),
            duration=duration,
            start_delay=start_delay,
            fail=fail,
            not_found_for=not_found_for,
            spread=spread,
        )
        logger.debug("simulator: planned job %s (%s, %.1fs, fail=%s)", uids[0], job_type, duration, fail)
        return uids[0]

    def start_rollout(
        self,
        n: int,
        *,
        fail_ratio: float = 0.1,
        job_type: str = "CreateNode",
        duration: float | None = None,
        not_found_for: float = 0.0,
        start_delay: float = 0.0,
        spread: float = 0.0,
    ) -> list[str]:
        """Plan ``n`` jobs in one cluster, exactly ``round(n * fail_ratio)`` of them (chosen by seed) failing
        (``spread``: each step's own lognormal variation, see :func:`~monitor.sim.timeline.plan_job`)."""
        if n < 0 or not 0.0 <= fail_ratio <= 1.0:
            raise ValueError("n must be >= 0 and fail_ratio within [0, 1]")
        failing = set(self._rng_jobs.sample(range(n), round(n * fail_ratio)))
        cluster = new_uid(self._rng_jobs)
        return [
            self.add_job(
                job_type,
                fail=i in failing,
                duration=duration,
                not_found_for=not_found_for,
                start_delay=start_delay,
                cluster_uid=cluster,
                spread=spread,
            )
            for i in range(n)
        ]

    def truth(self, job_id: str) -> list[Transition]:
        """Every phase change of the job and its sub-jobs, in time order; ``KeyError`` for an unknown job.

        For a ScaleupCluster of :meth:`create_nodes`, its CreateNode jobs' transitions are included."""
        if job_id in self._jobs:
            return list(self._jobs[job_id].truth)
        if (truth := self._fleet.job_truth(job_id)) is None:
            raise KeyError(job_id)
        return truth

    # --- nodes and node pools (planned by monitor.sim.nodes) ----------------------------------------------

    def add_cluster(self, cluster_id: str | None = None) -> str:
        """Register a cluster (a new id by default) for the node API; the Python API also does it implicitly."""
        return self._fleet.add_cluster(cluster_id)

    def create_nodes(
        self,
        cluster_id: str,
        count: int,
        *,
        fail: float = 0,
        duration: float | None = None,
        nodepool_id: str | None = None,
        omit_nested: bool = False,
        abnormal: int = 0,
    ) -> str:
        """Create ``count`` nodes as ``POST .../nodes`` does and return the ScaleupCluster job id.

        ``fail``: how many nodes fail (an ``int``), or the ratio of them (a ``float`` below 1, rounded);
        ``abnormal``: how many others go ``Abnormal`` after their job's Success. ``duration`` is each CreateNode
        job's (default: the config's jittered job duration). With ``omit_nested`` the ScaleupCluster lists its
        CreateNode sub-jobs without their own sub-jobs.
        """
        return self._fleet.create_nodes(
            cluster_id,
            count,
            self.now_ns(),
            fail=fail,
            duration=duration,
            nodepool_id=nodepool_id,
            omit_nested=omit_nested,
            abnormal=abnormal,
        )

    def add_nodepool(
        self,
        cluster_id: str,
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
        """Add a node pool scaled to ``nodes`` and return its id. ``capacity``: how many more nodes the AZ can
        give (``None``: no limit); ``fail``/``abnormal``: how many of the nodes it creates fail / go Abnormal;
        ``wait``: seconds each scale shows ``Synchronized`` first; ``fail_delete``: how many of its deletions
        fail (the pool then ends ``Error``)."""
        return self._fleet.add_nodepool(
            cluster_id,
            self.now_ns(),
            name=name,
            nodes=nodes,
            capacity=capacity,
            fail=fail,
            abnormal=abnormal,
            node_duration=node_duration,
            wait=wait,
            fail_delete=fail_delete,
        )

    def scale_nodepool(self, cluster_id: str, pool_id: str, target: int) -> None:
        """Scale a pool as ``PUT .../nodepools/{id}`` with ``spec.initialNodeCount = target`` does."""
        self._fleet.scale_nodepool(cluster_id, pool_id, target, self.now_ns())

    def remove_nodes(self, cluster_id: str, node_ids: list[str], *, fail: int = 0) -> str:
        """Delete nodes as ``PUT .../nodes/operation/remove`` does: one job of a DeleteNode per node; ``fail``
        of them fail. Returns the job id; ``KeyError`` for an unknown cluster or a node not listed."""
        return self._fleet.remove_nodes(cluster_id, node_ids, self.now_ns(), fail=fail)

    def node_truth(self, cluster_id: str) -> list[NodeTransition]:
        """Every node phase change in the cluster with its exact instant; ``KeyError`` for an unknown cluster."""
        return self._fleet.node_truth(cluster_id)

    @property
    def job_ids(self) -> list[str]:
        """The ids of all planned jobs, in creation order."""
        return list(self._jobs)

    # --- faults, tokens, statistics ----------------------------------------------------------------------

    @property
    def faults(self) -> FaultSettings:
        """The fault settings in force."""
        return self._faults

    def set_faults(self, **changes: Any) -> FaultSettings:
        """Change fault settings (fields of :class:`FaultSettings`); a new rate or burst refills the bucket."""
        self._faults = dataclasses.replace(self._faults, **changes)
        if {"rate_limit", "rate_burst"} & changes.keys():
            self._bucket = bucket_for(self._faults, self._clock)
        logger.info("simulator: faults changed: %s", sorted(changes))
        return self._faults

    def expire_tokens(self) -> None:
        """Expire every token issued so far (the static one too), as a soak test's token expiry."""
        now = self._clock()
        self._tokens = {token: min(expiry, now) for token, expiry in self._tokens.items()}

    def lock_job(self, job_id: str, seconds: float) -> None:
        """For ``seconds``, reading ``job_id`` answers 429 ``CCE.01429002`` (resource locked by other requests)."""
        self.answers.lock(job_id, self.now_ns() + seconds * NS)

    def forbid_job(self, job_id: str, seconds: float = math.inf) -> None:
        """For ``seconds``, reading ``job_id`` answers 403 ``CCE.01403001`` (other jobs are read as usual)."""
        self.answers.forbid(job_id, self.now_ns() + seconds * NS)

    def set_token_ttl(self, seconds: float) -> None:
        """Lifetime of tokens issued from now on."""
        if seconds <= 0:
            raise ValueError("token ttl must be positive")
        self._token_ttl = seconds

    @property
    def stats(self) -> SimulatorStats:
        """A snapshot of the request statistics."""
        return self._counters.snapshot()

    # --- HTTP ---------------------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        @web.middleware
        async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
            request_id = f"{self._rng_ids.getrandbits(128):032x}"
            _request_id.set(request_id)
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # no route, wrong method: answer as the API gateway does
                response = self._error(
                    request,
                    exc.status,
                    {"error_code": "APIGW.0101", "error_msg": "The API does not exist or has not been published"},
                )
            response.headers["X-Request-Id"] = request_id
            if not request.path.startswith("/_sim/"):
                counters = self._counters
                counters.requests += 1
                if isinstance(response, _Dropped):
                    counters.dropped += 1
                else:
                    counters.by_status[response.status] = counters.by_status.get(response.status, 0) + 1
            return response

        app = web.Application(middlewares=[request_ids])
        app.router.add_get("/api/v3/projects/{project_id}/jobs/{job_id}", self._handle_job)
        app.router.add_get("/autopilot/v3/projects/{project_id}/jobs/{job_id}", self._handle_job)  # CCE Autopilot
        add_node_routes(app, self)
        add_iam_routes(app, self)
        app.router.add_post("/_sim/jobs", self._handle_sim_jobs)
        app.router.add_get("/_sim/truth", self._handle_sim_truth)
        app.router.add_get("/_sim/stats", self._handle_sim_stats)
        app.router.add_get("/_sim/arrivals", self._handle_sim_arrivals)
        app.router.add_get("/_sim/faults", self._handle_sim_faults)
        app.router.add_post("/_sim/faults", self._handle_sim_faults)
        return app

    @staticmethod
    def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers)

    def _error(self, request: web.Request, status: int, body: dict[str, Any], **headers: str) -> web.Response:
        if "error_code" in body:
            body = {**body, "request_id": _request_id.get()}
        return self._json(status, body, headers)

    async def _transport_faults(self, request: web.Request, draw: Draw) -> web.Response | None:
        """Slow, drop and HTML 503: what the load balancer in front of everything does."""
        if draw.slow:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._faults.slow_seconds)
        if draw.drop:
            if request.transport is not None:
                request.transport.close()
            return _Dropped(status=499)
        if draw.html_503:
            return web.Response(status=503, text=_HTML_503, content_type="text/html")
        return None

    async def _serve(self, request: web.Request, route: str, resolve: Resolver) -> web.Response:
        """The one path of every CCE API route, in the documented order of checks; ``route`` names it in the
        statistics. Every request draws the same number of fault numbers."""
        counters = self._counters
        counters.by_route[route] = counters.by_route.get(route, 0) + 1
        if route == "job":
            counters.job_requests += 1
        arrived = self._clock() - self._epoch_clock
        window = int(arrived)
        counters.per_second[window] = counters.per_second.get(window, 0) + 1
        counters.arrivals.append(arrived)
        draw = draw_faults(self._rng_faults, self._faults)
        if (early := await self._transport_faults(request, draw)) is not None:
            return early
        if self._bucket is not None and not self._bucket.take(self._clock()):
            counters.throttled += 1
            return self._throttled(request)
        if (denied := await self._authenticate(request)) is not None:
            return self._error(request, 401, denied)
        resolved = await resolve(request, self.now_ns())
        if isinstance(resolved, web.Response):
            return resolved
        if draw.error_500:  # CCE failed: nothing was done
            return self._json(500, {"errorCode": "CCE.01500001", "errorMessage": "Internal server error"})
        status, payload = resolved()
        body = orjson.dumps(payload)
        if draw.malformed:
            body = body[: max(1, int(len(body) * draw.cut))]
        return web.Response(status=status, body=body, content_type="application/json")

    async def _handle_job(self, request: web.Request) -> web.Response:
        return await self._serve(request, "job", self._resolve_job)

    async def _resolve_job(self, request: web.Request, now: int) -> Resolved:
        job_id = request.match_info["job_id"]
        live = self.config.live_timestamps
        if (answer := self.answers.get(job_id, now)) is not None:
            return self._json(*answer)
        if request.match_info["project_id"] == self.config.project_id:
            job = self._jobs.get(job_id)
            if job is not None and now >= job.visible_ns:
                document = render(job, now, live_timestamps=live)
                return lambda: (200, document)
            if job is None and (planned := self._fleet.render_job(job_id, now, live_timestamps=live)) is not None:
                return lambda: (200, planned)
        return self._not_found(f"job {job_id} not found")

    def _throttled(self, request: web.Request) -> web.Response:
        f = self._faults
        headers = {"Retry-After": "1"} if f.retry_after else {}
        if f.throttle_style == "cce":
            message = "The request is throttled, please try again later"
            return self._json(429, {"errorCode": "CCE.02429001", "errorMessage": message}, headers)
        if f.throttle_style == "apig-minute":  # a per-minute policy, as the gateway also names it (APIG.0308)
            limit, window, code = f"{(f.rate_limit or 0) * 60:g}", "1 minute", "APIG.0308"
        else:
            limit, window, code = f"{f.rate_limit:g}", "1 second", "APIGW.0308"
        message = f"The throttling threshold has been reached: policy user over ratelimit,limit:{limit},time:{window}"
        return self._error(request, 429, {"error_code": code, "error_msg": message}, **headers)

    @staticmethod
    def _not_found(message: str) -> web.Response:
        """CCE's 404 (the Kubernetes-style Status with CCE's error code), for jobs, clusters, nodes and pools."""
        return Simulator._json(404, not_found_body(message))

    async def _authenticate(self, request: web.Request) -> dict[str, str] | None:
        """``None`` if the request carries a valid token or AK/SK signature, else the 401 body."""
        bad = "Incorrect IAM authentication information: "
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            parsed = parse_authorization(authorization)
            if parsed is None or self.config.ak is None or self.config.sk is None:
                return {"error_code": "APIGW.0301", "error_msg": bad + "unsupported authorization"}
            if not hmac.compare_digest(parsed.access, self.config.ak):
                return {"error_code": "APIGW.0301", "error_msg": bad + "ak is not exist"}
            sdk_date = request.headers.get("X-Sdk-Date", "")
            try:
                signed_at = datetime.strptime(sdk_date, DATE_FORMAT).replace(tzinfo=UTC)
            except ValueError:
                return {"error_code": "APIGW.0301", "error_msg": bad + "x-sdk-date is missing or invalid"}
            if abs(signed_at - wall_time(self.now_ns())) > _MAX_SDK_DATE_SKEW:
                return {"error_code": "APIGW.0301", "error_msg": bad + "the request time is out of range"}
            if not {"host", "x-sdk-date"} <= set(parsed.signed_headers):
                return {"error_code": "APIGW.0301", "error_msg": bad + "host and x-sdk-date must be signed"}
            if (problem := security_token_problem(self.config, request, parsed.signed_headers)) is not None:
                return {"error_code": "APIGW.0301", "error_msg": bad + problem}
            expected = signature(
                self.config.sk,
                method=request.method,
                path=request.rel_url.raw_path,
                query=list(request.rel_url.query.items()),
                headers={name: request.headers.get(name, "") for name in parsed.signed_headers},
                signed=parsed.signed_headers,
                body=await request.read(),
                sdk_date=sdk_date,
            )
            if not hmac.compare_digest(expected, parsed.signature):
                return {"error_code": "APIGW.0301", "error_msg": bad + "verify aksk signature fail"}
            return None
        token = request.headers.get("X-Auth-Token")
        expiry = None if token is None else self._tokens.get(token)
        if expiry is None:
            return {"error_code": "APIGW.0301", "error_msg": bad + "verify token fail"}
        if self._clock() >= expiry:
            return {"error_code": "APIGW.0307", "error_msg": "The token must be updated."}
        return None

    def issued_tokens(self) -> list[str]:
        """Every token this simulator accepts (the static one and those IAM issued): for leak tests."""
        return list(self._tokens)

    async def _handle_sim_jobs(self, request: web.Request) -> web.Response:
        try:
            spec = orjson.loads(await request.read())
            count = int(spec.get("count", 1))
            duration = spec.get("duration")
            ids = self.start_rollout(
                count,
                fail_ratio=float(spec.get("fail_ratio", 0.0)),
                job_type=str(spec.get("type", "CreateNode")),
                duration=None if duration is None else float(duration),
                not_found_for=float(spec.get("not_found_for", 0.0)),
                start_delay=float(spec.get("start_delay", 0.0)),
                spread=float(spec.get("spread", 0.0)),
            )
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
            return self._json(400, {"error": str(exc)})
        return self._json(200, {"job_ids": ids})

    async def _handle_sim_truth(self, request: web.Request) -> web.Response:
        job_id = request.query.get("job_id", "")
        if job_id not in self._jobs:
            return self._json(404, {"error": f"unknown job {job_id!r}"})
        return self._json(200, {"job_id": job_id, "transitions": self.truth(job_id)})

    async def _handle_sim_stats(self, request: web.Request) -> web.Response:
        return self._json(200, self.stats.to_dict())

    async def _handle_sim_arrivals(self, request: web.Request) -> web.Response:
        """``?after=N``: arrival times of CCE API requests from the N-th on (at most 100,000 per answer)."""
        try:
            after = max(0, int(request.query.get("after", "0")))
        except ValueError:
            return self._json(400, {"error": "after must be an integer"})
        arrivals = self._counters.arrivals
        return self._json(200, {"after": after, "arrivals": arrivals[after : after + 100_000].tolist()})

    async def _handle_sim_faults(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                changes = orjson.loads(await request.read())
                if not isinstance(changes, dict):
                    raise TypeError("expected a JSON object")
                if changes.pop("expire_tokens", False):
                    self.expire_tokens()
                if (ttl := changes.pop("token_ttl", None)) is not None:
                    self.set_token_ttl(float(ttl))
                if changes:
                    self.set_faults(**changes)
            except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
                return self._json(400, {"error": str(exc)})
        return self._json(200, dataclasses.asdict(self._faults))

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port) and return the endpoint, ``http://host:port``."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        self._closing.clear()
        # Request headers up to 64 KiB (aiohttp's default is 8190 bytes): an X-Auth-Token can be 16 KB.
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=1.0,
            max_line_size=_MAX_HEADER,
            max_field_size=_MAX_HEADER,
        )
        await runner.setup()
        self._runner = runner
        await web.TCPSite(runner, host, port).start()
        bound_port = runner.addresses[0][1]
        endpoint = f"http://{host}:{bound_port}"
        self.endpoint = endpoint
        logger.info("simulator: serving CCE jobs API on %s", endpoint)
        return endpoint

    async def close(self) -> None:
        """Stop serving; slow answers in flight are released at once. Safe to call twice."""
        self._closing.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
