"""The scheduler: polls many jobs concurrently under one rate limit and publishes what changed.

Design (why it is cheap with 100,000 jobs):

* Every tracked job is one small slotted object and one entry in a **due-time heap**. Nothing runs per job while
  it waits: one **dispatcher** task sleeps until the earliest due time (or until a job is added), so idle jobs
  cost no CPU.
* ``max_in_flight`` pollers take turns as the dispatcher (whoever holds a lock): it pops the earliest due job,
  takes a rate-limit slot — it is the limiter's only waiter — hands the lock on and polls. So at most
  ``max_in_flight`` requests run at once, and a poll costs no task of its own. When
  demand exceeds the rate, jobs simply wait their turn in due order, so every job's effective interval
  stretches evenly and none starves; the dispatcher logs a warning (rate-limited to once a minute) and
  ``stats.lag`` says by how much.
* Removal is lazy: a removed job's heap entry is skipped when it surfaces.
* The one request a poll may add — the retry after a refused token — waits for its own slot in the poller
  (the client's ``permit``). Only a token expiry makes several of them wait at once, briefly.

Per poll outcome:

* a snapshot → :func:`monitor.engine.diff.detect` → events → ``publish``; a terminal phase ends polling. While the job
  is unchanged its interval grows by ``backoff`` up to ``max_interval``; any change resets it to ``interval``
  (``strategy: adaptive``: :mod:`monitor.engine.freshness` picks the next job instead).
  Phase, ``updateTimestamp`` and sub-jobs unchanged for ``stall_after`` → one ``job.stalled`` (not while the job
  waits Initializing on its billing order). A node job that succeeds has its node awaited (:mod:`monitor.engine.fleet`).
* past ``job_timeout`` since the job was added → ``job.timed_out``, polling stops.
* 404 → retried; only ``not_found_count`` consecutive 404s spread over at least ``not_found_grace`` seconds give
  ``job.not_found`` (CCE can 404 for a moment after creating a job). 404 ``APIGW.0101`` → one
  ``monitor.config_error`` and polling stops (:mod:`monitor.engine.episodes`).
* 429 → the scheduler's limiter (it owns the one rate limit; the client only raises ``ThrottledError``) halves
  the rate and honours ``Retry-After`` (see :mod:`monitor.cce.throttle`); the job
  is tried again after at least ``min_interval``. 429s never count as the job's failures.
* 5xx, timeouts, connection errors, malformed bodies, locks (``CCE.01429002``), a 403 on one job → the job backs
  off exponentially with full jitter; after ``failure_threshold`` consecutive failures one ``job.poll_failed``,
  and ``job.recovered`` when it works again.
* 401, or 403 on every job → one ``monitor.auth_failed`` per episode and the whole dispatcher pauses, backing
  off (``auth_backoff`` doubling up to ``auth_backoff_max``) instead of hammering IAM or CCE.

Shutdown: :meth:`Scheduler.stop` stops intake; :meth:`Scheduler.run` then waits up to ``drain`` seconds for
polls in flight, cancels the rest and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from monitor.cce.client import CCEClient
from monitor.cce.throttle import Limiter, RateLimiter
from monitor.core.errors import (
    MalformedResponseError,
    MonitorError,
    NotOwnerError,
    ThrottledError,
)
from monitor.core.events import Event, EventType, Outcome, event_id
from monitor.core.model import Job, ParseMemo, Phase, validate_id
from monitor.engine import episodes, probing
from monitor.engine.diff import detect, progressed
from monitor.engine.durations import Durations
from monitor.engine.fleet import Fleet, PoolNode
from monitor.engine.freshness import Freshness, eta_of, next_fresh
from monitor.engine.journal import JobStore
from monitor.engine.probing import outcome_of
from monitor.engine.settings import SchedulerSettings
from monitor.engine.tracked import Tracked

__all__ = ["Scheduler", "SchedulerSettings", "SchedulerStats"]

logger = logging.getLogger(__name__)

Publish = Callable[[Event], Awaitable[None]]


_LAG_WARN_EVERY = 60.0
_EMPTY_LABELS: Mapping[str, str] = {}


class _NotStored(Exception):
    """The store failed to record a job's news (see :meth:`Scheduler._commit`)."""


@dataclass(slots=True)
class SchedulerStats:
    """Counters for logs, metrics and benchmarks."""

    polls: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    lag: float = 0.0
    """How late the most recent poll started compared with its due time (seconds)."""
    events: int = 0
    last_contact: float | None = None
    """Clock time of the last answer from CCE (any HTTP status), for readiness checks."""
    not_stored: int = 0
    """Polls whose news the store refused (held back and detected again later)."""
    lost: int = 0
    """Jobs dropped because the store said another replica owns them now (their news was not recorded)."""


class Scheduler:
    """Polls tracked jobs through ``client`` and calls ``publish`` with every event, in order per job."""

    def __init__(
        self,
        client: CCEClient,
        publish: Publish,
        settings: SchedulerSettings | None = None,
        *,
        limiter: Limiter | None = None,
        store: JobStore | None = None,
        on_poll: Callable[[str, float], None] | None = None,
        on_outcome: Callable[[str, Outcome], None] | None = None,
        on_change: Callable[[str, Job], None] | None = None,
        on_node_job: Callable[[PoolNode], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
        durations: Durations | None = None,
    ) -> None:
        """The scheduler owns the rate limit over every request to CCE: ``limiter`` (default: a
        :class:`RateLimiter` of ``settings.rate`` and ``settings.burst``). ``clock`` (monotonic seconds) drives
        every schedule; ``now`` stamps events; ``rng`` draws jitter; ``durations``: learned steps (default: priors)."""
        self.settings = settings or SchedulerSettings()
        self._client = client
        self._publish = publish
        self._store = store
        self._on_poll = on_poll
        self._on_outcome = on_outcome  # hears how each job ended, once (and each followed pool and node)
        self._on_change = on_change  # sees a job's new snapshot before its events
        self.project_id = client.settings.project_id
        self.limiter: Limiter = limiter or RateLimiter(self.settings.rate, burst=self.settings.burst)
        self._clock = clock
        self._now = now
        self._rng = rng or random.Random()  # jitter, not cryptography
        # Episodes (polls failing, authentication failing) have no CCE time to key their event ids on: a run
        # key and a counter make each episode's id unique, across restarts too, without the wall clock.
        self._run_key = f"{self._rng.getrandbits(48):012x}"
        self._episodes = itertools.count(1)
        self._jobs: dict[str, Tracked] = {}
        self._heap: list[tuple[float, int, Tracked]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._dispatching = asyncio.Lock()  # its holder is the dispatcher (see _poller)
        self._polling: dict[asyncio.Task[Any] | None, Tracked] = {}  # pollers in a poll, and their job
        self._paused_until = 0.0
        self._auth_delay = self.settings.auth_backoff
        self._auth_episode = False
        self._store_down = False  # the store failed to record a job's news; not yet recovered
        self._forbidden: set[str] = set()  # jobs refused (403) since the last successful read (engine.episodes)
        self.config_error: str | None = None  # set when the endpoint has no such API: polling has stopped
        self._halted = asyncio.Event()
        self._last_lag_warning = -_LAG_WARN_EVERY
        self.stats = SchedulerStats()
        self.freshness = Freshness(durations or Durations(), self.settings, lambda: now().timestamp())
        self._on_node_job = on_node_job  # a followed pool's node job is now tracked
        self.fleet = Fleet(
            project_id=self.project_id,
            settings=self.settings,
            start=self._start_probe,
            now=now,
            clock=lambda: now().timestamp(),
        )

    # ----------------------------------------------------------------------------------------- intake

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def add(
        self,
        job_id: str,
        labels: Mapping[str, str] | None = None,
        *,
        previous: Job | None = None,
        age: float = 0.0,
    ) -> bool:
        """Start tracking ``job_id`` (validated).

        ``previous`` is a remembered snapshot to diff against and ``age`` how long the job has been tracked
        already (both from the state database after a restart, so timeouts and transitions carry over).
        Returns ``False`` if it was already tracked or the scheduler is stopping.
        """
        return self._add(job_id, dict(labels) if labels else _EMPTY_LABELS, previous, age)

    def _add(self, job_id: str, labels: Mapping[str, str], previous: Job | None, age: float = 0.0) -> bool:
        validate_id(job_id, "job id")
        if self._stopping or job_id in self._jobs:
            return False
        now = self._clock()
        s = self.settings
        tracked = Tracked(job_id, labels, now, s.job_timeout - max(0.0, age), s.interval)
        tracked.last = previous
        self._jobs[job_id] = tracked
        first = now + (self._rng.uniform(0, s.initial_delay) if s.initial_delay else 0.0)
        self._push(tracked, first)
        self._idle.clear()
        return True

    def add_many(self, job_ids: Iterable[str], labels: Mapping[str, str] | None = None) -> int:
        """Track several jobs (sharing one copy of ``labels``); returns how many were new."""
        shared = dict(labels) if labels else _EMPTY_LABELS
        return sum(self._add(job_id, shared, None) for job_id in job_ids)

    # Node pools and nodes (monitor.engine.probing): the same heap, rate limit and error handling as jobs.
    follow_nodepool = probing.follow_nodepool
    pending = probing.pending
    _start_probe = probing.start_probe
    _poll_probe = probing.poll_probe
    _record_fleet = probing.record_fleet
    _commit_probe = probing.commit_probe
    _with_sub_jobs = probing.with_sub_jobs
    # What a failed poll leads to (monitor.engine.episodes): backoff, 404 grace, the auth pause, a wrong endpoint.
    _on_poll_error = episodes.on_poll_error
    _on_not_found = episodes.on_not_found
    _on_error = episodes.on_error
    _on_auth_failed = episodes.on_auth_failed
    _auth_ok = episodes.auth_ok
    _episode = episodes.episode
    _next_fresh = next_fresh  # learned durations (engine.freshness): the adaptive strategy's dispatch, ...
    eta = eta_of  # ... and ETAs of tracked jobs, whatever the strategy

    def remove(self, job_id: str) -> bool:
        """Stop tracking ``job_id`` (no event). Returns whether it was tracked."""
        tracked = self._jobs.pop(job_id, None)
        if tracked is None:
            return False
        tracked.removed = True
        tracked.dropped = True
        self._check_idle()
        return True

    def phase_counts(self) -> dict[str, int]:
        """Tracked jobs by their last seen phase (``waiting`` before the first answer)."""
        counts: dict[str, int] = {}
        for tracked in self._jobs.values():
            phase = tracked.last.phase.value if tracked.last is not None else "waiting"
            counts[phase] = counts.get(phase, 0) + 1
        return counts

    def snapshot(self, job_id: str) -> Job | None:
        """The last snapshot seen for a tracked job."""
        tracked = self._jobs.get(job_id)
        return tracked.last if tracked is not None else None

    async def wait_idle(self) -> None:
        """Return once no job is tracked (every job finished, timed out, was not found or was removed)."""
        await self._idle.wait()

    async def wait_halted(self) -> None:
        """Return once polling has stopped for good on a configuration error (:attr:`config_error`)."""
        await self._halted.wait()

    def stop(self) -> None:
        """Stop intake and dispatch; :meth:`run` drains what is in flight and returns."""
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()

    # -------------------------------------------------------------------------------------- internals

    def _push(self, tracked: Tracked, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), tracked))
        if self._heap[0][2] is tracked:
            self._wake.set()  # earlier than what the dispatcher sleeps for

    def _check_idle(self) -> None:
        if not self._jobs:
            self._idle.set()

    def _jittered(self, delay: float) -> float:
        j = self.settings.jitter
        if j:
            delay *= self._rng.uniform(1 - j, 1 + j)
        return max(self.settings.min_interval, delay)

    def _reschedule(self, tracked: Tracked, delay: float) -> None:
        if tracked.removed:
            return
        due = min(self._clock() + delay, tracked.deadline)
        self._push(tracked, due)

    def _finish(self, tracked: Tracked) -> None:
        if self._jobs.get(tracked.job_id) is tracked:
            del self._jobs[tracked.job_id]
        tracked.removed = True
        self._check_idle()

    async def run(self, *, drain: float = 10.0) -> None:
        """Poll until :meth:`stop`; then give polls in flight up to ``drain`` seconds to finish."""
        pollers = [asyncio.create_task(self._poller(), name=f"poller-{i}") for i in range(self.settings.max_in_flight)]
        stop = asyncio.create_task(self._stop_requested.wait(), name="scheduler-stop")
        try:
            # Pollers end only when stopping, or when one crashed (a bug outside _poll): then stop them all.
            await asyncio.wait([*pollers, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            await self._drain(pollers, drain)
        for task in pollers:
            if not task.cancelled() and (crash := task.exception()) is not None:
                raise crash

    async def _poller(self) -> None:
        """One of ``max_in_flight`` pollers. Whoever holds the lock is the dispatcher: it waits for the next
        due job and a rate-limit slot (so the limiter has exactly one waiter), hands the lock on and polls."""
        while True:
            async with self._dispatching:
                tracked = await self._next_due()
            if tracked is None:
                return
            task = asyncio.current_task()
            self._polling[task] = tracked
            try:
                await self._poll(tracked)
            except Exception:  # _poll catches everything it expects: this is a bug, but it must not stop polling
                logger.exception("poll of job %s crashed", tracked.job_id)
            finally:
                del self._polling[task]

    async def _next_due(self) -> Tracked | None:
        """The next job to poll (adaptive: the best due, engine.freshness), once due and a slot is taken."""
        heap = self._heap
        while not self._stopping:
            now = self._clock()
            wait = None
            if self._paused_until > now:
                wait = self._paused_until - now
            elif self.settings.strategy == "adaptive":
                picked, wait = await self._next_fresh(now)
                if picked is not None or self._stopping:
                    return picked
            elif heap:
                due, _, tracked = heap[0]
                if tracked.removed:
                    heapq.heappop(heap)
                    continue
                if due > now:
                    wait = due - now
                else:
                    heapq.heappop(heap)
                    if await self._take_slot(tracked, due):
                        return tracked
                    continue
            await self._doze(wait)
        return None

    async def _doze(self, wait: float | None) -> None:  # (``None``: until woken: a job added or due earlier)
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()

    async def _take_slot(self, tracked: Tracked, due: float) -> bool:
        """Wait for a rate-limit slot to poll ``tracked``; ``False`` if it was removed or we stopped meanwhile."""
        await self.limiter.acquire()
        if tracked.removed or self._stopping:
            if not tracked.removed:
                self._push(tracked, due)
            return False
        lag = self._clock() - due
        self.stats.lag = lag
        self._warn_lag(lag)
        return True

    def _warn_lag(self, lag: float) -> None:
        threshold = max(1.0, self.settings.interval / 2)
        now = self._clock()
        if lag > threshold and now - self._last_lag_warning >= _LAG_WARN_EVERY:
            self._last_lag_warning = now
            logger.warning(
                "polling is %.1fs behind schedule: %d jobs need more than %.3g requests/s; "
                "every job's interval is stretched evenly (raise rate or interval)",
                lag,
                len(self._jobs),
                self.limiter.effective_rate,
            )

    async def _drain(self, pollers: list[asyncio.Task[None]], drain: float) -> None:
        self.stop()
        # Pollers not in a poll hold nothing in flight (one may wait for a rate-limit slot, a Retry-After hold
        # perhaps): they end now; polls in flight get up to ``drain``.
        for task in pollers:
            if task not in self._polling:
                task.cancel()
        _done, pending = await asyncio.wait(pollers, timeout=drain)
        if pending:
            for job_id in sorted(t.job_id for t in self._polling.values()):
                logger.warning("cancelling poll of job %s still running after %.1fs", job_id, drain)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)

    def _count(self, outcome: str) -> None:
        self.stats.outcomes[outcome] = self.stats.outcomes.get(outcome, 0) + 1

    async def _commit(
        self,
        tracked: Tracked,
        events: list[Event],
        *,
        snapshot: Job | None = None,
        outcome: Outcome | None = None,
        hold: bool = False,
    ) -> None:
        """Persist (when a store is set) and then publish: the store sees every event before any sink does.

        With ``hold`` (a job's snapshot path), a store that fails raises :class:`_NotStored` and nothing is
        published: the caller keeps the job's previous state, so the next poll detects the same transition again
        (the same event ids) and stores it once the store works. Elsewhere a failure is logged and the events are
        published to the non-durable sinks all the same."""
        if tracked.dropped:  # removed while this poll was in flight
            return
        if self._store is not None and (events or snapshot is not None or outcome is not None):
            try:
                if tracked.probe is not None:  # a node list's or pool's own trouble: no job row for its key
                    await self._store.record_events(events)
                else:
                    await self._store.record(tracked.job_id, snapshot, events, outcome=outcome)
            except NotOwnerError as exc:  # another replica polls it now and detects the same news again
                self._lost(tracked, str(exc))
                return
            except Exception as exc:
                if hold:
                    raise _NotStored(str(exc)) from exc
                logger.exception("job %s: could not persist %d events", tracked.job_id, len(events))
            else:
                if self._store_down:
                    self._store_down = False
                    logger.info("the state store answers again; held-back transitions are stored as detected")
        if outcome is not None and self._on_outcome is not None:
            self._on_outcome(tracked.job_id, outcome)
        for event in events:
            self.stats.events += 1
            await self._publish(event)

    def _event(self, tracked: Tracked, kind: EventType, *, detail: str | None, key: str | None = None) -> Event:
        last = tracked.last
        return Event(
            id=event_id(self.project_id, tracked.job_id, None, kind.value, key),
            type=kind,
            time=self._now(),
            project_id=self.project_id,
            job_id=tracked.job_id,
            job_type=(last.type or None) if last else None,
            phase=last.phase.value if last else None,
            reason=(last.reason or None) if last else None,
            resource_name=(last.resource_name or None) if last else None,
            cluster_id=(last.cluster_id or None) if last else None,
            labels=tracked.labels,
            detail=detail,
            rollout=tracked.labels.get("rollout"),
        )

    async def _poll(self, tracked: Tracked) -> None:
        if tracked.probe is not None:
            await self._poll_probe(tracked, tracked.probe)
            return
        self.stats.polls += 1
        started = self._clock()
        outcome = "ok"
        try:
            if tracked.memo is None:  # first poll: start from the snapshot restored from the store, if any
                tracked.memo = ParseMemo(tracked.last)
            job = await self._client.fetch(tracked.job_id, tracked.memo, permit=self.limiter.acquire)
            self.limiter.succeeded()
            if job.sub_jobs and (tracked.last is None or job.sub_jobs is not tracked.last.sub_jobs):
                job = await self._with_sub_jobs(tracked, job)  # only when the sub-jobs changed at all
        except MonitorError as exc:
            if isinstance(exc, ThrottledError):
                self.limiter.throttled(exc.retry_after, exc.budget)
            elif isinstance(exc, MalformedResponseError):
                self.limiter.succeeded()  # the request itself went through
            outcome = outcome_of(exc)
            await self._on_poll_error(tracked, exc)
        except Exception as exc:  # a bug below us; keep polling the job, loudly
            outcome = "error"
            logger.exception("job %s: unexpected error while polling", tracked.job_id)
            await self._on_error(tracked, exc)
        else:
            self.stats.last_contact = self._clock()
            await self._on_snapshot(tracked, job)
        self._count(outcome)
        if self._on_poll is not None:
            self._on_poll(outcome, self._clock() - started)
        if not tracked.removed and self._clock() >= tracked.deadline:
            self._finish(tracked)
            event = self._event(tracked, EventType.JOB_TIMED_OUT, detail=self._timeout_detail())
            await self._commit(tracked, [event], outcome=Outcome.TIMED_OUT)

    def _not_stored(self, tracked: Tracked, kept: tuple[int, int, Job | None, float, bool], why: str) -> None:
        """The store refused this poll's news: the job goes back to what was stored and is polled again (a
        finished one is tracked again, on the error backoff), to detect — and store — the same transition."""
        tracked.failures, tracked.not_found, tracked.last, tracked.last_progress, tracked.stalled = kept
        tracked.memo = None
        if tracked.removed and not tracked.dropped and tracked.job_id not in self._jobs:
            tracked.removed = False
            self._jobs[tracked.job_id] = tracked
            self._idle.clear()
            self._push(tracked, self._clock() + self.settings.error_backoff)
        self.stats.not_stored += 1
        if not self._store_down:
            self._store_down = True
            logger.warning("the state store failed (%s); events wait until it answers (job %s)", why, tracked.job_id)

    def _lost(self, tracked: Tracked, why: str) -> None:
        self._jobs.pop(tracked.job_id, None)
        tracked.removed = tracked.dropped = True
        self._check_idle()
        self.stats.lost += 1
        logger.info("job %s: %s; no longer polled here", tracked.job_id, why)

    def _timeout_detail(self) -> str:
        return f"not finished after {self.settings.job_timeout:g}s"

    async def _on_snapshot(self, tracked: Tracked, job: Job) -> None:
        now = self._clock()
        s = self.settings
        self._auth_ok(tracked)
        events: list[Event] = []
        if tracked.failures >= s.failure_threshold:
            events.append(
                self._event(
                    tracked,
                    EventType.JOB_RECOVERED,
                    detail=f"polling works again after {tracked.failures} failures",
                    key=str(tracked.failures) + ":" + job.updated.raw,
                )
            )
        # What to go back to if the store refuses this poll's news (see _not_stored); no store, nothing to keep.
        kept = (
            (tracked.failures, tracked.not_found, tracked.last, tracked.last_progress, tracked.stalled)
            if self._store is not None
            else None
        )
        tracked.failures = 0
        tracked.not_found = 0
        previous = tracked.last
        if job is previous:  # the same body as last time (see _poll)
            changes: list[Event] = []
            moved = False
        else:
            changes = detect(previous, job, tracked.context(self.project_id), self._now())
            moved = progressed(previous, job) or bool(changes)  # a sub-job moving is progress too
        if moved:
            tracked.last_progress = now
            tracked.stalled = False
        tracked.last = job
        self.freshness.seen(tracked, job, previous)
        events.extend(changes)
        if changes:
            if self._on_change is not None:
                self._on_change(tracked.job_id, job)
            events.extend(self.fleet.on_job(tracked.job_id, tracked.labels, job))
            tracked.delay = s.interval
        else:
            tracked.delay = min(s.max_interval, tracked.delay * s.backoff)
            paying = bool(job.order_id) and job.phase is Phase.INITIALIZING  # an unpaid yearly/monthly order
            if not tracked.stalled and now - tracked.last_progress >= s.stall_after and not paying:
                tracked.stalled = True
                events.append(
                    self._event(
                        tracked,
                        EventType.JOB_STALLED,
                        detail=f"phase {job.phase.value} unchanged for {now - tracked.last_progress:.0f}s",
                        key=job.phase.value + ":" + job.updated.raw,
                    )
                )
        terminal = job.phase.is_terminal
        if terminal:
            self._finish(tracked)
        else:  # (adaptive: due again after min_interval, then it competes for slots by its score)
            self._reschedule(tracked, self._jittered(tracked.delay) if s.strategy != "adaptive" else s.min_interval)
        if self.fleet.awaited:  # nodes of this job now awaited: kept (by the daemon) before the job's outcome
            await self._record_fleet()
        if events or moved or terminal:
            try:
                await self._commit(
                    tracked,
                    events,
                    snapshot=job if moved or changes else None,
                    outcome=Outcome(job.phase.value) if terminal else None,
                    hold=True,
                )
            except _NotStored as exc:
                assert kept is not None  # (only a store refuses)
                self._not_stored(tracked, kept, str(exc))
