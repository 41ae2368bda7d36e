"""What the pipeline needs of an output (a sink): send, close, and for some, drain what they hold back.

The protocols live here, below the sinks, so that the engine can run sinks without importing them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from monitor.core.events import Event

__all__ = ["Drainable", "Output", "Unsent", "close_sinks", "drain_sinks"]

logger = logging.getLogger(__name__)


@runtime_checkable
class Output(Protocol):
    """Where the pipeline sends events: every sink (:class:`monitor.sinks.Sink`) is one."""

    name: str

    async def send(self, event: Event) -> None:
        """Deliver one event; raise :class:`monitor.core.errors.SinkError` if it could not be delivered."""
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


async def close_sinks(sinks: Iterable[Output]) -> None:
    """Close every sink, concurrently; a sink that fails to close is logged, not raised."""

    async def close(sink: Output) -> None:
        try:
            await sink.aclose()
        except Exception as exc:
            logger.error("sink %s failed to close: %s", sink.name, exc)

    await asyncio.gather(*(close(s) for s in sinks))


async def drain_sinks(
    sinks: Iterable[Output],
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
