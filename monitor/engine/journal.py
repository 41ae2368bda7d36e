"""What the engine writes to before it publishes: the :class:`JobStore` protocol.

The daemon's :class:`~monitor.daemon.storage.Store` implements it (SQLite today); ``watch`` runs without one.
The scheduler records a job's snapshot and events (and the state of node pools and awaited nodes) here first,
so that every durable sink sees each event, across restarts, before any sink does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from monitor.core.events import Event, Outcome
from monitor.core.model import Job
from monitor.engine.fleet import AwaitedNode, PoolNode

__all__ = ["JobStore"]


class JobStore(Protocol):
    """Durable storage the scheduler writes to before publishing (see :mod:`monitor.daemon.store`)."""

    async def record(
        self,
        job_id: str,
        snapshot: Job | None,
        events: Sequence[Event],
        *,
        outcome: Outcome | None = None,
        fenced: bool = True,
    ) -> None:
        """``fenced=False``: events of a job written by whoever follows its node (a node confirmed Active after
        the job ended), not by the job's owner — replicas sharing jobs check ownership otherwise."""
        ...

    async def record_events(self, events: Sequence[Event]) -> list[Event]:
        """Record events of no one job (node and node pool events); returns those not recorded before."""
        ...

    async def record_fleet(
        self,
        discovered: Sequence[PoolNode],
        awaited: Sequence[AwaitedNode],
        resolved: Sequence[AwaitedNode],
        outcomes: Sequence[tuple[str, Outcome]],
    ) -> None:
        """Keep what follows node pools and nodes across a restart: the jobs found for a pool's nodes (tracked
        from now on), the nodes awaited and those no longer awaited, and how pools ended."""
        ...
