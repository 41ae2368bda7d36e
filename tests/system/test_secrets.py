"""The secrets proof: no credential reaches a log line, an exception, a repr or an event, on any path we can drive.

Distinctive secrets are fed in, every error path the simulator (and a webhook receiver) can produce is driven
with all loggers captured at DEBUG, and every text that could reach a user is searched for them.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monitor.cce.auth import AKSKAuth, PasswordAuth, TokenAuth, auth_from_env
from monitor.cce.client import CCEClient, ClientSettings
from monitor.config import complete_config, complete_project, parse_config
from monitor.core.errors import (
    AuthError,
    ConfigError,
    ConnectError,
    MalformedResponseError,
    MonitorError,
    NotFoundError,
    RequestTimeoutError,
    ServerError,
    SinkError,
    ThrottledError,
)
from monitor.core.events import Event, EventType
from monitor.core.secret import Secret
from monitor.engine.pipeline import SinkBinding, watch
from monitor.engine.scheduler import SchedulerSettings
from monitor.sim import SimulatorConfig
from monitor.sinks import create_sink
from monitor.testing import Received, Receiver, Reply
from tests.conftest import SimFactory

TOKEN = "tok-SECRET-1111"
SK = "sk-SECRET-2222"
PASSWORD = "pw-SECRET-3333"
HOOK_KEY = b"hook-SECRET-4444"
HOOK_B64 = base64.b64encode(HOOK_KEY).decode()
HOOK_SECRET = "whsec_" + HOOK_B64
AK = "AKSECRETTEST0001"  # an access key id is not secret; the SK is
SECRETS = (TOKEN, SK, PASSWORD, HOOK_SECRET, HOOK_B64, HOOK_KEY.decode())
MARKER = "SECRET-"  # in every secret above but the base64 one: catches partial leaks too
PROJECT = SimulatorConfig().project_id
BASE_YAML = f"endpoint: http://127.0.0.1:1\nproject_id: {PROJECT}\n"


def assert_clean(*texts: str, also: tuple[str, ...] = ()) -> None:
    for text in texts:
        for secret in (*SECRETS, *also):
            assert secret not in text, f"secret {secret[:6]}... leaked into: {text[:300]!r}"
        assert MARKER not in text, f"a secret fragment leaked into: {text[:300]!r}"


def shown_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and the causes/contexts a traceback, a logger or rich would show."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None


def full_chain(exc: BaseException) -> Iterator[BaseException]:
    """Every exception reachable through ``__cause__`` and ``__context__``, suppressed or not."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__]


def assert_error_clean(exc: BaseException, also: tuple[str, ...] = ()) -> None:
    for item in shown_chain(exc):
        assert_clean(str(item), repr(item), repr(item.args), also=also)
    assert_clean("".join(traceback.format_exception(exc)), also=also)


async def raised(awaitable: Awaitable[object], cls: type[MonitorError]) -> MonitorError:
    with pytest.raises(MonitorError) as info:
        await awaitable
    assert type(info.value) is cls, repr(info.value)
    return info.value


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class SubjectTokens:
    """Records the IAM tokens the simulator issues (X-Subject-Token), which are secrets too."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.config = aiohttp.TraceConfig()
        self.config.on_request_end.append(self._ended)

    async def _ended(self, session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        if token := params.response.headers.get("X-Subject-Token"):
            self.tokens.append(token)


# --- token auth: every answer the job API can give ----------------------------------------------------------

TOKEN_CASES: dict[str, tuple[dict[str, Any], type[MonitorError]]] = {
    "bad_token": ({"token": "some-other-token"}, AuthError),
    "expired": ({}, AuthError),
    "not_found": ({}, NotFoundError),
    "throttled": ({"rate_limit": 0.01}, ThrottledError),
    "server_error": ({"p_500": 1.0}, ServerError),
    "html_503": ({"p_503_html": 1.0}, ServerError),
    "malformed": ({"p_malformed": 1.0}, MalformedResponseError),
    "dropped": ({"p_drop": 1.0}, ConnectError),
    "timeout": ({"p_slow": 1.0, "slow_seconds": 5.0}, RequestTimeoutError),
    "unreachable": ({}, ConnectError),
}


@pytest.mark.parametrize("case", list(TOKEN_CASES))
async def test_token_never_leaks(sim_factory: SimFactory, logs: pytest.LogCaptureFixture, case: str) -> None:
    config, expected = TOKEN_CASES[case]
    sim, endpoint = await sim_factory(**{"token": TOKEN, **config})
    job_id = sim.add_job(duration=100)
    if case == "unreachable":
        endpoint = f"http://127.0.0.1:{closed_port()}"
    auth = TokenAuth(Secret(TOKEN))
    settings = ClientSettings(endpoint=endpoint, project_id=PROJECT, total_timeout=0.3)
    async with CCEClient(settings, auth) as client:
        if case in ("expired", "throttled"):
            await client.fetch(job_id)
        if case == "expired":
            sim.expire_tokens()
        error = await raised(client.fetch("no-such-job" if case == "not_found" else job_id), expected)
        assert_error_clean(error)
        assert_clean(repr(client), repr(auth), str(auth), repr(settings), repr(sim.config), str(sim.config))
    assert_clean(logs.text)


# --- IAM password ------------------------------------------------------------------------------------------


def iam_auth(endpoint: str, password: str = PASSWORD, **kwargs: Any) -> PasswordAuth:
    return PasswordAuth(
        iam_endpoint=endpoint,
        username="monitor",
        password=Secret(password),
        domain="sim-domain",
        project_id=PROJECT,
        **kwargs,
    )


IAM_CASES: dict[str, tuple[dict[str, Any], type[MonitorError]]] = {
    "wrong_password": ({}, AuthError),
    "iam_500": ({"iam_password": PASSWORD, "faults_on_iam": True, "p_500": 1.0}, ServerError),
    "iam_drop": ({"iam_password": PASSWORD, "faults_on_iam": True, "p_drop": 1.0}, ConnectError),
    "iam_timeout": ({"iam_password": PASSWORD, "faults_on_iam": True, "p_slow": 1.0}, RequestTimeoutError),
    "iam_unreachable": ({"iam_password": PASSWORD}, ConnectError),
}


@pytest.mark.parametrize("case", list(IAM_CASES))
async def test_iam_password_never_leaks(sim_factory: SimFactory, logs: pytest.LogCaptureFixture, case: str) -> None:
    config, expected = IAM_CASES[case]
    sim, endpoint = await sim_factory(**config)
    job_id = sim.add_job(duration=100)
    iam_endpoint = f"http://127.0.0.1:{closed_port()}" if case == "iam_unreachable" else endpoint
    auth = iam_auth(iam_endpoint, timeout=0.3)
    settings = ClientSettings(endpoint=endpoint, project_id=PROJECT, total_timeout=0.3)
    async with CCEClient(settings, auth) as client:
        error = await raised(client.fetch(job_id), expected)
        assert_error_clean(error)
        assert_clean(repr(client), repr(auth), str(auth), repr(settings), repr(sim.config), str(sim.config))
    assert sim.stats.tokens_issued == 0
    assert_clean(logs.text)


async def test_issued_iam_tokens_never_leak(sim_factory: SimFactory, logs: pytest.LogCaptureFixture) -> None:
    sim, endpoint = await sim_factory(iam_password=PASSWORD)
    job_id = sim.add_job(duration=100)
    subject = SubjectTokens()
    auth = iam_auth(endpoint)
    errors: list[MonitorError] = []
    async with aiohttp.ClientSession(trace_configs=[subject.config]) as session:
        client = CCEClient(
            ClientSettings(endpoint=endpoint, project_id=PROJECT, total_timeout=0.3), auth, session=session
        )
        await client.fetch(job_id)
        sim.expire_tokens()  # 401, a new token, success
        await client.fetch(job_id)
        errors.append(await raised(client.fetch("no-such-job"), NotFoundError))
        sim.set_faults(p_500=1.0)
        errors.append(await raised(client.fetch(job_id), ServerError))
        sim.set_faults(p_500=0.0, p_malformed=1.0)
        errors.append(await raised(client.fetch(job_id), MalformedResponseError))
        sim.set_faults(p_malformed=0.0)
        sim.expire_tokens()
        sim.set_token_ttl(1e-6)  # the next token is stale on arrival: the 401 retry fails too
        errors.append(await raised(client.fetch(job_id), AuthError))
        assert_clean(repr(client), repr(auth))
    assert len(subject.tokens) == 3
    issued = tuple(subject.tokens)
    for error in errors:
        assert_error_clean(error, also=issued)
    assert_clean(repr(auth), logs.text, also=issued)
    assert "IAM token refused" in logs.text  # the DEBUG/INFO capture works


# --- what a server sends back: a header too large, a line the parser refuses, an echo ------------------------


def assert_no_piece(secret: str, *texts: str, size: int = 20) -> None:
    """No ``size``-character piece of ``secret`` in any of ``texts`` (a quoted header is usually cut short)."""
    pieces = {secret[i : i + size] for i in range(len(secret) - size + 1)}
    for text in texts:
        for i in range(len(text) - size + 1):
            assert text[i : i + size] not in pieces, f"a piece of a secret leaked into: {text[:300]!r}"


async def test_iam_token_beyond_the_header_limit_never_leaks(
    sim_factory: SimFactory, logs: pytest.LogCaptureFixture
) -> None:
    # 40,000 characters: beyond our 32 KiB header limit, so aiohttp refuses X-Subject-Token and quotes its start.
    sim, endpoint = await sim_factory(iam_password=PASSWORD, token_length=40_000)
    job_id = sim.add_job(duration=100)
    auth = iam_auth(endpoint)
    settings = ClientSettings(endpoint=endpoint, project_id=PROJECT, total_timeout=5)
    async with CCEClient(settings, auth) as client:
        error = await raised(client.fetch(job_id), ConnectError)
    assert "bytes when reading" in str(error)  # the cause is still told
    [issued] = [t for t in sim.issued_tokens() if t != sim.config.token]
    assert len(issued) == 40_000
    assert_error_clean(error)
    shown = [str(e) for e in shown_chain(error)] + [repr(e) for e in shown_chain(error)]
    assert_no_piece(issued, *shown, "".join(traceback.format_exception(error)), logs.text)


async def test_cli_reports_an_oversized_iam_token_without_it(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(iam_password=PASSWORD, token_length=40_000)
    job_id = sim.add_job(duration=100)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCE_", "HUAWEICLOUD_"))}
    env |= {
        "CCE_ENDPOINT": endpoint,
        "CCE_PROJECT_ID": PROJECT,
        "CCE_IAM_ENDPOINT": endpoint,
        "CCE_IAM_USER": "monitor",
        "CCE_IAM_PASSWORD": PASSWORD,
        "CCE_IAM_DOMAIN": "sim-domain",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "monitor.cli", "get", job_id, "--log-level", "debug",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode == 1
    assert "IAM token request" in err.decode()
    [issued] = [t for t in sim.issued_tokens() if t != sim.config.token]
    assert_no_piece(issued, out.decode(), err.decode())
    assert_clean(out.decode(), err.decode())


LONG_TOKEN = "tok-SECRET-" + "".join(f"{i:04x}" for i in range(400))  # 1,611 characters, no repeats


def _refused_line(kind: str, echo: bytes) -> bytes:
    if kind == "bad_header_name":
        return b"HTTP/1.1 200 OK\r\nX-Echo\x01: " + echo + b"\r\nContent-Length: 2\r\n\r\n{}"
    if kind == "no_colon":
        return b"HTTP/1.1 200 OK\r\n" + echo + b"\r\nContent-Length: 2\r\n\r\n{}"
    if kind == "bad_status_line":
        return b"HTTP/1.1 2x0 " + echo + b"\r\n\r\n"
    assert kind == "header_too_long"
    return b"HTTP/1.1 200 OK\r\nX-Echo: " + echo * 30 + b"\r\nContent-Length: 2\r\n\r\n{}"


@pytest.mark.parametrize("kind", ["bad_header_name", "no_colon", "bad_status_line", "header_too_long"])
async def test_parser_errors_quoting_the_token_never_leak(logs: pytest.LogCaptureFixture, kind: str) -> None:
    """A server that answers with a line aiohttp refuses, holding our token: the error must not quote it."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        sent = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"x-auth-token:"))
        writer.write(_refused_line(kind, sent.split(b":", 1)[1].strip()))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = ClientSettings(endpoint=f"http://127.0.0.1:{port}", project_id=PROJECT, total_timeout=5)
    try:
        async with CCEClient(settings, TokenAuth(Secret(LONG_TOKEN))) as client:
            error = await raised(client.fetch("job-1"), ConnectError)
    finally:
        server.close()
        await server.wait_closed()
    assert "ClientResponseError: 400" in str(error)
    assert_error_clean(error, also=(LONG_TOKEN,))
    assert_no_piece(LONG_TOKEN, str(error), repr(error), logs.text)


async def test_error_bodies_echoing_the_token_are_masked(logs: pytest.LogCaptureFixture) -> None:
    """A gateway that quotes the start of a refused token in its error body."""

    def refuse(received: Received) -> Reply:
        quoted = received.headers["X-Auth-Token"][:60]
        return Reply.json({"error_code": "APIGW.0301", "error_msg": f"bad token {quoted}..."}, status=401)

    async with Receiver(refuse) as gateway:
        settings = ClientSettings(endpoint=gateway.base, project_id=PROJECT, total_timeout=5)
        async with CCEClient(settings, TokenAuth(Secret(LONG_TOKEN))) as client:
            error = await raised(client.fetch("job-1"), AuthError)
    assert "bad token ***..." in str(error)
    assert_error_clean(error, also=(LONG_TOKEN,))
    assert_no_piece(LONG_TOKEN, str(error), repr(error), logs.text, size=12)


# --- AK/SK -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sim_sk", "fault", "expected"),
    [
        ("sk-real-key-5555", {}, AuthError),  # our SK is wrong
        (SK, {}, NotFoundError),
        (SK, {"p_500": 1.0}, ServerError),
        (SK, {"p_malformed": 1.0}, MalformedResponseError),
    ],
)
async def test_secret_key_never_leaks(
    sim_factory: SimFactory,
    logs: pytest.LogCaptureFixture,
    sim_sk: str,
    fault: dict[str, float],
    expected: type[MonitorError],
) -> None:
    sim, endpoint = await sim_factory(ak=AK, sk=sim_sk, **fault)
    job_id = sim.add_job(duration=100)
    auth = AKSKAuth(AK, Secret(SK), PROJECT)
    settings = ClientSettings(endpoint=endpoint, project_id=PROJECT)
    async with CCEClient(settings, auth) as client:
        target = "no-such-job" if expected is NotFoundError else job_id
        error = await raised(client.fetch(target), expected)
    assert_error_clean(error, also=(sim_sk,))
    assert_clean(repr(client), repr(auth), str(auth), repr(sim.config), logs.text, also=(sim_sk,))


# --- configuration ------------------------------------------------------------------------------------------

SECRET_ENV = {"TOK": TOKEN, "AKID": AK, "SKEY": SK, "PW": PASSWORD, "HOOK": HOOK_SECRET}

LITERAL_SECRETS = [
    f'auth: {{token: "{TOKEN}"}}',
    f"auth:\n  token: {TOKEN}",
    f'auth: {{ak: {AK}, sk: "{SK}"}}',
    f'auth: {{password: {{user: monitor, password: "{PASSWORD}", domain: d}}}}',
    f'auth: {{password: "{PASSWORD}"}}',
    f'sinks: [{{type: webhook, url: "http://127.0.0.1:1/hook", secret: "{HOOK_SECRET}"}}]',
]


@pytest.mark.parametrize("extra", LITERAL_SECRETS)
def test_literal_secrets_are_refused_without_echo(logs: pytest.LogCaptureFixture, extra: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE_YAML + extra + "\n", env=SECRET_ENV)
    assert type(info.value) is ConfigError
    assert "secrets must be given as ${ENV_VAR} references" in info.value.message
    assert_error_clean(info.value)
    assert_clean(logs.text)


BAD_WITH_REFERENCES = [
    'auth: {token: "${TOK}", ak: "${AKID}", sk: "${SKEY}"}',  # two kinds
    'auth: {sk: "${SKEY}"}',  # sk without ak
    'auth: {token: "${TOK}", tokn: "${TOK}"}',  # unknown key
    'auth: {token: "${TOK}"}\nhttp: {total_timeout: "${TOK}"}',  # a secret where a number goes
    'auth: {token: "${TOK}"}\nshutdown_deadline: "${PW}"',
    'auth: {password: {user: monitor, password: "${PW}"}}',  # domain missing
    'auth: {password: "${PW}"}',  # a string where an object goes
    'auth: {token: "${TOK}"}\nendpoint: "${PW}"\nnonsense: 1',
    'auth: {token: "${TOK}"}\nlabels: ["${SKEY}"]',
    'auth: {token: "${MISSING}"}',  # unset variable
    'auth: {token: "${TOK}"',  # YAML syntax error after a reference
    f'auth: {{token: "{TOKEN}"',  # YAML syntax error around a literal
]


def expect_config_error(extra: str) -> ConfigError:
    text = BASE_YAML + extra + "\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, env=SECRET_ENV)
    assert type(info.value) is ConfigError
    return info.value


@pytest.mark.parametrize("extra", BAD_WITH_REFERENCES)
def test_config_errors_with_references_never_echo(logs: pytest.LogCaptureFixture, extra: str) -> None:
    error = expect_config_error(extra)
    assert_error_clean(error)
    assert_clean(logs.text)


@pytest.mark.parametrize("extra", [BAD_WITH_REFERENCES[0], BAD_WITH_REFERENCES[-1]])
def test_config_error_context_holds_no_secret(extra: str) -> None:
    error = expect_config_error(extra)
    for item in full_chain(error):
        assert_clean(str(item), repr(item))


def test_parsed_config_builds_masked_providers(logs: pytest.LogCaptureFixture) -> None:
    for auth_yaml in (
        'auth: {token: "${TOK}"}',
        'auth: {ak: "${AKID}", sk: "${SKEY}"}',
        'iam_endpoint: http://127.0.0.1:1\nauth: {password: {user: monitor, password: "${PW}", domain: d}}',
    ):
        config = parse_config(BASE_YAML + auth_yaml + "\n", env=SECRET_ENV)
        auth = config.make_auth()
        assert auth is not None
        assert_clean(repr(auth), str(auth), repr(config.client_settings()))
    assert_clean(logs.text)


def test_parsed_config_repr_hides_secrets() -> None:
    yaml_text = (
        BASE_YAML
        + 'auth: {token: "${TOK}"}\n'
        + 'sinks: [{type: webhook, url: "http://127.0.0.1:1/hook", secret: "${HOOK}"}]\n'
    )
    config = parse_config(yaml_text, env=SECRET_ENV)
    assert_clean(repr(config), str(config), repr(config.auth))


def test_auth_from_env_never_shows_secrets(logs: pytest.LogCaptureFixture) -> None:
    env = {"CCE_AUTH_TOKEN": TOKEN, "HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK}
    iam = {"CCE_IAM_ENDPOINT": "http://127.0.0.1:1", "CCE_IAM_USER": "u", "CCE_IAM_PASSWORD": PASSWORD}
    for variant in (env, {k: v for k, v in env.items() if k != "CCE_AUTH_TOKEN"}, {**iam, "CCE_IAM_DOMAIN": "d"}):
        assert_clean(repr(auth_from_env(variant, project_id=PROJECT)))
    for broken in ({"HUAWEICLOUD_SDK_SK": SK}, iam, {"CCE_IAM_USER": "u", "CCE_IAM_PASSWORD": PASSWORD}):
        with pytest.raises(ConfigError) as info:
            auth_from_env(broken, project_id=PROJECT)
        assert_error_clean(info.value)
    assert_clean(logs.text)


@pytest.mark.parametrize("endpoint", [f"htps://monitor:{PASSWORD}@cce.example.com", f"//monitor:{PASSWORD}@"])
def test_endpoint_credentials_are_not_echoed(endpoint: str) -> None:
    with pytest.raises(ConfigError) as info:
        ClientSettings(endpoint=endpoint, project_id=PROJECT)
    assert_error_clean(info.value)


# --- watch: the events a run produces ---------------------------------------------------------------------

WATCH_SETTINGS = SchedulerSettings(
    interval=0.2, min_interval=0.1, max_interval=0.2, rate=50, error_backoff=0.1, error_backoff_max=0.2, job_timeout=10
)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver that answers 500 to everything."""
    async with Receiver(Reply.json({"message": "receiver exploded"}, status=500)) as rec:
        yield rec


def webhook_options() -> dict[str, object]:
    return {"secret": HOOK_SECRET, "max_attempts": 2, "backoff_initial": 0.01, "backoff_max": 0.02}


async def test_watch_events_carry_no_secret(
    sim_factory: SimFactory, logs: pytest.LogCaptureFixture, receiver: Receiver
) -> None:
    sim, endpoint = await sim_factory(token=TOKEN)
    job_ids = [sim.add_job(duration=0.5), sim.add_job(duration=0.5, fail=True)]
    events: list[Event] = []
    auth = TokenAuth(Secret(TOKEN))
    settings = ClientSettings(endpoint=endpoint, project_id=PROJECT)
    sink = create_sink(f"webhook:{receiver.url}", {**webhook_options(), "rate": 1000})
    async with CCEClient(settings, auth) as client:
        result = await asyncio.wait_for(
            watch(
                job_ids,
                client=client,
                settings=WATCH_SETTINGS,
                sinks=[SinkBinding(sink)],
                observers=[events.append],
                labels={"team": "infra"},
            ),
            15,
        )
        assert_clean(repr(client), repr(sink), sink.name)
    assert [result.outcomes[j] for j in job_ids] == ["Success", "Failed"]
    assert len(receiver.requests) >= 2
    assert {e.type for e in events} >= {EventType.JOB_PHASE_CHANGED, EventType.SUBJOB_PHASE_CHANGED}
    assert_clean(*(e.to_json().decode() for e in events), *(repr(e) for e in events), logs.text)


@pytest.mark.parametrize("trouble", ["server_error", "expired"])
async def test_watch_error_events_carry_no_secret(
    sim_factory: SimFactory, logs: pytest.LogCaptureFixture, trouble: str
) -> None:
    sim, endpoint = await sim_factory(token=TOKEN)
    job_id = sim.add_job(duration=30)
    if trouble == "server_error":
        sim.set_faults(p_500=1.0)
        wanted = EventType.JOB_POLL_FAILED
    else:
        sim.expire_tokens()
        wanted = EventType.MONITOR_AUTH_FAILED
    events: list[Event] = []
    stop = asyncio.Event()

    def observe(event: Event) -> None:
        events.append(event)
        if event.type is wanted:
            stop.set()

    settings = ClientSettings(endpoint=endpoint, project_id=PROJECT)
    async with CCEClient(settings, TokenAuth(Secret(TOKEN))) as client:
        result = await asyncio.wait_for(
            watch([job_id], client=client, settings=WATCH_SETTINGS, observers=[observe], stop=stop), 15
        )
    assert result.interrupted
    [failed] = [e for e in events if e.type is wanted]
    assert failed.detail
    assert ("HTTP 500" if trouble == "server_error" else "HTTP 401") in failed.detail
    assert_clean(*(e.to_json().decode() for e in events), logs.text)


# --- webhook sink ----------------------------------------------------------------------------------------


async def test_webhook_secret_never_leaks(receiver: Receiver, logs: pytest.LogCaptureFixture) -> None:
    sink = create_sink(f"webhook:{receiver.url}", webhook_options())
    event = Event(id="0" * 32, type=EventType.JOB_PHASE_CHANGED, project_id=PROJECT, job_id="job-1", phase="Running")
    try:
        error = await raised(sink.send(event), SinkError)
    finally:
        await sink.aclose()
    assert len(receiver.requests) == 2
    assert error.retryable
    assert "HTTP 500" in error.message
    assert_error_clean(error)
    settings = getattr(sink, "settings", None)
    assert_clean(repr(sink), str(sink), sink.name, repr(settings), str(settings))
    assert "attempt 1/2" in logs.text  # the DEBUG capture works
    assert_clean(logs.text)


async def test_webhook_config_errors_never_echo_the_secret(logs: pytest.LogCaptureFixture) -> None:
    bad_options: list[dict[str, object]] = [
        {"secret": "whsec_" + HOOK_KEY.decode() + "!!not-base64"},
        {"secret": HOOK_SECRET, "max_attempts": 0},
        {"secret": HOOK_SECRET, "bogus": 1},
        {"secret": HOOK_SECRET, "headers": {"Authorization": f"Bearer {TOKEN}\n"}},
    ]
    for options in bad_options:
        with pytest.raises(ConfigError) as info:
            create_sink("webhook:http://127.0.0.1:1/hook", options)
        assert_error_clean(info.value)
    with pytest.raises(ConfigError) as info:
        create_sink(f"webhook:ftp://user:{PASSWORD}@127.0.0.1/hook?token={TOKEN}", {"secret": HOOK_SECRET})
    assert_error_clean(info.value)
    assert_clean(logs.text)


# --- clouds.yaml / OS_* credentials and temporary AK/SK security tokens ------------------------------------------

STS = "sts-SECRET-5555"


def _clouds(tmp_path: Path, auth: str) -> dict[str, str]:
    (tmp_path / "clouds.yaml").write_text(f"clouds:\n  otc:\n    region_name: eu-de\n    auth:\n{auth}")
    return {"OS_CLOUD": "otc", "OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml")}


@pytest.mark.parametrize(
    "auth",
    [
        f"      auth_url: http://127.0.0.1:1/v3\n      username: u\n      password: {PASSWORD}\n"
        "      user_domain_name: d\n",
        f"      ak: {AK}\n      sk: {SK}\n",
    ],
    ids=["password", "aksk"],
)
async def test_clouds_yaml_secrets_never_leak(tmp_path: Path, logs: pytest.LogCaptureFixture, auth: str) -> None:
    env = {**_clouds(tmp_path, auth), "CCE_ENDPOINT": "http://127.0.0.1:1"}
    cfg = complete_config(None, env=env)
    provider = cfg.credentials(env)
    assert_clean(repr(cfg), str(cfg), repr(provider), repr(cfg._profile))
    with pytest.raises(MonitorError) as info:  # IAM is down: the lookup fails
        await complete_project(cfg, provider)
    assert_error_clean(info.value)
    assert_clean(logs.text)


@pytest.mark.parametrize(
    "auth",
    [
        f"      username: u\n      password: {PASSWORD}\n",  # no domain, no auth_url
        f"      ak: AK\n      password: {PASSWORD}: [\n",  # not YAML
        f"      sk: {SK}\n",  # sk without ak
    ],
)
def test_broken_clouds_yaml_errors_never_echo(tmp_path: Path, logs: pytest.LogCaptureFixture, auth: str) -> None:
    env = {**_clouds(tmp_path, auth), "CCE_ENDPOINT": "http://127.0.0.1:1", "CCE_PROJECT_ID": PROJECT}
    with pytest.raises(ConfigError) as info:
        complete_config(None, env=env).credentials(env)
    assert_error_clean(info.value)
    assert_clean(logs.text)


async def test_security_token_never_leaks(sim_factory: SimFactory, logs: pytest.LogCaptureFixture) -> None:
    sim, endpoint = await sim_factory(ak=AK, sk=SK, security_token="sts-other-token")
    env = {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK, "HUAWEICLOUD_SDK_SECURITY_TOKEN": STS}
    auth = auth_from_env(env, project_id=PROJECT)
    assert_clean(repr(auth), also=(STS,))
    async with CCEClient(ClientSettings(endpoint=endpoint, project_id=PROJECT, total_timeout=5), auth) as c:
        with pytest.raises(AuthError) as info:
            await c.fetch(sim.add_job(duration=10))
    assert_error_clean(info.value, also=(STS,))
    assert_clean(logs.text, also=(STS,))
    config = parse_config(BASE_YAML + 'auth: {ak: A, sk: "${S}", security_token: "${T}"}\n', env={"S": SK, "T": STS})
    assert_clean(repr(config), repr(config.make_auth()), also=(STS,))
