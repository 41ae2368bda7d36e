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

import importlib
import logging
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

from monitor.core.errors import ConfigError
from monitor.engine.outputs import Drainable, Output, Unsent, close_sinks, drain_sinks

__all__ = [
    "ENTRY_POINT_GROUP",
    "Drainable",
    "Output",
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
class Sink(Output, Protocol):
    """What every sink implements (see the module docstring); the engine's :class:`Output`, by that name here."""


SinkFactory = Callable[[str | None, Mapping[str, object]], Sink]

_BUILTINS: dict[str, str] = {
    "log": "monitor.sinks.log",
    "file": "monitor.sinks.file",
    "webhook": "monitor.sinks.webhook",
    "slack": "monitor.sinks.chat.slack",
    "teams": "monitor.sinks.chat.teams",
    "feishu": "monitor.sinks.chat.feishu",
    "dingtalk": "monitor.sinks.chat.dingtalk",
    "wecom": "monitor.sinks.chat.wecom",
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
