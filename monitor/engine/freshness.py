"""The adaptive polling strategy (``polling.strategy: adaptive``): spend each request where news is likeliest.

Each tracked job is a set of *active steps* — the job itself, or its sub-jobs that have not finished — each with
the time it entered its phase (CCE's ``updateTimestamp``). From the learned durations
(:mod:`monitor.engine.durations`), a step that had not ended at the previous poll has ended by now with
probability ``P(T <= now | T > then)``; a job's *expected news* is the sum over its steps — so a ``ScaleupCluster``
read that covers forty running ``CreateNode`` sub-jobs weighs forty times one node's. Whenever a rate-limit slot
is free, the scheduler polls the job with the most expected news among those due (a job polled is not due
again for ``min_interval``; errors back off as with ``interval``). Two bounds keep it honest:

* **no starvation**: a job unpolled for ``stale_after`` (twice the round-robin cycle, ``jobs / rate``, and at
  least ``max_interval``) goes first, oldest first — so none waits much beyond two cycles;
* **no waste**: below ``min_news`` (0.02) expected changes a job waits — a few jobs under a generous rate are not
  polled every second for nothing.

Every finished step's duration is fed back to the learner, from CCE's timestamps (exact, whatever the polling).
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from monitor.core.model import Job, Phase
from monitor.engine.durations import Durations, Estimate, step_key
from monitor.engine.settings import SchedulerSettings
from monitor.engine.tracked import Tracked

if TYPE_CHECKING:
    from monitor.engine.scheduler import Scheduler

__all__ = ["Freshness", "Steps", "active_steps", "next_fresh"]

_MIN_NEWS = 0.02
_STALE_CYCLES = 2.0
_UNSEEN = math.inf  # a job never polled: first in line
_RANK_EVERY = 0.25  # seconds a ranking of the due jobs serves before it is computed again


@dataclass(slots=True)
class Steps:
    """What the strategy keeps per job: its active steps (node id -> step key, since) and when it was polled."""

    active: dict[str, tuple[str, float]]
    polled: float


def active_steps(job: Job, now: float) -> dict[str, tuple[str, float]]:
    """The job's steps in flight: its unfinished sub-jobs, else the job itself (node id -> key, since)."""
    steps: dict[str, tuple[str, float]] = {}
    if job.phase.is_terminal:
        return steps
    # While a sub-job runs, those still waiting start when it ends (CreateNodeVM, then InstallNode): its end is
    # their news too, already counted. Sub-jobs running side by side (a ScaleupCluster's nodes) each count.
    running = any(sub.phase is Phase.RUNNING for sub in job.sub_jobs)
    for sub in job.sub_jobs:
        if not sub.phase.is_terminal and (sub.phase is Phase.RUNNING or not running):
            steps[sub.id or sub.type] = (step_key(job.type, sub.type, sub.phase.value), _since(sub, now))
    if not steps:  # no sub-jobs, or all done and the job closing: the job itself
        phase = job.phase.value if not job.sub_jobs or job.phase is Phase.INITIALIZING else "Closing"
        ends = [_since(sub, now) for sub in job.sub_jobs]
        steps[job.id] = (step_key(job.type, "", phase), max(ends) if ends else _since(job, now))
    return steps


def _since(job: Job, now: float) -> float:
    """When the job or sub-job entered its phase: its ``updateTimestamp`` (its creation, else now)."""
    for stamp in (job.updated, job.created):
        at = stamp.at
        if at is not None:
            return min(at.timestamp(), now)
    return now


class Freshness:
    """The due jobs competing for the next slot, ranked by expected news; and the learning after each poll."""

    def __init__(self, durations: Durations, settings: SchedulerSettings, wall: Callable[[], float]):
        """``wall``: the clock CCE's timestamps are read against (epoch seconds)."""
        self.durations = durations
        self._fallback = Estimate(math.log(3 * settings.interval), 1.0)  # a step the learner knows nothing of
        self._closing = Estimate(math.log(2.0), 1.0)  # ... of a job whose sub-jobs are done: seconds, as a rule
        self._max_interval = max_interval = settings.max_interval
        self._wall = wall
        self._due: dict[int, Tracked] = {}
        self._ranked: list[tuple[float, int, Tracked]] = []
        self._ranked_at = -math.inf
        self.stale_after = max_interval

    def __len__(self) -> int:
        return len(self._due)

    def due(self, tracked: Tracked) -> None:
        """``tracked`` may be polled now."""
        self._due[id(tracked)] = tracked

    def pick(self, jobs: int, rate: float) -> Tracked | None:
        """The due job with the most expected news (``None``: none due is worth a request yet)."""
        now = self._wall()
        self.stale_after = max(self._max_interval, _STALE_CYCLES * jobs / max(rate, 1e-9))
        if now - self._ranked_at >= _RANK_EVERY or not self._ranked:
            self._rank(now)
        while self._ranked:
            _, _, tracked = heapq.heappop(self._ranked)
            if self._due.pop(id(tracked), None) is None or tracked.removed:
                continue  # picked already, or removed
            return tracked
        return None

    def _rank(self, now: float) -> None:
        ranked = []
        for key, tracked in list(self._due.items()):
            if tracked.removed:
                del self._due[key]
                continue
            score = self.score(tracked, now)
            if score > 0.0:
                ranked.append((-score, key, tracked))
        heapq.heapify(ranked)
        self._ranked = ranked
        self._ranked_at = now

    def score(self, tracked: Tracked, now: float) -> float:
        """How much a poll of ``tracked`` now is worth: the expected seconds its changes have gone unseen, summed
        over its steps (0: less than ``_MIN_NEWS`` expected changes; staleness beyond the bound ranks first)."""
        steps = tracked.steps
        if steps is None:
            return _UNSEEN
        age = now - steps.polled
        if age >= self.stale_after:
            return 1e6 + age  # oldest first
        news = waited = 0.0
        for key, since in steps.active.values():
            est = self.durations.estimate(key) or (self._closing if key.endswith("/Closing") else self._fallback)
            news += est.moved_on(steps.polled - since, now - since)
            waited += est.waited(steps.polled - since, now - since)
        return waited if news >= _MIN_NEWS else 0.0

    def seen(self, tracked: Tracked, job: Job) -> None:
        """A poll answered: learn the steps that ended since the previous answer, note the new ones."""
        now = self._wall()
        active = active_steps(job, now)
        old = tracked.steps
        if old is not None:
            for node, (key, since) in old.active.items():
                if active.get(node, (None,))[0] != key:  # that step ended (the node moved on, or finished)
                    self.durations.observe(key, _ended(job, node, now) - since)
        tracked.steps = Steps(active, now)


def _ended(job: Job, node: str, now: float) -> float:
    """When the node (the job or a sub-job) left the step: its ``updateTimestamp`` now."""
    for candidate in (job, *job.sub_jobs):
        if (candidate.id or candidate.type) == node:
            return _since(candidate, now)
    return now


async def next_fresh(self: Scheduler) -> Tracked | None:
    """The adaptive strategy's dispatch (a :class:`~monitor.engine.scheduler.Scheduler` method): jobs whose
    time has come (the heap: ``min_interval`` after a poll, an error's backoff) join the due set; once a
    rate-limit slot is taken, the due job with the most expected news is polled. ``None`` when stopping."""
    fresh = self.freshness
    assert fresh is not None
    heap = self._heap
    while not self._stopping:
        now = self._clock()
        wait = None
        if self._paused_until > now:
            wait = self._paused_until - now
        else:
            while heap and heap[0][0] <= now:
                _, _, tracked = heapq.heappop(heap)
                if not tracked.removed:
                    fresh.due(tracked)
            if len(fresh):
                await self.limiter.acquire()
                picked = fresh.pick(len(self._jobs), self.limiter.effective_rate)
                if picked is not None or self._stopping:
                    self.stats.lag = 0.0
                    return None if self._stopping else picked
                wait = _RANK_EVERY  # nothing due is worth a request yet (the slot goes unused)
            elif heap:
                wait = heap[0][0] - now
        self._wake.clear()
        try:
            async with asyncio.timeout(wait):
                await self._wake.wait()
        except TimeoutError:
            pass
    return None
