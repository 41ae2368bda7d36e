"""Durable delivery: one :class:`Deliverer` per durable sink sends that sink's outbox rows from the state database.

The scheduler records every event (with an outbox row per matching durable sink) before it publishes anything;
the deliverer is woken by the publication, reads the due rows oldest first, calls ``sink.send`` and marks each row
delivered. That gives at-least-once delivery across crashes (see :mod:`monitor.daemon.store`) while keeping the order
receivers need — per job by default (``delivery.ordering: job``: up to ``delivery.concurrency`` rows in flight, never
two of one job, never a job's event before its earlier ones; a rollout's digests in order too), or per sink
(``ordering: sink``: one row at a time, in the order recorded):

* a retryable :class:`SinkError` (the receiver is down, 5xx, timeouts — one try of a sink that offers
  ``send_once``, else after the sink's own retries) pauses with exponential backoff and tries the *same* row
  again (the same ``webhook-id``); nothing later of its job (with ``ordering: sink``: nothing later at all)
  overtakes it, and while it waits its slot sends another job's row;
* a non-retryable one (the receiver refused the event with a 4xx, or answered 410 and the sink is disabled) marks
  the row rejected with the reason, so a poison event cannot block the queue forever;
* a cancelled send (shutdown) leaves the row undelivered: it is sent again after the restart, with the same id;
* after a streak of failures across rows (the receiver is down), one waiting row tries every 2 s and the first
  success ends every other row's backoff at once: the backlog drains at the receiver's pace within seconds of
  its return, instead of at each row's next retry time;
* delivered rows are marked in batches, one statement for many rows: with ``ordering: job``, at once after a
  quiet spell and then at most every ``_MARK_EVERY`` (0.2 s), without holding up the lanes; with ``ordering:
  sink``, those delivered while the previous batch was written. A crash in between sends those rows again, with
  the same ids;
* with ``ordering: job`` the outbox is read at most every ``_READ_GAP`` (50 ms) while rows trickle in (each
  recorded poll wakes the deliverer, on PostgreSQL from any replica): one read takes what a burst of polls
  recorded, and a backlog is read batch after batch without a pause;
* :meth:`Deliverer.rewind` after a replay: rejected rows made due again are read again, with their event ids.

A sink that ``acknowledges`` (the chat sinks, which merge events into digests sent when a rate budget allows)
takes each row at once and reports later, through its ``on_delivered`` hook, which events a delivered message
carried; only then are their rows marked. Rows handed over but not acknowledged when the process stops stay in
the outbox and are handed over again at the next start — so a ``rollout.finished`` summary the budget did not
allow before a SIGTERM is sent after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import math
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from monitor.core.backoff import full_jitter
from monitor.core.errors import SinkError
from monitor.core.events import Event
from monitor.daemon.storage import OutboxRow, Store
from monitor.sinks import Sink

__all__ = ["Deliverer"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_WAITING = 10_000  # rows read ahead and held in memory at most, while their jobs' earlier rows are in flight
# Lanes (rows sending, or waiting out a backoff) per slot while the receiver answers: a failed row waits ~1 s, so
# with 20 % of requests failing a slot carries ~0.2 waiting rows per request per second it sends — 4 per slot
# capped a receiver answering at once near 130 deliveries/s (the soak); 16 lets it reach its own pace. While it
# looks down, no new lanes start, so a down receiver sees at most these lanes' retries, each on its backoff.
_LANES_PER_SLOT = 16
_SWEEP_EVERY = 5.0  # seconds between reads for rows that committed late (see Deliverer._sweep_marks)
_MARK_EVERY = 0.2  # seconds between batches of delivered marks (per-job delivery)
_READ_GAP = 0.05  # seconds at least between reads of new rows while they trickle in (per-job delivery)
_DOWN_STREAK = 3  # failures in a row, across rows, that say the receiver is down rather than one row failing
_PROBE_EVERY = 2.0  # seconds between tries of the one probing row while the receiver looks down


class Deliverer:
    """Sends one durable sink's outbox. Run :meth:`run` as a task; :meth:`notify` after new events."""

    def __init__(
        self,
        sink: Sink,
        state: Store,
        *,
        name: str | None = None,
        retry_initial: float = 1.0,
        retry_max: float = 30.0,
        batch: int = 100,
        concurrency: int = 1,
        observe: Callable[[float], None] | None = None,
        holder: str = "",
        lease_ttl: float = 15.0,
        mark_every: float = _MARK_EVERY,
    ) -> None:
        """``concurrency`` above 1: up to that many rows in flight at once, never two of one job (see the
        module docstring); an acknowledging sink always takes its rows one by one. ``observe`` hears each
        delivered event's delay in seconds, from its detection (``event.time``) to its delivery. ``holder``
        names this daemon for the sink's delivery lease (``lease_ttl`` seconds; see :meth:`_keep_lease`);
        ``mark_every``: seconds between batches of delivered marks (see the module docstring)."""
        self.sink = sink
        self.name = name or sink.name
        self._state = state
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._batch = batch
        self._observe = observe
        self._failures = 0
        self._recovery = _Recovery()  # per-job delivery: the first success after an outage ends every backoff
        self._acks = bool(getattr(sink, "acknowledges", False))
        send_once = getattr(sink, "send_once", None)  # one try: this deliverer retries (see monitor.sinks)
        self._send: Callable[[Event], Awaitable[None]] = (
            send_once if callable(send_once) and not self._acks else sink.send
        )
        self._handed: dict[str, list[int]] = {}  # acknowledging sinks: event id -> rows handed over, not yet acked
        self._handed_at: dict[str, float] = {}  # ... and when their event was detected
        self._cursor = 0  # acknowledging sinks: the last row handed over
        if self._acks:
            sink.on_delivered = self._acknowledged  # type: ignore[attr-defined]
        self._concurrency = 1 if self._acks else max(1, concurrency)
        # Per-job delivery: ordering key -> the task sending its earliest row; later rows read, per key; keys
        # with rows and no lane, by their earliest row; rows held (queued or in a lane); slots in use.
        self._lanes: dict[str, asyncio.Task[None]] = {}
        self._queues: dict[str, deque[OutboxRow]] = {}
        self._ready: list[tuple[int, str]] = []
        self._queued = 0
        self._held: set[int] = set()
        self._sending = 0  # lanes sending now (a lane waiting out a backoff holds no slot)
        self._returning = 0  # lanes back from a backoff, waiting for a slot
        self._slot_freed = asyncio.Event()
        self._seen = 0  # per-job delivery: the last row read
        # Rows can commit out of seq order (PostgreSQL: replicas and pool connections write at once, and a row's
        # seq is drawn before its transaction commits), so a read past seq N may miss a row below N that commits
        # just after. Every _SWEEP_EVERY seconds the rows since the mark of the sweep before last are read again;
        # those neither held nor done here are the late ones.
        self._sweep_marks = (0, 0)
        self._next_sweep = time.monotonic() + _SWEEP_EVERY
        self._done: set[int] = set()  # rows delivered or rejected since the older sweep mark
        self._unread = True  # new rows may be in the outbox
        self._unmarked: list[int] = []  # delivered rows waiting for the next batch of marks
        self._marking = asyncio.Lock()
        self._unstored: set[int] = set()  # per-job delivery: rows delivered whose mark is not written yet
        self._reading = False  # a read of the outbox is in flight (its snapshot may predate a mark's commit) ...
        self._settled: list[int] = []  # ... so these marks, written meanwhile, leave _unstored after it
        self._marks_due = asyncio.Event()
        self._mark_every = mark_every
        self._read_at = -math.inf  # when the outbox was last read for new rows (per-job delivery)
        self._behind = False  # that read filled a batch: more rows wait
        self._lease = f"delivery:{self.name}"
        self._holder = holder or f"pid-{os.getpid()}"
        self._lease_ttl = lease_ttl
        self._leased = asyncio.Event()
        self._standing_by = False  # another daemon holds the lease
        self.delivered = 0
        self.failed = 0
        self.rejected = 0

    def notify(self) -> None:
        """New rows may be waiting."""
        self._unread = True
        if not self._standing_by:  # (standing by, another daemon delivers them)
            self._idle.clear()
        self._wake.set()

    def rewind(self) -> None:
        """Rows already passed became due again (a replay of rejected rows): read the outbox from its start."""
        self._seen = 0
        self._cursor = 0
        self._sweep_marks = (0, 0)
        self.notify()

    @property
    def delivering(self) -> bool:
        """Whether this daemon delivers the sink now (holds its lease; always, on SQLite)."""
        return self._leased.is_set()

    async def wait_idle(self) -> None:
        """Return once every due row has been delivered or rejected."""
        await self._idle.wait()

    @property
    def unacknowledged(self) -> int:
        """Rows an acknowledging sink holds and has not yet reported delivered."""
        return sum(len(seqs) for seqs in self._handed.values())

    async def run(self) -> None:
        keeper = asyncio.create_task(self._keep_lease(), name=f"lease:{self.name}")
        marker = asyncio.create_task(self._write_marks(), name=f"marks:{self.name}")
        try:
            if self._concurrency > 1:
                await self._run_per_job()
            else:
                await self._run_in_order()
        finally:
            for task in (keeper, marker):
                task.cancel()
            await asyncio.gather(keeper, marker, return_exceptions=True)
            if self._unmarked:  # a clean stop: what was delivered is not sent again (one try; if it fails, it is)
                with contextlib.suppress(Exception):
                    await self._state.delivered(*self._unmarked)
            with contextlib.suppress(Exception):  # a clean stop: another daemon takes the sink over at once
                await self._state.release_lease(self._lease, self._holder)

    async def _leased_wait(self) -> None:
        """Deliver only while this daemon holds the sink's lease (standing by, nothing here is due: idle)."""
        if not self._leased.is_set():
            await self._leased.wait()

    async def _keep_lease(self) -> None:
        """Hold the sink's delivery lease (renewed every third of its TTL): with several daemons on one database,
        one delivers each sink; another takes over once the lease expires (at once after a clean stop)."""
        renewed = -math.inf
        while True:
            try:
                held: bool | None = await self._state.hold_lease(self._lease, self._holder, self._lease_ttl)
            except Exception:  # the database is down: keep what we have until the lease would have run out
                held = None
            now = time.monotonic()
            if held:
                renewed = now
            keep = bool(held) or (held is None and now - renewed < self._lease_ttl * 2 / 3)
            if keep and not self._leased.is_set():
                self._forget_unsent()  # another daemon may have sent them meanwhile: read the outbox anew
                if self._standing_by:
                    logger.info("sink %s: this daemon delivers it now", self.name)
                self._standing_by = False
                self._leased.set()
                self.notify()
            elif not keep and not self._standing_by:
                self._leased.clear()
                self._standing_by = True
                self._idle.set()
                logger.info("sink %s: another daemon delivers it; standing by", self.name)
            await asyncio.sleep(self._lease_ttl / 3)

    def _forget_unsent(self) -> None:
        for queue in self._queues.values():
            for row in queue:
                self._held.discard(row.seq)
        self._queues.clear()
        self._ready.clear()
        self._queued = 0
        self._seen = 0
        self._cursor = 0
        self._sweep_marks = (0, 0)

    async def _run_in_order(self) -> None:
        while True:
            await self._leased_wait()
            self._wake.clear()
            rows = await self._stored(lambda: self._state.pending(self.name, limit=self._batch, after=self._cursor))
            if self._acks and self._handed:  # after a rewind: what the sink holds is not handed over twice
                held = {seq for seqs in self._handed.values() for seq in seqs}
                fresh = [row for row in rows if row.seq not in held]
                if not fresh and len(rows) == self._batch:
                    self._cursor = rows[-1].seq  # a whole batch it holds: read on past it
                    continue
                rows = fresh
            if not rows:
                if not self._handed:
                    self._idle.set()
                if time.monotonic() >= self._next_sweep:  # rows that committed late: read past the mark again
                    self._next_sweep = time.monotonic() + _SWEEP_EVERY
                    self._cursor = min(self._cursor, self._sweep_marks[0])
                    self._sweep_marks = (self._sweep_marks[1], self._cursor)
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, self._next_sweep - time.monotonic())):
                        await self._wake.wait()
                continue
            for row in rows:
                if self._acks:
                    self._handed.setdefault(row.event.id, []).append(row.seq)
                    self._handed_at[row.event.id] = row.event.time.timestamp()
                    self._cursor = row.seq
                delay = await self._deliver(row.seq, row.event, self._failures)
                if delay is not None:
                    await asyncio.sleep(delay)
                    break

    async def _run_per_job(self) -> None:
        """Up to ``concurrency`` rows sent at once, each the earliest undelivered row of its job (or rollout): a
        job's events go in order, one at a time, and a failing one holds back only its own job's later events.

        Rows are read once, in order (after the last seen), into a queue per job; a job whose lane is free waits
        in a heap by its earliest row. So a delivery costs O(log n) whatever the backlog, and a freed lane does
        not read the outbox again. A row waiting out a backoff gives up its slot to another job's row (it takes
        one again, before new rows, when its wait ends): a receiver that fails now and then slows only the jobs
        it failed. While the receiver looks down (a streak of failures) no new lanes start: the rows already
        trying probe it. At most ``_MAX_WAITING`` rows are held in memory: beyond that, reading waits."""
        try:
            while True:
                await self._leased_wait()
                self._wake.clear()
                reading = self._unread and self._queued < _MAX_WAITING
                if reading and (self._behind or time.monotonic() >= self._read_at + _READ_GAP):
                    self._unread = False  # (a notify() during the read sets it again)
                    self._read_at = time.monotonic()
                    rows, fresh = await self._read(self._seen)
                    self._behind = len(rows) == self._batch
                    if rows:
                        self._seen = rows[-1].seq
                        if self._behind:
                            self._unread = True  # more rows are there to read
                    for row in fresh:
                        self._enqueue(row)
                if time.monotonic() >= self._next_sweep and self._queued < _MAX_WAITING:
                    await self._sweep()
                self._dispatch()
                reading = self._unread and self._queued < _MAX_WAITING
                if reading and self._behind:
                    continue
                if not (self._queues or self._lanes or self._unstored or self._unread):
                    self._idle.set()
                until = self._read_at + _READ_GAP if reading else self._next_sweep
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, min(until, self._next_sweep) - time.monotonic())):
                        await self._wake.wait()
        finally:
            lanes = list(self._lanes.values())
            for task in lanes:
                task.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)

    async def _sweep(self) -> None:
        """Read again the rows since the older sweep mark: a row that committed after the reads passed it."""
        self._next_sweep = time.monotonic() + _SWEEP_EVERY
        after, late = self._sweep_marks[0], 0
        while True:
            rows, fresh = await self._read(after)
            for row in fresh:
                if row.seq <= self._seen and row.seq not in self._done:
                    self._enqueue(row)
                    late += 1
            if len(rows) < self._batch or rows[-1].seq >= self._seen:
                break
            after = rows[-1].seq
        if late:
            logger.debug("sink %s: %d rows committed after later ones were read; sending them now", self.name, late)
        self._sweep_marks = (self._sweep_marks[1], self._seen)
        self._done = {seq for seq in self._done if seq > self._sweep_marks[0]}

    async def _read(self, after: int) -> tuple[list[OutboxRow], list[OutboxRow]]:
        """Per-job delivery: the undelivered rows after ``after`` (a batch), and those of them that are new here —
        neither held nor delivered with their mark still to be written (after a rewind or a sweep they may be)."""
        self._reading = True
        try:
            rows = await self._stored(functools.partial(self._state.pending, self.name, limit=self._batch, after=after))
        finally:
            self._reading = False
        fresh = [row for row in rows if row.seq not in self._held and row.seq not in self._unstored]
        self._unstored.difference_update(self._settled)
        self._settled.clear()
        return rows, fresh

    def _enqueue(self, row: OutboxRow) -> None:
        key = _ordering_key(row.event)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            if key not in self._lanes:
                heapq.heappush(self._ready, (row.seq, key))
        queue.append(row)
        self._held.add(row.seq)
        self._queued += 1

    def _dispatch(self) -> None:
        """Start the earliest free jobs' rows while slots are free (rows back from a backoff go first)."""
        lanes = self._concurrency * _LANES_PER_SLOT if self._recovery.streak < _DOWN_STREAK else self._concurrency
        while self._ready and self._sending + self._returning < self._concurrency and len(self._lanes) < lanes:
            _, key = heapq.heappop(self._ready)
            queue = self._queues[key]
            row = queue.popleft()
            self._queued -= 1
            if not queue:
                del self._queues[key]
            self._sending += 1
            self._lanes[key] = asyncio.create_task(self._lane(key, row.seq, row.event), name=key)

    async def _lane(self, key: str, seq: int, event: Event) -> None:
        """One row until it is delivered or rejected, retried with its own backoff (the same ``webhook-id``) —
        cut short when the receiver answers another row again after a streak of failures (an outage ended)."""
        failures = 0
        holding = True  # a slot: taken by _dispatch for this lane
        done = False
        try:
            while (delay := await self._deliver(seq, event, failures)) is not None:
                failures += 1
                holding = False
                self._free_slot()
                await self._recovery.sleep(delay)
                await self._take_slot()
                holding = True
            done = True
        finally:
            if holding:
                self._free_slot()
            self._lanes.pop(key, None)
            self._held.discard(seq)
            if done:
                self._done.add(seq)
            queue = self._queues.get(key)
            if queue:
                heapq.heappush(self._ready, (queue[0].seq, key))
            self._wake.set()

    def _free_slot(self) -> None:
        self._sending -= 1
        freed, self._slot_freed = self._slot_freed, asyncio.Event()
        freed.set()
        self._wake.set()

    async def _take_slot(self) -> None:
        """A slot again after a backoff; rows returning from one go before rows not yet sent."""
        self._returning += 1
        try:
            while self._sending >= self._concurrency:
                await self._slot_freed.wait()
        finally:
            self._returning -= 1
        self._sending += 1

    async def _acknowledged(self, event_ids: Sequence[str]) -> None:
        """The acknowledging sink delivered a message carrying these events (or needs none for them)."""
        seqs = [seq for event_id in event_ids for seq in self._handed.pop(event_id, ())]
        now = time.time()
        for event_id in event_ids:
            detected = self._handed_at.pop(event_id, None)
            if detected is not None and self._observe is not None:
                self._observe(now - detected)
        if seqs:
            await self._stored(lambda: self._state.delivered(*seqs))
            self.delivered += len(seqs)
        self.notify()

    async def _deliver(self, seq: int, event: Event, failures: int) -> float | None:
        """Send one row: ``None`` when it is done (delivered or rejected), else the seconds to wait before
        trying it again (``failures``: how many times it failed before)."""
        try:
            await self._send(event)
        except SinkError as exc:
            if self._acks:  # handed over again after the pause
                self._forget(event.id, seq)
            if not exc.retryable:
                self.rejected += 1
                logger.error("sink %s rejected event %s (job %s): %s", self.name, event.id, event.job_id, exc)
                why = str(exc)
                await self._stored(lambda: self._state.rejected(seq, why))
                return None
            self.failed += 1
            self._failures = failures + 1
            self._recovery.failed()
            wait = full_jitter(failures, self._retry_initial, self._retry_max, least=0.5)
            delay = max(exc.retry_after or 0.0, wait)
            logger.warning(
                "sink %s failed on event %s (job %s), trying again in %.0fs: %s",
                self.name,
                event.id,
                event.job_id,
                delay,
                exc,
            )
            why = str(exc)
            await self._stored(lambda: self._state.attempt_failed(seq, why))
            return delay
        except Exception:
            # A bug in a (possibly third-party) sink: treat like a retryable failure, loudly.
            logger.exception("sink %s crashed on event %s (job %s)", self.name, event.id, event.job_id)
            if self._acks:
                self._forget(event.id, seq)
            self.failed += 1
            await self._stored(lambda: self._state.attempt_failed(seq, "sink crashed"))
            return self._retry_max
        self._failures = 0
        self._recovery.succeeded()
        if not self._acks:
            self.delivered += 1
            if self._observe is not None:
                self._observe(time.time() - event.time.timestamp())
            if self._concurrency > 1:
                self._mark_later(seq)
            else:
                await self._mark(seq)
        return None

    async def _mark(self, seq: int) -> None:
        """Mark a delivered row, batched with the rows delivered while the previous batch was written: one
        transaction for many (a crash before it sends them again, with the same ids)."""
        self._unmarked.append(seq)
        async with self._marking:
            if not self._unmarked:
                return  # the batch just written carried this row
            seqs, self._unmarked = self._unmarked, []
            await self._stored(lambda: self._state.delivered(*seqs))

    def _mark_later(self, seq: int) -> None:
        """Per-job delivery: the row goes in the next batch of marks; its lane is free at once."""
        self._unmarked.append(seq)
        self._unstored.add(seq)
        self._marks_due.set()

    async def _write_marks(self) -> None:
        """One statement marks the rows delivered since the last: at once after a quiet spell, then at most
        every ``mark_every`` seconds while rows keep being delivered."""
        written = -math.inf
        while True:
            await self._marks_due.wait()
            await asyncio.sleep(max(0.0, written + self._mark_every - time.monotonic()))
            written = time.monotonic()
            self._marks_due.clear()
            seqs = list(self._unmarked)  # (they leave the list once stored: a stop meanwhile marks them still)
            await self._stored(functools.partial(self._state.delivered, *seqs))
            del self._unmarked[: len(seqs)]
            if self._reading:  # its rows may come back from that read, as undelivered
                self._settled.extend(seqs)
            else:
                self._unstored.difference_update(seqs)
            self._wake.set()  # (idle, now that they are stored)

    async def _stored(self, call: Callable[[], Awaitable[T]]) -> T:
        """A state operation, tried until it works: while the database is down (PostgreSQL restarting, a full
        disk) delivery waits — what is delivered meanwhile is marked once it is back, and nothing is dropped."""
        failures = 0
        while True:
            try:
                result = await call()
            except Exception as exc:  # the engine's own errors, whichever engine (sqlite3, StateError)
                if failures == 0:
                    logger.warning("sink %s: the state database failed (%s); delivery waits for it", self.name, exc)
                delay = full_jitter(failures, 0.5, 10.0, least=0.5)
                failures += 1
                await asyncio.sleep(delay)
                continue
            if failures:
                logger.info("sink %s: the state database answers again", self.name)
            return result

    def _forget(self, event_id: str, seq: int) -> None:
        """A row the acknowledging sink did not take: hand it over again from here."""
        seqs = self._handed.get(event_id, [])
        if seq in seqs:
            seqs.remove(seq)
        if not seqs:
            self._handed.pop(event_id, None)
            self._handed_at.pop(event_id, None)
        self._cursor = min(self._cursor, seq - 1)


def _ordering_key(event: Event) -> str:
    """What a receiver needs in order: the events of one job; of one rollout (its digests); else each alone."""
    if event.job_id is not None:
        return f"job:{event.job_id}"
    if event.rollout is not None:
        return f"rollout:{event.rollout}"
    return f"event:{event.id}"


class _Recovery:
    """Failures in a row at one receiver across concurrent tries, and the wake-up when it answers again: after a
    streak, the first success wakes every try waiting out its backoff, so a backlog drains at the receiver's pace
    instead of at each retry's next time. One event that keeps failing among others that succeed builds no
    streak and wakes nobody."""

    __slots__ = ("_back", "_probing", "streak")

    def __init__(self) -> None:
        self.streak = 0
        self._back = asyncio.Event()  # set, then replaced, at the first success after a streak
        self._probing = False  # one waiting try, while the receiver looks down, retries every _PROBE_EVERY

    def failed(self) -> None:
        self.streak += 1

    def succeeded(self) -> None:
        if self.streak >= _DOWN_STREAK:
            self._back.set()
            self._back = asyncio.Event()
        self.streak = 0

    async def sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less if the receiver answers again meanwhile. While it looks down, one
        waiter at a time waits at most ``_PROBE_EVERY``: its try tells, within seconds, that it is back."""
        back = self._back
        probe = self.streak >= _DOWN_STREAK and not self._probing
        if probe:
            self._probing = True
            delay = min(delay, _PROBE_EVERY)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await back.wait()
        finally:
            if probe:
                self._probing = False
