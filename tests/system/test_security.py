"""Security defaults: TLS verification, constant-time bearer tokens, file modes, process arguments, secrets.

What the issue asks for, checked against real servers on 127.0.0.1:

* TLS is verified by default; ``ca_bundle`` adds a CA without switching host name checks off; nothing anywhere
  turns verification off (no ``ssl=False``, ``verify_ssl``, ``CERT_NONE``).
* The API's bearer token is compared with ``hmac.compare_digest``; every near miss is a 401.
* Files the daemon writes (state database with its ``-wal``/``-shm``, JSON Lines) are 0600 even under umask 0.
* No credential travels in process arguments: the CLI has no flag for one, and real ``watch``/``run`` processes
  work with secrets in the environment only.
* The secrets sweep beyond ``tests/test_secrets.py``: a whole daemon (``${ENV}`` secrets for CCE, the API and a
  webhook that fails and echoes what it got), chat sinks whose URLs carry tokens, ``check-config``, the API's
  outputs, the SQLite files, DEBUG logs of every logger, exceptions and reprs.

Certificates come from the ``openssl`` command line (a throw-away CA and leaves for 127.0.0.1); the TLS tests
are skipped where it is missing. Defects this review found are fixed; their tests stay as regression tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import importlib
import inspect
import io
import logging
import os
import re
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web
from click.testing import CliRunner

import monitor
import monitor.daemon.api
from monitor.cce.auth import PasswordAuth, TokenAuth
from monitor.cce.client import CCEClient, ClientSettings, HttpSettings
from monitor.cli import cli
from monitor.config import Config, parse_config
from monitor.core.errors import ConfigError, ConnectError, SinkError
from monitor.core.events import Event, EventType
from monitor.core.secret import Secret
from monitor.daemon.api import AddResult, make_app, serve
from monitor.daemon.service import Daemon
from monitor.daemon.store import State, StoredJob
from monitor.sim import Simulator, SimulatorConfig
from monitor.sinks import create_sink
from monitor.testing import Received, Receiver, Reply, running_daemon
from tests.conftest import SimFactory

PROJECT = SimulatorConfig().project_id

# Distinctive secrets: each holds MARKER, so a partial leak is caught too.
MARKER = "SECRET-"
CCE_TOKEN = "cce-tok-SECRET-a1b2c3"
SK = "sk-SECRET-d4e5f6"
AK = "AKSECURITYTEST01"  # an access key id is not secret; the SK is
IAM_PASSWORD = "pw-SECRET-g7h8i9"
API_TOKEN = "api-tok-SECRET-j0k1l2"
HOOK_KEY = b"hook-SECRET-m3n4o5"
HOOK_B64 = base64.b64encode(HOOK_KEY).decode()
HOOK_SECRET = "whsec_" + HOOK_B64
HOOK_QUERY_TOKEN = "hookq-SECRET-p6q7r8"
HOOK_AUTH = "Bearer hookhdr-SECRET-s9t0u1"
SECRETS = (CCE_TOKEN, SK, IAM_PASSWORD, API_TOKEN, HOOK_KEY.decode(), HOOK_B64, HOOK_SECRET, HOOK_QUERY_TOKEN)

EXE = [sys.executable, "-m", "monitor.cli"]


def assert_clean(*texts: str | bytes, also: Sequence[str] = ()) -> None:
    """No secret (nor the marker every secret carries) in any of ``texts``."""
    for text in texts:
        data = text.encode() if isinstance(text, str) else text
        for secret in (*SECRETS, *also, MARKER):
            at = data.find(secret.encode())
            assert at < 0, f"{secret[:8]}... leaked: {data[max(0, at - 150) : at + 150]!r}"


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCE_", "HUAWEICLOUD_", "SIM_"))}
    env.update(extra)
    return env


async def until(check: Callable[[], bool | Awaitable[bool]], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit}s waiting for {what}")
        await asyncio.sleep(0.02)


def failed_event(job_id: str = "job-1", reason: str = "Install node failed", job_type: str = "CreateNode") -> Event:
    return Event(
        id="f" * 32,
        type=EventType.JOB_PHASE_CHANGED,
        project_id=PROJECT,
        job_id=job_id,
        job_type=job_type,
        phase="Failed",
        previous_phase="Running",
        reason=reason,
        rollout="pool-a",
    )


# ============================================================================================== TLS


@dataclass(frozen=True)
class Certs:
    ca: Path  # the test CA (PEM)
    server: tuple[Path, Path]  # cert, key for IP:127.0.0.1 / DNS:localhost, issued by the CA
    wrong_host: tuple[Path, Path]  # issued by the CA for another name only
    self_signed: tuple[Path, Path]  # for 127.0.0.1, issued by nobody
    other_ca: Path  # a second CA, standing in for the system's trust store
    other_server: tuple[Path, Path]  # for 127.0.0.1, issued by the second CA


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _ca(cwd: Path, name: str) -> Path:
    _openssl(
        cwd, "req", "-x509", "-new", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN=cce-monitor test {name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cwd / f"{name}.pem"


def _leaf(cwd: Path, name: str, san: str, ca: str = "ca") -> tuple[Path, Path]:
    (cwd / f"{name}.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        f"subjectAltName={san}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl(cwd, "req", "-new", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
    _openssl(
        cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
    )  # fmt: skip
    return cwd / f"{name}.pem", cwd / f"{name}.key"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is needed to make test certificates")
    d = tmp_path_factory.mktemp("tls")
    ca, other_ca = _ca(d, "ca"), _ca(d, "other-ca")
    server = _leaf(d, "server", "IP:127.0.0.1,DNS:localhost")
    other_server = _leaf(d, "other-server", "IP:127.0.0.1", ca="other-ca")
    wrong = _leaf(d, "wrong", "DNS:wrong-host.invalid")
    _openssl(
        d, "req", "-x509", "-new", *_EC, "-keyout", "self.key", "-out", "self.pem", "-days", "2",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
    )  # fmt: skip
    return Certs(ca, server, wrong, (d / "self.pem", d / "self.key"), other_ca, other_server)


TlsServe = Callable[[web.Application, tuple[Path, Path]], Awaitable[str]]


@pytest.fixture
async def serve_tls() -> AsyncIterator[TlsServe]:
    """``base = await serve_tls(app, (cert, key))``: ``https://127.0.0.1:PORT``."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, pair: tuple[Path, Path]) -> str:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*pair)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
        return f"https://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def quiet_handshakes() -> AsyncIterator[None]:
    """The servers log refused handshakes through the loop's exception handler; that is expected here."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), ssl.SSLError | ConnectionResetError):
            return
        lp.default_exception_handler(context)

    loop.set_exception_handler(handler)
    yield
    loop.set_exception_handler(previous)


async def tls_sim(serve_tls: TlsServe, pair: tuple[Path, Path], **config: Any) -> tuple[Simulator, str]:
    sim = Simulator(SimulatorConfig(**config))
    return sim, await serve_tls(sim.app, pair)


def cert_problem(text: str) -> bool:
    return "certificate" in text.lower()


@pytest.mark.usefixtures("quiet_handshakes")
async def test_client_refuses_an_unknown_ca_by_default(certs: Certs, serve_tls: TlsServe) -> None:
    sim, base = await tls_sim(serve_tls, certs.server, token=CCE_TOKEN)
    job_id = sim.add_job(duration=30)
    settings = ClientSettings(endpoint=base, project_id=PROJECT, total_timeout=5)
    async with CCEClient(settings, TokenAuth(Secret(CCE_TOKEN))) as client:
        with pytest.raises(ConnectError) as info:
            await client.fetch(job_id)
    assert cert_problem(str(info.value)), str(info.value)
    assert "\n" not in str(info.value)
    assert sim.stats.requests == 0  # the token never left: the handshake failed first
    assert_clean(str(info.value), repr(info.value))


async def test_client_trusts_its_ca_bundle(certs: Certs, serve_tls: TlsServe) -> None:
    sim, base = await tls_sim(serve_tls, certs.server, token=CCE_TOKEN)
    job_id = sim.add_job(duration=30)
    settings = ClientSettings(endpoint=base, project_id=PROJECT, ca_bundle=str(certs.ca))
    async with CCEClient(settings, TokenAuth(Secret(CCE_TOKEN))) as client:
        job = await client.fetch(job_id)
    assert job.id == job_id
    assert sim.stats.job_requests == 1


@pytest.mark.usefixtures("quiet_handshakes")
@pytest.mark.parametrize("which", ["wrong_host", "self_signed"])
async def test_ca_bundle_does_not_relax_other_checks(certs: Certs, serve_tls: TlsServe, which: str) -> None:
    # A certificate from our CA for another host name, or one the CA never signed: still refused.
    sim, base = await tls_sim(serve_tls, getattr(certs, which), token=CCE_TOKEN)
    job_id = sim.add_job(duration=30)
    settings = ClientSettings(endpoint=base, project_id=PROJECT, ca_bundle=str(certs.ca), total_timeout=5)
    async with CCEClient(settings, TokenAuth(Secret(CCE_TOKEN))) as client:
        with pytest.raises(ConnectError) as info:
            await client.fetch(job_id)
    assert cert_problem(str(info.value)), str(info.value)
    assert sim.stats.requests == 0


@pytest.mark.usefixtures("quiet_handshakes")
async def test_iam_password_is_never_sent_to_an_unverified_server(
    certs: Certs, serve_tls: TlsServe, logs: pytest.LogCaptureFixture
) -> None:
    sim, base = await tls_sim(serve_tls, certs.server, iam_password=IAM_PASSWORD)
    job_id = sim.add_job(duration=30)

    def auth() -> PasswordAuth:
        return PasswordAuth(
            iam_endpoint=base, username="monitor", password=Secret(IAM_PASSWORD), domain="sim-domain",
            project_id=PROJECT, timeout=5,
        )  # fmt: skip

    refused = auth()
    async with CCEClient(ClientSettings(endpoint=base, project_id=PROJECT, total_timeout=5), refused) as client:
        with pytest.raises(ConnectError) as info:
            await client.fetch(job_id)
    assert cert_problem(str(info.value)) and "IAM" in str(info.value), str(info.value)
    assert sim.stats.iam_token_requests == 0 and sim.stats.requests == 0
    assert_clean(str(info.value), repr(info.value), repr(refused))

    trusted = ClientSettings(endpoint=base, project_id=PROJECT, ca_bundle=str(certs.ca))
    async with CCEClient(trusted, auth()) as client:
        assert (await client.fetch(job_id)).id == job_id
    assert sim.stats.tokens_issued == 1
    assert_clean(logs.text)


def hooks_receiver(status: int = 204, *, echo: bool = False) -> Receiver:
    """A receiver that answers ``status``; with ``echo``, it quotes the request (URL with its query, headers,
    body) back in a JSON ``message``, as some receivers do when they refuse a request."""

    def quote(received: Received) -> Reply:
        quoted = {
            "path": received.path_qs,
            "headers": received.headers,
            "body": received.body.decode("utf-8", "replace"),
        }
        return Reply.json({"message": f"refused {orjson.dumps(quoted).decode()}"}, status=status)

    return Receiver(quote if echo else Reply(status))


def seen(received: Received) -> str:
    """The request target and headers, to show what was echoed."""
    return received.path_qs + repr(received.headers)


@pytest.mark.usefixtures("quiet_handshakes")
async def test_webhook_sink_verifies_tls_by_default(certs: Certs, serve_tls: TlsServe) -> None:
    hooks = hooks_receiver()
    base = await serve_tls(hooks.app(), certs.server)
    sink = create_sink(f"webhook:{base}/hook", {"secret": HOOK_SECRET, "max_attempts": 1})
    try:
        with pytest.raises(SinkError) as info:
            await sink.send(failed_event())
    finally:
        await sink.aclose()
    assert cert_problem(str(info.value)), str(info.value)
    assert len(hooks.requests) == 0


async def test_webhook_sink_accepts_a_ca_bundle(certs: Certs, serve_tls: TlsServe) -> None:
    hooks = hooks_receiver()
    base = await serve_tls(hooks.app(), certs.server)
    sink = create_sink(f"webhook:{base}/hook", {"ca_bundle": str(certs.ca), "max_attempts": 1})
    try:
        await sink.send(failed_event())
    finally:
        await sink.aclose()
    assert len(hooks.requests) == 1


CHAT_URLS: dict[str, tuple[str, dict[str, object]]] = {
    # platform: (path and query after the host, extra options); every token is a secret.
    "slack": ("/services/T0000/B0000/slackpath-SECRET-v2w3", {}),
    "teams": ("/workflows/w1/triggers/manual/paths/invoke?api-version=2016-06-01&sig=teamssig-SECRET-x4y5", {}),
    "feishu": ("/open-apis/bot/v2/hook/feishupath-SECRET-z6a7", {"secret": "feishusign-SECRET-b8c9"}),
    "dingtalk": ("/robot/send?access_token=dingtok-SECRET-d0e1", {"secret": "dingsign-SECRET-f2g3"}),
    "wecom": ("/cgi-bin/webhook/send?key=wecomkey-SECRET-h4i5", {}),
}
CHAT_SECRETS = tuple(re.findall(r"[a-z]+-SECRET-[a-z0-9]+", repr(CHAT_URLS)))
FAST_CHAT: dict[str, object] = {
    "coalesce": 0,
    "max_attempts": 2,
    "backoff_initial": 0.01,
    "backoff_max": 0.05,
    "rate_per_minute": 1000,
    "rate_per_second": None,
    "timeout": 5,
}


def chat_sink(platform: str, base: str, **options: object) -> Any:
    module = importlib.import_module(f"monitor.sinks.chat.{platform}")
    factory = getattr(module, f"make_{platform}_sink")
    path, extra = CHAT_URLS[platform]
    return factory(base + path, {**FAST_CHAT, **extra, **options})


@pytest.mark.usefixtures("quiet_handshakes")
@pytest.mark.parametrize("platform", list(CHAT_URLS))
async def test_chat_sinks_verify_tls_by_default(
    certs: Certs, serve_tls: TlsServe, logs: pytest.LogCaptureFixture, platform: str
) -> None:
    hooks = hooks_receiver()
    base = await serve_tls(hooks.app(), certs.server)
    sink = chat_sink(platform, base)
    try:
        await sink.send(failed_event())
        await until(lambda: sink.failed_messages >= 1, 10, "a failed message")
    finally:
        await sink.aclose()
    assert len(hooks.requests) == 0
    assert cert_problem(logs.text)
    assert_clean(logs.text, also=CHAT_SECRETS)


@pytest.mark.usefixtures("quiet_handshakes")
@pytest.mark.parametrize("platform", list(CHAT_URLS))
async def test_chat_sinks_accept_a_ca_bundle(
    certs: Certs, serve_tls: TlsServe, logs: pytest.LogCaptureFixture, platform: str
) -> None:
    hooks = hooks_receiver()
    base = await serve_tls(hooks.app(), certs.server)
    sink = chat_sink(platform, base, ca_bundle=str(certs.ca))
    try:
        await sink.send(failed_event())
        await until(lambda: len(hooks.requests) >= 1, 10, "a request through TLS")
    finally:
        await sink.aclose()
    assert not cert_problem(logs.text)
    assert_clean(logs.text, also=CHAT_SECRETS)


_OFF_SWITCHES = re.compile(
    r"ssl\s*=\s*False|verify_ssl|CERT_NONE|check_hostname\s*=\s*False|_create_unverified_context|"
    r"verify\s*=\s*False|PYTHONHTTPSVERIFY|insecure|ssl\.SSLContext\(",
    re.IGNORECASE,
)


def test_nothing_turns_tls_verification_off() -> None:
    package = Path(monitor.__file__).parent
    found = [
        f"{path.relative_to(package)}:{n}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _OFF_SWITCHES.search(line)
    ]
    assert found == []
    # No config key or sink option that could be one either.
    http_keys = {f.name for f in dataclasses.fields(HttpSettings)}
    assert Config.model_fields["http"].annotation is HttpSettings
    assert http_keys == {"connect_timeout", "total_timeout", "max_connections", "ca_bundle"}
    with pytest.raises(ConfigError, match="unknown option"):
        create_sink("webhook:https://127.0.0.1:1/hook", {"verify_ssl": False})


@pytest.mark.usefixtures("quiet_handshakes")
async def test_ca_bundle_adds_to_the_system_trust_store(
    certs: Certs, serve_tls: TlsServe, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.other_ca))  # the "system" store: it trusts the other CA
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    sim, base = await tls_sim(serve_tls, certs.other_server, token=CCE_TOKEN)
    job_id = sim.add_job(duration=30)
    port = int(base.rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl.create_default_context())  # it does
    writer.close()
    await writer.wait_closed()
    settings = ClientSettings(endpoint=base, project_id=PROJECT, ca_bundle=str(certs.ca), total_timeout=5)
    async with CCEClient(settings, TokenAuth(Secret(CCE_TOKEN))) as client:
        assert (await client.fetch(job_id)).id == job_id


@pytest.mark.parametrize("content", [None, "not a certificate\n", "-----BEGIN CERTIFICATE-----\nAAAA\n"])
async def test_a_bad_ca_bundle_is_a_config_error(tmp_path: Path, content: str | None) -> None:
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_text(content)
    with pytest.raises(ConfigError, match="ca_bundle"):
        settings = ClientSettings(endpoint="https://127.0.0.1:1", project_id=PROJECT, ca_bundle=str(bundle))
        async with CCEClient(settings, TokenAuth(Secret(CCE_TOKEN))):
            pass
    with pytest.raises(ConfigError, match="ca_bundle"):
        create_sink("webhook:https://127.0.0.1:1/hook", {"ca_bundle": str(bundle)})


def test_check_config_checks_the_ca_bundle(tmp_path: Path, cli_runner: CliRunner) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"endpoint: https://127.0.0.1:1\nproject_id: {PROJECT}\nauth: {{token: '${{TOK}}'}}\n"
        f"http: {{ca_bundle: {tmp_path / 'missing.pem'}}}\nstate: {{path: {tmp_path / 's.db'}}}\n"
    )
    result = cli_runner.invoke(cli, ["check-config", str(config)], env={"TOK": CCE_TOKEN})
    assert result.exit_code == 2 and "ca_bundle" in result.output


def plain_http_warnings(logs: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING and "http" in r.getMessage()]


@pytest.mark.parametrize("host", ["cce.example.invalid", "10.0.0.1", "127.0.0.1", "localhost", "[::1]"])
async def test_plain_http_off_loopback_is_not_silent(logs: pytest.LogCaptureFixture, host: str) -> None:
    """A token (CCE) or a password (IAM) over plain http: refused or warned about, except on loopback."""
    remote = host not in ("127.0.0.1", "localhost", "[::1]")
    try:
        settings = ClientSettings(endpoint=f"http://{host}", project_id=PROJECT)
        async with CCEClient(settings, TokenAuth(Secret(CCE_TOKEN))):
            pass
        PasswordAuth(
            iam_endpoint=f"http://{host}/", username="u", password=Secret(IAM_PASSWORD), domain="d", project_id=PROJECT
        )
    except ConfigError:
        assert remote  # refusing it is fine too, but not on loopback
        return
    warnings = plain_http_warnings(logs)
    assert len(warnings) == (2 if remote else 0), warnings
    assert_clean(*warnings)


@pytest.mark.parametrize("kind", ["webhook", "dingtalk", "slack"])
def test_sink_credentials_over_plain_http_are_not_silent(logs: pytest.LogCaptureFixture, kind: str) -> None:
    if kind == "webhook":
        create_sink("webhook:http://hooks.example.invalid/hook", {"headers": {"Authorization": HOOK_AUTH}})
    else:
        chat_sink(kind, "http://bot.example.invalid")
    assert plain_http_warnings(logs)


# ================================================================================ bearer comparison


def test_bearer_token_is_compared_in_constant_time() -> None:
    guard = inspect.getsource(monitor.daemon.api._bearer_guard)
    assert "hmac.compare_digest(" in guard
    assert not re.search(r"(==|!=)\s*expected|expected\s*(==|!=)", guard)
    assert "compare_digest(" in inspect.getsource(Secret.__eq__)


class NullControl:
    """The daemon side of the API; counts calls so a refused request can be shown to reach nothing."""

    def __init__(self) -> None:
        self.calls = 0

    async def add_jobs(self, job_ids: Sequence[str], labels: Mapping[str, str], rollout: str | None) -> AddResult:
        self.calls += 1
        return AddResult(accepted=list(job_ids), known=[])

    async def list_jobs(self, *, phase: str | None, rollout: str | None, labels: Mapping[str, str]) -> list[StoredJob]:
        self.calls += 1
        return []

    async def get_job(self, job_id: str) -> tuple[StoredJob, list[Event]] | None:
        self.calls += 1
        return None

    async def remove_job(self, job_id: str) -> bool:
        self.calls += 1
        return False

    def cluster(self) -> dict[str, Any] | None:
        return None

    def readiness(self) -> dict[str, bool]:
        return {"state": True}

    def rollouts(self) -> list[dict[str, Any]]:
        self.calls += 1
        return []

    def rollout(self, name: str) -> dict[str, Any] | None:
        self.calls += 1
        return None

    def metrics(self) -> tuple[bytes, str]:
        return b"", "text/plain"


NEAR_MISSES = [
    "",
    API_TOKEN[:-1],
    API_TOKEN[1:],
    API_TOKEN + "x",
    API_TOKEN + API_TOKEN,
    API_TOKEN.upper(),
    API_TOKEN[:-1] + chr(ord(API_TOKEN[-1]) ^ 1),
    API_TOKEN.replace("a", "\u0430"),  # Cyrillic a: looks the same
    "x" * 4096,
    f"{API_TOKEN} {API_TOKEN}",
    API_TOKEN + "\u200b",  # zero-width space
]


async def test_near_miss_tokens_are_401(logs: pytest.LogCaptureFixture) -> None:
    control = NullControl()
    runner, base = await serve(make_app(control, token=Secret(API_TOKEN)), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:

            async def status(headers: Mapping[str, str] | list[tuple[str, str]], path: str = "/v1/jobs") -> int:
                async with session.get(base + path, headers=headers) as resp:
                    body = await resp.read()
                    assert_clean(body, str(resp.headers))
                    assert resp.content_type == "application/json"
                    return resp.status

            for miss in NEAR_MISSES:
                header = f"Bearer {miss}".encode().decode("latin-1")  # as the wire would carry it
                assert await status({"Authorization": header}) == 401, repr(miss)
            for header in (API_TOKEN, f"Basic {API_TOKEN}", f"Token {API_TOKEN}", f"Bearer{API_TOKEN}", "Bearer"):
                assert await status({"Authorization": header}) == 401, header
            assert await status({}, f"/v1/jobs?access_token={API_TOKEN}") == 401
            assert await status([("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {API_TOKEN}")]) == 401
            assert await status({"X-Auth-Token": API_TOKEN}) == 401
            assert control.calls == 0
            assert await status({"Authorization": f"Bearer {API_TOKEN}"}) == 200
            assert await status({"Authorization": f"bearer  {API_TOKEN} "}) == 200  # the scheme is case-insensitive
    finally:
        await runner.cleanup()
    assert control.calls == 2
    assert_clean(logs.text)


# ========================================================================================= file modes


@pytest.mark.parametrize("mask", [0o000, 0o022])
async def test_state_database_files_are_0600(tmp_path: Path, mask: int) -> None:
    path = tmp_path / "state.db"
    with umask(mask):
        state = await State.open(path)
        try:
            await state.add_jobs(["job-1"], {"team": "a"}, None)  # the WAL and shared memory appear now
            files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
            assert {str(p.name): mode(p) for p in files} == {p.name: 0o600 for p in files}
        finally:
            await state.close()


async def test_file_sink_is_0600_under_umask_0(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with umask(0):
        sink = create_sink(f"file:{path}")
        try:
            await sink.send(failed_event())
        finally:
            await sink.aclose()
    assert mode(path) == 0o600


# ====================================================================================== process args

CREDENTIAL_WORDS = {"token", "secret", "password", "passwd", "pw", "sk", "key", "credential", "credentials", "auth"}


def test_no_cli_flag_takes_a_credential() -> None:
    """Only ``simulate --sk`` looks like one: the SK the loopback simulator accepts, also read from SIM_SK."""
    found: dict[str, Any] = {}
    for name, command in cli.commands.items():  # type: ignore[attr-defined]
        for param in command.params:
            if param.param_type_name == "option" and param.name and param.name.split("_")[-1] in CREDENTIAL_WORDS:
                found[f"{name} --{param.name}"] = param
    assert sorted(found) == ["simulate --sk"]
    assert found["simulate --sk"].envvar == "SIM_SK"


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat_line = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat_line.rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += [child for child, parent in parents.items() if parent == current]
    return found


def cmdlines(pid: int) -> list[bytes]:
    out = []
    for p in descendants(pid):
        with contextlib.suppress(OSError):
            out.append(Path(f"/proc/{p}/cmdline").read_bytes())
    return out


needs_proc = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")


@needs_proc
@pytest.mark.slow
async def test_watch_runs_with_secrets_only_in_the_environment(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(token=CCE_TOKEN, ak=AK, sk=SK, iam_password=IAM_PASSWORD)
    base = {"CCE_ENDPOINT": endpoint, "CCE_PROJECT_ID": PROJECT}
    envs = {
        "token": {"CCE_AUTH_TOKEN": CCE_TOKEN},
        "aksk": {"HUAWEICLOUD_SDK_AK": AK, "HUAWEICLOUD_SDK_SK": SK},
        "password": {
            "CCE_IAM_ENDPOINT": endpoint, "CCE_IAM_USER": "monitor", "CCE_IAM_PASSWORD": IAM_PASSWORD,
            "CCE_IAM_DOMAIN": "sim-domain",
        },
    }  # fmt: skip

    async def one(kind: str) -> None:
        job_id = sim.add_job(duration=1.2)
        proc = await asyncio.create_subprocess_exec(
            *EXE, "watch", "--no-live", "--log-level", "debug", "--interval", "0.2", "--rate", "50", job_id,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env(**base, **envs[kind]),
        )  # fmt: skip
        communicate = asyncio.create_task(proc.communicate())
        seen: list[bytes] = []
        while not communicate.done():  # look at the arguments while it works
            seen += cmdlines(proc.pid)
            await asyncio.sleep(0.1)
        out, err = await communicate
        assert proc.returncode == 0, err.decode()[-2000:]
        assert b"-> Success" in out
        assert seen, "the process ended before its arguments could be read"
        assert_clean(*seen, out, err)

    await asyncio.wait_for(asyncio.gather(*(one(kind) for kind in envs)), 40)
    assert sim.stats.tokens_issued >= 1  # the password path really ran


def daemon_config(endpoint: str, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """A fast daemon config whose secrets are all ``${ENV}`` references."""
    raw: dict[str, Any] = {
        "endpoint": endpoint,
        "project_id": PROJECT,
        "auth": {"token": "${CCE_TOK}"},
        "polling": {
            "rate": 200, "interval": 0.2, "min_interval": 0.05, "max_interval": 0.3, "error_backoff": 0.05,
            "error_backoff_max": 0.2, "auth_backoff": 0.1, "auth_backoff_max": 0.2, "job_timeout": 60,
        },
        "sinks": [
            {"type": "file", "path": str(tmp_path / "events.jsonl")},
            {
                "type": "webhook", "url": "${HOOK_URL}", "secret": "${HOOK_SECRET}",
                "headers": {"Authorization": "${HOOK_AUTH}"}, "max_attempts": 1, "backoff_initial": 0.01,
                "backoff_max": 0.02, "rate": 500, "timeout": 5,
            },
        ],
        "state": {"path": str(tmp_path / "state.db")},
        "api": {"listen": "127.0.0.1:0", "token": "${API_TOK}"},
        "logging": {"level": "debug"},
        "shutdown_deadline": 2,
    }  # fmt: skip
    if "delivery" in Config.model_fields:
        raw["delivery"] = {"retry_initial": 0.05, "retry_max": 0.1}
    raw.update(extra)
    return raw


def daemon_env(hook_url: str) -> dict[str, str]:
    return {
        "CCE_TOK": CCE_TOKEN,
        "API_TOK": API_TOKEN,
        "HOOK_SECRET": HOOK_SECRET,
        "HOOK_AUTH": HOOK_AUTH,
        "HOOK_URL": f"{hook_url}?token={HOOK_QUERY_TOKEN}",
    }


@needs_proc
@pytest.mark.slow
async def test_run_serves_with_secrets_only_in_the_environment(sim_factory: SimFactory, tmp_path: Path) -> None:
    sim, endpoint = await sim_factory(token=CCE_TOKEN)
    hooks = hooks_receiver(500, echo=True)
    hook_url = await hooks.start()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(daemon_config(endpoint, tmp_path)))
    proc = await asyncio.create_subprocess_exec(
        *EXE, "run", "--config", str(config), "--log-level", "debug",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env(**daemon_env(hook_url)),
        umask=0o000,
    )  # fmt: skip
    assert proc.stderr is not None and proc.stdout is not None
    err_lines: list[bytes] = []
    api_base: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def read_stderr() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            err_lines.append(line)
            found = re.search(rb"API on (http://\S+)", line)
            if found and not api_base.done():
                api_base.set_result(found.group(1).decode())

    reader = asyncio.create_task(read_stderr())
    texts: list[str | bytes] = []
    try:
        base = await asyncio.wait_for(api_base, 15)
        job_id = sim.add_job(duration=0.5)
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/v1/jobs", json={"job_ids": [job_id]}, headers=auth) as resp:
                assert resp.status == 202
            async with session.get(f"{base}/v1/jobs", headers={"Authorization": "Bearer nope"}) as resp:
                assert resp.status == 401
                texts.append(await resp.read())

            async def finished() -> bool:
                async with session.get(f"{base}/v1/jobs/{job_id}", headers=auth) as resp:
                    body = await resp.read()
                    return bool(orjson.loads(body)["job"]["outcome"]) and len(hooks.requests) >= 1

            await until(finished, 20, "the job to finish and the webhook to be tried")
            texts += cmdlines(proc.pid)
            for path in ("/metrics", "/v1/jobs", f"/v1/jobs/{job_id}", "/readyz"):
                async with session.get(base + path, headers=auth) as resp:
                    texts.append(await resp.read())
        proc.send_signal(signal.SIGTERM)
        out = await asyncio.wait_for(proc.stdout.read(), 20)
        await asyncio.wait_for(proc.wait(), 20)
        await reader
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reader.cancel()
        await hooks.close()
    err = b"".join(err_lines)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"webhook" in err and b"HTTP 500" in err  # the failing receiver was reported ...
    assert_clean(*texts, out, err, also=(HOOK_AUTH,))  # ... without what it echoed
    for name in ("state.db", "events.jsonl"):
        assert mode(tmp_path / name) == 0o600, name
        assert_clean((tmp_path / name).read_bytes(), also=(HOOK_AUTH,))


# ====================================================================================== secrets sweep


@dataclass
class RunningDaemon:
    daemon: Daemon
    base: str
    session: aiohttp.ClientSession

    async def call(self, method: str, path: str, body: object = None, token: str = API_TOKEN) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        data = orjson.dumps(body) if body is not None else None
        async with self.session.request(method, self.base + path, data=data, headers=headers) as resp:
            return resp.status, await resp.read()


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[RunningDaemon]:
    async with running_daemon(config, stop_timeout=20) as run, aiohttp.ClientSession() as session:
        yield RunningDaemon(run.daemon, run.base, session)


def sqlite_files(path: Path) -> list[Path]:
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


@pytest.mark.slow
async def test_daemon_secrets_sweep(sim_factory: SimFactory, tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    """The daemon end to end with every secret as ``${ENV}``: nothing it shows, stores or logs holds one."""
    sim, endpoint = await sim_factory(token=CCE_TOKEN)
    hooks = hooks_receiver(500, echo=True)
    hook_url = await hooks.start()
    config = parse_config(
        yaml.safe_dump(daemon_config(endpoint, tmp_path)), env=daemon_env(hook_url), source="daemon.yaml"
    )
    db = tmp_path / "state.db"
    jsonl = tmp_path / "events.jsonl"
    texts: list[str | bytes] = [repr(config.auth), repr(config.api), str(config.api)]
    try:
        with umask(0):
            async with running(config) as api:
                short = [sim.add_job(duration=0.4), sim.add_job(duration=0.4, fail=True)]
                long_job = sim.add_job(duration=60)
                for token in ("", "nope", API_TOKEN[:-1], API_TOKEN + "x"):
                    status, body = await api.call("GET", "/v1/jobs", token=token)
                    assert status == 401
                    texts.append(body)
                status, body = await api.call(
                    "POST", "/v1/jobs", {"job_ids": [*short, long_job], "labels": {"team": "a"}, "rollout": "r1"}
                )
                assert status == 202, body

                async def outcomes() -> bool:
                    _, raw = await api.call("GET", "/v1/jobs")
                    jobs = {j["job_id"]: j for j in orjson.loads(raw)["jobs"]}
                    return all(jobs[j]["outcome"] for j in short) and len(hooks.requests) >= 2

                await until(outcomes, 20, "the short jobs to finish and the webhook to fail twice")
                sim.expire_tokens()  # CCE now answers 401: monitor.auth_failed
                await until(lambda: b"monitor.auth_failed" in jsonl.read_bytes(), 20, "an auth failure event")
                for path in ("/metrics", "/readyz", "/v1/jobs", "/v1/rollouts", *(f"/v1/jobs/{j}" for j in short)):
                    status, body = await api.call("GET", path)
                    assert status == 200, (path, body)
                    assert path != "/metrics" or b"cce_monitor_deliveries_total" in body
                    texts.append(body)
                live = sqlite_files(db)
                assert {p.name for p in live} >= {"state.db", "state.db-wal"}
                for path in [*live, jsonl]:
                    assert mode(path) == 0o600, path
                    texts.append(path.read_bytes())
                texts += [repr(api.daemon), str(api.daemon.readiness()), api.daemon.metrics()[0]]
    finally:
        await hooks.close()
    texts += [p.read_bytes() for p in sqlite_files(db)]
    texts.append(jsonl.read_bytes())
    assert len(hooks.requests) >= 2 and all(b'"schema":"cce-monitor/v1"' in r.body for r in hooks.requests)
    first = seen(hooks.requests[0])
    assert HOOK_QUERY_TOKEN in first and HOOK_AUTH in first  # so the echoes held secrets
    assert "HTTP 500" in logs.text  # the receiver's refusal was logged ...
    assert_clean(*texts, logs.text, also=(HOOK_AUTH,))  # ... without what it echoed
    for record in logs.records:
        if record.exc_info and record.exc_info[1] is not None:
            assert_clean(str(record.exc_info[1]), repr(record.exc_info[1]))


async def test_webhook_scrubs_the_credential_part_of_a_header() -> None:
    def quote_token(received: Received) -> Reply:
        token = received.headers["Authorization"].split(" ", 1)[1]
        return Reply.json({"message": f"token {token} expired"}, status=401)

    async with Receiver(quote_token) as receiver:
        sink = create_sink(f"webhook:{receiver.url}", {"headers": {"Authorization": HOOK_AUTH}, "max_attempts": 1})
        try:
            with pytest.raises(SinkError) as info:
                await sink.send(failed_event())
        finally:
            await sink.aclose()
    assert "expired" in str(info.value)
    assert_clean(str(info.value))


@pytest.mark.parametrize("platform", list(CHAT_URLS))
async def test_chat_sinks_never_show_their_url_tokens(logs: pytest.LogCaptureFixture, platform: str) -> None:
    """A bot that fails and quotes the request (URL with its token, headers, body) back; then one that is gone."""
    hooks = hooks_receiver(500, echo=True)
    runner, base = await serve(hooks.app(), "127.0.0.1", 0)
    try:
        sink = chat_sink(platform, base)
        try:
            await sink.send(failed_event())
            await until(lambda: sink.failed_messages >= 2, 10, "two failed messages")
            texts = [sink.name, repr(sink), repr(sink.settings), str(sink.settings)]
        finally:
            await sink.aclose()
    finally:
        await runner.cleanup()
    assert len(hooks.requests) >= 2
    assert any(secret in seen(hooks.requests[0]) for secret in CHAT_SECRETS)  # the echoes held the URL token
    gone = chat_sink(platform, base)  # nothing listens there any more: connection refused
    try:
        await gone.send(failed_event())
        await until(lambda: gone.failed_messages >= 1, 10, "a refused connection")
    finally:
        await gone.aclose()
    assert "HTTP 500" in logs.text
    assert_clean(*texts, logs.text, also=CHAT_SECRETS)


def test_config_repr_hides_sink_credentials() -> None:
    text = (
        f"endpoint: http://127.0.0.1:1\nproject_id: {PROJECT}\nsinks:\n"
        "  - {type: webhook, url: '${HOOK_URL}', headers: {Authorization: '${HOOK_AUTH}'}}\n"
    )
    config = parse_config(
        text, env={"HOOK_URL": f"https://h.example/hook?token={HOOK_QUERY_TOKEN}", "HOOK_AUTH": HOOK_AUTH}
    )
    assert_clean(repr(config), str(config), also=(HOOK_AUTH,))


@pytest.fixture
def cli_runner() -> Iterator[CliRunner]:
    """A click runner; the CLI replaces the root logger's handlers and level, which are restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield CliRunner()
    root.handlers[:] = handlers
    root.setLevel(level)


CHECK_CONFIG_CASES = {
    "webhook option": "sinks: [{type: webhook, url: '${HOOK_URL}', secret: '${HOOK_SECRET}', retries: 3}]",
    "webhook scheme": "sinks: [{type: webhook, url: '${BAD_URL}', secret: '${HOOK_SECRET}'}]",
    "webhook header": "sinks: [{type: webhook, url: '${HOOK_URL}', headers: {X-Key: '${NEWLINE}'}}]",
    "sink type": "sinks: [{type: '${HOOK_URL}'}]",
    "api": "api: {listen: '0.0.0.0:8787', max_body: '${API_TOK}'}",
    "state": "state: {path: /nonexistent-dir/state.db}",
    "auth kinds": "auth: {token: '${CCE_TOK}', ak: x, sk: '${SK}'}",
    "unset": "auth: {token: '${UNSET}'}",
    "literal": f"auth: {{token: '{CCE_TOKEN}'}}",
    "number": "polling: {rate: '${CCE_TOK}'}",
}


@pytest.mark.parametrize("case", list(CHECK_CONFIG_CASES))
def test_check_config_errors_never_show_secrets(tmp_path: Path, cli_runner: CliRunner, case: str) -> None:
    config = tmp_path / "c.yaml"
    auth = "" if "auth" in CHECK_CONFIG_CASES[case] else "auth: {token: '${CCE_TOK}'}\n"
    config.write_text(
        f"endpoint: http://127.0.0.1:1\nproject_id: {PROJECT}\n{auth}state: {{path: {tmp_path / 's.db'}}}\n"
        + CHECK_CONFIG_CASES[case]
        + "\n"
    )
    env = {
        "CCE_TOK": CCE_TOKEN, "SK": SK, "API_TOK": API_TOKEN, "HOOK_SECRET": HOOK_SECRET,
        "HOOK_URL": f"http://127.0.0.1:1/hook?token={HOOK_QUERY_TOKEN}",
        "BAD_URL": f"ftp://user:{IAM_PASSWORD}@127.0.0.1/hook?token={HOOK_QUERY_TOKEN}",
        "NEWLINE": f"{HOOK_QUERY_TOKEN}\n",
    }  # fmt: skip
    result = cli_runner.invoke(cli, ["check-config", str(config)], env=env)
    assert result.exit_code == 2, (result.output, result.exception)
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("cce-monitor: error: ")
    assert_clean(result.output)


# ==================================================================================== terminal output


def view_output(reason: str, job_type: str = "CreateNode") -> str:
    from rich.console import Console  # noqa: PLC0415 - rich only for these tests

    from monitor.cli.view import LiveView  # noqa: PLC0415

    console = Console(file=io.StringIO(), width=160, force_terminal=True, color_system="standard")
    view = LiveView(["job-1"], console=console)
    view.on_event(failed_event(reason=reason, job_type=job_type))
    console.print(view.render())
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def test_live_view_shows_markup_in_reasons_literally() -> None:
    out = view_output("disk [/oops] full", job_type="[bold]Create")
    assert "[/oops]" in out and "[bold]Create" in out


def test_live_view_escapes_control_sequences_from_the_server() -> None:
    out = view_output("evil\x1b]0;pwned\x07\x1b[2J")
    assert "\x1b]0;pwned" not in out and "\x1b[2J" not in out
