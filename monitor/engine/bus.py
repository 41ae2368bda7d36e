"""The pub/sub callback bus between the scheduler and the sinks.

``subscribe(callback, filter)`` registers a sync or async callback; ``publish(event)`` fans the event out.
Every subscriber has its own bounded queue and its own task, so a slow or failing subscriber never delays the
publisher or another subscriber:

* when a queue is full, ``publish`` either waits for room (``overflow="block"``, the default: nothing is lost,
  and a sink that is far behind slows intake rather than memory growing without bound) or drops the oldest
  queued event and counts it (``overflow="drop_oldest"``);
* an exception from a callback is logged with the event id and counted; the subscriber carries on;
* ``aclose(deadline)`` stops intake, lets every queue drain for up to ``deadline`` seconds, then cancels what
  is left and logs how many events each stuck subscriber still held.

The bus owns its tasks in an :class:`asyncio.TaskGroup` entered by :meth:`Bus.__aenter__`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal

from monitor.core.errors import MonitorError
from monitor.core.events import Event, EventType

__all__ = ["Bus", "EventFilter", "Subscription"]

logger = logging.getLogger(__name__)

Callback = Callable[[Event], Awaitable[None] | None]
Overflow = Literal["block", "drop_oldest"]


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a subscriber wants. Empty collections mean "all"; every non-empty one must match.

    ``labels`` must all be present with equal values. ``phases`` match the event's ``phase``.
    """

    types: frozenset[EventType] = frozenset()
    phases: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)
    job_ids: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        types: Collection[EventType | str] = (),
        phases: Collection[str] = (),
        labels: Mapping[str, str] | None = None,
        job_ids: Collection[str] = (),
    ) -> EventFilter:
        return cls(
            types=frozenset(EventType(t) for t in types),
            phases=frozenset(phases),
            labels=dict(labels or {}),
            job_ids=frozenset(job_ids),
        )

    def matches(self, event: Event) -> bool:
        if self.types and event.type not in self.types:
            return False
        if self.phases and event.phase not in self.phases:
            return False
        if self.job_ids and event.job_id not in self.job_ids:
            return False
        return all(event.labels.get(k) == v for k, v in self.labels.items())


ALL = EventFilter()


class Subscription:
    """One subscriber: its filter, queue, task and counters."""

    __slots__ = ("_queue", "_task", "callback", "delivered", "dropped", "failed", "filter", "name", "overflow")

    def __init__(self, name: str, callback: Callback, event_filter: EventFilter, maxsize: int, overflow: Overflow):
        self.name = name
        self.callback = callback
        self.filter = event_filter
        self.overflow = overflow
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    @property
    def depth(self) -> int:
        """Events waiting in the queue."""
        return self._queue.qsize()

    async def _put(self, event: Event) -> None:
        if self.overflow == "drop_oldest":
            while self._queue.full():
                self._queue.get_nowait()
                self._queue.task_done()
                self.dropped += 1
            self._queue.put_nowait(event)
        else:
            await self._queue.put(event)

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                result = self.callback(event)
                if inspect.isawaitable(result):
                    await result
                self.delivered += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed += 1
                logger.error(
                    "subscriber %s failed on event %s (%s, job %s): %s",
                    self.name,
                    event.id,
                    event.type,
                    event.job_id,
                    exc,
                    exc_info=not isinstance(exc, MonitorError),  # our errors explain themselves
                )
            finally:
                self._queue.task_done()


class Bus:
    """Fan events out to subscribers. Use ``async with Bus() as bus:``; subscribe before or while running."""

    def __init__(self, *, default_maxsize: int = 10_000) -> None:
        self._subs: list[Subscription] = []
        self._tg: asyncio.TaskGroup | None = None
        self._closed = False
        self._default_maxsize = default_maxsize
        self.published = 0

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subs)

    async def __aenter__(self) -> Bus:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        for sub in self._subs:
            self._start(sub)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if not self._closed:
            await self.aclose()
        assert self._tg is not None
        await self._tg.__aexit__(exc_type, exc, tb)  # type: ignore[arg-type]

    def _start(self, sub: Subscription) -> None:
        assert self._tg is not None
        sub._task = self._tg.create_task(sub._run(), name=f"bus-subscriber:{sub.name}")

    def subscribe(
        self,
        callback: Callback,
        event_filter: EventFilter = ALL,
        *,
        name: str | None = None,
        maxsize: int | None = None,
        overflow: Overflow = "block",
    ) -> Subscription:
        """Register ``callback`` (sync or async) for events matching ``event_filter``."""
        if self._closed:
            raise RuntimeError("bus is closed")
        sub = Subscription(
            name or str(getattr(callback, "__qualname__", None) or repr(callback)),
            callback,
            event_filter,
            self._default_maxsize if maxsize is None else maxsize,
            overflow,
        )
        self._subs.append(sub)
        if self._tg is not None:
            self._start(sub)
        return sub

    async def publish(self, event: Event) -> None:
        """Queue ``event`` for every matching subscriber (may wait if a blocking queue is full)."""
        if self._closed:
            logger.warning("event %s (%s, job %s) published after the bus closed", event.id, event.type, event.job_id)
            return
        self.published += 1
        for sub in self._subs:
            if sub.filter.matches(event):
                await sub._put(event)

    async def drain(self, deadline: float = 10.0) -> bool:
        """Wait (up to ``deadline``) until every queue is empty, keeping the bus open; ``True`` if it is."""
        joins = [asyncio.ensure_future(sub._queue.join()) for sub in self._subs]
        if not joins:
            return True
        _done, pending = await asyncio.wait(joins, timeout=deadline)
        for fut in pending:
            fut.cancel()
        return not pending

    async def aclose(self, deadline: float = 10.0) -> None:
        """Stop intake, drain queues for up to ``deadline`` seconds, then cancel the rest."""
        self._closed = True
        start = time.monotonic()
        await self.drain(deadline)
        for sub in self._subs:
            if sub.depth:
                logger.warning(
                    "subscriber %s still held %d events after %.1fs; they were not delivered",
                    sub.name,
                    sub.depth,
                    time.monotonic() - start,
                )
            if sub._task is not None:
                sub._task.cancel()
