"""The adaptive polling strategy (``polling.strategy: adaptive``) and learned ETAs.

Each tracked job is a set of *active steps* — the job itself, or its sub-jobs that are running (or, while none
runs, those waiting) — each with the time it entered its phase (CCE's ``updateTimestamp``). From the learned
durations (:mod:`monitor.engine.durations`), a step that had not ended at the previous read may have ended since;
a job's *score* is the expected time its changes have gone unseen, summed over its steps
(:meth:`~monitor.engine.durations.Estimate.waited`) — so a ``ScaleupCluster`` read that covers forty running
``CreateNode`` sub-jobs weighs forty times one node's. Whenever a rate-limit slot is free, the scheduler polls
the due job with the highest score (a job read is not due again for ``min_interval``; errors back off as with
``interval``). Two bounds keep it honest:

* **no starvation**: a job unread for ``stale_after`` (two round-robin cycles, ``jobs / rate``, and at least
  ``max_interval``) goes first, oldest first;
* **no waste**: below ``_MIN_NEWS`` (0.02) expected changes a job waits — a few jobs under a generous rate are not
  read every second for nothing.

Node lists and node pools (:mod:`monitor.engine.fleet`) have no steps: they are read when their own interval
comes, first.

Every finished step's duration is fed back to the learner, from CCE's timestamps (exact, whatever the polling),
whatever the strategy — a step that began and ended between two reads too, in a job whose sub-jobs run one
after another: the same estimates give the rollouts their ETAs (:func:`eta_of`, :func:`rollout_eta`).
"""

from __future__ import annotations

import heapq
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from monitor.core.model import Job, Phase
from monitor.engine.durations import Durations, Estimate, step_key
from monitor.engine.settings import SchedulerSettings
from monitor.engine.tracked import Tracked

if TYPE_CHECKING:
    from monitor.engine.scheduler import Scheduler

__all__ = ["Freshness", "Left", "Steps", "active_steps", "eta_of", "next_fresh", "rollout_eta", "units_left"]

_MIN_NEWS = 0.02
_STALE_CYCLES = 2.0
_UNSEEN = math.inf  # a job never polled: first in line
_RANK_EVERY = 0.25  # seconds a ranking of the due jobs serves before it is computed again


@dataclass(slots=True)
class Steps:
    """What the strategy keeps per job: its active steps (node id -> step key, since), when it was polled, and
    the sub-jobs it had seen finished."""

    active: dict[str, tuple[str, float]]
    polled: float
    done: frozenset[str] = frozenset()


def active_steps(job: Job, now: float) -> dict[str, tuple[str, float]]:
    """The job's steps in flight: its unfinished sub-jobs, else the job itself (node id -> key, since)."""
    steps: dict[str, tuple[str, float]] = {}
    if job.phase.is_terminal:
        return steps
    # While a sub-job runs, those still waiting start when it ends (CreateNodeVM, then InstallNode): its end is
    # their news too, already counted. Sub-jobs running side by side (a ScaleupCluster's nodes) each count.
    # (Sub-jobs in a phase other than Initializing or Running — one CCE adds later — are not steps.)
    running = [sub for sub in job.sub_jobs if sub.phase is Phase.RUNNING]
    waiting = [sub for sub in job.sub_jobs if sub.phase is Phase.INITIALIZING]
    for sub in running or waiting[:1]:  # (none running: the next to start is the first waiting)
        steps[sub.id or sub.type] = (sys.intern(step_key(job.type, sub.type, sub.phase.value)), _since(sub, now))
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
    """The due jobs competing for the next slot, ranked by score; and the learning after each poll."""

    def __init__(self, durations: Durations, settings: SchedulerSettings, wall: Callable[[], float]):
        """``wall``: the clock CCE's timestamps are read against (epoch seconds)."""
        self.durations = durations
        self._fallback = Estimate(math.log(3 * settings.interval), 1.0)  # a step the learner knows nothing of
        self._closing = Estimate(math.log(2.0), 1.0)  # ... of a job whose sub-jobs are done: seconds, as a rule
        self._max_interval = max_interval = settings.max_interval
        self._wall = wall
        self._due: dict[int, Tracked] = {}
        self._ranked: list[tuple[float, int, Tracked]] = []  # (-score, order due, job)
        self._ranked_at = -math.inf
        self.stale_after = max_interval

    def __len__(self) -> int:
        return len(self._due)

    def now(self) -> float:
        """The wall clock CCE's timestamps are read against."""
        return self._wall()

    def due(self, tracked: Tracked) -> None:
        """``tracked`` may be polled now."""
        self._due[id(tracked)] = tracked

    def pick(self, jobs: int, rate: float) -> Tracked | None:
        """The due job with the highest score (``None``: none due is worth a request yet)."""
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
        # Ties (jobs never read, or equally stale) go first come, first served: the order they became due (the
        # dict's), never the order of their memory addresses, which after a while is any order at all.
        for order, (key, tracked) in enumerate(list(self._due.items())):
            if tracked.removed:
                del self._due[key]
                continue
            score = self.score(tracked, now)
            if score > 0.0:
                ranked.append((-score, order, tracked))
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
            est = self.estimate(key)
            news += est.moved_on(steps.polled - since, now - since)
            waited += est.waited(steps.polled - since, now - since)
        return waited if news >= _MIN_NEWS else 0.0

    def estimate(self, key: str) -> Estimate:
        """A step's learned duration, else a prior, else the fallback."""
        return self.durations.estimate(key) or (self._closing if key.endswith("/Closing") else self._fallback)

    def seen(self, tracked: Tracked, job: Job, previous: Job | None) -> None:
        """A poll answered: learn the steps that ended since the ``previous`` answer, note the new ones. When
        neither the job's phase nor its sub-jobs changed (the same body, or one that moved only its
        ``updateTimestamp``: the parse reuses unchanged sub-jobs, so they are the same objects), no step began
        or ended: only the time of the read moves, and a step keeps the time it began."""
        now = self._wall()
        old = tracked.steps
        if (
            old is not None
            and previous is not None
            and (job is previous or (job.phase is previous.phase and job.sub_jobs is previous.sub_jobs))
        ):
            old.polled = now
            return
        active = active_steps(job, now)
        done = frozenset(sub.id or sub.type for sub in job.sub_jobs if sub.phase is Phase.SUCCESS)
        if old is not None:
            for node, (key, since) in old.active.items():
                if active.get(node, (None,))[0] != key:  # that step ended (the node moved on, or finished)
                    self.durations.observe(key, _ended(job, node, now) - since)
            self._learn_unseen(job, old, now)
        tracked.steps = Steps(active, now, done)

    def _learn_unseen(self, job: Job, old: Steps, now: float) -> None:
        """Steps that began and ended between two reads (under a starved budget, a short step often does: a node's
        ``InstallNode`` runs from one read to the next). In a job whose sub-jobs run one after another (never two
        running at once), a sub-job starts when the one before it ends, so its duration is the difference of the
        two ``updateTimestamp``s. Sub-jobs running side by side (a ScaleupCluster's nodes) are left alone."""
        if len(old.active) > 1 or sum(1 for sub in job.sub_jobs if sub.phase is Phase.RUNNING) > 1:
            return
        before: float | None = None  # the end of the sub-job before, if it succeeded
        for sub in job.sub_jobs:
            node = sub.id or sub.type
            end = _since(sub, now) if sub.phase is Phase.SUCCESS else None
            unseen = node not in old.done and node not in old.active
            if end is not None and before is not None and unseen and end >= before:
                self.durations.observe(step_key(job.type, sub.type, Phase.RUNNING.value), end - before)
            before = end


def _ended(job: Job, node: str, now: float) -> float:
    """When the node (the job or a sub-job) left the step: its ``updateTimestamp`` now."""
    for candidate in (job, *job.sub_jobs):
        if (candidate.id or candidate.type) == node:
            return _since(candidate, now)
    return now


async def next_fresh(self: Scheduler, now: float) -> tuple[Tracked | None, float | None]:
    """One turn of the adaptive strategy's dispatch (a :class:`~monitor.engine.scheduler.Scheduler` method,
    called by its one dispatch loop): jobs whose time has come (the heap: ``min_interval`` after a poll, an
    error's backoff) join the due set; once a rate-limit slot is taken, the due job with the highest score.
    Returns it, else how long to wait (``None``: until woken)."""
    fresh, heap = self.freshness, self._heap
    while heap and heap[0][0] <= now:
        _, _, tracked = heapq.heappop(heap)
        if not tracked.removed:
            fresh.due(tracked)
    if not len(fresh):
        return None, heap[0][0] - now if heap else None
    await self.limiter.acquire()
    picked = None if self._stopping else fresh.pick(len(self._jobs), self.limiter.effective_rate)
    if picked is not None:
        self.stats.lag = 0.0
    return picked, _RANK_EVERY  # (none picked: nothing due is worth a request yet; the slot goes unused)


# --- ETAs -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Left:
    """What is left of one job (or one node running beside others), from now: the step in flight (``step``,
    seen running at elapsed time ``seen``, begun ``elapsed`` seconds ago — it may have ended since, unseen) and
    then the steps still waiting (``then``: their total). Either may be missing."""

    step: Estimate | None = None
    seen: float = 0.0
    elapsed: float = 0.0
    then: Estimate | None = None

    def cdf(self, t: float) -> float:
        """P(done within ``t`` seconds from now)."""
        if self.step is None:
            return self.then.cdf(t) if self.then is not None else 1.0
        if self.then is not None:  # the waiting steps start when this one ends: shifted by its median
            return self.then.cdf(t - self._median())
        survived = 1.0 - self.step.cdf(self.seen)
        if survived <= 1e-12:
            return 1.0
        return max(0.0, min(1.0, (self.step.cdf(self.elapsed + t) - self.step.cdf(self.seen)) / survived))

    def _median(self) -> float:
        assert self.step is not None
        return max(0.0, self.step.remaining(self.seen, 0.5) - (self.elapsed - self.seen))

    def key(self) -> tuple[object, ...]:
        """Units alike to a second (or to 1 % of log spread) are counted together."""
        then = (round(self.then.mu, 2), round(self.then.sigma, 2)) if self.then is not None else None
        return (id(self.step), round(self.seen), round(self.elapsed), then)

    @property
    def learned(self) -> bool:
        """Whether it rests on an observed duration, not only on priors."""
        return any(e is not None and e.samples > 0 for e in (self.step, self.then))

    def scale(self) -> float:
        """A time of its order (seconds), to start looking for when all are done."""
        parts = [self.then.median] if self.then is not None else []
        if self.step is not None:
            parts.append(self._median() + 1.0)
        return max(1.0, sum(parts))


def units_left(fresh: Freshness, tracked: Tracked, now: float) -> list[Left]:
    """What is left of one job: one unit per sub-job running side by side (a ScaleupCluster's nodes), else one
    for the step in flight followed by the steps still waiting."""
    job, steps = tracked.last, tracked.steps
    if job is None:
        return []  # not read yet: nothing known of it
    if steps is None:  # a snapshot restored, not read since: the whole job, if its type is known
        whole = fresh.durations.estimate(step_key(job.type, "", Phase.RUNNING.value))
        return [Left(then=whole)] if whole is not None else []
    if job.phase.is_terminal:
        return []
    current = [Left(fresh.estimate(key), steps.polled - since, now - since) for key, since in steps.active.values()]
    if len(current) > 1:
        return current
    waiting = [  # (their Initializing steps are not in `active`: see active_steps)
        fresh.estimate(step_key(job.type, sub.type, Phase.RUNNING.value))
        for sub in job.sub_jobs
        if sub.phase is Phase.INITIALIZING and (sub.id or sub.type) not in steps.active
    ]
    then = Estimate.total(waiting)
    if not current:
        return [Left(then=then)] if then is not None else []
    one = current[0]
    return [Left(one.step, one.seen, one.elapsed, then)]


def rollout_eta(units: list[Left], *, quantiles: tuple[float, float] = (0.5, 0.9)) -> tuple[float, float] | None:
    """Seconds until every unit is done, at the median and the 90th percentile: the ``t`` where the product of
    the units' CDFs reaches each quantile (units independent; bisection). Units alike are counted together, so
    thousands of nodes in a few steps cost a few dozen CDFs per step of the bisection."""
    if not units:
        return None
    alike: dict[tuple[object, ...], tuple[Left, int]] = {}
    for u in units:
        key = u.key()
        first, n = alike.get(key, (u, 0))
        alike[key] = (first, n + 1)
    groups = list(alike.values())

    def done_by(t: float) -> float:
        log_p = 0.0
        for u, n in groups:
            p = u.cdf(t)
            if p <= 0.0:
                return 0.0
            log_p += n * math.log(p)
        return math.exp(log_p)

    found = []
    for q in quantiles:
        lo, hi = 0.0, max(u.scale() for u, _ in groups)
        for _ in range(60):  # (the last of thousands ends far out in its tail)
            if done_by(hi) >= q:
                break
            lo, hi = hi, hi * 2
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if done_by(mid) < q else (lo, mid)
        found.append(hi)
    return found[0], found[1]


def eta_of(self: Scheduler, job_ids: Iterable[str]) -> tuple[float, float] | None:
    """The learned ETA of these tracked jobs (a :class:`~monitor.engine.scheduler.Scheduler` method): seconds
    until all are done, median and 90th percentile; ``None`` if none is tracked here, or nothing of their
    steps has been observed yet."""
    now = self.freshness.now()
    units = [
        u
        for job_id in job_ids
        if (tracked := self._jobs.get(job_id)) is not None
        for u in units_left(self.freshness, tracked, now)
    ]
    if not any(u.learned for u in units):
        return None  # priors alone (a factor of e either way): the rollout's own pace says more, for now
    return rollout_eta(units)
