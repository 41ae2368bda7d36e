"""Shared fixtures: a real simulator on 127.0.0.1, a client pointed at it, a chat bot (built on monitor.testing)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

from monitor.cce.auth import TokenAuth
from monitor.cce.client import CCEClient, ClientSettings
from monitor.core.events import Event
from monitor.core.secret import Secret
from monitor.sim import Simulator
from monitor.testing import PostgresServer, PostgresUnavailable, Received, Receiver, Reply, Simulators

SimFactory = Simulators


@pytest.fixture
async def sim_factory() -> AsyncIterator[SimFactory]:
    """Start simulators (real time unless ``clock=``): ``sim, endpoint = await sim_factory(p_500=0.1, ...)``."""
    async with Simulators() as simulators:
        yield simulators


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every logger at DEBUG, named ones too in case an earlier test (the CLI's) gave them a level."""
    caplog.set_level(logging.DEBUG)
    for name in ("monitor", "aiohttp", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


@pytest.fixture
async def sim(sim_factory: SimFactory) -> Simulator:
    simulator, _ = await sim_factory()
    return simulator


def write_clouds(path: Path, auth: str, region: str = "eu-de") -> Path:
    """A ``clouds.yaml`` in ``path`` with one cloud, ``otc``, in ``region``; ``auth`` is its indented auth block."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "clouds.yaml").write_text(f"clouds:\n  otc:\n    region_name: {region}\n    auth:\n{auth}")
    return path / "clouds.yaml"


def client_for(sim: Simulator, *, total_timeout: float = 5.0, token: str | None = None) -> CCEClient:
    """A client for ``sim`` (started) with a token (the rate limit is the scheduler's)."""
    assert sim.endpoint is not None, "start the simulator first"
    endpoint = sim.endpoint
    settings = ClientSettings(endpoint=endpoint, project_id=sim.config.project_id, total_timeout=total_timeout)
    return CCEClient(settings, TokenAuth(Secret(token or sim.config.token)))


class Recorder:
    """An async bus callback / publish function that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: str, job_id: str | None = None) -> list[Event]:
        return [e for e in self.events if e.type == kind and (job_id is None or e.job_id == job_id)]


class BotReceiver(Receiver):
    """A chat bot endpoint (WeCom / DingTalk style: ``{"errcode": 0}``) on 127.0.0.1 that records every message.

    ``per_minute`` enforces the bot's limit: past it the bot answers ``errcode`` 45009 and records a violation.
    :attr:`bodies` holds the messages it accepted.
    """

    def __init__(self, per_minute: int = 20) -> None:
        super().__init__(self._answer_bot, path="/cgi-bin/webhook/send?key=botKEY123456")
        self.per_minute = per_minute
        self.bodies: list[dict[str, Any]] = []
        self.violations = 0
        self._times: list[float] = []

    def _answer_bot(self, received: Received) -> Reply:
        now = received.at
        self._times = [t for t in self._times if t > now - 60]
        if len(self._times) >= self.per_minute:
            self.violations += 1
            return Reply.json({"errcode": 45009, "errmsg": "api freq out of limit"})
        self._times.append(now)
        self.bodies.append(received.json)
        return Reply.json({"errcode": 0, "errmsg": "ok"})

    def texts(self) -> list[str]:
        """Each message's text (markdown or plain)."""
        out = []
        for body in self.bodies:
            part = body.get("markdown") or body.get("text") or {}
            out.append(str(part.get("content") or part.get("text") or ""))
        return out


@pytest.fixture
async def bot() -> AsyncIterator[BotReceiver]:
    async with BotReceiver() as receiver:
        yield receiver


# ------------------------------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole run (a few seconds to start); tests take a database of their
    own from :func:`pg_dsn`. Without the server binaries the tests that need it are skipped — except in CI
    (``CI=true``), where ``.ci/run`` installs them and a missing server is a failure."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the PostgreSQL tests: {exc}")
        pytest.skip(str(exc))
    with server:
        yield server


@pytest.fixture
def pg_dsn(postgres: PostgresServer) -> str:
    """The DSN (with its password) of a new, empty database on the session's server."""
    return postgres.create_database()


# ------------------------------------------------------------------------------------------ Chromium

CHROMIUM_FLAGS = [  # as root in a sandbox, on a machine with no network beyond loopback
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("CCE_MONITOR_ARTIFACTS") or Path(__file__).resolve().parent.parent / ".artifacts")
"""Where browser tests save their screenshots (``.artifacts/`` at the top, ignored by git)."""


def chromium_path() -> str:
    """The distribution's Chromium (``$CHROMIUM``, else ``chromium`` on the PATH). Missing: the test is skipped —
    except in CI, where ``.ci/run`` installs it and a missing browser is a failure."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("CI must run the browser tests: no chromium (apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    return found


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    """Headless Chromium driven by Playwright — the system's browser, never a downloaded one — with a new, empty
    profile; closed at the end."""
    executable = chromium_path()
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            await launched.close()
