"""Durable state in SQLite: tracked jobs, their last snapshot and history, and a per-sink delivery outbox.

Why SQLite: embedded, no server to run, crash-safe in WAL mode, and the stdlib has it. Every call runs on one
dedicated thread (``sqlite3`` connections belong to a thread), so the event loop never blocks on disk.

At-least-once delivery rests on one transaction: :meth:`State.record` stores a job's new snapshot, its history
rows and one outbox row per durable sink whose filter matches each event — all or nothing. A sink's
:class:`~monitor.daemon.delivery.Deliverer` then sends outbox rows and marks them delivered. So:

* a crash before the commit loses the snapshot too, and the next poll detects the same transition again, with
  the same event id (ids are derived from the transition), and records it then;
* a crash after the commit leaves undelivered rows, sent after the restart — a duplicate is possible only for a
  row that was sent but not yet marked, and it carries the same id;
* in normal operation each row is sent once and marked.

The file is created with mode 0600: it holds labels and job data, not credentials.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson

from monitor.core.errors import ConfigError, StateError
from monitor.core.events import Event, EventType, Outcome
from monitor.core.model import Job, job_from_json, job_to_json
from monitor.core.nodes import Node
from monitor.daemon.storage import DeliveryRecord, OutboxRow, Routes, StoredJob, StoredNodePool, delivery_record
from monitor.engine.bus import EventFilter
from monitor.engine.fleet import AwaitedNode, PoolNode

__all__ = ["OutboxRow", "State", "StoredJob"]  # the row types come from monitor.daemon.storage

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id      TEXT PRIMARY KEY,
    labels      BLOB NOT NULL,
    rollout     TEXT,
    added_at    REAL NOT NULL,
    phase       TEXT,
    snapshot    BLOB,
    outcome     TEXT,
    finished_at REAL,
    updated_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (finished_at) WHERE finished_at IS NULL;
CREATE TABLE IF NOT EXISTS history (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id   TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event    BLOB NOT NULL,
    UNIQUE (job_id, event_id)
);
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    sink         TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    event        BLOB NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    delivered_at REAL,
    rejected     INTEGER NOT NULL DEFAULT 0,
    UNIQUE (sink, event_id)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sink, seq) WHERE delivered_at IS NULL;
CREATE TABLE IF NOT EXISTS digests (
    event_id TEXT PRIMARY KEY,
    at       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS durations (
    step    TEXT PRIMARY KEY,
    samples BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS nodepools (
    cluster_id  TEXT NOT NULL,
    nodepool_id TEXT NOT NULL,
    target      INTEGER,
    labels      BLOB NOT NULL,
    rollout     TEXT,
    added_at    REAL NOT NULL,
    outcome     TEXT,
    finished_at REAL,
    PRIMARY KEY (cluster_id, nodepool_id)
);
CREATE TABLE IF NOT EXISTS pool_nodes (
    job_id      TEXT PRIMARY KEY,
    cluster_id  TEXT NOT NULL,
    nodepool_id TEXT NOT NULL,
    node        BLOB NOT NULL,
    labels      BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS awaited_nodes (
    cluster_id TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    awaited    BLOB NOT NULL,
    PRIMARY KEY (cluster_id, node_id)
);
"""


class State:
    """The SQLite :class:`~monitor.daemon.storage.Store`. Open with ``await State.open(path)``; every method
    is a coroutine run off the loop."""

    def __init__(self, path: Path, conn: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self.path = path
        self.where = str(path)
        self._conn = conn
        self._executor = executor
        self._routes = Routes()
        self.closed = False

    # ----------------------------------------------------------------------------------- lifecycle

    @classmethod
    async def open(cls, path: str | Path) -> State:
        """Open (creating if needed) the database at ``path``; ``:memory:`` works for tests."""
        p = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cce-monitor-state")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, p)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(p, conn, executor)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        await self._run(self._conn.close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:  # a full disk, a file gone read-only: the engine's failure, in our tree
            raise StateError(f"state at {self.where}: {exc}") from exc

    def route(self, sink: str, event_filter: EventFilter, wants: Callable[[Event], bool] | None = None) -> None:
        """Give durable sink ``sink`` an outbox: :meth:`record` queues events that match the filter (and that
        the sink ``wants``, e.g. a chat sink's own event selection) for it."""
        self._routes.add(sink, event_filter, wants)

    # ---------------------------------------------------------------------------------------- jobs

    async def add_jobs(self, job_ids: Sequence[str], labels: Mapping[str, str], rollout: str | None) -> list[str]:
        """Insert jobs not yet known; returns the ids that were new."""
        return await self._run(self._add_jobs, list(job_ids), orjson.dumps(dict(labels)), rollout)

    def _add_jobs(self, job_ids: list[str], labels: bytes, rollout: str | None) -> list[str]:
        now = time.time()
        new: list[str] = []
        with self._conn:
            for job_id in job_ids:
                cur = self._conn.execute(
                    "INSERT OR IGNORE INTO jobs (job_id, labels, rollout, added_at, updated_at) VALUES (?,?,?,?,?)",
                    (job_id, labels, rollout, now, now),
                )
                if cur.rowcount:
                    new.append(job_id)
        return new

    async def record(
        self,
        job_id: str,
        snapshot: Job | None,
        events: Sequence[Event],
        *,
        outcome: Outcome | None = None,
        fenced: bool = True,
    ) -> None:
        """Atomically store a new snapshot (``None``: unchanged), history and outbox rows, and an outcome.

        ``outcome`` (``Success``, ``Failed``, ``timed_out``, ``not_found``) marks the job finished. ``fenced``
        means nothing here: one daemon owns every job of its file.
        """
        rows = self._routes.rows(events)
        blob = job_to_json(snapshot) if snapshot is not None else None
        phase = snapshot.phase.value if snapshot is not None else None
        await self._run(self._record, job_id, blob, phase, rows, str(outcome) if outcome is not None else None)

    def _record(
        self,
        job_id: str,
        blob: bytes | None,
        phase: str | None,
        rows: list[tuple[str, bytes, list[str]]],
        outcome: str | None,
    ) -> None:
        now = time.time()
        with self._conn:
            if blob is not None:
                self._conn.execute(
                    "UPDATE jobs SET snapshot = ?, phase = ?, updated_at = ? WHERE job_id = ?",
                    (blob, phase, now, job_id),
                )
            if outcome is not None:
                self._conn.execute(
                    "UPDATE jobs SET outcome = ?, finished_at = ?, updated_at = ? WHERE job_id = ?",
                    (outcome, now, now, job_id),
                )
            for event_id, data, sinks in rows:
                self._conn.execute(
                    "INSERT OR IGNORE INTO history (job_id, event_id, event) VALUES (?,?,?)", (job_id, event_id, data)
                )
                self._queue(event_id, data, sinks)

    async def record_events(self, events: Sequence[Event]) -> list[Event]:
        """Record events that belong to no single job (rollout digests) and queue them for the routed durable
        sinks; returns those not recorded before (an event id is recorded once)."""
        rows = self._routes.rows(events)
        new_ids = await self._run(self._record_outbox, rows)
        return [e for e in events if e.id in new_ids]

    def _record_outbox(self, rows: list[tuple[str, bytes, list[str]]]) -> set[str]:
        new: set[str] = set()
        now = time.time()
        with self._conn:
            for event_id, data, sinks in rows:
                cur = self._conn.execute("INSERT OR IGNORE INTO digests (event_id, at) VALUES (?,?)", (event_id, now))
                if not cur.rowcount:
                    continue
                new.add(event_id)
                self._queue(event_id, data, sinks)
        return new

    def _queue(self, event_id: str, data: bytes, sinks: list[str]) -> None:
        """One outbox row per routed sink (inside the caller's transaction); a repeat of an event id is ignored."""
        self._conn.executemany(
            "INSERT OR IGNORE INTO outbox (sink, event_id, event) VALUES (?,?,?)",
            [(sink, event_id, data) for sink in sinks],
        )

    async def unfinished(self) -> list[StoredJob]:
        """Jobs to track again after a restart."""
        return await self._run(self._select, "WHERE finished_at IS NULL ORDER BY added_at", ())

    async def get(self, job_id: str) -> StoredJob | None:
        rows = await self._run(self._select, "WHERE job_id = ?", (job_id,))
        return rows[0] if rows else None

    async def jobs(
        self, *, phase: str | None = None, rollout: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[StoredJob]:
        """Every known job, optionally filtered (``phase`` also matches outcomes like ``timed_out``)."""
        where, args = [], []
        if phase:
            where.append("(phase = ? OR outcome = ?)")
            args += [phase, phase]
        if rollout:
            where.append("rollout = ?")
            args.append(rollout)
        clause = ("WHERE " + " AND ".join(where) + " " if where else "") + "ORDER BY added_at"
        found = await self._run(self._select, clause, tuple(args))
        if labels:
            found = [j for j in found if all(j.labels.get(k) == v for k, v in labels.items())]
        return found

    def _select(self, clause: str, args: tuple[object, ...]) -> list[StoredJob]:
        # `clause` is always one of this module's constant strings; values go in as parameters.
        sql = "SELECT job_id, labels, rollout, added_at, phase, snapshot, outcome, finished_at FROM jobs " + clause  # noqa: S608
        cur = self._conn.execute(sql, args)
        return [
            StoredJob(
                job_id=r[0],
                labels=orjson.loads(r[1]),
                rollout=r[2],
                added_at=r[3],
                phase=r[4],
                snapshot=job_from_json(r[5]) if r[5] is not None else None,
                outcome=r[6],
                finished_at=r[7],
            )
            for r in cur.fetchall()
        ]

    async def history(self, job_id: str) -> list[Event]:
        rows = await self._run(self._history, job_id)
        return [Event.from_json(r) for r in rows]

    def _history(self, job_id: str) -> list[bytes]:
        cur = self._conn.execute("SELECT event FROM history WHERE job_id = ? ORDER BY seq", (job_id,))
        return [r[0] for r in cur.fetchall()]

    async def durations(self) -> dict[str, list[float]]:
        rows = await self._run(lambda: self._conn.execute("SELECT step, samples FROM durations").fetchall())
        return {str(step): list(orjson.loads(blob)) for step, blob in rows}

    async def save_durations(self, samples: Mapping[str, Sequence[float]]) -> None:
        rows = [(step, orjson.dumps(list(values))) for step, values in samples.items()]
        await self._run(self._save_durations, rows)

    def _save_durations(self, rows: list[tuple[str, bytes]]) -> None:
        with self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO durations (step, samples) VALUES (?, ?)", rows)

    async def confirmations(self, job_ids: Sequence[str]) -> list[Event]:
        rows = await self._run(self._confirmations, list(job_ids))
        found = [Event.from_json(r) for r in rows]
        return [e for e in found if e.type in (EventType.NODE_ACTIVE, EventType.NODE_FAILED)]

    def _confirmations(self, job_ids: list[str]) -> list[bytes]:
        # (the history keeps no type column here: the bodies are compact orjson, so the type is this substring)
        cur = self._conn.execute(
            "SELECT event FROM history WHERE job_id IN (SELECT value FROM json_each(?)) "
            'AND CAST(event AS TEXT) LIKE \'%"type":"node.%\' ORDER BY seq',
            (orjson.dumps(job_ids).decode(),),
        )
        return [r[0] for r in cur.fetchall()]

    # ------------------------------------------------------------------------- node pools and nodes

    async def record_fleet(
        self,
        discovered: Sequence[PoolNode],
        awaited: Sequence[AwaitedNode],
        resolved: Sequence[AwaitedNode],
        outcomes: Sequence[tuple[str, Outcome]],
    ) -> None:
        pools = [(k.split("/")[1], k.split("/")[2], str(o)) for k, o in outcomes if k.startswith("nodepool/")]
        found = [
            (f.node.job_id, f.cluster_id, f.nodepool_id, orjson.dumps(f.node), orjson.dumps(dict(f.labels)))
            for f in discovered
        ]
        kept = [(a.cluster_id, a.node_id, orjson.dumps(a)) for a in awaited]
        dropped = [(a.cluster_id, a.node_id) for a in resolved]
        await self._run(self._record_fleet, found, kept, dropped, pools)

    def _record_fleet(
        self,
        found: list[tuple[str, str, str, bytes, bytes]],
        kept: list[tuple[str, str, bytes]],
        dropped: list[tuple[str, str]],
        pools: list[tuple[str, str, str]],
    ) -> None:
        now = time.time()
        with self._conn:
            for job_id, cluster_id, nodepool_id, node, labels in found:
                rollout = orjson.loads(labels).get("rollout")
                self._conn.execute(
                    "INSERT OR IGNORE INTO jobs (job_id, labels, rollout, added_at, updated_at) VALUES (?,?,?,?,?)",
                    (job_id, labels, rollout, now, now),
                )
                self._conn.execute(
                    "INSERT OR REPLACE INTO pool_nodes VALUES (?,?,?,?,?)",
                    (job_id, cluster_id, nodepool_id, node, labels),
                )
            self._conn.executemany("INSERT OR REPLACE INTO awaited_nodes VALUES (?,?,?)", kept)
            self._conn.executemany("DELETE FROM awaited_nodes WHERE cluster_id = ? AND node_id = ?", dropped)
            self._conn.executemany(
                "UPDATE nodepools SET outcome = ?, finished_at = ? WHERE cluster_id = ? AND nodepool_id = ?",
                [(outcome, now, cluster_id, nodepool_id) for cluster_id, nodepool_id, outcome in pools],
            )

    async def add_nodepool(
        self,
        cluster_id: str,
        nodepool_id: str,
        target: int | None,
        labels: Mapping[str, str],
        rollout: str | None,
        added_at: float,
    ) -> bool:
        row = (cluster_id, nodepool_id, target, orjson.dumps(dict(labels)), rollout, added_at)
        return await self._run(self._add_nodepool, row)

    def _add_nodepool(self, row: tuple[str, str, int | None, bytes, str | None, float]) -> bool:
        with self._conn:
            cur = self._conn.execute(
                "INSERT INTO nodepools (cluster_id, nodepool_id, target, labels, rollout, added_at) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT (cluster_id, nodepool_id) DO UPDATE SET target = excluded.target, "
                "labels = excluded.labels, rollout = excluded.rollout, added_at = excluded.added_at, outcome = NULL, "
                "finished_at = NULL WHERE nodepools.finished_at IS NOT NULL",
                row,
            )
        return cur.rowcount > 0

    async def nodepools(self, *, unfinished: bool = False) -> list[StoredNodePool]:
        return await self._run(self._nodepools, unfinished)

    def _nodepools(self, unfinished: bool) -> list[StoredNodePool]:
        rows = self._conn.execute(
            "SELECT cluster_id, nodepool_id, target, labels, rollout, added_at, outcome, finished_at FROM nodepools "
            "WHERE finished_at IS NULL OR NOT ? ORDER BY added_at",
            (unfinished,),
        ).fetchall()
        return [StoredNodePool(c, p, t, orjson.loads(lab), r, a, o, f) for c, p, t, lab, r, a, o, f in rows]

    async def fleet_state(self) -> tuple[list[PoolNode], list[AwaitedNode]]:
        return await self._run(self._fleet_state)

    def _fleet_state(self) -> tuple[list[PoolNode], list[AwaitedNode]]:
        nodes = [
            PoolNode(cluster_id, nodepool_id, Node(**orjson.loads(node)), orjson.loads(labels))
            for cluster_id, nodepool_id, node, labels in self._conn.execute(
                "SELECT cluster_id, nodepool_id, node, labels FROM pool_nodes"
            )
        ]
        awaited = [
            AwaitedNode(**orjson.loads(blob)) for (blob,) in self._conn.execute("SELECT awaited FROM awaited_nodes")
        ]
        return nodes, awaited

    async def delete(self, job_id: str) -> bool:
        return await self._run(self._delete, job_id)

    def _delete(self, job_id: str) -> bool:
        with self._conn:
            cur = self._conn.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            self._conn.execute("DELETE FROM history WHERE job_id = ?", (job_id,))
            self._conn.execute("DELETE FROM pool_nodes WHERE job_id = ?", (job_id,))
        return cur.rowcount > 0

    async def prune(self, retention: float) -> int:
        """Forget jobs finished more than ``retention`` seconds ago, and delivered outbox rows as old."""
        return await self._run(self._prune, time.time() - retention)

    def _prune(self, cutoff: float) -> int:
        with self._conn:
            cur = self._conn.execute(
                "SELECT job_id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?", (cutoff,)
            )
            old = [(r[0],) for r in cur.fetchall()]
            self._conn.executemany("DELETE FROM history WHERE job_id = ?", old)
            self._conn.executemany("DELETE FROM jobs WHERE job_id = ?", old)
            self._conn.executemany("DELETE FROM pool_nodes WHERE job_id = ?", old)
            self._conn.execute("DELETE FROM nodepools WHERE finished_at IS NOT NULL AND finished_at < ?", (cutoff,))
            self._conn.execute("DELETE FROM outbox WHERE delivered_at IS NOT NULL AND delivered_at < ?", (cutoff,))
            self._conn.execute("DELETE FROM digests WHERE at < ?", (cutoff,))
        return len(old)

    # -------------------------------------------------------------------------------------- leases

    async def hold_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Always ``True``: an SQLite file belongs to one daemon (its outbox, its jobs)."""
        return True

    async def release_lease(self, name: str, holder: str) -> None:
        return None

    # -------------------------------------------------------------------------------------- outbox

    async def pending(self, sink: str, *, limit: int = 100, after: int = 0) -> list[OutboxRow]:
        """Undelivered rows for ``sink`` (with ``seq`` above ``after``), oldest first."""
        rows = await self._run(self._pending, sink, limit, after)
        return [OutboxRow(seq, sink, Event.from_json(data), attempts) for seq, data, attempts in rows]

    def _pending(self, sink: str, limit: int, after: int) -> list[tuple[int, bytes, int]]:
        cur = self._conn.execute(
            "SELECT seq, event, attempts FROM outbox WHERE sink = ? AND delivered_at IS NULL AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (sink, after, limit),
        )
        return [(r[0], r[1], r[2]) for r in cur.fetchall()]

    async def delivered(self, *seqs: int) -> None:
        """Mark rows delivered (one transaction)."""
        if seqs:
            await self._run(self._delivered, seqs, time.time())

    def _delivered(self, seqs: tuple[int, ...], now: float) -> None:
        with self._conn:
            self._conn.executemany("UPDATE outbox SET delivered_at = ? WHERE seq = ?", [(now, s) for s in seqs])

    async def attempt_failed(self, seq: int, error: str) -> None:
        """A retryable failure: count it; the row stays first in line."""
        await self._run(
            self._exec, "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?", (error[:500], seq)
        )

    async def rejected(self, seq: int, error: str) -> None:
        """The sink refused the event for good: take the row out of the queue, keeping why."""
        await self._run(
            self._exec,
            "UPDATE outbox SET attempts = attempts + 1, delivered_at = ?, rejected = 1, last_error = ? WHERE seq = ?",
            (time.time(), error[:500], seq),
        )

    async def outbox_depth(self) -> dict[str, int]:
        """Undelivered rows per sink."""
        rows = await self._run(
            self._query, "SELECT sink, COUNT(*) FROM outbox WHERE delivered_at IS NULL GROUP BY sink"
        )
        return {str(r[0]): int(r[1]) for r in rows}

    async def outbox_oldest(self) -> dict[str, float]:
        """Per sink: when its oldest undelivered event was detected (the event's own time)."""
        rows = await self._run(
            self._query,
            "SELECT o.sink, o.event FROM outbox o JOIN (SELECT MIN(seq) AS seq FROM outbox "
            "WHERE delivered_at IS NULL GROUP BY sink) m ON o.seq = m.seq",
        )
        return {str(sink): Event.from_json(data).time.timestamp() for sink, data in rows}

    async def deliveries(
        self,
        state: Literal["pending", "rejected"],
        *,
        sink: str | None = None,
        job_id: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryRecord]:
        """Undelivered (``pending``) or ``rejected`` rows, oldest first (a job's are picked from the events)."""
        where = "delivered_at IS NULL" if state == "pending" else "rejected = 1"
        args: list[object] = []
        if sink is not None:
            where += " AND sink = ?"
            args.append(sink)
        rows = await self._run(self._select_deliveries, where, args, None if job_id else limit)
        found = [delivery_record(row) for row in rows]
        if job_id is not None:
            found = [d for d in found if d.event.job_id == job_id][:limit]
        return found

    def _select_deliveries(self, where: str, args: list[object], limit: int | None) -> list[tuple[Any, ...]]:
        # `where` is built from this module's constant strings and placeholders; values go in as parameters.
        sql = "SELECT seq, sink, event, attempts, last_error, rejected, delivered_at FROM outbox WHERE " + where  # noqa: S608
        sql += " ORDER BY seq" + ("" if limit is None else " LIMIT ?")
        return list(self._conn.execute(sql, [*args] if limit is None else [*args, limit]).fetchall())

    async def replay(
        self, sinks: Sequence[str], *, event_ids: Sequence[str] | None = None, job_id: str | None = None
    ) -> list[DeliveryRecord]:
        """Rejected rows of ``sinks`` (matching the event ids or job, if given) become due again, keeping their
        event (and so its id), attempts and last error; returns them as they were."""
        if not sinks or (event_ids is not None and not event_ids):
            return []
        return await self._run(self._replay, list(sinks), None if event_ids is None else list(event_ids), job_id)

    def _replay(self, sinks: list[str], event_ids: list[str] | None, job_id: str | None) -> list[DeliveryRecord]:
        where = f"rejected = 1 AND sink IN ({','.join('?' * len(sinks))})"
        args: list[object] = list(sinks)
        if event_ids is not None:
            where += f" AND event_id IN ({','.join('?' * len(event_ids))})"
            args += event_ids
        with self._conn:
            found = [delivery_record(row) for row in self._select_deliveries(where, args, None)]
            if job_id is not None:
                found = [d for d in found if d.event.job_id == job_id]
            self._conn.executemany(
                "UPDATE outbox SET delivered_at = NULL, rejected = 0 WHERE seq = ?", [(d.seq,) for d in found]
            )
        return found

    def _exec(self, sql: str, args: Iterable[object]) -> None:
        with self._conn:
            self._conn.execute(sql, tuple(args))

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        return list(self._conn.execute(sql).fetchall())


def _connect(path: Path) -> sqlite3.Connection:
    if str(path) != ":memory:":
        if not path.parent.is_dir():
            raise ConfigError(f"state.path: directory {path.parent} does not exist")
        # Create 0600 before SQLite opens it (SQLite would use the umask).
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
    try:
        conn = sqlite3.connect(str(path), isolation_level="DEFERRED", check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes (kill -9)
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(_SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"state.path: {path} is not a usable SQLite database: {exc}") from None
    return conn
