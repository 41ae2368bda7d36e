"""Sinks: where events go. One Protocol, built-ins registered by name, third-party sinks by entry point.

A sink is any object with::

    name: str                                   # for logs and metrics, e.g. "webhook:https://host/path"
    async def send(self, event: Event) -> None  # deliver one event, or raise SinkError
    async def aclose(self) -> None              # flush and release; called once, after the last send

The bus gives every sink its own queue and task and calls ``send`` for one event at a time, so a sink needs no
locking of its own. A sink that retries does so inside ``send``, raising :class:`SinkError` when it gives up.

A sink is built by a factory ``factory(target, options) -> Sink``: ``target`` is the part after ``name:`` in a
spec such as ``file:/var/log/cce.jsonl`` (``None`` when absent) and ``options`` the sink's settings from the
config file. Factories validate both at start-up and raise :class:`ConfigError` with one clear line.
Third-party sinks register a factory under the entry point group ``cce_monitor.sinks``::

    [project.entry-points."cce_monitor.sinks"]
    pagerduty = "my_package.sinks:make_pagerduty_sink"
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from monitor.errors import ConfigError
from monitor.events import Event

__all__ = [
    "ENTRY_POINT_GROUP",
    "Drainable",
    "Sink",
    "SinkFactory",
    "Unsent",
    "available_sinks",
    "close_sinks",
    "create_sink",
    "drain_sinks",
    "register",
]

ENTRY_POINT_GROUP = "cce_monitor.sinks"

logger = logging.getLogger(__name__)


@runtime_checkable
class Sink(Protocol):
    """What every sink implements. See the module docstring for the contract."""

    name: str

    async def send(self, event: Event) -> None:
        """Deliver one event; raise :class:`monitor.errors.SinkError` if it could not be delivered."""
        ...

    async def aclose(self) -> None:
        """Flush and release resources. Called once, after the last ``send``."""
        ...


@runtime_checkable
class Drainable(Protocol):
    """A sink that holds events back (chat digests within a rate budget) and can be told to send them all now."""

    name: str

    async def drain(
        self, within: float | None = None, *, notify: Callable[[str], None] | None = None
    ) -> Mapping[str, int]:
        """Send what is held back within ``within`` seconds (None: the sink's own bound); say what was not
        sent, by event kind (``{"rollout.finished": 1}``). ``notify`` hears what the sink waits for."""
        ...


Unsent = dict[str, Mapping[str, int]]  # sink name -> event kind -> count


SinkFactory = Callable[[str | None, Mapping[str, object]], Sink]

_BUILTINS: dict[str, str] = {
    "log": "monitor.sinks.log",
    "file": "monitor.sinks.file",
    "webhook": "monitor.sinks.webhook",
    "slack": "monitor.sinks.slack",
    "teams": "monitor.sinks.teams",
    "feishu": "monitor.sinks.feishu",
    "dingtalk": "monitor.sinks.dingtalk",
    "wecom": "monitor.sinks.wecom",
}
_REGISTRY: dict[str, SinkFactory] = {}


def register(name: str) -> Callable[[SinkFactory], SinkFactory]:
    """Class or function decorator that registers a sink factory under ``name``."""

    def decorate(factory: SinkFactory) -> SinkFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def _lookup(name: str) -> SinkFactory | None:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BUILTINS:
        importlib.import_module(_BUILTINS[name])  # registers itself on import
        return _REGISTRY.get(name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            factory: SinkFactory = ep.load()
            _REGISTRY[name] = factory
            return factory
    return None


async def close_sinks(sinks: Iterable[Sink]) -> None:
    """Close every sink, concurrently; a sink that fails to close is logged, not raised."""

    async def close(sink: Sink) -> None:
        try:
            await sink.aclose()
        except Exception as exc:
            logger.error("sink %s failed to close: %s", sink.name, exc)

    await asyncio.gather(*(close(s) for s in sinks))


async def drain_sinks(
    sinks: Iterable[Sink],
    *,
    within: float | None,
    stop: asyncio.Event | None = None,
    after_stop: float = 10.0,
    notify: Callable[[str], None] | None = None,
) -> Unsent:
    """Let every :class:`Drainable` sink send what it holds, concurrently; what each could not send.

    ``within`` bounds the wait (None: each sink's own bound, e.g. a chat sink's ``final_wait``); if ``stop`` is
    set meanwhile, the wait ends ``after_stop`` seconds later at the latest.
    """
    drainable = [s for s in sinks if isinstance(s, Drainable)]
    if not drainable:
        return {}
    tasks = {asyncio.ensure_future(s.drain(within, notify=notify)): s for s in drainable}
    waits: set[asyncio.Future[Any]] = set(tasks)
    if stop is not None:
        stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        waits.add(stopped)
    try:
        while any(t in waits for t in tasks):
            done, waits = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if stop is not None and stopped in done:  # bring every deadline forward; the first drains answer
                waits |= {asyncio.ensure_future(s.drain(after_stop, notify=notify)) for s in drainable}
    finally:
        for fut in waits - set(tasks):
            fut.cancel()
    unsent: Unsent = {}
    for task, sink in tasks.items():
        try:
            left = task.result()
        except Exception as exc:
            logger.error("sink %s failed to drain: %s", sink.name, exc)
            continue
        if left:
            unsent[sink.name] = left
    return unsent


def available_sinks() -> list[str]:
    """Names of the built-in and installed sinks."""
    names = set(_BUILTINS) | set(_REGISTRY) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


def create_sink(spec: str, options: Mapping[str, object] | None = None) -> Sink:
    """Build a sink from a spec ``name`` or ``name:target`` (e.g. ``webhook:https://example/hook``)."""
    name, sep, target = spec.partition(":")
    name = name.strip()
    factory = _lookup(name)
    if factory is None:
        raise ConfigError(f"unknown sink {name!r}; available: {', '.join(available_sinks())}")
    return factory(target if sep else None, options or {})
