"""CCEClient against the real simulator (and small aiohttp servers) on 127.0.0.1: jobs, errors, pooling, limits."""

from __future__ import annotations

import asyncio
import gzip
import re
import socket
from collections.abc import AsyncIterator, Awaitable
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from monitor.cce.auth import PasswordAuth, TokenAuth
from monitor.cce.client import CCEClient, ClientSettings
from monitor.cce.throttle import RateLimiter
from monitor.core.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    InvalidIdError,
    MalformedResponseError,
    MonitorError,
    NotFoundError,
    RequestTimeoutError,
    ServerError,
    ThrottledError,
    TransportError,
)
from monitor.core.model import Job, Phase
from monitor.core.secret import Secret
from monitor.sim import Simulator, SimulatorConfig, Transition, format_go_timestamp
from monitor.testing import FakeClock
from tests.conftest import SimFactory

REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
PROJECT = SimulatorConfig().project_id
MAX_BODY = 8 * 1024 * 1024  # monitor.cce.client._MAX_BODY, the documented limit


class Trace:
    """An aiohttp TraceConfig that counts connections and records each response's X-Request-Id."""

    def __init__(self) -> None:
        self.created = 0
        self.reused = 0
        self.request_ids: list[str | None] = []
        self.config = aiohttp.TraceConfig()
        self.config.on_connection_create_end.append(self._created)
        self.config.on_connection_reuseconn.append(self._reused)
        self.config.on_request_end.append(self._ended)

    async def _created(self, session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object) -> None:
        self.created += 1

    async def _reused(self, session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object) -> None:
        self.reused += 1

    async def _ended(
        self, session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestEndParams
    ) -> None:
        self.request_ids.append(params.response.headers.get("X-Request-Id"))


@pytest.fixture
async def traced() -> AsyncIterator[tuple[aiohttp.ClientSession, Trace]]:
    trace = Trace()
    async with aiohttp.ClientSession(trace_configs=[trace.config]) as session:
        yield session, trace


def settings_for(endpoint: str, **kwargs: Any) -> ClientSettings:
    return ClientSettings(endpoint=endpoint, project_id=kwargs.pop("project_id", PROJECT), **kwargs)


def token_client(sim: Simulator, endpoint: str, *, token: str | None = None, **kwargs: Any) -> CCEClient:
    session = kwargs.pop("session", None)
    return CCEClient(settings_for(endpoint, **kwargs), TokenAuth(Secret(token or sim.config.token)), session=session)


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def fails(awaitable: Awaitable[object], cls: type[MonitorError]) -> Any:
    """Await, expect exactly ``cls`` (not a subclass or a sibling), and return the error."""
    with pytest.raises(MonitorError) as info:
        await awaitable
    assert type(info.value) is cls, repr(info.value)
    return info.value


# --- jobs ------------------------------------------------------------------------------------------------


def expected_phase(truth: list[Transition], uid: str, now_ns: int) -> Transition:
    return [t for t in truth if t.uid == uid and t.at_ns <= now_ns][-1]


def check_against_truth(job: Job, sim: Simulator, job_id: str) -> None:
    truth = sim.truth(job_id)
    now = sim.now_ns()
    root = expected_phase(truth, job_id, now)
    assert job.id == job_id
    assert job.type == root.job_type
    assert job.phase == root.phase
    assert job.reason == root.reason
    first = truth[0]
    assert job.created.raw == format_go_timestamp(first.at_ns)
    assert job.created.at == first.at
    latest = max((t for t in truth if t.at_ns <= now), key=lambda t: t.at_ns)
    assert job.updated.raw == format_go_timestamp(latest.at_ns)
    assert job.updated.at == latest.at
    sub_uids = list(dict.fromkeys(t.uid for t in truth if t.is_sub_job))
    assert [sub.id for sub in job.sub_jobs] == sub_uids
    for sub in job.sub_jobs:
        step = expected_phase(truth, sub.id, now)
        assert (sub.type, sub.phase, sub.updated.raw) == (step.job_type, step.phase, format_go_timestamp(step.at_ns))
        assert sub.updated.at == step.at
        assert sub.created.raw == format_go_timestamp(first.at_ns)
        assert sub.cluster_id == job.cluster_id != ""
        assert sub.sub_jobs == ()
        if step.reason:
            assert sub.reason == step.reason


@pytest.mark.parametrize("fail", [False, True])
async def test_get_job_follows_the_simulated_timeline(sim_factory: SimFactory, fail: bool) -> None:
    clock = FakeClock()
    sim, endpoint = await sim_factory(clock=clock, seed=3)
    job_id = sim.add_job("CreateNode", duration=100, fail=fail)
    seen: list[str] = []
    async with token_client(sim, endpoint) as client:
        for _ in range(30):
            job = await client.fetch(job_id)
            check_against_truth(job, sim, job_id)
            assert [s.type for s in job.sub_jobs] == ["CreateNodeVM", "InstallNode"]
            seen.append(job.phase)
            if job.is_terminal:
                break
            clock.advance(5)
    assert list(dict.fromkeys(seen)) == ["Initializing", "Running", "Failed" if fail else "Success"]
    assert isinstance(job.phase, Phase)
    if fail:
        assert job.reason and job.reason == sim.truth(job_id)[-1].reason
        assert [s.phase for s in job.sub_jobs].count("Failed") == 1
    else:
        assert all(s.phase == "Success" for s in job.sub_jobs)


async def test_not_found_carries_code_and_request_id(
    sim_factory: SimFactory, traced: tuple[aiohttp.ClientSession, Trace]
) -> None:
    session, trace = traced
    sim, endpoint = await sim_factory()
    client = token_client(sim, endpoint, session=session)
    error = await fails(client.fetch("no-such-job"), NotFoundError)
    assert (error.status, error.code, error.retryable) == (404, "CCE.01404001", False)
    assert error.message == "The resource is not found: job no-such-job not found"  # both of its messages
    [sent_id] = trace.request_ids
    assert sent_id is not None and REQUEST_ID.match(sent_id)
    assert error.request_id == sent_id
    assert str(error) == f"HTTP 404 CCE.01404001: {error.message} (request id {sent_id})"
    # a job of another project is not found either
    job_id = sim.add_job(duration=100)
    other = CCEClient(
        settings_for(endpoint, project_id="another-project"), TokenAuth(Secret(sim.config.token)), session=session
    )
    error = await fails(other.fetch(job_id), NotFoundError)
    assert error.request_id == trace.request_ids[-1]


async def test_bad_token_is_a_final_auth_error(
    sim_factory: SimFactory, traced: tuple[aiohttp.ClientSession, Trace]
) -> None:
    session, trace = traced
    sim, endpoint = await sim_factory()
    job_id = sim.add_job(duration=100)
    client = token_client(sim, endpoint, token="not-the-token", session=session)
    error = await fails(client.fetch(job_id), AuthError)
    assert (error.status, error.code, error.retryable) == (401, "APIGW.0301", False)
    assert error.message == "Incorrect IAM authentication information: verify token fail"
    assert error.request_id == trace.request_ids[-1] is not None
    assert sim.stats.job_requests == 1  # a fixed token cannot be refreshed: no second attempt


async def test_expired_token_is_an_auth_error(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory()
    job_id = sim.add_job(duration=100)
    async with token_client(sim, endpoint) as client:
        await client.fetch(job_id)
        sim.expire_tokens()
        error = await fails(client.fetch(job_id), AuthError)
    assert (error.status, error.code, error.message) == (401, "APIGW.0307", "The token must be updated.")
    assert sim.stats.job_requests == 2


@pytest.mark.parametrize(
    ("style", "retry_after", "code", "expected_retry_after"),
    [
        ("apigw", True, "APIGW.0308", 1.0),
        ("apigw", False, "APIGW.0308", None),
        ("cce", True, "CCE.02429001", 1.0),
        ("cce", False, "CCE.02429001", None),
    ],
)
async def test_throttled_slows_the_limiter(
    sim_factory: SimFactory,
    traced: tuple[aiohttp.ClientSession, Trace],
    style: str,
    retry_after: bool,
    code: str,
    expected_retry_after: float | None,
) -> None:
    session, trace = traced
    sim, endpoint = await sim_factory(rate_limit=0.01, throttle_style=style, retry_after=retry_after)
    job_id = sim.add_job(duration=100)
    client = token_client(sim, endpoint, session=session)
    await client.fetch(job_id)  # takes the one token of the simulator's bucket
    error = await fails(client.fetch(job_id), ThrottledError)
    assert (error.status, error.code, error.retryable, error.retry_after) == (429, code, True, expected_retry_after)
    assert error.request_id == trace.request_ids[-1] is not None
    assert sim.stats.throttled == 1
    # What the limiter makes of it is the scheduler's business: tests/unit/engine/test_scheduler.py.


async def test_server_error_is_retryable(sim_factory: SimFactory, traced: tuple[aiohttp.ClientSession, Trace]) -> None:
    session, trace = traced
    sim, endpoint = await sim_factory(p_500=1.0)
    job_id = sim.add_job(duration=100)
    error = await fails(token_client(sim, endpoint, session=session).fetch(job_id), ServerError)
    assert (error.status, error.code, error.message, error.retryable) == (
        500,
        "CCE.01500001",
        "Internal server error",
        True,
    )
    assert error.request_id == trace.request_ids[-1] is not None


async def test_html_503_uses_the_page_title(
    sim_factory: SimFactory, traced: tuple[aiohttp.ClientSession, Trace]
) -> None:
    session, trace = traced
    sim, endpoint = await sim_factory(p_503_html=1.0)
    job_id = sim.add_job(duration=100)
    error = await fails(token_client(sim, endpoint, session=session).fetch(job_id), ServerError)
    assert (error.status, error.code, error.retryable) == (503, None, True)
    assert error.message == "503 Service Temporarily Unavailable"
    assert error.request_id == trace.request_ids[-1] is not None


async def test_malformed_body(sim_factory: SimFactory, traced: tuple[aiohttp.ClientSession, Trace]) -> None:
    session, trace = traced
    sim, endpoint = await sim_factory(p_malformed=1.0)
    job_id = sim.add_job(duration=100)
    error = await fails(token_client(sim, endpoint, session=session).fetch(job_id), MalformedResponseError)
    assert error.retryable
    assert error.message.startswith(f"job {job_id}: body is not valid JSON")
    [sent_id] = trace.request_ids
    assert sent_id is not None and REQUEST_ID.match(sent_id)
    assert error.request_id == sent_id
    assert str(error).endswith(f"(request id {sent_id})")


async def test_dropped_connection_is_a_connect_error(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(p_drop=1.0)
    job_id = sim.add_job(duration=100)
    async with token_client(sim, endpoint) as client:
        error = await fails(client.fetch(job_id), ConnectError)
    assert isinstance(error, TransportError) and error.retryable
    assert error.message.startswith(f"job {job_id}: ")
    assert "Server disconnected" in error.message
    assert sim.stats.dropped >= 1


async def test_dropped_connection_costs_one_request(sim_factory: SimFactory) -> None:
    # aiohttp re-sends an idempotent GET once after ServerDisconnectedError unless its (private) switch is
    # off: one rate-limit slot would then cost two requests to CCE.
    sim, endpoint = await sim_factory(p_drop=1.0)
    job_id = sim.add_job(duration=100)
    async with token_client(sim, endpoint) as client:
        await fails(client.fetch(job_id), ConnectError)
    assert sim.stats.job_requests == 1


async def test_slow_answer_times_out(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(p_slow=1.0, slow_seconds=5.0)
    job_id = sim.add_job(duration=100)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with token_client(sim, endpoint, total_timeout=0.2) as client:
        error = await fails(client.fetch(job_id), RequestTimeoutError)
    assert loop.time() - started < 2.0
    assert isinstance(error, TransportError) and error.retryable
    assert error.message == f"job {job_id}: request timed out"


async def test_settings_timeout_applies_to_a_supplied_session(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(p_slow=1.0, slow_seconds=0.6)
    job_id = sim.add_job(duration=100)
    async with aiohttp.ClientSession() as session:
        client = token_client(sim, endpoint, total_timeout=0.2, session=session)
        await fails(client.fetch(job_id), RequestTimeoutError)


async def test_unreachable_endpoint_is_a_one_line_connect_error() -> None:
    port = closed_port()
    settings = settings_for(f"http://127.0.0.1:{port}", total_timeout=5)
    async with CCEClient(settings, TokenAuth(Secret("some-token"))) as client:
        error = await fails(client.fetch("job-1"), ConnectError)
    assert error.retryable
    assert "\n" not in str(error)
    assert str(error).startswith("job job-1: ClientConnectorError: ")
    assert f"127.0.0.1:{port}" in str(error)


# --- input validation ----------------------------------------------------------------------------------


class Permits:
    """A ``permit`` callable for :meth:`CCEClient.fetch` that counts how often the client asked for a slot."""

    def __init__(self) -> None:
        self.acquired = 0

    async def __call__(self) -> None:
        self.acquired += 1


@pytest.mark.parametrize(
    "job_id",
    ["../x", "a/b", "a?b", "%2e%2e", "a b", "", "jöb", "джоб", "a#b", "-abc", "_abc", "a\nb", "abc\n", "a" * 129],
)
async def test_invalid_job_ids_never_reach_the_network(sim_factory: SimFactory, job_id: str) -> None:
    sim, endpoint = await sim_factory()
    limiter = Permits()
    async with token_client(sim, endpoint) as client:
        with pytest.raises(InvalidIdError) as info:
            await client.fetch(job_id, permit=limiter)
    assert type(info.value) is InvalidIdError
    assert isinstance(info.value, ValueError)
    assert "job id" in info.value.message
    assert sim.stats.requests == 0
    assert limiter.acquired == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoint": "ftp://127.0.0.1:1"},
        {"endpoint": "127.0.0.1:1"},
        {"endpoint": "http://"},
        {"endpoint": ""},
        {"endpoint": "http://127.0.0.1:1/?x=1"},
        {"endpoint": "http://127.0.0.1:1/#frag"},
        {"endpoint": "http://user@127.0.0.1:1"},
        {"endpoint": "http://user:pass@127.0.0.1:1"},
        {"project_id": "../other"},
        {"project_id": "a/b"},
        {"project_id": ""},
        {"connect_timeout": 0},
        {"connect_timeout": -1},
        {"total_timeout": 0},
        {"total_timeout": -0.5},
        {"max_connections": 0},
    ],
)
def test_invalid_settings_are_config_errors(kwargs: dict[str, Any]) -> None:
    values: dict[str, Any] = {"endpoint": "http://127.0.0.1:1", "project_id": PROJECT, **kwargs}
    with pytest.raises(MonitorError) as info:
        ClientSettings(**values)
    assert type(info.value) in (ConfigError, InvalidIdError)
    if "project_id" in kwargs:
        assert type(info.value) is InvalidIdError
        assert "project id" in info.value.message
    else:
        assert type(info.value) is ConfigError


def test_valid_settings() -> None:
    settings = ClientSettings(endpoint="https://cce.eu-de.otc.t-systems.com/", project_id=PROJECT)
    assert (settings.connect_timeout, settings.total_timeout, settings.max_connections) == (10.0, 30.0, 64)
    assert PROJECT in repr(settings)


@pytest.mark.parametrize("field", ["connect_timeout", "total_timeout"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_timeouts_are_config_errors(field: str, value: float) -> None:
    # NaN used to disable the timeout and inf to make every get_job raise a raw OverflowError.
    with pytest.raises(ConfigError) as info:
        ClientSettings(endpoint="http://127.0.0.1:1", project_id=PROJECT, **{field: value})
    assert type(info.value) is ConfigError
    assert field in info.value.message


# --- connection pool, session ownership -----------------------------------------------------------------


async def test_one_connection_is_reused(sim_factory: SimFactory, traced: tuple[aiohttp.ClientSession, Trace]) -> None:
    session, trace = traced
    sim, endpoint = await sim_factory()
    job_id = sim.add_job(duration=100)
    async with token_client(sim, endpoint, session=session) as client:
        for n in range(30):
            if n % 10 == 9:
                await fails(client.fetch("missing"), NotFoundError)  # error answers keep the connection
            else:
                await client.fetch(job_id)
    assert trace.created == 1
    assert trace.reused == 29
    assert sim.stats.job_requests == 30
    assert not session.closed  # the client does not close a session it was given


async def test_client_closes_its_own_session(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory()
    job_id = sim.add_job(duration=100)
    client = token_client(sim, endpoint)
    assert "token" in repr(client) and endpoint in repr(client)
    async with client:
        await client.fetch(job_id)
        session = client._session
        assert session is not None
    assert session.closed
    # usable again: a new session is made on demand
    await client.fetch(job_id)
    await client.aclose()


# --- body size limit -----------------------------------------------------------------------------------

JOB_BODY = b'{"kind":"Job","metadata":{"uid":"job-1"},"spec":{"type":"CreateNode"},"status":{"phase":"Running"}}'
BIG_ID = "f" * 32


async def big_body(request: web.Request) -> web.StreamResponse:
    """Bodies just above the limit, with Content-Length, chunked, or gzip-compressed."""
    headers = {"X-Request-Id": BIG_ID, "Content-Type": "application/json"}
    padded = JOB_BODY + b" " * (MAX_BODY + 1 - len(JOB_BODY))
    mode = request.match_info["job_id"]
    if mode == "sized":
        return web.Response(body=padded, headers=headers)
    if mode == "gzip":
        return web.Response(body=gzip.compress(padded, 1), headers={**headers, "Content-Encoding": "gzip"})
    response = web.StreamResponse(headers=headers)
    response.enable_chunked_encoding()
    await response.prepare(request)
    chunk = b" " * 65536
    await response.write(JOB_BODY)
    for _ in range(MAX_BODY // len(chunk) + 1):
        await response.write(chunk)
    await response.write_eof()
    return response


@pytest.fixture
async def big_server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/api/v3/projects/{project_id}/jobs/{job_id}", big_body)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.mark.parametrize("mode", ["sized", "chunked"])
async def test_body_over_the_limit_is_refused(big_server: str, mode: str) -> None:
    async with CCEClient(settings_for(big_server), TokenAuth(Secret("t"))) as client:
        error = await fails(client.fetch(mode), MalformedResponseError)
    assert error.message == f"body larger than {MAX_BODY} bytes"
    assert error.request_id == BIG_ID


async def test_compressed_body_over_the_limit_is_refused(big_server: str) -> None:
    # A few KB of gzip with a small Content-Length that inflate past the limit.
    async with CCEClient(settings_for(big_server), TokenAuth(Secret("t"))) as client:
        error = await fails(client.fetch("gzip"), MalformedResponseError)
    assert error.message == f"body larger than {MAX_BODY} bytes"
    assert error.request_id == BIG_ID


# --- rate limiter slots ---------------------------------------------------------------------------------


async def test_fetch_takes_no_slot_and_only_the_401_retry_asks_for_one(sim_factory: SimFactory) -> None:
    """The scheduler takes the slot for each request; the client asks (``permit``) only before a second one."""
    sim, endpoint = await sim_factory(iam_delay=0.0)
    job_id = sim.add_job(duration=100)
    limiter = Permits()
    async with token_client(sim, endpoint) as client:
        await client.fetch(job_id, permit=limiter)
        assert limiter.acquired == 0
        await client.fetch(job_id, permit=limiter)
        assert limiter.acquired == 0
        await fails(client.fetch("missing", permit=limiter), NotFoundError)
        assert limiter.acquired == 0
    # The 401 retry of a refreshable provider takes a slot of its own.
    auth = PasswordAuth(iam_endpoint=endpoint, username="monitor", password=Secret("sim-password"),
                        domain="sim-domain", project_id=PROJECT)  # fmt: skip
    limiter = Permits()
    async with CCEClient(settings_for(endpoint), auth) as client:
        await client.fetch(job_id, permit=limiter)
        assert limiter.acquired == 0
        sim.expire_tokens()
        await client.fetch(job_id, permit=limiter)
        assert limiter.acquired == 1
        sim.expire_tokens()
        await client.fetch(job_id, permit=limiter)
        assert limiter.acquired == 2
    assert sim.stats.by_status == {200: 5, 404: 1, 401: 2, 201: 3}


async def test_fetch_does_not_wait_for_a_limiter(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory()
    job_id = sim.add_job(duration=100)
    limiter = RateLimiter(1)  # one slot per second
    loop = asyncio.get_running_loop()
    async with token_client(sim, endpoint) as client:
        await limiter.acquire()  # the caller (the scheduler's dispatcher) takes the slot itself
        started = loop.time()
        await client.fetch(job_id)
        await client.fetch(job_id)  # the client holds no limit of its own
        assert loop.time() - started < 0.5
        await limiter.acquire()  # the next slot is the caller's to wait for
        assert loop.time() - started >= 0.8
