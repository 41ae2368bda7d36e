"""A local stand-in for the CCE "Reading Job Progress" API, faithful enough to test the monitor against.

``GET /api/v3/projects/{project_id}/jobs/{job_id}`` answers with the documented ``Job`` object, sub-jobs and
all, while each job walks a pre-planned timeline (Initializing → Running → Success | Failed). Around it sit
the things a real region does to a poller: IAM tokens that expire, AK/SK signatures, an API-gateway
throttle, and faults (500, an HTML 503 from the load balancer, truncated JSON, slow answers, dropped
connections).

Design:

* **Planned, not simulated.** ``add_job`` draws the whole timeline of a job and its sub-jobs up front and
  records it as ground truth (:meth:`Simulator.truth`). A request only looks up which steps are at or before
  "now", so serving is cheap and any number of pollers see one consistent history.
* **One injectable clock.** ``clock()`` (default :func:`time.monotonic`) drives job timelines, token
  expiry, the rate limiter and the per-second statistics; a wall-clock anchor taken at construction maps
  clock readings to real UTC timestamps. Tests move a fake clock instead of sleeping; only ``slow_seconds``
  sleeps for real.
* **Timestamps as Go prints them.** ``2020-02-02 08:12:40.672772389 +0000 UTC`` with trailing zeros
  trimmed, so 0-9 fraction digits. Each transition is snapped *up* to a randomly chosen precision and the
  phase becomes visible exactly at the snapped instant, so the served timestamp, the truth and the moment a
  poller can first see the change agree to the nanosecond.
* **Deterministic under the seed.** Separate ``random.Random`` streams (seeded from ``config.seed``) for
  jobs, faults, tokens and request ids: the same calls give the same job ids and timelines, and the same
  request order gives the same fault decisions, whatever else happens in between. Every request to the job
  API draws the same number of fault numbers, whatever the probabilities.
* **Order of checks on the job API**, outermost first, as the layers of a real region sit:
  slow (sleep) → drop (load balancer) → HTML 503 (load balancer) → 429 (API gateway throttle) →
  401 (API gateway auth) → 404 (CCE: project, unknown or not-yet-visible job) → 500 (CCE) →
  truncated 200 (malformed) → 200.
* **Control endpoints** under ``/_sim/`` (no auth, not counted in statistics) let a benchmark in another
  process add jobs, read truth and statistics, and change faults at run time.

Secrets (token, SK, IAM password) never appear in a repr or a log line.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import contextvars
import dataclasses
import hmac
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TextIO

import orjson
from aiohttp import web

from monitor.cce.signing import DATE_FORMAT, parse_authorization, signature

__all__ = [
    "JOB_TYPES",
    "FaultSettings",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "Transition",
    "format_go_timestamp",
    "run_forever",
]

logger = logging.getLogger(__name__)

INITIALIZING, RUNNING, SUCCESS, FAILED = "Initializing", "Running", "Success", "Failed"
_NS = 1_000_000_000
# Weights of 0..9 fraction digits before trailing zeros are trimmed: mostly nanoseconds, every length seen.
_DIGIT_WEIGHTS = (2, 3, 3, 5, 4, 5, 10, 8, 10, 50)
_MAX_SDK_DATE_SKEW = timedelta(minutes=15)
_HTML_503 = (
    "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)

Clock = Callable[[], float]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_MAX_HEADER = 64 * 1024


def _mask(value: str | None) -> str:
    return "None" if value is None else "'***'"


@dataclass(frozen=True, slots=True, repr=False)
class SimulatorConfig:
    """Everything fixed for the life of a simulator; the fault fields are only the starting values.

    Probabilities are per request to the job API. ``rate_limit`` is requests per second (``None``: no
    limit) with a bucket of ``rate_burst`` (default: the rate, at least 1). Default job durations are
    ``job_duration`` times a per-type factor, jittered ±20 %, times ``time_scale``. ``token_length`` is the
    length of the tokens IAM issues (real ones are up to 16 KB; the server accepts request headers that large).
    """

    seed: int = 0
    project_id: str = "0b9c3a5e8e8f4e4a9d5c7a3b2f1e0d9c"
    project_name: str = "eu-de"
    token: str = "MIIsimulator-static-token"  # noqa: S105 - a fixture value for a loopback test server
    token_ttl: float = 86_400.0
    token_length: int = 123
    ak: str | None = None
    sk: str | None = None
    iam_user: str = "monitor"
    iam_password: str = "sim-password"  # noqa: S105 - a fixture value for a loopback test server
    iam_domain: str = "sim-domain"
    iam_delay: float = 0.0
    rate_limit: float | None = None
    rate_burst: int | None = None
    retry_after: bool = True
    throttle_style: Literal["apigw", "cce"] = "apigw"
    p_500: float = 0.0
    p_503_html: float = 0.0
    p_malformed: float = 0.0
    p_slow: float = 0.0
    slow_seconds: float = 2.0
    p_drop: float = 0.0
    faults_on_iam: bool = False
    time_scale: float = 1.0
    job_duration: float = 20.0
    live_timestamps: bool = False  # an unfinished job's updateTimestamp is the request time: every body differs

    def __post_init__(self) -> None:
        if (self.ak is None) != (self.sk is None):
            raise ValueError("ak and sk go together")
        if self.token_ttl <= 0 or self.time_scale <= 0 or self.job_duration < 0 or self.iam_delay < 0:
            raise ValueError("token_ttl and time_scale must be positive, job_duration and iam_delay >= 0")
        if self.token_length < 4:
            raise ValueError("token_length must be at least 4 (tokens start with 'MII')")
        self.faults()  # validates the fault fields

    def faults(self) -> FaultSettings:
        """The starting fault settings."""
        return FaultSettings(
            p_500=self.p_500,
            p_503_html=self.p_503_html,
            p_malformed=self.p_malformed,
            p_slow=self.p_slow,
            slow_seconds=self.slow_seconds,
            p_drop=self.p_drop,
            rate_limit=self.rate_limit,
            rate_burst=self.rate_burst,
            retry_after=self.retry_after,
            throttle_style=self.throttle_style,
        )

    def __repr__(self) -> str:
        fields = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = _mask(value) if f.name in {"token", "sk", "iam_password"} else repr(value)
            fields.append(f"{f.name}={shown}")
        return f"SimulatorConfig({', '.join(fields)})"


@dataclass(frozen=True, slots=True)
class FaultSettings:
    """Fault probabilities and the throttle, changeable at run time (:meth:`Simulator.set_faults`)."""

    p_500: float = 0.0
    p_503_html: float = 0.0
    p_malformed: float = 0.0
    p_slow: float = 0.0
    slow_seconds: float = 2.0
    p_drop: float = 0.0
    rate_limit: float | None = None
    rate_burst: int | None = None
    retry_after: bool = True
    throttle_style: Literal["apigw", "cce"] = "apigw"

    def __post_init__(self) -> None:
        for name in ("p_500", "p_503_html", "p_malformed", "p_slow", "p_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.slow_seconds < 0:
            raise ValueError("slow_seconds must be >= 0")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError("rate_limit must be positive or None")
        if self.rate_burst is not None and self.rate_burst < 1:
            raise ValueError("rate_burst must be >= 1")
        if self.throttle_style not in ("apigw", "cce"):
            raise ValueError("throttle_style must be 'apigw' or 'cce'")


@dataclass(frozen=True, slots=True)
class Transition:
    """One phase change of a job or sub-job, at the true instant it became visible to pollers.

    ``job_id`` is the top-level job; ``uid`` the job or sub-job that changed (equal for the job itself).
    Every job and sub-job starts with an ``Initializing`` transition at its creation. ``at_ns`` is exact
    and equals the served timestamp; ``at`` is the same instant to the microsecond.
    """

    job_id: str
    uid: str
    job_type: str
    phase: str
    reason: str
    at: datetime
    at_ns: int

    @property
    def is_sub_job(self) -> bool:
        """Whether this is a sub-job's transition."""
        return self.uid != self.job_id


@dataclass(frozen=True, slots=True)
class SimulatorStats:
    """What the server saw, excluding ``/_sim/`` control requests.

    ``per_second`` counts job API requests (throttled ones too) per whole second of the simulator clock
    since construction, so a benchmark can check a client's rate from the server side.
    """

    requests: int
    job_requests: int
    iam_token_requests: int
    tokens_issued: int
    throttled: int
    dropped: int
    by_status: dict[int, int]
    per_second: dict[int, int]

    @property
    def max_per_second(self) -> int:
        """The busiest one-second window."""
        return max(self.per_second.values(), default=0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (integer keys become strings)."""
        return {
            "requests": self.requests,
            "job_requests": self.job_requests,
            "iam_token_requests": self.iam_token_requests,
            "tokens_issued": self.tokens_issued,
            "throttled": self.throttled,
            "dropped": self.dropped,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "per_second": {str(k): v for k, v in sorted(self.per_second.items())},
            "max_per_second": self.max_per_second,
        }


def format_go_timestamp(ns: int) -> str:
    """Nanoseconds since the epoch as Go's ``time.Time.String()`` in UTC, trailing zeros trimmed."""
    seconds, frac = divmod(ns, _NS)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits} +0000 UTC" if digits else f"{base} +0000 UTC"


# --- job shapes -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Shape:
    """How a (sub-)job of one type looks: which context values fill its spec, how it can fail."""

    job_type: str
    weight: float = 1.0  # share of the parent's running time
    resource_id: str | None = None  # context keys
    resource_name: str | None = None
    extend: tuple[tuple[str, str], ...] = ()
    failures: tuple[str, ...] = ()


_SERVER = (("serverID", "server"),)
_MASTER = (("serverID", "master"),)
# job type -> (duration factor, root shape, sub-job shapes, whether the last sub-job is optional)
_TEMPLATES: dict[str, tuple[float, _Shape, tuple[_Shape, ...], bool]] = {
    "CreateCluster": (
        3.0,
        _Shape("CreateCluster", resource_id="resource", resource_name="cluster_name", extend=_MASTER),
        (
            _Shape("CreatePSMCert", 0.05, failures=("create psm cert failed: certificate service unavailable",)),
            _Shape(
                "InstallMaster",
                0.8,
                "master",
                extend=_MASTER,
                failures=(
                    "install master failed: etcd cluster is unhealthy: context deadline exceeded",
                    "install master failed: wait for kube-apiserver ready timeout after 600s",
                ),
            ),
            _Shape(
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
        _Shape("CreateNode", resource_id="node", resource_name="node_name", extend=_SERVER),
        (
            _Shape(
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
            ),
            _Shape(
                "InstallNode",
                0.55,
                "node",
                extend=_SERVER,
                failures=(
                    "Install node failed: wait for node to be ready timeout, node status: NotReady",
                    "Install node failed: install kubelet failed: exit status 1",
                ),
            ),
        ),
        False,
    ),
    "DeleteNode": (
        0.5,
        _Shape("DeleteNode", resource_id="node", resource_name="node_name", extend=_SERVER),
        (
            _Shape(
                "DeleteNodeVM",
                1.0,
                "node",
                "node_name",
                _SERVER,
                ("Delete node vm failed: the ECS server is locked by another operation, retry later",),
            ),
        ),
        False,
    ),
    "ScaleupCluster": (
        2.0,
        _Shape("ScaleupCluster", resource_id="cluster", resource_name="cluster_name", extend=(("flavor", "flavor"),)),
        (
            _Shape(
                "ScaleupMaster",
                0.7,
                "master",
                extend=_MASTER,
                failures=("Scale up master failed: the flavor cce.s2.large is sold out in this region",),
            ),
            _Shape(
                "UpdateClusterConfig",
                0.3,
                failures=("update cluster config failed: kube-apiserver did not restart in time",),
            ),
        ),
        False,
    ),
}
JOB_TYPES: tuple[str, ...] = tuple(_TEMPLATES)
_GENERIC_FAILURE = "job failed: internal error, please contact technical support"


@dataclass(frozen=True, slots=True)
class _Step:
    at_ns: int
    phase: str
    reason: str


@dataclass(frozen=True, slots=True)
class _Node:
    """A job or sub-job: its static spec and its planned steps (first step: Initializing at creation)."""

    uid: str
    spec: dict[str, Any]
    show_reason: bool
    steps: tuple[_Step, ...]
    times: tuple[int, ...]

    def step_at(self, now_ns: int) -> _Step:
        return self.steps[max(bisect.bisect_right(self.times, now_ns), 1) - 1]


@dataclass(frozen=True, slots=True)
class _Job:
    root: _Node
    subs: tuple[_Node, ...]
    visible_ns: int
    truth: tuple[Transition, ...]


@dataclass(slots=True)
class _Counters:
    requests: int = 0
    job_requests: int = 0
    iam_token_requests: int = 0
    tokens_issued: int = 0
    throttled: int = 0
    dropped: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    per_second: dict[int, int] = field(default_factory=dict)


class _TokenBucket:
    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst, self.tokens, self.last = rate, burst, float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, slots=True)
class _Draw:
    slow: bool
    drop: bool
    html_503: bool
    error_500: bool
    malformed: bool
    cut: float


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
        self._jobs: dict[str, _Job] = {}
        self._cluster_names: dict[str, str] = {}
        self._token_ttl = self.config.token_ttl
        self._tokens: dict[str, float] = {self.config.token: self._epoch_clock + self._token_ttl}
        self._faults = self.config.faults()
        self._bucket: _TokenBucket | None = None
        self._reset_bucket()
        self._counters = _Counters()
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
        return self._epoch_ns + round((self._clock() - self._epoch_clock) * _NS)

    def _wall(self, ns: int) -> datetime:
        return datetime.fromtimestamp(ns // _NS, UTC) + timedelta(microseconds=ns % _NS // 1000)

    # --- jobs ---------------------------------------------------------------------------------------------

    def add_job(
        self,
        job_type: str = "CreateNode",
        *,
        fail: bool = False,
        duration: float | None = None,
        not_found_for: float = 0.0,
        start_delay: float = 0.0,
        cluster_uid: str | None = None,
    ) -> str:
        """Plan a job starting now and return its id.

        ``duration`` (seconds, exact) defaults to the config's jittered per-type duration. The job stays
        Initializing for ``start_delay`` more seconds, and answers 404 for its first ``not_found_for``
        seconds. Unknown job types are served too, without sub-jobs.
        """
        if min(not_found_for, start_delay, 0.0 if duration is None else duration) < 0:
            raise ValueError("duration, not_found_for and start_delay must be >= 0")
        rng = self._rng_jobs
        factor, root_shape, sub_shapes, optional_last = _TEMPLATES.get(
            job_type, (1.0, _Shape(job_type, resource_id="cluster"), (), False)
        )
        if optional_last and rng.random() < 0.5:
            sub_shapes = sub_shapes[:-1]
        if duration is None:
            duration = self.config.job_duration * factor * rng.uniform(0.8, 1.2) * self.config.time_scale
        context = self._context(cluster_uid)
        uids = [self._uid() for _ in range(1 + len(sub_shapes))]
        created = self.now_ns()
        events = self._plan(created, duration, start_delay, fail, sub_shapes)

        steps: list[list[_Step]] = [[] for _ in uids]
        truth: list[Transition] = []
        digits = rng.choices(range(10), weights=_DIGIT_WEIGHTS)[0]
        unit = 10 ** (9 - digits)
        previous = created - created % unit  # creation is snapped down: the job exists from this instant
        shapes = (root_shape, *sub_shapes)
        for index, planned, phase, reason in [(i, created, INITIALIZING, "") for i in range(len(uids))] + events:
            if phase != INITIALIZING:
                digits = rng.choices(range(10), weights=_DIGIT_WEIGHTS)[0]
                unit = 10 ** (9 - digits)
                floor = max(planned, previous, steps[index][-1].at_ns + 1)
                previous = -(-floor // unit) * unit
            steps[index].append(_Step(previous, phase, reason))
            truth.append(
                Transition(uids[0], uids[index], shapes[index].job_type, phase, reason, self._wall(previous), previous)
            )

        nodes = [
            _Node(
                uid=uid,
                spec=self._spec(shape, context),
                show_reason=index == 0 or rng.random() < 0.5,
                steps=tuple(node_steps),
                times=tuple(s.at_ns for s in node_steps),
            )
            for index, (uid, shape, node_steps) in enumerate(zip(uids, shapes, steps, strict=True))
        ]
        self._jobs[uids[0]] = _Job(nodes[0], tuple(nodes[1:]), created + round(not_found_for * _NS), tuple(truth))
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
    ) -> list[str]:
        """Plan ``n`` jobs in one cluster, exactly ``round(n * fail_ratio)`` of them (chosen by seed) failing."""
        if n < 0 or not 0.0 <= fail_ratio <= 1.0:
            raise ValueError("n must be >= 0 and fail_ratio within [0, 1]")
        failing = set(self._rng_jobs.sample(range(n), round(n * fail_ratio)))
        cluster = self._uid()
        return [
            self.add_job(
                job_type,
                fail=i in failing,
                duration=duration,
                not_found_for=not_found_for,
                start_delay=start_delay,
                cluster_uid=cluster,
            )
            for i in range(n)
        ]

    def truth(self, job_id: str) -> list[Transition]:
        """Every phase change of the job and its sub-jobs, in time order; ``KeyError`` for an unknown job."""
        return list(self._jobs[job_id].truth)

    @property
    def job_ids(self) -> list[str]:
        """The ids of all planned jobs, in creation order."""
        return list(self._jobs)

    def _uid(self) -> str:
        return str(uuid.UUID(int=self._rng_jobs.getrandbits(128), version=1))

    def _context(self, cluster_uid: str | None) -> dict[str, str]:
        rng = self._rng_jobs
        cluster = cluster_uid or self._uid()
        if cluster not in self._cluster_names:
            env = rng.choice(("prod", "stage", "dev", "ci"))
            self._cluster_names[cluster] = f"cluster-{env}-{rng.randrange(100):02d}"
        name = self._cluster_names[cluster]
        suffix = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=5))
        return {
            "cluster": cluster,
            "cluster_name": name,
            "resource": self._uid(),
            "node": self._uid(),
            "node_name": f"{name}-{suffix}",
            "server": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "master": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "flavor": rng.choice(("cce.s2.medium", "cce.s2.large", "cce.s2.xlarge")),
        }

    @staticmethod
    def _spec(shape: _Shape, context: Mapping[str, str]) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": shape.job_type, "clusterUID": context["cluster"]}
        if shape.resource_id:
            spec["resourceID"] = context[shape.resource_id]
        if shape.resource_name:
            spec["resourceName"] = context[shape.resource_name]
        if shape.extend:
            spec["extendParam"] = {name: context[key] for name, key in shape.extend}
        return spec

    def _plan(
        self, created: int, duration: float, start_delay: float, fail: bool, subs: tuple[_Shape, ...]
    ) -> list[tuple[int, int, str, str]]:
        """Planned (node index, ns, phase, reason) events after creation, in time order (0 is the root)."""
        rng = self._rng_jobs
        total = round(duration * _NS)
        start = created + round(start_delay * _NS) + round(total * rng.uniform(0.03, 0.08))
        tail = total // 100
        events = [(0, start, RUNNING, "")]
        if not subs:
            end = created + round(start_delay * _NS) + total
            return [*events, (0, end, FAILED, _GENERIC_FAILURE) if fail else (0, end, SUCCESS, "")]
        span = max(0, created + round(start_delay * _NS) + total - tail - start)
        weights = [shape.weight * rng.uniform(0.7, 1.3) for shape in subs]
        failing = rng.randrange(len(subs)) if fail else -1
        cursor = start
        for index, (shape, weight) in enumerate(zip(subs, weights, strict=True), start=1):
            part = round(span * weight / sum(weights))
            events.append((index, cursor, RUNNING, ""))
            if index - 1 == failing:
                reason = rng.choice(shape.failures or (_GENERIC_FAILURE,))
                end = cursor + round(part * rng.uniform(0.3, 1.0))
                events.append((index, end, FAILED, reason))
                events.append((0, end + total // 500, FAILED, reason))  # CCE copies the sub-job's reason
                return events
            cursor += part
            events.append((index, cursor, SUCCESS, ""))
        events.append((0, cursor + tail, SUCCESS, ""))
        return events

    def _render(self, job: _Job, now_ns: int) -> dict[str, Any]:
        subs = [(node, node.step_at(now_ns)) for node in job.subs]
        root_step = job.root.step_at(now_ns)
        updated = max([root_step.at_ns, *(step.at_ns for _, step in subs)])
        if self.config.live_timestamps and root_step.phase in (INITIALIZING, RUNNING):
            updated = now_ns  # as a job reporting progress does: the answer changes at every poll
        document = self._node_json(job.root, root_step, updated)
        document["spec"]["subJobs"] = [self._node_json(node, step, step.at_ns) for node, step in subs]
        return document

    @staticmethod
    def _node_json(node: _Node, step: _Step, updated_ns: int) -> dict[str, Any]:
        status = {"phase": step.phase}
        if node.show_reason or step.reason:
            status["reason"] = step.reason
        return {
            "kind": "Job",
            "apiVersion": "v3",
            "metadata": {
                "uid": node.uid,
                "creationTimestamp": format_go_timestamp(node.steps[0].at_ns),
                "updateTimestamp": format_go_timestamp(updated_ns),
            },
            "spec": dict(node.spec),
            "status": status,
        }

    # --- faults, tokens, statistics ----------------------------------------------------------------------

    @property
    def faults(self) -> FaultSettings:
        """The fault settings in force."""
        return self._faults

    def set_faults(self, **changes: Any) -> FaultSettings:
        """Change fault settings (fields of :class:`FaultSettings`); a new rate or burst refills the bucket."""
        self._faults = dataclasses.replace(self._faults, **changes)
        if {"rate_limit", "rate_burst"} & changes.keys():
            self._reset_bucket()
        logger.info("simulator: faults changed: %s", sorted(changes))
        return self._faults

    def expire_tokens(self) -> None:
        """Expire every token issued so far (the static one too), as a soak test's token expiry."""
        now = self._clock()
        self._tokens = {token: min(expiry, now) for token, expiry in self._tokens.items()}

    def set_token_ttl(self, seconds: float) -> None:
        """Lifetime of tokens issued from now on."""
        if seconds <= 0:
            raise ValueError("token ttl must be positive")
        self._token_ttl = seconds

    @property
    def stats(self) -> SimulatorStats:
        """A snapshot of the request statistics."""
        c = self._counters
        return SimulatorStats(
            c.requests,
            c.job_requests,
            c.iam_token_requests,
            c.tokens_issued,
            c.throttled,
            c.dropped,
            dict(c.by_status),
            dict(c.per_second),
        )

    def _reset_bucket(self) -> None:
        rate = self._faults.rate_limit
        if rate is None:
            self._bucket = None
        else:
            burst = self._faults.rate_burst or max(1, round(rate))
            self._bucket = _TokenBucket(rate, burst, self._clock())

    def _draw(self) -> _Draw:
        """The fault decisions for one request: always six numbers, so the stream depends only on order."""
        f, u = self._faults, [self._rng_faults.random() for _ in range(6)]
        return _Draw(
            slow=u[0] < f.p_slow,
            drop=u[1] < f.p_drop,
            html_503=u[2] < f.p_503_html,
            error_500=u[3] < f.p_500,
            malformed=u[4] < f.p_malformed,
            cut=0.2 + 0.6 * u[5],
        )

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
        app.router.add_post("/v3/auth/tokens", self._handle_iam)
        app.router.add_post("/_sim/jobs", self._handle_sim_jobs)
        app.router.add_get("/_sim/truth", self._handle_sim_truth)
        app.router.add_get("/_sim/stats", self._handle_sim_stats)
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

    async def _transport_faults(self, request: web.Request, draw: _Draw) -> web.Response | None:
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

    async def _handle_job(self, request: web.Request) -> web.Response:
        counters = self._counters
        counters.job_requests += 1
        window = int(self._clock() - self._epoch_clock)
        counters.per_second[window] = counters.per_second.get(window, 0) + 1
        draw = self._draw()
        if (early := await self._transport_faults(request, draw)) is not None:
            return early
        if self._bucket is not None and not self._bucket.take(self._clock()):
            counters.throttled += 1
            return self._throttled(request)
        if (denied := await self._authenticate(request)) is not None:
            return self._error(request, 401, denied)
        job = self._jobs.get(request.match_info["job_id"])
        now = self.now_ns()
        if request.match_info["project_id"] != self.config.project_id or job is None or now < job.visible_ns:
            return self._not_found(request.match_info["job_id"])
        if draw.error_500:
            return self._json(500, {"errorCode": "CCE.01500001", "errorMessage": "Internal server error"})
        body = orjson.dumps(self._render(job, now))
        if draw.malformed:
            body = body[: max(1, int(len(body) * draw.cut))]
        return web.Response(status=200, body=body, content_type="application/json")

    def _throttled(self, request: web.Request) -> web.Response:
        f = self._faults
        headers = {"Retry-After": "1"} if f.retry_after else {}
        if f.throttle_style == "cce":
            message = "The request is throttled, please try again later"
            return self._json(429, {"errorCode": "CCE.02429001", "errorMessage": message}, headers)
        limit = f"{f.rate_limit:g}"
        message = f"The throttling threshold has been reached: policy user over ratelimit,limit:{limit},time:1 second"
        return self._error(request, 429, {"error_code": "APIGW.0308", "error_msg": message}, **headers)

    @staticmethod
    def _not_found(job_id: str) -> web.Response:
        message = f"job {job_id} not found"
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "NotFound",
            "code": 404,
            "errorCode": "CCE.01404001",
            "errorMessage": "The resource is not found",
        }
        return Simulator._json(404, body)

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
            if abs(signed_at - self._wall(self.now_ns())) > _MAX_SDK_DATE_SKEW:
                return {"error_code": "APIGW.0301", "error_msg": bad + "the request time is out of range"}
            if not {"host", "x-sdk-date"} <= set(parsed.signed_headers):
                return {"error_code": "APIGW.0301", "error_msg": bad + "host and x-sdk-date must be signed"}
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

    async def _handle_iam(self, request: web.Request) -> web.Response:
        self._counters.iam_token_requests += 1
        if self.config.iam_delay:
            await asyncio.sleep(self.config.iam_delay)
        if self.config.faults_on_iam:
            draw = self._draw()
            if (early := await self._transport_faults(request, draw)) is not None:
                return early
            if draw.error_500:
                return self._json(500, {"error": {"code": 500, "title": "Internal Server Error", "message": "Error"}})
        try:
            auth = orjson.loads(await request.read())["auth"]
            methods = auth["identity"]["methods"]
            user = auth["identity"]["password"]["user"]
            name, password, domain = user["name"], user["password"], user["domain"]["name"]
            project = auth["scope"]["project"]
            scope = (project.get("id", self.config.project_id), project.get("name", self.config.project_name))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            message = "The request body is invalid."
            return self._json(400, {"error": {"code": 400, "title": "Bad Request", "message": message}})
        cfg = self.config
        if (
            "password" not in methods
            or name != cfg.iam_user
            or domain != cfg.iam_domain
            or not isinstance(password, str)
            or not hmac.compare_digest(password.encode(), cfg.iam_password.encode())
        ):
            message = "The username or password is wrong."
            return self._json(401, {"error": {"code": 401, "title": "Unauthorized", "message": message}})
        if scope != (cfg.project_id, cfg.project_name):
            message = "The project in the scope is not found."
            return self._json(401, {"error": {"code": 401, "title": "Unauthorized", "message": message}})
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        token = "MII" + "".join(self._rng_tokens.choices(alphabet, k=cfg.token_length - 3))
        issued = self._clock()
        self._tokens[token] = issued + self._token_ttl
        self._counters.tokens_issued += 1
        now = self.now_ns()
        iam_format = "%Y-%m-%dT%H:%M:%S.%fZ"
        domain_ref = {"id": uuid.uuid5(uuid.NAMESPACE_DNS, cfg.iam_domain).hex, "name": cfg.iam_domain}
        body = {
            "token": {
                "expires_at": self._wall(now + round(self._token_ttl * _NS)).strftime(iam_format),
                "issued_at": self._wall(now).strftime(iam_format),
                "methods": ["password"],
                "catalog": [],
                "project": {"id": cfg.project_id, "name": cfg.project_name, "domain": domain_ref},
                "user": {
                    "id": cfg.project_id[::-1],
                    "name": cfg.iam_user,
                    "domain": domain_ref,
                    "password_expires_at": "",
                },
                "roles": [{"id": "0", "name": "op_fine_grained"}],
            }
        }
        return self._json(201, body, {"X-Subject-Token": token})

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


async def run_forever(
    config: SimulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    jobs: int = 100,
    job_type: str = "CreateNode",
    fail_ratio: float = 0.1,
    out: TextIO,
    duration: float | None = None,
) -> None:
    """Serve a simulator with a rollout of ``jobs`` jobs until cancelled.

    The first line written to ``out`` is one JSON object: ``endpoint``, ``project_id``, ``token`` and
    ``job_ids``, for a benchmark in another process.
    """
    simulator = Simulator(config)
    endpoint = await simulator.start(host, port)
    try:
        job_ids = simulator.start_rollout(jobs, fail_ratio=fail_ratio, job_type=job_type, duration=duration)
        handshake = {"endpoint": endpoint, "project_id": config.project_id, "token": config.token, "job_ids": job_ids}
        out.write(orjson.dumps(handshake).decode() + "\n")
        out.flush()
        await asyncio.Event().wait()
    finally:
        await simulator.close()
