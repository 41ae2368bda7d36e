"""Shared fixtures: a real simulator on 127.0.0.1 and a client pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from monitor.auth import TokenAuth
from monitor.client import CCEClient, ClientSettings
from monitor.events import Event
from monitor.secret import Secret
from monitor.simulator import Simulator, SimulatorConfig
from monitor.throttle import RateLimiter

SimFactory = Callable[..., Awaitable[tuple[Simulator, str]]]


@pytest.fixture
async def sim_factory() -> AsyncIterator[SimFactory]:
    """Start simulators with real time: ``sim, endpoint = await sim_factory(p_500=0.1, ...)``."""
    started: list[Simulator] = []

    async def factory(**config: Any) -> tuple[Simulator, str]:
        sim = Simulator(SimulatorConfig(**config))
        endpoint = await sim.start()
        started.append(sim)
        return sim, endpoint

    yield factory
    for sim in started:
        await sim.close()


@pytest.fixture
async def sim(sim_factory: SimFactory) -> Simulator:
    simulator, _ = await sim_factory()
    return simulator


def client_for(
    sim: Simulator, *, rate: float = 200.0, total_timeout: float = 5.0, token: str | None = None
) -> CCEClient:
    """A client for ``sim`` (started) with a token and a limiter that does not bind by default."""
    assert sim.endpoint is not None, "start the simulator first"
    endpoint = sim.endpoint
    settings = ClientSettings(endpoint=endpoint, project_id=sim.config.project_id, total_timeout=total_timeout)
    return CCEClient(settings, TokenAuth(Secret(token or sim.config.token)), limiter=RateLimiter(rate))


class Recorder:
    """An async bus callback / publish function that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: str, job_id: str | None = None) -> list[Event]:
        return [e for e in self.events if e.type == kind and (job_id is None or e.job_id == job_id)]
