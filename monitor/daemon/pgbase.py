"""The PostgreSQL engine's connection helpers, its leases and its per-sink outbox: the base of
:class:`~monitor.daemon.pgstore.PgState` (which adds the jobs, their history and the node pools).

Every statement runs on a connection of the pool; a driver error becomes a :class:`StateError` naming where,
never the password (:meth:`PgBase.failed`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from monitor.core.errors import NotOwnerError, StateError
from monitor.core.events import Event
from monitor.core.secret import redact
from monitor.daemon.pgschema import FENCED
from monitor.daemon.storage import DeliveryRecord, OutboxRow, delivery_record

__all__ = ["CHANNEL", "PgBase", "first_line"]

CHANNEL = "cce_monitor"
"""The NOTIFY channel replicas listen on: ``jobs`` (new or released jobs to claim), ``removed:<job id>``,
``outbox`` (rows queued: the replica delivering a sink reads them at once, whoever recorded them) and
``rewind:<sink>`` (dead letters replayed: that sink's deliverer reads its outbox again from the start)."""

_DELIVERY_COLUMNS = "seq, sink, event, attempts, last_error, rejected, delivered_at"


class PgBase:
    """A pool, where it is (for messages) and the secrets to keep out of them."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]], where: str, secrets: tuple[str, ...]):
        self.where = where
        self._pool = pool
        self._secrets = secrets
        self.owner: str | None = None
        """The replica this process is, once it shares the jobs (:mod:`monitor.daemon.pgcluster`)."""

    @property
    def pool(self) -> AsyncConnectionPool[AsyncConnection[Any]]:
        """The connection pool, for what else the daemon keeps in this database (the shared rate limit)."""
        return self._pool

    def failed(self, exc: psycopg.Error) -> StateError:
        """The driver's error as a :class:`StateError` naming where, without the password."""
        if exc.sqlstate == FENCED:
            return NotOwnerError(first_line(exc).removeprefix("ERROR:").strip())
        return StateError(f"state at {self.where}: {redact(first_line(exc), self._secrets)}")

    async def _write(self, statements: Iterable[tuple[str, Sequence[object]]], *, counts: bool = False) -> list[int]:
        """Statements in one transaction (one alone: its own, the pool's connections autocommit), sent in one
        round trip (pipeline mode) unless ``counts`` asks for the row count of each."""
        todo = list(statements)
        found: list[int] = []
        try:
            async with self._pool.connection() as conn:
                if len(todo) == 1:
                    cur = await conn.execute(todo[0][0].encode(), todo[0][1])
                    found.append(cur.rowcount)
                    return found if counts else []
                async with conn.transaction():
                    if counts:
                        for sql, args in todo:
                            cur = await conn.execute(sql.encode(), args)
                            found.append(cur.rowcount)
                    else:
                        async with conn.pipeline():
                            for sql, args in todo:
                                await conn.execute(sql.encode(), args)
        except psycopg.Error as exc:
            raise self.failed(exc) from None
        return found

    async def _fetch(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """One statement's rows (a write among them is committed: the pool's connections autocommit)."""
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(sql.encode(), args)
                return list(await cur.fetchall())
        except psycopg.Error as exc:
            raise self.failed(exc) from None

    # -------------------------------------------------------------------------------------- leases

    async def hold_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take or renew lease ``name`` for ``holder`` until ``ttl`` seconds from now (the database's clock);
        ``False`` while another holder's lease has not expired. A new holder bumps the lease's epoch."""
        rows = await self._fetch(
            "INSERT INTO leases (name, holder, expires_at) VALUES (%s, %s, extract(epoch from clock_timestamp()) + %s) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, "
            "epoch = leases.epoch + CASE WHEN leases.holder = excluded.holder THEN 0 ELSE 1 END "
            "WHERE leases.holder = excluded.holder OR leases.expires_at < extract(epoch from clock_timestamp()) "
            "RETURNING holder",
            (name, holder, ttl),
        )
        return bool(rows)

    async def release_lease(self, name: str, holder: str) -> None:
        """Give lease ``name`` up at once (a clean stop: another holder takes over without waiting it out)."""
        await self._write([("UPDATE leases SET expires_at = 0 WHERE name = %s AND holder = %s", (name, holder))])

    # -------------------------------------------------------------------------------------- outbox

    async def pending(self, sink: str, *, limit: int = 100, after: int = 0) -> list[OutboxRow]:
        """Undelivered rows for ``sink`` (with ``seq`` above ``after``), oldest first."""
        rows = await self._fetch(
            "SELECT seq, event, attempts FROM outbox WHERE sink = %s AND delivered_at IS NULL AND seq > %s "
            "ORDER BY seq LIMIT %s",
            (sink, after, limit),
        )
        return [OutboxRow(int(seq), sink, Event.from_json(bytes(data)), attempts) for seq, data, attempts in rows]

    async def delivered(self, *seqs: int) -> None:
        """Mark rows delivered (one statement, one transaction)."""
        if seqs:
            await self._write([("UPDATE outbox SET delivered_at = %s WHERE seq = ANY(%s)", (time.time(), list(seqs)))])

    async def attempt_failed(self, seq: int, error: str) -> None:
        """A retryable failure: count it; the row stays first in line."""
        await self._write(
            [("UPDATE outbox SET attempts = attempts + 1, last_error = %s WHERE seq = %s", (error[:500], seq))]
        )

    async def rejected(self, seq: int, error: str) -> None:
        """The sink refused the event for good: take the row out of the queue, keeping why."""
        await self._write(
            [
                (
                    "UPDATE outbox SET attempts = attempts + 1, delivered_at = %s, rejected = true, last_error = %s "
                    "WHERE seq = %s",
                    (time.time(), error[:500], seq),
                )
            ]
        )

    async def outbox_depth(self) -> dict[str, int]:
        """Undelivered rows per sink."""
        rows = await self._fetch("SELECT sink, count(*) FROM outbox WHERE delivered_at IS NULL GROUP BY sink")
        return {str(sink): int(n) for sink, n in rows}

    async def outbox_oldest(self) -> dict[str, float]:
        """Per sink: when its oldest undelivered event was detected (the event's own time)."""
        rows = await self._fetch(
            "SELECT DISTINCT ON (sink) sink, event FROM outbox WHERE delivered_at IS NULL ORDER BY sink, seq"
        )
        return {str(sink): Event.from_json(bytes(data)).time.timestamp() for sink, data in rows}

    async def deliveries(
        self,
        state: Literal["pending", "rejected"],
        *,
        sink: str | None = None,
        job_id: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryRecord]:
        """Undelivered (``pending``) or ``rejected`` rows, oldest first (a job's are picked from the events)."""
        where = "delivered_at IS NULL" if state == "pending" else "rejected"
        args: list[object] = []
        if sink is not None:
            where += " AND sink = %s"
            args.append(sink)
        sql = f"SELECT {_DELIVERY_COLUMNS} FROM outbox WHERE {where} ORDER BY seq"  # noqa: S608 (constants only)
        if job_id is None:
            sql += " LIMIT %s"
            args.append(limit)
        found = [delivery_record(row) for row in await self._fetch(sql, args)]
        if job_id is not None:
            found = [d for d in found if d.event.job_id == job_id][:limit]
        return found

    async def replay(
        self, sinks: Sequence[str], *, event_ids: Sequence[str] | None = None, job_id: str | None = None
    ) -> list[DeliveryRecord]:
        """Rejected rows of ``sinks`` (matching the event ids or job, if given) become due again, keeping their
        event (and so its id), attempts and last error; returns them as they were (one transaction)."""
        if not sinks or (event_ids is not None and not event_ids):
            return []
        where = "rejected AND sink = ANY(%s)"
        args: list[object] = [list(sinks)]
        if event_ids is not None:
            where += " AND event_id = ANY(%s)"
            args.append(list(event_ids))
        try:
            async with self._pool.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    f"SELECT {_DELIVERY_COLUMNS} FROM outbox WHERE {where} ORDER BY seq FOR UPDATE".encode(),  # noqa: S608
                    args,
                )
                found = [delivery_record(row) for row in await cur.fetchall()]
                if job_id is not None:
                    found = [d for d in found if d.event.job_id == job_id]
                await conn.execute(
                    b"UPDATE outbox SET delivered_at = NULL, rejected = false WHERE seq = ANY(%s)",
                    ([d.seq for d in found],),
                )
                for sink in dict.fromkeys(d.sink for d in found) if self.owner is not None else ():
                    # The sink's deliverer may be another replica's: it reads its outbox again from the start.
                    await conn.execute(b"SELECT pg_notify(%s, %s)", (CHANNEL, "rewind:" + sink))
        except psycopg.Error as exc:
            raise self.failed(exc) from None
        return found


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (the driver's messages run on with details and hints)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
