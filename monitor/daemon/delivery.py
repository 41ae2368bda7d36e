"""Durable delivery: one :class:`Deliverer` per durable sink sends that sink's outbox rows from the state database.

The scheduler records every event (with an outbox row per matching durable sink) before it publishes anything;
the deliverer is woken by the publication, reads the due rows oldest first, calls ``sink.send`` and marks each row
delivered. That gives at-least-once delivery across crashes (see :mod:`monitor.daemon.store`) while keeping the order
receivers need — per job by default (``delivery.ordering: job``: up to ``delivery.concurrency`` rows in flight, never
two of one job, never a job's event before its earlier ones; a rollout's digests in order too), or per sink
(``ordering: sink``: one row at a time, in the order recorded):

* a retryable :class:`SinkError` (the receiver is down, 5xx, timeouts — after the sink's own retries) pauses with
  exponential backoff and tries the *same* row again (the same ``webhook-id``); nothing later of its job (with
  ``ordering: sink``: nothing later at all) overtakes it;
* a non-retryable one (the receiver refused the event with a 4xx, or answered 410 and the sink is disabled) marks
  the row rejected with the reason, so a poison event cannot block the queue forever;
* a cancelled send (shutdown) leaves the row undelivered: it is sent again after the restart, with the same id.

A sink that ``acknowledges`` (the chat sinks, which merge events into digests sent when a rate budget allows)
takes each row at once and reports later, through its ``on_delivered`` hook, which events a delivered message
carried; only then are their rows marked. Rows handed over but not acknowledged when the process stops stay in
the outbox and are handed over again at the next start — so a ``rollout.finished`` summary the budget did not
allow before a SIGTERM is sent after the restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from monitor.core.backoff import full_jitter
from monitor.core.errors import SinkError
from monitor.core.events import Event
from monitor.daemon.storage import OutboxRow, Store
from monitor.sinks import Sink

__all__ = ["Deliverer"]

logger = logging.getLogger(__name__)


class Deliverer:
    """Sends one durable sink's outbox. Run :meth:`run` as a task; :meth:`notify` after new events."""

    def __init__(
        self,
        sink: Sink,
        state: Store,
        *,
        name: str | None = None,
        retry_initial: float = 2.0,
        retry_max: float = 120.0,
        batch: int = 100,
        concurrency: int = 1,
    ) -> None:
        """``concurrency`` above 1: up to that many rows in flight at once, never two of one job (see the
        module docstring); an acknowledging sink always takes its rows one by one."""
        self.sink = sink
        self.name = name or sink.name
        self._state = state
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._batch = batch
        self._failures = 0
        self._acks = bool(getattr(sink, "acknowledges", False))
        self._handed: dict[str, list[int]] = {}  # acknowledging sinks: event id -> rows handed over, not yet acked
        self._cursor = 0  # acknowledging sinks: the last row handed over
        if self._acks:
            sink.on_delivered = self._acknowledged  # type: ignore[attr-defined]
        self._concurrency = 1 if self._acks else max(1, concurrency)
        self._lanes: dict[str, asyncio.Task[None]] = {}  # per-job delivery: ordering key -> its earliest row's task
        self.delivered = 0
        self.failed = 0
        self.rejected = 0

    def notify(self) -> None:
        """New rows may be waiting."""
        self._idle.clear()
        self._wake.set()

    async def wait_idle(self) -> None:
        """Return once every due row has been delivered or rejected."""
        await self._idle.wait()

    @property
    def unacknowledged(self) -> int:
        """Rows an acknowledging sink holds and has not yet reported delivered."""
        return sum(len(seqs) for seqs in self._handed.values())

    async def run(self) -> None:
        if self._concurrency > 1:
            await self._run_per_job()
            return
        while True:
            self._wake.clear()
            rows = await self._state.pending(self.name, limit=self._batch, after=self._cursor)
            if not rows:
                if not self._handed:
                    self._idle.set()
                await self._wake.wait()
                continue
            for row in rows:
                if self._acks:
                    self._handed.setdefault(row.event.id, []).append(row.seq)
                    self._cursor = row.seq
                delay = await self._deliver(row.seq, row.event, self._failures)
                if delay is not None:
                    await asyncio.sleep(delay)
                    break

    async def _run_per_job(self) -> None:
        """Up to ``concurrency`` rows at once, each the earliest undelivered row of its job (or rollout): a job's
        events go in order, one at a time, and a failing one holds back only its own job's later events.

        Rows are read once, in order (after the last seen), and wait here until their job is free: a large
        backlog is not read again for every delivery."""
        waiting: list[OutboxRow] = []
        seen = 0
        try:
            while True:
                self._wake.clear()
                fresh = await self._state.pending(self.name, limit=self._batch, after=seen)
                if fresh:
                    seen = fresh[-1].seq
                    waiting.extend(fresh)
                kept: list[OutboxRow] = []
                for row in waiting:
                    key = _ordering_key(row.event)
                    if len(self._lanes) < self._concurrency and key not in self._lanes:
                        self._lanes[key] = asyncio.create_task(self._lane(key, row.seq, row.event), name=key)
                    else:
                        kept.append(row)  # its job's earlier row is in flight, or every lane is busy
                waiting = kept
                if len(fresh) == self._batch:
                    continue  # more rows are there to read
                if not waiting and not self._lanes:
                    self._idle.set()
                await self._wake.wait()
        finally:
            lanes = list(self._lanes.values())
            for task in lanes:
                task.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)

    async def _lane(self, key: str, seq: int, event: Event) -> None:
        """One row until it is delivered or rejected, retried with its own backoff (the same ``webhook-id``)."""
        failures = 0
        try:
            while (delay := await self._deliver(seq, event, failures)) is not None:
                failures += 1
                await asyncio.sleep(delay)
        finally:
            self._lanes.pop(key, None)
            self.notify()

    async def _acknowledged(self, event_ids: Sequence[str]) -> None:
        """The acknowledging sink delivered a message carrying these events (or needs none for them)."""
        seqs = [seq for event_id in event_ids for seq in self._handed.pop(event_id, ())]
        if seqs:
            await self._state.delivered(*seqs)
            self.delivered += len(seqs)
        self.notify()

    async def _deliver(self, seq: int, event: Event, failures: int) -> float | None:
        """Send one row: ``None`` when it is done (delivered or rejected), else the seconds to wait before
        trying it again (``failures``: how many times it failed before)."""
        try:
            await self.sink.send(event)
        except SinkError as exc:
            if self._acks:  # handed over again after the pause
                self._forget(event.id, seq)
            if not exc.retryable:
                self.rejected += 1
                logger.error("sink %s rejected event %s (job %s): %s", self.name, event.id, event.job_id, exc)
                await self._state.rejected(seq, str(exc))
                return None
            self.failed += 1
            self._failures = failures + 1
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
            await self._state.attempt_failed(seq, str(exc))
            return delay
        except Exception:
            # A bug in a (possibly third-party) sink: treat like a retryable failure, loudly.
            logger.exception("sink %s crashed on event %s (job %s)", self.name, event.id, event.job_id)
            if self._acks:
                self._forget(event.id, seq)
            self.failed += 1
            await self._state.attempt_failed(seq, "sink crashed")
            return self._retry_max
        self._failures = 0
        if not self._acks:
            self.delivered += 1
            await self._state.delivered(seq)
        return None

    def _forget(self, event_id: str, seq: int) -> None:
        """A row the acknowledging sink did not take: hand it over again from here."""
        seqs = self._handed.get(event_id, [])
        if seq in seqs:
            seqs.remove(seq)
        if not seqs:
            self._handed.pop(event_id, None)
        self._cursor = min(self._cursor, seq - 1)


def _ordering_key(event: Event) -> str:
    """What a receiver needs in order: the events of one job; of one rollout (its digests); else each alone."""
    if event.job_id is not None:
        return f"job:{event.job_id}"
    if event.rollout is not None:
        return f"rollout:{event.rollout}"
    return f"event:{event.id}"
