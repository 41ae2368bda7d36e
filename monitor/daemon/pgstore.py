"""Durable state in PostgreSQL: the :class:`~monitor.daemon.storage.Store` of the SQLite engine
(:mod:`monitor.daemon.store`), on a server that several daemon replicas can share (``state.backend: postgres``).

The same guarantees, by the same means: :meth:`PgState.record` is one transaction (snapshot, history, one outbox
row per routed sink, outcome); an event id is stored once per job (history) and once per sink (outbox); outbox
rows are handed out per sink in the order recorded. The tables mirror SQLite's, with PostgreSQL types (``bytea``
for orjson bodies, so both engines store the very same bytes; ``bigint`` identity sequences).

Connections come from a :class:`psycopg_pool.AsyncConnectionPool` (psycopg 3, async, typed): the event loop never
blocks on the database. The schema is versioned (``schema_migrations``) and brought up to date at :meth:`open`
under an advisory lock, so replicas starting together apply each migration once; applying is idempotent.

The DSN may hold a password: it is never logged, never in an error or a repr — :attr:`where` is the DSN without
it, and errors from the driver pass through :func:`~monitor.core.secret.redact` with the password.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from monitor.core.errors import ConfigError, NotOwnerError
from monitor.core.events import Event, EventType, Outcome
from monitor.core.model import Job, job_from_json, job_to_json
from monitor.core.nodes import Node
from monitor.core.secret import Secret, redact
from monitor.daemon.pgbase import CHANNEL, PgBase, first_line
from monitor.daemon.pgschema import migrate
from monitor.daemon.storage import Routes, StoredJob, StoredNodePool
from monitor.engine.bus import EventFilter
from monitor.engine.fleet import AwaitedNode, PoolNode

__all__ = ["PgState", "describe_dsn"]

_NOTIFY_OUTBOX = "SELECT pg_notify(%s, 'outbox')"

logger = logging.getLogger(__name__)
# The pool logs each failed reconnection (every second or two while the server is down); the daemon says once
# that the database failed, and once that it answers again.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

_JOB_COLUMNS = "job_id, labels, rollout, added_at, phase, snapshot, outcome, finished_at"


def describe_dsn(dsn: str) -> str:
    """The DSN as it may be shown: ``postgresql://user@host:port/dbname`` — never its password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable DSN)"
    user = parts.get("user")
    host = parts.get("host") or "localhost"
    port = parts.get("port")
    where = f"{host}:{port}" if port else str(host)
    return f"postgresql://{f'{user}@' if user else ''}{where}/{parts.get('dbname') or ''}"


class PgState(PgBase):
    """The PostgreSQL :class:`~monitor.daemon.storage.Store`. Open with ``await PgState.open(dsn)``."""

    def __init__(
        self, pool: AsyncConnectionPool[AsyncConnection[Any]], where: str, secrets: tuple[str, ...], conninfo: str
    ):
        super().__init__(pool, where, secrets)
        self._conninfo = conninfo  # (holds the password: never shown)
        self._routes = Routes()
        self.closed = False
        self.epochs: dict[str, int] = {}
        """Once this process shares the jobs (:attr:`owner` set), every write for a job is fenced by the epoch
        this replica claimed it at."""

    def __repr__(self) -> str:
        return f"PgState(where={self.where!r}, closed={self.closed})"

    # ----------------------------------------------------------------------------------- lifecycle

    @classmethod
    async def open(cls, dsn: Secret | str, *, min_size: int = 1, max_size: int = 4, wait: float = 10.0) -> PgState:
        """Connect, and create or migrate the schema. A server that cannot be reached, refuses the credentials or
        is not PostgreSQL raises :class:`ConfigError` naming the DSN without its password."""
        text = dsn.reveal() if isinstance(dsn, Secret) else dsn
        where = describe_dsn(text)
        try:
            parts = conninfo_to_dict(text)
        except psycopg.ProgrammingError:
            raise ConfigError("state.dsn: not a PostgreSQL connection string or URL") from None
        password = str(parts.get("password") or "")
        secrets = (password,) if password else ()
        conninfo = make_conninfo(text, application_name=parts.get("application_name") or "cce-monitor")
        try:
            # One connection first, for the migrations and for a clear answer: the pool would retry a wrong
            # password or a server that is not there until its timeout, and then say only that it timed out.
            async with await AsyncConnection.connect(conninfo, connect_timeout=max(1, round(wait))) as conn:
                await migrate(conn, where)
        except psycopg.Error as exc:
            detail = redact(first_line(exc), secrets)
            raise ConfigError(f"state.dsn: cannot use PostgreSQL at {where}: {detail}") from None
        # Autocommit: a statement alone is its own transaction (no BEGIN and COMMIT or ROLLBACK around each read
        # and each one-statement write: a third of the statements the server ran); several go in a transaction.
        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True},
            open=False,
            timeout=min(wait, 5.0),
            name="cce-monitor-state",
        )
        try:
            await pool.open(wait=True, timeout=wait)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, psycopg.Error | TimeoutError) or type(exc).__name__ == "PoolTimeout":
                detail = redact(first_line(exc), secrets)
                raise ConfigError(f"state.dsn: cannot use PostgreSQL at {where}: {detail}") from None
            raise
        return cls(pool, where, secrets, conninfo)

    async def connect(self, *, autocommit: bool = False) -> AsyncConnection[Any]:
        """A connection of its own, outside the pool (to LISTEN on)."""
        return await AsyncConnection.connect(self._conninfo, autocommit=autocommit, connect_timeout=5)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self._pool.close()

    def route(self, sink: str, event_filter: EventFilter, wants: Callable[[Event], bool] | None = None) -> None:
        """Give durable sink ``sink`` an outbox fed by :meth:`record` with the events it selects."""
        self._routes.add(sink, event_filter, wants)

    # ---------------------------------------------------------------------------------------- jobs

    async def add_jobs(self, job_ids: Sequence[str], labels: Mapping[str, str], rollout: str | None) -> list[str]:
        """Insert jobs not yet known (one statement, however many); returns the ids that were new, in order."""
        blob, now = orjson.dumps(dict(labels)), time.time()
        try:
            async with self._pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    b"INSERT INTO jobs (job_id, labels, rollout, added_at, updated_at) "
                    b"SELECT id, %s, %s, %s, %s FROM unnest(%s::text[]) WITH ORDINALITY AS given(id, n) ORDER BY n "
                    b"ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
                    (blob, rollout, now, now, list(job_ids)),
                )
                new = {r[0] for r in await cur.fetchall()}
                if new:  # replicas claim them at once (monitor.daemon.pgcluster listens)
                    await conn.execute(b"SELECT pg_notify(%s, 'jobs')", (CHANNEL,))
        except psycopg.Error as exc:
            raise self.failed(exc) from None
        return [job_id for job_id in job_ids if job_id in new]

    async def record(
        self,
        job_id: str,
        snapshot: Job | None,
        events: Sequence[Event],
        *,
        outcome: Outcome | None = None,
        fenced: bool = True,
    ) -> None:
        """One transaction: snapshot (``None``: unchanged), history, outbox rows and outcome (job finished)."""
        epoch: int | None = None
        if self.owner is not None and fenced:  # shared jobs: only as the owner, at its epoch (see pgschema)
            epoch = self.epochs.get(job_id)
            if epoch is None:
                raise NotOwnerError(f"job {job_id} is not owned by this replica")
        # However many events and sinks: one statement, a function of the schema's (cce_monitor_record) that
        # fences, updates the job, writes the history and the outbox rows (arrays, in order) and notifies.
        rows = self._routes.rows(events)
        queue = [(sink, event_id, data) for event_id, data, sinks in rows for sink in sinks]
        try:
            await self._write(
                [
                    (
                        "SELECT cce_monitor_record(%s, %s, %s::bigint, %s::bytea, %s, %s, %s, %s::text[], %s::bytea[], "
                        "%s::text[], %s::text[], %s::text[], %s::bytea[], %s)",
                        (
                            job_id,
                            self.owner,
                            epoch,
                            job_to_json(snapshot) if snapshot is not None else None,
                            snapshot.phase.value if snapshot is not None else None,
                            str(outcome) if outcome is not None else None,
                            time.time(),
                            [r[0] for r in rows],
                            [r[1] for r in rows],
                            [e.type.value for e in events],
                            [q[0] for q in queue],
                            [q[1] for q in queue],
                            [q[2] for q in queue],
                            # the sink's lease holder may be another replica
                            CHANNEL if queue and self.owner is not None else None,
                        ),
                    )
                ]
            )
        except NotOwnerError:
            self.epochs.pop(job_id, None)
            raise
        if outcome is not None:
            self.epochs.pop(job_id, None)  # finished: nothing more is written for it

    async def record_events(self, events: Sequence[Event]) -> list[Event]:
        """Store events that belong to no job (rollout digests) with their outbox rows; returns the new ones."""
        new: set[str] = set()
        now = time.time()
        try:
            async with self._pool.connection() as conn, conn.transaction():
                for event_id, data, sinks in self._routes.rows(events):
                    cur = await conn.execute(
                        b"INSERT INTO digests (event_id, at) VALUES (%s,%s) ON CONFLICT (event_id) DO NOTHING",
                        (event_id, now),
                    )
                    if not cur.rowcount:
                        continue
                    new.add(event_id)
                    for sql, args in self._queue(event_id, data, sinks):
                        await conn.execute(sql.encode(), args)
                    if sinks and self.owner is not None:
                        await conn.execute(_NOTIFY_OUTBOX.encode(), (CHANNEL,))
        except psycopg.Error as exc:
            raise self.failed(exc) from None
        return [e for e in events if e.id in new]

    @staticmethod
    def _queue(event_id: str, data: bytes, sinks: list[str]) -> list[tuple[str, Sequence[object]]]:
        sql = "INSERT INTO outbox (sink, event_id, event) VALUES (%s,%s,%s) ON CONFLICT (sink, event_id) DO NOTHING"
        return [(sql, (sink, event_id, data)) for sink in sinks]

    async def unfinished(self) -> list[StoredJob]:
        """Jobs to track again after a restart, oldest first."""
        return await self._select("WHERE finished_at IS NULL ORDER BY added_at, seq", ())

    async def get(self, job_id: str) -> StoredJob | None:
        rows = await self._select("WHERE job_id = %s", (job_id,))
        return rows[0] if rows else None

    async def jobs(
        self, *, phase: str | None = None, rollout: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[StoredJob]:
        """Every known job, optionally filtered (``phase`` also matches outcomes like ``timed_out``)."""
        where: list[str] = []
        args: list[object] = []
        if phase:
            where.append("(phase = %s OR outcome = %s)")
            args += [phase, phase]
        if rollout:
            where.append("rollout = %s")
            args.append(rollout)
        clause = ("WHERE " + " AND ".join(where) + " " if where else "") + "ORDER BY added_at, seq"
        found = await self._select(clause, tuple(args))
        if labels:
            found = [j for j in found if all(j.labels.get(k) == v for k, v in labels.items())]
        return found

    async def _select(self, clause: str, args: tuple[object, ...]) -> list[StoredJob]:
        # `clause` is always one of this module's constant strings; values go in as parameters.
        rows = await self._fetch(f"SELECT {_JOB_COLUMNS} FROM jobs " + clause, args)  # noqa: S608
        return [
            StoredJob(
                job_id=r[0],
                labels=orjson.loads(r[1]),
                rollout=r[2],
                added_at=r[3],
                phase=r[4],
                snapshot=job_from_json(bytes(r[5])) if r[5] is not None else None,
                outcome=r[6],
                finished_at=r[7],
            )
            for r in rows
        ]

    async def history(self, job_id: str) -> list[Event]:
        """A job's events, oldest first."""
        rows = await self._fetch("SELECT event FROM history WHERE job_id = %s ORDER BY seq", (job_id,))
        return [Event.from_json(bytes(r[0])) for r in rows]

    async def durations(self) -> dict[str, list[float]]:
        rows = await self._fetch("SELECT step, samples FROM durations")
        return {str(step): list(orjson.loads(bytes(blob))) for step, blob in rows}

    async def save_durations(self, samples: Mapping[str, Sequence[float]]) -> None:
        """(Replicas learn on their own; the last to save a step's samples is what a restart starts from.)"""
        if samples:
            await self._write(
                [
                    (
                        "INSERT INTO durations (step, samples) SELECT * FROM unnest(%s::text[], %s::bytea[]) "
                        "ON CONFLICT (step) DO UPDATE SET samples = excluded.samples",
                        (list(samples), [orjson.dumps(list(v)) for v in samples.values()]),
                    )
                ]
            )

    async def confirmations(self, job_ids: Sequence[str]) -> list[Event]:
        """The ``node.active`` and ``node.failed`` events of these jobs, oldest first (rows from before schema
        version 3 have no type: read and checked)."""
        rows = await self._fetch(
            "SELECT event FROM history WHERE job_id = ANY(%s) "
            "AND (type IN ('node.active', 'node.failed') OR type IS NULL) ORDER BY seq",
            (list(job_ids),),
        )
        found = [Event.from_json(bytes(r[0])) for r in rows]
        return [e for e in found if e.type in (EventType.NODE_ACTIVE, EventType.NODE_FAILED)]

    async def delete(self, job_id: str) -> bool:
        """Forget a job and its history; whether it was known."""
        counts = await self._write(
            [
                ("DELETE FROM jobs WHERE job_id = %s", (job_id,)),
                ("DELETE FROM history WHERE job_id = %s", (job_id,)),
                ("DELETE FROM pool_nodes WHERE job_id = %s", (job_id,)),
                ("DELETE FROM claims WHERE job_id = %s", (job_id,)),
                ("SELECT pg_notify(%s, %s)", (CHANNEL, "removed:" + job_id)),  # its owner stops polling it
            ],
            counts=True,
        )
        return counts[0] > 0

    async def prune(self, retention: float) -> int:
        """Forget jobs finished more than ``retention`` seconds ago, and delivered outbox rows as old."""
        cutoff = time.time() - retention
        try:
            async with self._pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    b"DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < %s RETURNING job_id", (cutoff,)
                )
                old = [r[0] for r in await cur.fetchall()]
                await conn.execute(b"DELETE FROM history WHERE job_id = ANY(%s)", (old,))
                await conn.execute(b"DELETE FROM pool_nodes WHERE job_id = ANY(%s)", (old,))
                await conn.execute(b"DELETE FROM claims WHERE job_id = ANY(%s)", (old,))
                for sql in (
                    b"DELETE FROM nodepools WHERE finished_at IS NOT NULL AND finished_at < %s",
                    b"DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < %s",
                    b"DELETE FROM digests WHERE at < %s",
                ):
                    await conn.execute(sql, (cutoff,))
        except psycopg.Error as exc:
            raise self.failed(exc) from None
        return len(old)

    # ------------------------------------------------------------------------- node pools and nodes

    async def record_fleet(
        self,
        discovered: Sequence[PoolNode],
        awaited: Sequence[AwaitedNode],
        resolved: Sequence[AwaitedNode],
        outcomes: Sequence[tuple[str, Outcome]],
    ) -> None:
        """One transaction: discovered node jobs tracked, awaited nodes kept, resolved ones dropped, pools ended."""
        now = time.time()
        statements: list[tuple[str, Sequence[object]]] = []
        owned = 1 if self.owner is not None else 0  # a replica's pool's node jobs are its own, at epoch 1
        for f in discovered:
            labels = orjson.dumps(dict(f.labels))
            statements.append(
                (
                    "INSERT INTO jobs (job_id, labels, rollout, added_at, updated_at, owner, epoch) "
                    "VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (job_id) DO NOTHING",
                    (f.node.job_id, labels, f.labels.get("rollout"), now, now, self.owner, owned),
                )
            )
            statements.append(
                (
                    "INSERT INTO pool_nodes (job_id, cluster_id, nodepool_id, node, labels) VALUES (%s,%s,%s,%s,%s) "
                    "ON CONFLICT (job_id) DO UPDATE SET cluster_id = excluded.cluster_id, "
                    "nodepool_id = excluded.nodepool_id, node = excluded.node, labels = excluded.labels",
                    (f.node.job_id, f.cluster_id, f.nodepool_id, orjson.dumps(f.node), labels),
                )
            )
        for a in awaited:
            statements.append(
                (
                    "INSERT INTO awaited_nodes (cluster_id, node_id, awaited, owner) VALUES (%s,%s,%s,%s) "
                    "ON CONFLICT (cluster_id, node_id) DO UPDATE SET awaited = excluded.awaited, "
                    "owner = excluded.owner",
                    (a.cluster_id, a.node_id, orjson.dumps(a), self.owner),
                )
            )
        for a in resolved:
            statements.append(
                ("DELETE FROM awaited_nodes WHERE cluster_id = %s AND node_id = %s", (a.cluster_id, a.node_id))
            )
        for key, outcome in outcomes:
            if key.startswith("nodepool/"):
                _, cluster_id, nodepool_id = key.split("/", 2)
                statements.append(
                    (
                        "UPDATE nodepools SET outcome = %s, finished_at = %s "
                        "WHERE cluster_id = %s AND nodepool_id = %s",
                        (str(outcome), now, cluster_id, nodepool_id),
                    )
                )
        if not statements:
            return
        if self.owner is None:
            await self._write(statements)
            return
        if discovered:  # the audit of who owned which job when (see pgschema)
            statements.append(
                (
                    "INSERT INTO claims (job_id, epoch, owner, at) SELECT job_id, 1, owner, "
                    "extract(epoch from clock_timestamp()) FROM jobs WHERE job_id = ANY(%s) AND owner = %s "
                    "AND epoch = 1 ON CONFLICT DO NOTHING",
                    ([f.node.job_id for f in discovered], self.owner),
                )
            )
        counts = await self._write(statements, counts=True)
        inserted = iter(counts[::2])  # each discovered node's job row, then its pool_nodes row
        for f in discovered:
            if next(inserted) > 0:
                self.epochs[f.node.job_id] = 1

    async def add_nodepool(
        self,
        cluster_id: str,
        nodepool_id: str,
        target: int | None,
        labels: Mapping[str, str],
        rollout: str | None,
        added_at: float,
    ) -> bool:
        """Follow a pool from ``added_at``; ``False`` if it is followed already (a finished one anew)."""
        counts = await self._write(
            [
                (
                    "INSERT INTO nodepools (cluster_id, nodepool_id, target, labels, rollout, added_at, owner) "
                    "VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (cluster_id, nodepool_id) DO UPDATE SET "
                    "target = excluded.target, labels = excluded.labels, rollout = excluded.rollout, "
                    "added_at = excluded.added_at, outcome = NULL, finished_at = NULL, owner = excluded.owner "
                    "WHERE nodepools.finished_at IS NOT NULL",
                    (cluster_id, nodepool_id, target, orjson.dumps(dict(labels)), rollout, added_at, self.owner),
                )
            ],
            counts=True,
        )
        return counts[0] > 0

    async def nodepools(self, *, unfinished: bool = False) -> list[StoredNodePool]:
        rows = await self._fetch(
            "SELECT cluster_id, nodepool_id, target, labels, rollout, added_at, outcome, finished_at FROM nodepools "
            "WHERE finished_at IS NULL OR NOT %s ORDER BY added_at",
            (unfinished,),
        )
        return [StoredNodePool(c, p, t, orjson.loads(lab), r, a, o, f) for c, p, t, lab, r, a, o, f in rows]

    async def fleet_state(self) -> tuple[list[PoolNode], list[AwaitedNode]]:
        nodes = [
            PoolNode(cluster_id, nodepool_id, Node(**orjson.loads(node)), orjson.loads(labels))
            for cluster_id, nodepool_id, node, labels in await self._fetch(
                "SELECT cluster_id, nodepool_id, node, labels FROM pool_nodes ORDER BY job_id"
            )
        ]
        awaited = [
            AwaitedNode(**orjson.loads(blob))
            for (blob,) in await self._fetch("SELECT awaited FROM awaited_nodes ORDER BY cluster_id, node_id")
        ]
        return nodes, awaited
