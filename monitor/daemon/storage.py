"""What the daemon keeps across restarts, as one protocol: the :class:`Store` every storage engine implements.

The daemon, the outbox deliverer and the API call only what is here: the embedded SQLite engine
(:class:`monitor.daemon.store.State`) and the PostgreSQL one (:class:`monitor.daemon.pgstore.PgState`, for
replicas) implement it, and :func:`open_store` picks one from ``state.backend``. The scheduler's
:class:`~monitor.engine.scheduler.JobStore` (``record``) is a subset.

Guarantees every engine gives (the tests in ``tests/unit/daemon/test_store.py`` state them):

* :meth:`Store.record` is one transaction: a job's snapshot, its history rows, one outbox row per routed sink
  whose filter matches each event, and an outcome — all or nothing; an event id seen before is not stored twice;
* outbox rows are handed out per sink in the order they were recorded (:meth:`Store.pending`) and stay until
  :meth:`Store.delivered` or :meth:`Store.rejected` says otherwise;
* a job added once keeps its first labels and ``added_at``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from monitor.config import StateConfig
from monitor.core.events import Event, Outcome
from monitor.core.model import Job
from monitor.core.secret import Secret
from monitor.engine.bus import EventFilter
from monitor.engine.fleet import AwaitedNode, PoolNode

__all__ = [
    "DeliveryRecord",
    "OutboxRow",
    "Routes",
    "Store",
    "StoredJob",
    "StoredNodePool",
    "delivery_record",
    "open_store",
]


@dataclass(frozen=True, slots=True)
class StoredJob:
    """A tracked job as the database has it."""

    job_id: str
    labels: dict[str, str]
    rollout: str | None
    added_at: float
    """Unix time the job was first added."""
    phase: str | None
    snapshot: Job | None
    outcome: str | None
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class StoredNodePool:
    """A followed node pool as the database has it (``outcome`` ``None`` while it is followed)."""

    cluster_id: str
    nodepool_id: str
    target: int | None
    labels: dict[str, str]
    rollout: str | None
    added_at: float
    outcome: str | None
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    sink: str
    event: Event
    attempts: int


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """An outbox row as an operator sees it: still ``pending`` (with its failed attempts so far) or ``rejected``
    for good by the receiver (a dead letter), with the last error."""

    seq: int
    sink: str
    event: Event
    state: Literal["pending", "rejected"]
    attempts: int
    last_error: str | None
    rejected_at: float | None
    """Unix time the receiver refused it (``None`` while pending)."""


class Routes:
    """Which durable sinks an event gets an outbox row for — what every engine's ``route`` and ``record`` share."""

    __slots__ = ("_routes",)

    def __init__(self) -> None:
        self._routes: list[tuple[str, Callable[[Event], bool]]] = []

    def add(self, sink: str, event_filter: EventFilter, wants: Callable[[Event], bool] | None = None) -> None:
        if wants is None:
            self._routes.append((sink, event_filter.matches))
        else:
            self._routes.append((sink, lambda e: event_filter.matches(e) and wants(e)))

    def rows(self, events: Sequence[Event]) -> list[tuple[str, bytes, list[str]]]:
        """``(id, JSON, durable sinks whose filter matches)`` per event, built on the loop before the commit."""
        return [(e.id, e.to_json(), [name for name, f in self._routes if f(e)]) for e in events]


def delivery_record(row: Sequence[Any]) -> DeliveryRecord:
    """A ``(seq, sink, event, attempts, last_error, rejected, delivered_at)`` outbox row, from either engine."""
    seq, sink, data, attempts, last_error, rejected, at = row
    return DeliveryRecord(
        seq=int(seq),
        sink=str(sink),
        event=Event.from_json(bytes(data)),
        state="rejected" if rejected else "pending",
        attempts=int(attempts),
        last_error=last_error,
        rejected_at=float(at) if rejected else None,
    )


class Store(Protocol):
    """Tracked jobs, their last snapshot and history, a per-sink delivery outbox, and a digest log."""

    where: str
    """Where the state lives, as it may be shown: a file path, or a DSN without its password."""
    closed: bool

    async def close(self) -> None:
        """Release the engine's resources; calls after this fail."""
        ...

    # jobs
    async def add_jobs(self, job_ids: Sequence[str], labels: Mapping[str, str], rollout: str | None) -> list[str]:
        """Remember new jobs; returns those that were not known before, in order."""
        ...

    async def record(
        self,
        job_id: str,
        snapshot: Job | None,
        events: Sequence[Event],
        *,
        outcome: Outcome | None = None,
        fenced: bool = True,
    ) -> None:
        """One transaction: snapshot (``None``: unchanged), history, outbox rows and outcome (job finished);
        ``fenced=False``: events written by the follower of the job's node, not its owner (see JobStore)."""
        ...

    async def record_events(self, events: Sequence[Event]) -> list[Event]:
        """Store events that belong to no job (rollout digests) with their outbox rows; returns the new ones."""
        ...

    async def record_fleet(
        self,
        discovered: Sequence[PoolNode],
        awaited: Sequence[AwaitedNode],
        resolved: Sequence[AwaitedNode],
        outcomes: Sequence[tuple[str, Outcome]],
    ) -> None:
        """One transaction: the jobs found for a followed pool's nodes become tracked jobs (with the pool's
        labels and rollout), nodes awaited are kept and resolved ones dropped, and pools that ended
        (``nodepool/<cluster>/<pool>`` outcomes) are marked finished."""
        ...

    async def add_nodepool(
        self,
        cluster_id: str,
        nodepool_id: str,
        target: int | None,
        labels: Mapping[str, str],
        rollout: str | None,
        added_at: float,
    ) -> bool:
        """Follow a pool from ``added_at`` (Unix time; part of its events' ids); ``False`` if it is followed
        already (a finished one is followed again, anew)."""
        ...

    async def nodepools(self, *, unfinished: bool = False) -> list[StoredNodePool]: ...

    async def fleet_state(self) -> tuple[list[PoolNode], list[AwaitedNode]]:
        """What :meth:`record_fleet` kept: the pools' node jobs and the nodes still awaited."""
        ...

    async def durations(self) -> dict[str, list[float]]:
        """The step durations learned before (:meth:`monitor.engine.durations.Durations.dump`)."""
        ...

    async def save_durations(self, samples: Mapping[str, Sequence[float]]) -> None:
        """Keep learned step durations across restarts (each step's samples replace what was kept for it)."""
        ...

    async def unfinished(self) -> list[StoredJob]:
        """Jobs to track again after a restart, oldest first."""
        ...

    async def get(self, job_id: str) -> StoredJob | None: ...

    async def jobs(
        self, *, phase: str | None = None, rollout: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[StoredJob]:
        """Every known job, optionally filtered (``phase`` also matches outcomes like ``timed_out``)."""
        ...

    async def history(self, job_id: str) -> list[Event]:
        """A job's events, oldest first."""
        ...

    async def confirmations(self, job_ids: Sequence[str]) -> list[Event]:
        """The ``node.active`` and ``node.failed`` events of these jobs, oldest first (a restart's rollout view:
        one query per many jobs, not one per job)."""
        ...

    async def delete(self, job_id: str) -> bool:
        """Forget a job and its history; whether it was known."""
        ...

    async def prune(self, retention: float) -> int:
        """Forget jobs finished more than ``retention`` seconds ago; how many."""
        ...

    # leases (one holder at a time across daemons sharing the database, e.g. a sink's delivery)
    async def hold_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew lease ``name`` for ``holder`` for ``ttl`` seconds; ``False`` while another holds it."""
        ...

    async def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up now, if ``holder`` has it."""
        ...

    # the outbox
    def route(self, sink: str, event_filter: EventFilter, wants: Callable[[Event], bool] | None = None) -> None:
        """Give durable sink ``sink`` an outbox fed by :meth:`record` with the events it selects."""
        ...

    async def pending(self, sink: str, *, limit: int = 100, after: int = 0) -> list[OutboxRow]:
        """Undelivered rows of ``sink`` after sequence ``after``, in order."""
        ...

    async def delivered(self, *seqs: int) -> None: ...

    async def attempt_failed(self, seq: int, error: str) -> None: ...

    async def rejected(self, seq: int, error: str) -> None:
        """The receiver refused the row for good: it leaves the outbox, kept with its error."""
        ...

    async def outbox_depth(self) -> dict[str, int]:
        """Undelivered rows per sink."""
        ...

    async def outbox_oldest(self) -> dict[str, float]:
        """Per sink with undelivered rows: when its oldest undelivered event was detected (Unix time)."""
        ...

    async def deliveries(
        self,
        state: Literal["pending", "rejected"],
        *,
        sink: str | None = None,
        job_id: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryRecord]:
        """Undelivered or rejected rows, oldest first, optionally of one sink or job."""
        ...

    async def replay(
        self, sinks: Sequence[str], *, event_ids: Sequence[str] | None = None, job_id: str | None = None
    ) -> list[DeliveryRecord]:
        """Rejected rows of ``sinks`` (all of them, or those of the event ids, or of one job) become due again,
        the same event with the same id; returns them as they were (one transaction)."""
        ...


async def open_store(config: StateConfig) -> Store:
    """The engine ``config.backend`` names, open (the PostgreSQL driver is imported only when it is used)."""
    if config.backend == "postgres":
        from monitor.daemon.pgstore import PgState  # noqa: PLC0415 (psycopg only for its users)

        assert config.dsn is not None  # (StateConfig requires one with this backend)
        return await PgState.open(Secret(config.dsn.get_secret_value()), max_size=config.pool_size)
    from monitor.daemon.store import State  # noqa: PLC0415 (and the engines import this module)

    return await State.open(config.path)
