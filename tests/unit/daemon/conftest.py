"""Fixtures of the API tests (``test_api``, ``test_api_live``): the API on a real server on 127.0.0.1 over a real
SQLite ``State``, with the daemon's side (``FakeControl``) backed by that state."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from yarl import URL

from monitor.core.events import Event
from monitor.daemon.api import AddResult, Control, make_app, serve
from monitor.daemon.feed import EventFeed
from monitor.daemon.store import State, StoredJob

METRICS = (b"# HELP cce_jobs Jobs.\n# TYPE cce_jobs gauge\ncce_jobs 3\n", "text/plain; version=0.0.4; charset=utf-8")
JSON = {"Content-Type": "application/json"}


class FakeControl:
    """The daemon's side of the API, backed by a real State; ``fail`` makes every call raise it."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.ready = {"state": True, "scheduler": True, "cce": True}
        self.lag: dict[str, dict[str, Any]] = {}
        self.fail: Exception | None = None
        self.calls: list[str] = []
        self.live = EventFeed(queue_size=4)
        self.summaries: dict[str, dict[str, Any]] = {}

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if self.fail is not None:
            raise self.fail

    async def add_jobs(self, job_ids: Sequence[str], labels: Mapping[str, str], rollout: str | None) -> AddResult:
        self._enter("add_jobs")
        new = await self.state.add_jobs(job_ids, labels, rollout)
        fresh = set(new)
        return AddResult(accepted=new, known=[j for j in job_ids if j not in fresh])

    async def list_jobs(self, *, phase: str | None, rollout: str | None, labels: Mapping[str, str]) -> list[StoredJob]:
        self._enter("list_jobs")
        return await self.state.jobs(phase=phase, rollout=rollout, labels=labels)

    async def get_job(self, job_id: str) -> tuple[StoredJob, list[Event]] | None:
        self._enter("get_job")
        job = await self.state.get(job_id)
        if job is None:
            return None
        return job, await self.state.history(job_id)

    async def remove_job(self, job_id: str) -> bool:
        self._enter("remove_job")
        return await self.state.delete(job_id)

    def cluster(self) -> dict[str, Any] | None:
        return None

    def rollout(self, name: str) -> dict[str, Any] | None:
        return self.summaries.get(name)

    def feed(self) -> EventFeed:
        return self.live

    def readiness(self) -> dict[str, bool]:
        self._enter("readiness")
        return dict(self.ready)

    def delivery_lag(self) -> dict[str, dict[str, Any]]:
        return dict(self.lag)

    def metrics(self) -> tuple[bytes, str]:
        self._enter("metrics")
        return METRICS


@dataclass
class Api:
    base: str
    session: aiohttp.ClientSession
    control: FakeControl

    def url(self, path: str) -> URL:
        return URL(self.base + path, encoded=True)  # encoded: send the path exactly as written

    async def call(
        self, method: str, path: str, *, body: Any = None, data: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        if body is not None:
            data = orjson.dumps(body)
        if isinstance(data, bytes) and len(data) >= 1 << 20:
            data = io.BytesIO(data)  # aiohttp warns about large raw bytes bodies
        hdrs = dict(JSON if data is not None else {})
        hdrs.update(headers or {})
        async with self.session.request(method, self.url(path), data=data, headers=hdrs) as resp:
            raw = await resp.read()
            parsed = orjson.loads(raw) if resp.content_type == "application/json" else raw
            return resp.status, parsed, resp


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[State]:
    st_ = await State.open(tmp_path / "s.db")
    yield st_
    await st_.close()


@pytest.fixture
async def start(state: State) -> AsyncIterator[ApiFactory]:
    """``api = await start(token=..., max_body=...)``: a server on a free port, and a client for it."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def factory(**kwargs: Any) -> Api:
        control = FakeControl(state)
        as_protocol: Control = control  # FakeControl must satisfy the Protocol the daemon implements
        kwargs.setdefault("token", None)
        runner, base = await serve(make_app(as_protocol, **kwargs), "127.0.0.1", 0)
        runners.append(runner)
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Api(base, session, control)

    yield factory
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def api(start: ApiFactory) -> Api:
    return await start()


def assert_error(status: int, body: Any, resp: aiohttp.ClientResponse, expected: int, text: str = "") -> str:
    """A JSON ``{"error": "<one line>"}`` with the expected status, containing ``text``; returns the message."""
    assert status == expected, body
    assert resp.content_type == "application/json"
    assert isinstance(body, dict) and list(body) == ["error"], body
    message = body["error"]
    assert isinstance(message, str) and message
    assert "\n" not in message and "\r" not in message
    assert "Traceback" not in message
    assert len(message) < 400
    assert text in message, message
    return message
