"""Replicas sharing the jobs on one PostgreSQL database: membership, claims with fencing, handover, pick-up.

The way Airflow's HA scheduler, procrastinate and River share work, on the schema of :mod:`monitor.daemon.pgschema`:

* **Membership.** Every replica upserts its ``members`` row every ``heartbeat`` seconds with an expiry ``ttl``
  seconds ahead on the *database's* clock (no replica's clock matters). A replica whose last renewal is older
  than ``ttl - heartbeat`` stops polling everything it owns (:meth:`Cluster.owned` empties) *before* its row
  expires, so it is never polling a job another replica has taken over.
* **Claims.** Each round, in one transaction: the fair share is ``ceil(unfinished jobs / live members)``; a
  replica below it claims unowned jobs and jobs of expired members with ``FOR UPDATE SKIP LOCKED`` (replicas
  claiming at once never block each other nor take the same job); every claim bumps the job's ``epoch``. A
  replica more than ``_SLACK`` above it hands the excess back (owner ``NULL``) and notifies, so a replica that
  joins gets its share within a round. Node pools and awaited nodes are claimed when their owner is gone.
* **Fencing.** Every write for a job runs ``cce_monitor_fence(job, replica, epoch)`` first, in the same
  transaction (:meth:`~monitor.daemon.pgstore.PgState.record`): a replica that lost a job cannot record for it,
  it gets :class:`~monitor.core.errors.NotOwnerError` and drops the job.
* **Pick-up.** ``LISTEN cce_monitor``: jobs added through any replica's API, or handed back, wake every replica's
  claim round at once; a job removed through any replica stops being polled by its owner; outbox rows queued by
  any replica wake the deliverers of the replica holding their sink's lease. A round every
  ``heartbeat`` seconds is the safety net for a lost notification.
* **Leaving.** On a clean stop the replica hands back everything it owns and deletes its row (and notifies):
  the others claim it within the next notification round, not after the TTL.
* **Rollouts.** Each replica reads what other replicas recorded for rollouts (jobs whose ``changed`` moved,
  node confirmations) so its rollout view — ``/v1/rollouts`` — is the cluster's; one replica at a time (a
  lease, ``rollouts``) publishes the digests, and a digest id recorded before is never published again, so a
  rollout finishes once cluster-wide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection

from monitor.core.errors import StateError
from monitor.core.events import Event
from monitor.core.model import Job, job_from_json
from monitor.core.nodes import Node
from monitor.daemon.pgbase import CHANNEL
from monitor.daemon.pgstore import PgState
from monitor.daemon.storage import StoredJob, StoredNodePool
from monitor.engine.fleet import AwaitedNode, PoolNode

__all__ = ["Cluster", "ClusterHooks", "RolloutChange", "RolloutView"]

logger = logging.getLogger(__name__)

_SLACK = 0.05  # a replica hands jobs back only when it holds more than 5 % (and 2 jobs) over its fair share
_CLAIM_BATCH = 5_000  # jobs claimed per round at most (a big backlog is spread over rounds, not one long lock)
_TAIL_BATCH = 10_000
_DIGEST_LEASE = "rollouts"
_RESYNC_EVERY = 6  # rollout-view reads between full reads of the open rollouts (by the digest publisher)
_APPLY_CHUNK = 500  # changes applied to the rollout view between yields to the event loop


@dataclass(frozen=True, slots=True)
class RolloutChange:
    """A rollout member as another replica recorded it."""

    rollout: str
    job_id: str
    added_at: float
    phase: str | None
    outcome: str | None
    finished_at: float | None
    snapshot: Job | None


@dataclass(frozen=True, slots=True)
class RolloutView:
    """What other replicas recorded for rollouts since the last read."""

    changes: list[RolloutChange]
    confirmations: list[Event]
    """``node.active`` / ``node.failed`` events."""
    pools: list[tuple[str, str, bool]]
    """Every node pool of a rollout: ``(rollout, nodepool id, settled)``."""
    pool_nodes: list[tuple[str, PoolNode]]
    """``(rollout, node)`` of every pool not settled."""


@dataclass(slots=True)
class ClusterHooks:
    """What the daemon does when ownership changes (all called on the event loop, none may block)."""

    adopt: Callable[[list[StoredJob]], None]
    """Start polling jobs just claimed (from their stored snapshot)."""
    drop: Callable[[list[str]], None]
    """Stop polling jobs no longer owned (handed back, removed, or membership lapsed)."""
    adopt_pool: Callable[[StoredNodePool, list[PoolNode]], None]
    adopt_awaited: Callable[[list[AwaitedNode]], None]
    rollout_view: Callable[[RolloutView], None]
    """Other replicas' news of rollouts, for this replica's rollout view."""
    coordinating: Callable[[], None]
    """This replica has just become the one that publishes rollout digests."""
    open_rollouts: Callable[[], list[str]]
    """The rollouts this replica's view has not seen finish (the publisher reads them in full now and then)."""
    outbox: Callable[[], None]
    """Another replica queued outbox rows (this one may be delivering their sink)."""
    rewind: Callable[[str], None]
    """Dead letters of this sink were replayed through some replica: read its outbox again from the start."""


class Cluster:
    """This replica's membership. ``await cluster.run()`` as a task; :meth:`leave` on a clean stop."""

    def __init__(
        self,
        state: PgState,
        replica: str,
        hooks: ClusterHooks,
        *,
        heartbeat: float = 5.0,
        ttl: float = 15.0,
    ) -> None:
        self._state = state
        self.replica = replica
        self._hooks = hooks
        self.heartbeat = heartbeat
        self.ttl = ttl
        self.members = 0
        """Live replicas at the last round (this one included)."""
        self.share = 0
        """This replica's fair share of the unfinished jobs at the last round."""
        self.coordinator = False
        """This replica publishes the rollout digests (holds the ``rollouts`` lease)."""
        self.claimed = 0
        self.released = 0
        self._renewed = -math.inf  # monotonic time of the last committed heartbeat
        self._lapsed = True  # not a member (yet, or any more): owns nothing
        self._wake = asyncio.Event()
        # The rollout view reads rows whose `changed` (and history rows whose seq) passed the mark of the round
        # before last: a value drawn by a transaction that commits late (within a round) is not missed.
        self._changed = (0, 0)
        self._history = (0, 0)
        self._seen: dict[str, int] = {}  # job id -> the `changed` value read last (to skip the overlap)
        self._seen_history: set[int] = set()
        self._left = False
        self._failure = ""
        self._conn: AsyncConnection[Any] | None = None
        self._turn = asyncio.Lock()
        self._rounds = 0
        state.owner = replica

    @property
    def owned(self) -> int:
        """Jobs this replica owns (and polls) now."""
        return len(self._state.epochs)

    @property
    def member(self) -> bool:
        """This replica renewed its membership recently enough to poll (see the module docstring)."""
        return not self._lapsed

    def wake(self) -> None:
        """Run a round now (jobs were added or handed back)."""
        self._wake.set()

    # ------------------------------------------------------------------------------------- running

    async def run(self) -> None:
        """Rounds every ``heartbeat`` seconds or when notified, until cancelled."""
        helpers = [
            asyncio.create_task(self._listen(), name="cluster-listen"),
            asyncio.create_task(self._watchdog(), name="cluster-watchdog"),
            asyncio.create_task(self._follow_rollouts(), name="cluster-rollouts"),
        ]
        try:
            while not self._left:
                self._wake.clear()
                try:
                    await self._round()
                except StateError as exc:
                    self._failure = str(exc)
                    self._check_lapse()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.heartbeat):
                        await self._wake.wait()
                await asyncio.sleep(0.05)  # notifications come in bursts (a bulk add): one round for them
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self.close()

    async def _watchdog(self) -> None:
        """A round that hangs (a database that stopped answering without failing) lapses too."""
        while True:
            await asyncio.sleep(self.heartbeat / 4)
            self._check_lapse()

    def _check_lapse(self) -> None:
        if self._lapsed or time.monotonic() - self._renewed < self.ttl - self.heartbeat:
            return
        self._lapsed = True
        dropped = list(self._state.epochs)
        self._state.epochs.clear()
        self._hooks.drop(dropped)
        self.coordinator = False
        logger.warning(
            "cluster: membership not renewed for %.0fs (%s); stopped polling %d jobs until the database answers",
            time.monotonic() - self._renewed,
            self._failure or "no answer",
            len(dropped),
        )

    async def _round(self) -> None:
        async with self._turn:  # never beside leave(): a round committed after it would make this a member again
            if not self._left:
                await self._claim_round()

    async def _claim_round(self) -> None:
        state = self._state
        claimed: list[tuple[Any, ...]] = []  # rows, parsed after the commit (in chunks: see _adopt)
        released: list[str] = []
        pools: list[tuple[StoredNodePool, list[PoolNode]]] = []
        awaited: list[AwaitedNode] = []
        try:
            conn = await self._connection()
            async with conn.transaction():
                await conn.execute(
                    b"INSERT INTO members (replica, started_at, expires_at) VALUES (%s, "
                    b"extract(epoch from clock_timestamp()), extract(epoch from clock_timestamp()) + %s) "
                    b"ON CONFLICT (replica) DO UPDATE SET expires_at = excluded.expires_at",
                    (self.replica, self.ttl),
                )
                if self._lapsed:  # back after a lapse: what it owned may be someone else's — start afresh
                    await conn.execute(
                        b"UPDATE jobs SET owner = NULL WHERE owner = %s AND finished_at IS NULL", (self.replica,)
                    )
                cur = await conn.execute(
                    b"SELECT (SELECT count(*) FROM live_members), "
                    b"(SELECT count(*) FROM jobs WHERE finished_at IS NULL), "
                    b"(SELECT count(*) FROM jobs WHERE finished_at IS NULL AND owner = %s)",
                    (self.replica,),
                )
                row = await cur.fetchone()
                assert row is not None
                members, total, mine = int(row[0]), int(row[1]), int(row[2])
                if mine != len(state.epochs):
                    mine = await self._reconcile(conn)
                share = math.ceil(total / max(1, members))
                if mine < share:
                    claimed = await self._claim(conn, min(share - mine, _CLAIM_BATCH))
                elif mine > share + max(2, math.ceil(share * _SLACK)):
                    released = await self._release(conn, mine - share)
                self._rounds += 1
                if members != self.members or self._rounds % _RESYNC_EVERY == 1:
                    # Only a replica gone leaves pools and awaited nodes to claim: read them when the membership
                    # changed (and now and then), not every round.
                    pools = await self._claim_pools(conn)
                    awaited = await self._claim_awaited(conn)
            self._renewed = time.monotonic()
            if self._lapsed:
                self._lapsed = False
                logger.info("cluster: replica %s is a member (%d live)", self.replica, members)
            self.members, self.share = members, share
        except psycopg.Error as exc:
            await self.close()
            raise state.failed(exc) from None
        for row in claimed:
            state.epochs[str(row[0])] = int(row[-1])
        if released:
            for job_id in released:
                state.epochs.pop(job_id, None)
            self._hooks.drop(released)
            self.released += len(released)
        if claimed:
            logger.info("cluster: claimed %d jobs (fair share %d of %d live)", len(claimed), share, members)
            self.claimed += len(claimed)
            for i in range(0, len(claimed), _APPLY_CHUNK):  # thousands of snapshots: not in one go (see below)
                await asyncio.sleep(0)
                self._hooks.adopt([_stored(row) for row in claimed[i : i + _APPLY_CHUNK]])
        for pool, nodes in pools:
            logger.info(
                "cluster: following node pool %s (%d nodes found so far) from here", pool.nodepool_id, len(nodes)
            )
            self._hooks.adopt_pool(pool, nodes)
        if awaited:
            logger.info("cluster: awaiting %d nodes from here", len(awaited))
            self._hooks.adopt_awaited(awaited)
        await self._coordinate()

    async def _connection(self) -> AsyncConnection[Any]:
        """The connection of the claim rounds, of its own: a pool busy with polls and deliveries must not delay
        a renewal (nor a takeover)."""
        if self._conn is None or self._conn.closed:
            self._conn = await self._state.connect()
        return self._conn

    async def close(self) -> None:
        """Close the claim rounds' connection (:meth:`run` does when it ends)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def _reconcile(self, conn: AsyncConnection[Any]) -> int:
        """The database and this replica disagree on what it owns (a write or a claim raced a lapse): stop polling
        what the database does not say is ours at the epoch we hold, and hand back what we do not poll."""
        cur = await conn.execute(
            b"SELECT job_id, epoch FROM jobs WHERE owner = %s AND finished_at IS NULL", (self.replica,)
        )
        held = {str(j): int(e) for j, e in await cur.fetchall()}
        epochs = self._state.epochs
        stale = [j for j, e in epochs.items() if held.get(j) != e]
        for job_id in stale:
            epochs.pop(job_id, None)
        if stale:
            self._hooks.drop(stale)
        unpolled = [j for j in held if j not in epochs]
        if unpolled:
            await conn.execute(
                b"UPDATE jobs SET owner = NULL WHERE job_id = ANY(%s) AND owner = %s", (unpolled, self.replica)
            )
        if stale or unpolled:
            logger.info("cluster: reconciled ownership: %d dropped, %d handed back", len(stale), len(unpolled))
        return len(held) - len(unpolled)

    async def _claim(self, conn: AsyncConnection[Any], limit: int) -> list[tuple[Any, ...]]:
        cur = await conn.execute(
            b"WITH claimed AS (UPDATE jobs SET owner = %s, epoch = epoch + 1 WHERE job_id IN (SELECT job_id FROM jobs "
            b"WHERE finished_at IS NULL AND (owner IS NULL OR owner NOT IN (SELECT replica FROM live_members)) "
            b"ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED) "
            b"RETURNING job_id, labels, rollout, added_at, phase, snapshot, outcome, finished_at, epoch, owner), "
            b"audit AS (INSERT INTO claims (job_id, epoch, owner, at) "
            b"SELECT job_id, epoch, owner, extract(epoch from clock_timestamp()) FROM claimed) "
            b"SELECT job_id, labels, rollout, added_at, phase, snapshot, outcome, finished_at, epoch FROM claimed",
            (self.replica, limit),
        )
        return list(await cur.fetchall())

    async def _release(self, conn: AsyncConnection[Any], count: int) -> list[str]:
        cur = await conn.execute(
            b"UPDATE jobs SET owner = NULL WHERE job_id IN (SELECT job_id FROM jobs WHERE owner = %s "
            b"AND finished_at IS NULL ORDER BY seq DESC LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING job_id",
            (self.replica, count),
        )
        released = [str(r[0]) for r in await cur.fetchall()]
        if released:
            await conn.execute(b"SELECT pg_notify(%s, 'jobs')", (CHANNEL,))
        return released

    async def _claim_pools(self, conn: AsyncConnection[Any]) -> list[tuple[StoredNodePool, list[PoolNode]]]:
        cur = await conn.execute(
            b"UPDATE nodepools SET owner = %s WHERE finished_at IS NULL "
            b"AND (owner IS NULL OR owner NOT IN (SELECT replica FROM live_members)) "
            b"RETURNING cluster_id, nodepool_id, target, labels, rollout, added_at, outcome, finished_at",
            (self.replica,),
        )
        found = []
        for c, p, t, lab, r, a, o, f in await cur.fetchall():
            nodes = await conn.execute(
                b"SELECT node, labels FROM pool_nodes WHERE cluster_id = %s AND nodepool_id = %s", (c, p)
            )
            seen = [PoolNode(c, p, Node(**orjson.loads(n)), orjson.loads(lb)) for n, lb in await nodes.fetchall()]
            found.append((StoredNodePool(c, p, t, orjson.loads(lab), r, a, o, f), seen))
        return found

    async def _claim_awaited(self, conn: AsyncConnection[Any]) -> list[AwaitedNode]:
        cur = await conn.execute(
            b"UPDATE awaited_nodes SET owner = %s WHERE owner IS NULL "
            b"OR owner NOT IN (SELECT replica FROM live_members) RETURNING awaited",
            (self.replica,),
        )
        return [AwaitedNode(**orjson.loads(blob)) for (blob,) in await cur.fetchall()]

    async def _follow_rollouts(self) -> None:
        """Every ``heartbeat`` seconds, what other replicas recorded for rollouts — apart from the claim rounds,
        which must not wait for it."""
        reads = 0
        while True:
            await asyncio.sleep(self.heartbeat)
            reads += 1
            try:
                async with self._state.pool.connection() as conn:
                    changes, confirmations = await self._tail(conn)
                    if self.coordinator and reads % _RESYNC_EVERY == 0:
                        changes += await self._resync(conn)
                    cur = await conn.execute(
                        b"SELECT rollout, nodepool_id, finished_at IS NOT NULL FROM nodepools WHERE rollout IS NOT NULL"
                    )
                    pools = [(str(r), str(p), bool(done)) for r, p, done in await cur.fetchall()]
                    cur = await conn.execute(
                        b"SELECT p.rollout, n.cluster_id, n.nodepool_id, n.node, n.labels FROM pool_nodes n "
                        b"JOIN nodepools p USING (cluster_id, nodepool_id) "
                        b"WHERE p.finished_at IS NULL AND p.rollout IS NOT NULL"
                    )
                    nodes = [
                        (str(r), PoolNode(c, p, Node(**orjson.loads(n)), orjson.loads(lab)))
                        for r, c, p, n, lab in await cur.fetchall()
                    ]
            except psycopg.Error as exc:
                logger.debug("cluster: reading the rollout view failed: %s", exc)
                continue
            # In chunks: a poll's slot is taken before its request leaves, and a loop busy for long between
            # the two would send requests late, in a bunch (the shared limiter counts on 15 ms at most).
            self._hooks.rollout_view(RolloutView([], confirmations, pools, nodes))
            for i in range(0, len(changes), _APPLY_CHUNK):
                await asyncio.sleep(0)
                self._hooks.rollout_view(RolloutView(changes[i : i + _APPLY_CHUNK], [], [], []))

    async def _resync(self, conn: AsyncConnection[Any]) -> list[RolloutChange]:
        """Every member of the rollouts not finished in this view, as stored (no snapshots): what the reads of
        changes could have missed (a row that committed later than a round after it drew its change number)
        cannot keep a rollout from finishing."""
        names = self._hooks.open_rollouts()
        if not names:
            return []
        cur = await conn.execute(
            b"SELECT rollout, job_id, added_at, phase, outcome, finished_at FROM jobs WHERE rollout = ANY(%s) "
            b"AND owner IS DISTINCT FROM %s",
            (names, self.replica),
        )
        return [RolloutChange(r, j, a, p, o, f, None) for r, j, a, p, o, f in await cur.fetchall()]

    async def _tail(self, conn: AsyncConnection[Any]) -> tuple[list[RolloutChange], list[Event]]:
        """Rollout members other replicas wrote since the last round, and node confirmations. The marks move
        to where the tables were before the reads when they found less than a batch: matching rows are rare
        (another's change; a node confirmation), and each read would otherwise scan from the last one found."""
        cur = await conn.execute(
            b"SELECT (SELECT last_value FROM changes), (SELECT coalesce(max(seq), 0) FROM history)"
        )
        row = await cur.fetchone()
        ends = (int(row[0]), int(row[1])) if row else (0, 0)
        cur = await conn.execute(
            b"SELECT changed, rollout, job_id, added_at, phase, outcome, finished_at, snapshot FROM jobs "
            b"WHERE rollout IS NOT NULL AND changed > %s AND owner IS DISTINCT FROM %s ORDER BY changed LIMIT %s",
            (self._changed[0], self.replica, _TAIL_BATCH),
        )
        changes = []
        found = await cur.fetchall()
        top = max(self._changed[1], ends[0] if len(found) < _TAIL_BATCH else 0)
        seen = self._seen
        for changed, rollout, job_id, added, phase, outcome, finished, snap in found:
            top = max(top, int(changed))
            if seen.get(job_id) == changed:
                continue  # read in the round before (the overlap)
            seen[job_id] = changed
            snapshot = job_from_json(bytes(snap)) if snap is not None else None
            changes.append(RolloutChange(rollout, job_id, added, phase, outcome, finished, snapshot))
        self._changed = (self._changed[1], top)
        if len(seen) > 4 * _TAIL_BATCH:
            self._seen = {j: c for j, c in seen.items() if c > self._changed[0]}
        cur = await conn.execute(
            b"SELECT seq, event FROM history WHERE seq > %s AND type IN ('node.active', 'node.failed') "
            b"AND writer IS DISTINCT FROM %s ORDER BY seq LIMIT %s",
            (self._history[0], self.replica, _TAIL_BATCH),
        )
        confirmations = []
        found = await cur.fetchall()
        top = max(self._history[1], ends[1] if len(found) < _TAIL_BATCH else 0)
        for seq, blob in found:
            top = max(top, int(seq))
            if seq in self._seen_history:
                continue
            self._seen_history.add(seq)
            confirmations.append(Event.from_json(bytes(blob)))
        self._history = (self._history[1], top)
        self._seen_history = {s for s in self._seen_history if s > self._history[0]}
        return changes, confirmations

    async def start_tail(self) -> None:
        """Read the rollout view from now on (the daemon restored it from the database just before)."""
        try:
            async with self._state.pool.connection() as conn:
                cur = await conn.execute(
                    b"SELECT (SELECT coalesce(max(changed), 0) FROM jobs), (SELECT coalesce(max(seq), 0) FROM history)"
                )
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise self._state.failed(exc) from None
        assert row is not None
        self._changed, self._history = (int(row[0]),) * 2, (int(row[1]),) * 2

    async def _coordinate(self) -> None:
        if self._lapsed:
            return
        held = await self._state.hold_lease(_DIGEST_LEASE, self.replica, self.ttl)
        if held and not self.coordinator:
            self.coordinator = True
            logger.info("cluster: this replica publishes rollout digests")
            self._hooks.coordinating()
        elif not held:
            self.coordinator = False

    async def _listen(self) -> None:
        """Wake a round on ``jobs``; drop a job removed through another replica's API at once."""
        while True:
            try:
                async with await self._state.connect(autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}".encode())
                    self.wake()  # what was notified while not listening
                    async for note in conn.notifies():
                        if note.payload == "outbox":
                            self._hooks.outbox()
                        elif note.payload.startswith("rewind:"):
                            self._hooks.rewind(note.payload.removeprefix("rewind:"))
                        elif note.payload.startswith("removed:"):
                            job_id = note.payload.removeprefix("removed:")
                            if self._state.epochs.pop(job_id, None) is not None:
                                self._hooks.drop([job_id])
                        else:
                            self.wake()
            except psycopg.Error:
                await asyncio.sleep(self.heartbeat)  # the database is down: the rounds say so

    async def leave(self) -> None:
        """Hand back everything this replica owns and leave (a clean stop): the others claim it at once."""
        async with self._turn:
            if self._left:
                return
            self._left = True
            await self._hand_back()

    async def _hand_back(self) -> None:
        owned = list(self._state.epochs)
        self._state.epochs.clear()  # writes still in flight are refused from here on
        try:
            async with self._state.pool.connection() as conn, conn.transaction():
                await conn.execute(
                    b"UPDATE jobs SET owner = NULL WHERE owner = %s AND finished_at IS NULL", (self.replica,)
                )
                await conn.execute(b"UPDATE nodepools SET owner = NULL WHERE owner = %s", (self.replica,))
                await conn.execute(b"UPDATE awaited_nodes SET owner = NULL WHERE owner = %s", (self.replica,))
                await conn.execute(b"DELETE FROM members WHERE replica = %s", (self.replica,))
                await conn.execute(
                    b"UPDATE leases SET expires_at = 0 WHERE name = %s AND holder = %s", (_DIGEST_LEASE, self.replica)
                )
                await conn.execute(b"SELECT pg_notify(%s, 'jobs')", (CHANNEL,))
        except psycopg.Error as exc:
            logger.warning(
                "cluster: could not hand back %d jobs (%s); they are claimed once this replica's membership expires",
                len(owned),
                self._state.failed(exc),
            )
            return
        self._hooks.drop(owned)
        logger.info("cluster: handed back %d jobs and left", len(owned))

    def summary(self) -> dict[str, Any]:
        """For ``/readyz`` and the metrics."""
        return {
            "replica": self.replica,
            "member": self.member,
            "members": self.members,
            "owned_jobs": self.owned,
            "fair_share": self.share,
            "publishes_digests": self.coordinator,
            "claimed": self.claimed,
            "released": self.released,
        }


def _stored(row: Sequence[Any]) -> StoredJob:
    """A claimed job's row (``RETURNING`` of the claim, its epoch last) as the daemon restores it."""
    job_id, labels, rollout, added, phase, snap, outcome, finished, _ = row
    return StoredJob(
        job_id=job_id,
        labels=orjson.loads(labels),
        rollout=rollout,
        added_at=added,
        phase=phase,
        snapshot=job_from_json(bytes(snap)) if snap is not None else None,
        outcome=outcome,
        finished_at=finished,
    )
