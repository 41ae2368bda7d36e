"""Authentication providers against the simulator's API gateway and IAM on 127.0.0.1, and auth_from_env."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from monitor.cce.auth import AKSKAuth, PasswordAuth, TokenAuth, auth_from_env
from monitor.cce.client import CCEClient, ClientSettings
from monitor.core.errors import AuthError, ConfigError, ConnectError, MonitorError, ServerError
from monitor.core.secret import Secret
from monitor.sim import SimulatorConfig
from monitor.testing import FakeClock
from tests.conftest import SimFactory

PROJECT = SimulatorConfig().project_id
AK, SK = "SIMAKEXAMPLE0000", "sim-secret-key-0123456789"
IAM_PASSWORD = "sim-password"  # the simulator's default


def client(endpoint: str, auth: Any, **kwargs: Any) -> CCEClient:
    return CCEClient(ClientSettings(endpoint=endpoint, project_id=PROJECT, total_timeout=5), auth, **kwargs)


def password_auth(endpoint: str, **kwargs: Any) -> PasswordAuth:
    values: dict[str, Any] = {
        "iam_endpoint": endpoint,
        "username": "monitor",
        "password": Secret(IAM_PASSWORD),
        "domain": "sim-domain",
        "project_id": PROJECT,
        **kwargs,
    }
    return PasswordAuth(**values)


async def fails(awaitable: Awaitable[object], cls: type[MonitorError]) -> Any:
    with pytest.raises(MonitorError) as info:
        await awaitable
    assert type(info.value) is cls, repr(info.value)
    return info.value


# --- token ----------------------------------------------------------------------------------------------


async def test_token_auth_sends_x_auth_token(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(token="the-static-token")
    job_id = sim.add_job(duration=100)
    sent: list[dict[str, str]] = []

    async def on_start(session: aiohttp.ClientSession, ctx: SimpleNamespace, params: Any) -> None:
        sent.append(dict(params.headers))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        job = await client(endpoint, TokenAuth(Secret("the-static-token")), session=session).fetch(job_id)
    assert job.id == job_id
    [headers] = sent
    assert headers["X-Auth-Token"] == "the-static-token"
    assert "Authorization" not in headers
    assert sim.stats.by_status == {200: 1}
    assert repr(TokenAuth(Secret("the-static-token"))) == "TokenAuth(token=Secret('**********'))"


def test_token_auth_refuses_an_empty_token() -> None:
    with pytest.raises(ConfigError):
        TokenAuth(Secret(""))


# --- IAM password --------------------------------------------------------------------------------------


async def test_password_token_is_fetched_once_and_cached(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory()
    job_id = sim.add_job(duration=100)
    auth = password_auth(endpoint)
    async with client(endpoint, auth) as c:
        for _ in range(15):
            assert (await c.fetch(job_id)).id == job_id
    assert sim.stats.iam_token_requests == 1
    assert sim.stats.tokens_issued == 1
    assert auth.fetches == 1
    assert sim.stats.by_status == {201: 1, 200: 15}


async def test_a_16kb_token_works_end_to_end(sim_factory: SimFactory) -> None:
    """IAM's documented maximum: in as X-Subject-Token, out as X-Auth-Token (aiohttp's default limit is 8190)."""
    sim, endpoint = await sim_factory(token_length=16_000)
    job_id = sim.add_job(duration=100)
    auth = password_auth(endpoint)
    async with client(endpoint, auth) as c:
        assert (await c.fetch(job_id)).id == job_id
        sim.expire_tokens()  # a 401 for the big token, a second big token, and the retry with it
        assert (await c.fetch(job_id)).id == job_id
    issued = [t for t in sim.issued_tokens() if t != sim.config.token]
    assert [len(t) for t in issued] == [16_000, 16_000]
    assert sim.stats.tokens_issued == 2 and auth.fetches == 2
    assert sim.stats.by_status == {201: 2, 200: 2, 401: 1}


async def test_a_16kb_static_token_is_accepted(sim_factory: SimFactory) -> None:
    token = "MII" + "x" * 15_997
    sim, endpoint = await sim_factory(token=token)
    job_id = sim.add_job(duration=100)
    async with client(endpoint, TokenAuth(Secret(token))) as c:
        assert (await c.fetch(job_id)).id == job_id


def test_simulator_token_length_is_validated() -> None:
    with pytest.raises(ValueError, match="token_length"):
        SimulatorConfig(token_length=3)


async def test_password_scope_by_project_name(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory()
    job_id = sim.add_job(duration=100)
    async with client(endpoint, password_auth(endpoint, project_id=None, project_name="eu-de")) as c:
        assert (await c.fetch(job_id)).id == job_id
    async with client(endpoint, password_auth(endpoint, project_id=None, project_name="elsewhere")) as c:
        error = await fails(c.fetch(job_id), AuthError)
    assert (error.status, error.message) == (401, "The project in the scope is not found.")


async def test_concurrent_calls_share_one_iam_request(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(iam_delay=0.3)
    job_ids = [sim.add_job(duration=100) for _ in range(20)]
    auth = password_auth(endpoint)
    async with client(endpoint, auth) as c:
        jobs = await asyncio.gather(*(c.fetch(job_id) for job_id in job_ids))
    assert [job.id for job in jobs] == job_ids
    assert sim.stats.iam_token_requests == 1
    assert auth.fetches == 1
    assert sim.stats.by_status == {201: 1, 200: 20}


async def test_refused_token_is_replaced_once(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(iam_delay=0.1)
    job_ids = [sim.add_job(duration=100) for _ in range(10)]
    auth = password_auth(endpoint)
    async with client(endpoint, auth) as c:
        await c.fetch(job_ids[0])
        assert sim.stats.iam_token_requests == 1
        sim.expire_tokens()
        jobs = await asyncio.gather(*(c.fetch(job_id) for job_id in job_ids))
        assert [job.id for job in jobs] == job_ids
        assert sim.stats.iam_token_requests == 2
        assert sim.stats.by_status == {201: 2, 200: 11, 401: 10}
        # one call alone: 401, one new token, the retry succeeds
        sim.expire_tokens()
        await c.fetch(job_ids[0])
    assert sim.stats.iam_token_requests == 3
    assert auth.fetches == 3
    assert sim.stats.by_status == {201: 3, 200: 12, 401: 11}


async def test_wrong_password_is_an_auth_error_without_the_password(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory()
    job_id = sim.add_job(duration=100)
    wrong = "wrong-Pa55word-7777"
    auth = password_auth(endpoint, password=Secret(wrong))
    async with client(endpoint, auth) as c:
        error = await fails(c.fetch(job_id), AuthError)
    assert (error.status, error.retryable) == (401, False)
    assert error.message == "The username or password is wrong."
    assert sim.stats.job_requests == 0
    assert sim.stats.iam_token_requests == 1
    for text in (str(error), repr(error), repr(auth), repr(c)):
        assert wrong not in text


async def test_iam_server_error_propagates(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(faults_on_iam=True, p_500=1.0)
    job_id = sim.add_job(duration=100)
    async with client(endpoint, password_auth(endpoint)) as c:
        error = await fails(c.fetch(job_id), ServerError)
    assert (error.status, error.retryable) == (500, True)
    assert sim.stats.job_requests == 0


async def test_iam_dropped_connection_is_a_connect_error(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(faults_on_iam=True, p_drop=1.0)
    job_id = sim.add_job(duration=100)
    async with client(endpoint, password_auth(endpoint)) as c:
        error = await fails(c.fetch(job_id), ConnectError)
    assert error.message.startswith(f"IAM token request to {endpoint} failed")
    assert sim.stats.job_requests == 0


async def test_token_is_refreshed_before_it_expires(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(token_ttl=400)
    job_id = sim.add_job(duration=100)
    clock = FakeClock(0.0)
    auth = password_auth(endpoint, margin=300, clock=clock)
    async with client(endpoint, auth) as c:
        await c.fetch(job_id)
        assert sim.stats.iam_token_requests == 1
        for now in (1, 50, 98):  # valid until about ttl - margin = 100
            clock.now = now
            await c.fetch(job_id)
        assert sim.stats.iam_token_requests == 1
        clock.now = 101
        await c.fetch(job_id)
        assert sim.stats.iam_token_requests == 2
        clock.now = 199
        await c.fetch(job_id)
        assert sim.stats.iam_token_requests == 2
        clock.now = 202
        await c.fetch(job_id)
        assert sim.stats.iam_token_requests == 3
    assert sim.stats.by_status == {201: 3, 200: 7}


async def test_short_lived_tokens_still_collapse_concurrent_fetches(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(token_ttl=200, iam_delay=0.05)
    job_ids = [sim.add_job(duration=100) for _ in range(10)]
    async with client(endpoint, password_auth(endpoint, margin=300)) as c:
        await asyncio.gather(*(c.fetch(job_id) for job_id in job_ids))
    assert sim.stats.iam_token_requests == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"iam_endpoint": "ftp://iam.example"},
        {"iam_endpoint": "iam.example"},
        {"username": ""},
        {"password": Secret("")},
        {"domain": ""},
        {"project_id": None},
    ],
)
def test_password_auth_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        password_auth("http://127.0.0.1:1", **kwargs)


# --- AK/SK ----------------------------------------------------------------------------------------------


async def test_aksk_signed_requests_are_accepted(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(ak=AK, sk=SK)
    job_id = sim.add_job(duration=100)
    auth = AKSKAuth(AK, Secret(SK), PROJECT)
    async with client(endpoint, auth) as c:
        for _ in range(3):
            assert (await c.fetch(job_id)).id == job_id
    assert sim.stats.by_status == {200: 3}
    assert repr(auth) == f"AKSKAuth(ak={AK!r}, sk=Secret('**********'))"


@pytest.mark.parametrize(
    ("ak", "sk", "message"),
    [
        (AK, "another-secret-key", "verify aksk signature fail"),
        ("OTHERAK0000", SK, "ak is not exist"),
    ],
)
async def test_aksk_wrong_key_is_an_auth_error(sim_factory: SimFactory, ak: str, sk: str, message: str) -> None:
    sim, endpoint = await sim_factory(ak=AK, sk=SK)
    job_id = sim.add_job(duration=100)
    async with client(endpoint, AKSKAuth(ak, Secret(sk), PROJECT)) as c:
        error = await fails(c.fetch(job_id), AuthError)
    assert (error.status, error.code, error.retryable) == (401, "APIGW.0301", False)
    assert error.message == f"Incorrect IAM authentication information: {message}"
    assert error.request_id is not None
    assert sim.stats.job_requests == 1  # AK/SK cannot be refreshed: no retry


def test_aksk_needs_both_keys() -> None:
    with pytest.raises(ConfigError, match="HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK"):
        AKSKAuth(AK, Secret(""))
    with pytest.raises(ConfigError, match="HUAWEICLOUD_SDK_AK and HUAWEICLOUD_SDK_SK"):
        AKSKAuth("", Secret(SK))


# --- auth_from_env ----------------------------------------------------------------------------------------

TOKEN_ENV = {"CCE_AUTH_TOKEN": "env-token"}
AKSK_ENV = {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK}
IAM_ENV = {
    "CCE_IAM_ENDPOINT": "https://iam.example.com",
    "CCE_IAM_USER": "alice",
    "CCE_IAM_PASSWORD": "pw",
    "CCE_IAM_DOMAIN": "acme",
}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({**TOKEN_ENV, **AKSK_ENV, **IAM_ENV}, TokenAuth),
        ({**TOKEN_ENV, **IAM_ENV}, TokenAuth),
        ({**TOKEN_ENV, "HUAWEICLOUD_SDK_AK": AK}, TokenAuth),
        ({**AKSK_ENV, **IAM_ENV}, AKSKAuth),
        ({"CCE_AUTH_TOKEN": "  ", **AKSK_ENV}, AKSKAuth),
        (IAM_ENV, PasswordAuth),
    ],
)
def test_auth_from_env_precedence(env: dict[str, str], expected: type) -> None:
    auth = auth_from_env(env, project_id=PROJECT)
    assert type(auth) is expected
    if isinstance(auth, AKSKAuth):
        assert (auth.ak, auth.project_id) == (AK, PROJECT)
    if isinstance(auth, PasswordAuth):
        assert (auth.iam_endpoint, auth.username, auth.domain, auth.project_id) == (
            "https://iam.example.com",
            "alice",
            "acme",
            PROJECT,
        )


def test_auth_from_env_iam_endpoint_argument() -> None:
    env = {k: v for k, v in IAM_ENV.items() if k != "CCE_IAM_ENDPOINT"}
    auth = auth_from_env(env, project_id=PROJECT, iam_endpoint="https://iam.other.example")
    assert isinstance(auth, PasswordAuth)
    assert auth.iam_endpoint == "https://iam.other.example"
    env_wins = auth_from_env(IAM_ENV, project_id=PROJECT, iam_endpoint="https://iam.other.example")
    assert isinstance(env_wins, PasswordAuth)
    assert env_wins.iam_endpoint == "https://iam.example.com"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, ["CCE_AUTH_TOKEN", "HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK", "CCE_IAM_USER", "CCE_IAM_PASSWORD"]),
        ({"CCE_AUTH_TOKEN": ""}, ["CCE_AUTH_TOKEN"]),
        ({"HUAWEICLOUD_SDK_AK": AK}, ["HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK"]),
        ({"HUAWEICLOUD_SDK_SK": SK}, ["HUAWEICLOUD_SDK_AK", "HUAWEICLOUD_SDK_SK"]),
        ({"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": " "}, ["HUAWEICLOUD_SDK_SK"]),
        ({k: v for k, v in IAM_ENV.items() if k != "CCE_IAM_ENDPOINT"}, ["CCE_IAM_ENDPOINT"]),
    ],
)
def test_auth_from_env_names_missing_variables(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        auth_from_env(env, project_id=PROJECT)
    assert type(info.value) is ConfigError
    for name in names:
        assert name in info.value.message


@pytest.mark.parametrize("missing", ["CCE_IAM_USER", "CCE_IAM_PASSWORD", "CCE_IAM_DOMAIN"])
def test_auth_from_env_names_the_missing_iam_variable(missing: str) -> None:
    env = {k: v for k, v in IAM_ENV.items() if k != missing}
    with pytest.raises(ConfigError) as info:
        auth_from_env(env, project_id=PROJECT)
    assert missing in info.value.message


def test_auth_from_env_never_shows_secrets() -> None:
    env = {
        "CCE_AUTH_TOKEN": "tok-Env-9999",
        "HUAWEICLOUD_SDK_AK": AK,
        "HUAWEICLOUD_SDK_SK": "sk-Env-9999",
        **{**IAM_ENV, "CCE_IAM_PASSWORD": "pw-Env-9999"},
    }
    for e in (
        env,
        {k: v for k, v in env.items() if k != "CCE_AUTH_TOKEN"},
        IAM_ENV | {"CCE_IAM_PASSWORD": "pw-Env-9999"},
    ):
        text = repr(auth_from_env(e, project_id=PROJECT))
        assert "Env-9999" not in text
        assert "**********" in text
