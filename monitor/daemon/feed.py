"""The daemon's live feed: events for ``GET /v1/events/stream`` listeners and the recent failures for ``/ui/``.

One bus subscription feeds every listener (the bus keeps a fixed set of subscribers; listeners come and go).
Each listener has a bounded queue; one that does not keep up loses its oldest events and is told so (a ``lagged``
item, after which the page reads the API again), so a slow browser never slows the pipeline or grows memory.

The feed shows what this process's pipeline sees: with replicas sharing a database, each replica streams the
events of the jobs it polls and of the rollout digests it publishes (the page also rereads the API every few
seconds, so it shows every replica's work, a little later).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Literal

from monitor.core.events import Event, EventType
from monitor.core.nodes import NODE_JOB_TYPES

__all__ = ["LAGGED", "EventFeed"]

LAGGED: Literal["lagged"] = "lagged"
"""Put in a listener's queue in place of the events it lost."""

Item = Event | Literal["lagged"] | None  # None: the feed closed

_FAILURE_TYPES = frozenset({EventType.JOB_TIMED_OUT, EventType.JOB_NOT_FOUND, EventType.NODE_FAILED})


def is_failure(event: Event) -> bool:
    """A job or node that failed: what "recent failures" lists."""
    if event.type in _FAILURE_TYPES:
        return True
    if event.phase != "Failed":
        return False
    return event.type is EventType.JOB_PHASE_CHANGED or (
        event.type is EventType.SUBJOB_PHASE_CHANGED and event.subjob_type in NODE_JOB_TYPES
    )


class EventFeed:
    """Fan-out of the bus to stream listeners; subscribe :meth:`publish` to the bus once."""

    def __init__(self, *, queue_size: int = 1000, max_listeners: int = 64, recent: int = 200) -> None:
        self._queue_size = queue_size
        self.max_listeners = max_listeners
        self._listeners: set[asyncio.Queue[Item]] = set()
        self._failures: deque[Event] = deque(maxlen=recent)
        self.closed = False
        self.lagged = 0

    def publish(self, event: Event) -> None:
        """Bus callback: never blocks."""
        if is_failure(event):
            self._failures.append(event)
        if self.closed:
            return
        for queue in self._listeners:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    while not queue.empty():  # drop what it has not read: it rereads the API instead
                        queue.get_nowait()
                queue.put_nowait(LAGGED)
                self.lagged += 1
                continue
            queue.put_nowait(event)

    def failures(self, limit: int = 50) -> list[Event]:
        """The latest failures this process saw, newest first."""
        return list(reversed(self._failures))[:limit]

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[asyncio.Queue[Item]]:
        """A queue of events (``LAGGED`` when some were lost; ``None`` once the feed closes) while the block
        runs. Raises ``OverflowError`` when ``max_listeners`` listen already."""
        if len(self._listeners) >= self.max_listeners:
            raise OverflowError(f"{self.max_listeners} listeners already")
        queue: asyncio.Queue[Item] = asyncio.Queue(self._queue_size + 1)
        if self.closed:
            queue.put_nowait(None)
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)

    def close(self) -> None:
        """End every listener's stream (before the API stops: open streams would hold its shutdown)."""
        self.closed = True
        for queue in self._listeners:
            with contextlib.suppress(asyncio.QueueEmpty):
                while queue.full():
                    queue.get_nowait()
            queue.put_nowait(None)
