"""Sinks: where events go. One Protocol, built-ins registered by name, third-party sinks by entry point.

A sink is any object with::

    name: str                                   # for logs and metrics, e.g. "webhook:https://host/path"
    async def send(self, event: Event) -> None  # deliver one event, or raise SinkError
    async def aclose(self) -> None              # flush and release; called once, after the last send

The bus gives every sink its own queue and task and calls ``send`` for one event at a time, so a sink needs no
locking of its own. A sink that retries does so inside ``send``, raising :class:`SinkError` when it gives up.

A sink also says whether it is durable, as a class attribute::

    durable: ClassVar[bool]                     # True: the daemon feeds it from an outbox in the state database

A durable sink gets an outbox and a deliverer: its events survive a crash or a restart and are retried after
the sink gave up; a sink that is not durable hears the bus live, and what it misses while the process is down
is gone. Every built-in sink declares it (``log``: False; ``file``, ``webhook`` and the chat sinks: True).
``durable`` is part of the contract but deliberately not a member of the :class:`Sink` Protocol: a runtime
``isinstance(obj, Sink)`` would then reject every third-party sink written before it. Read it with
:func:`is_durable`, which treats a sink without the attribute as not durable.

A durable sink that retries inside ``send`` may also offer one try without its own retries::

    async def send_once(self, event: Event) -> None   # one attempt; SinkError(retryable=...) as send raises

The daemon's outbox then calls ``send_once`` and retries each event itself, with its own backoff, giving up its
delivery slot to other jobs' events while it waits (the ``webhook`` sink has it). Like ``durable``, it is not a
Protocol member: a sink without it is called through ``send``.

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
    "is_durable",
    "register",
]

ENTRY_POINT_GROUP = "cce_monitor.sinks"

logger = logging.getLogger(__name__)


@runtime_checkable
class Sink(Output, Protocol):
    """What every sink implements (see the module docstring); the engine's :class:`Output`, by that name here.

    Sinks also declare ``durable: ClassVar[bool]``; it is read through :func:`is_durable` rather than being a
    Protocol member, so that runtime checks keep accepting sinks that predate it.
    """


def is_durable(sink: object) -> bool:
    """Whether ``sink`` is fed from a durable outbox: its ``durable`` attribute, False when it has none."""
    return bool(getattr(sink, "durable", False))


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
