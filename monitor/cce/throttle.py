"""Our one rate limiter: asyncio-throttle's sliding-window log, behind a small adaptive front.

asyncio-throttle's ``Throttler`` admits at most ``rate_limit`` acquisitions in any ``period`` — exactly the
"no 1-second window above the rate" property we promise CCE — but each waiter polls every ``retry_interval``.
So the rule here is: **few, fixed waiters**. The scheduler has one dispatcher that acquires, then starts the
request; a sink has one task. Nothing acquires per job.

On top of it, :class:`RateLimiter` adapts to the server: :meth:`throttled` (a 429) halves the effective rate
(down to a floor) and, with a ``Retry-After``, holds every acquisition until it has passed; each
:meth:`succeeded` call after a quiet period raises the rate again by a tenth of the configured rate
(additive increase, multiplicative decrease), never above what was configured — nor above the gateway's own
budget once a throttle message has named one (``limit:20,time:1 minute``), for :func:`budget_hold` seconds after
the last 429 that named it (10 windows, at least a minute): a budget cut for a while (a storm, a quota changed)
does not cap the rate for good; if it still holds, the next 429 names it again.

Pacing: the API gateway counts requests as they *arrive*. Admitting a second's worth at once lets a request
that leaves late land in the next second with the next batch (15-16 arrivals in one second at ``rate: 10``
were seen). So without a configured ``burst`` admissions are spaced evenly, one every ``1.101 / rate`` seconds
(GCRA with no burst tolerance): a request that goes out within 100 ms of its slot cannot make any 1-second
window of arrivals hold more than ``rate`` requests. The price is a tenth of the rate. (A ``burst`` above 1
allows that many back to back per ``burst / rate`` seconds instead.)
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from asyncio_throttle.throttler import Throttler

__all__ = ["Limiter", "NamedBudget", "RateLimiter"]

logger = logging.getLogger(__name__)

_MIN_FRACTION = 0.05
_RECOVER_STEP = 0.1


_SLACK = 1.01
_LATE = 0.1  # seconds a request may leave after its admission without breaking the rate on arrival
_MIN_SLEEP = 0.001


def _spacing(rate: float, burst: int | None) -> float:
    """Seconds between admissions (0: none, a configured burst of more than one is allowed back to back).

    At one request a second or more, the window admits ``int(rate)`` a second: the spacing follows that count,
    so that the window never binds before it (2.5/s paced at 2.5 would come in pairs). The margin covers a
    request leaving up to ``_LATE`` after its slot, plus the ``_MIN_SLEEP`` an admission may come early."""
    if burst is not None and burst > 1:
        return 0.0
    per_second = float(int(rate)) if rate >= 1 else rate
    return (1.0 + _LATE + _MIN_SLEEP) / per_second


def _window(rate: float, burst: int | None) -> tuple[int, float]:
    """``(count, period)`` for a sliding window that admits ``rate`` per second on average.

    With a rate of at least one per second the window is one second and holds ``floor(rate)`` requests (so no
    1-second window is ever over the rate); slower rates use one request per ``1/rate`` seconds. ``burst`` widens
    the window to ``burst`` requests per ``burst/rate`` seconds.

    Every period is 1 % longer than exact: the window counts admissions, and a request leaves the process a
    moment (0.1-2 ms) after its admission, so with zero slack two requests could still land less than a second
    apart on the wire. bench/bench_rate.py measured 21-32 requests in some 1-second sliding windows without it.
    """
    if burst is not None and burst > 1:
        return burst, burst / rate * _SLACK
    if rate >= 1:
        # Always a one-second window at one request per second or more, so that when the rate changes (429s,
        # recovery) the log of the last second still counts: switching between window lengths would let a
        # whole second's worth through on top. A fractional part cannot be honoured in a 1-second window
        # without exceeding the rate in some second, so it is dropped (2.5/s admits 2 in any second).
        return int(rate), _SLACK
    return 1, _SLACK / rate


class Limiter(Protocol):
    """What the scheduler, the limiter's one owner, needs of a rate limit over all requests to CCE: a local
    :class:`RateLimiter` today, one shared by replicas later. Metrics read the five figures."""

    configured_rate: float
    effective_rate: float
    throttled_count: int
    waited_seconds: float

    @property
    def budget_rate(self) -> float:
        """Requests per second of the budget the gateway's throttle message named, while it caps the rate
        (:func:`budget_hold`); 0 when none does."""
        ...

    async def acquire(self) -> None:
        """Wait for a slot; call from a fixed, small number of tasks."""
        ...

    def throttled(self, retry_after: float | None = None, budget: tuple[int, float] | None = None) -> None:
        """The server answered 429: slow down (hold everything for ``retry_after`` seconds; never above the
        ``budget`` of requests per seconds the gateway named)."""
        ...

    def succeeded(self) -> None:
        """A request went through."""
        ...


def budget_hold(window: float) -> float:
    """How long a budget named by the gateway (``window`` seconds) caps the rate after the last 429 naming it."""
    return max(60.0, 10.0 * window)


class NamedBudget:
    """The lowest budget the gateway's 429s named (requests per second) while it holds: what the metric
    ``cce_monitor_rate_budget`` shows. One per limiter; the limiter itself enforces the cap."""

    __slots__ = ("_rate", "_until")

    def __init__(self) -> None:
        self._rate = 0.0
        self._until = 0.0

    def named(self, budget: tuple[int, float], now: float) -> float:
        """A 429 named ``budget`` (``(requests, seconds)``) at ``now``; returns its rate."""
        rate = budget[0] / budget[1]
        self._rate = rate if now >= self._until else min(self._rate, rate)
        self._until = max(self._until, now + budget_hold(budget[1]))
        return rate

    def rate(self, now: float, configured: float) -> float:
        """The budget while it holds and caps ``configured``; 0 when none does."""
        return self._rate if now < self._until and self._rate < configured else 0.0


class RateLimiter:
    """An adaptive rate limit over one resource (all requests to CCE, or one webhook endpoint)."""

    __slots__ = (
        "_budget",
        "_burst",
        "_ceiling",
        "_ceiling_until",
        "_clock",
        "_hold_until",
        "_last_change",
        "_next_slot",
        "_spacing",
        "_throttler",
        "configured_rate",
        "effective_rate",
        "throttled_count",
        "waited_seconds",
    )

    def __init__(
        self,
        rate: float,
        *,
        burst: int | None = None,
        retry_interval: float = 0.01,
        hold: float = 0.0,
        hold_first_window: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``hold``: admit nothing for this many seconds at first; ``hold_first_window``: for one window of the
        rate (a restarted process cannot know what its predecessor sent in its last second)."""
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        self.configured_rate = float(rate)
        self.effective_rate = float(rate)
        self._burst = burst
        count, period = _window(rate, burst)
        if hold_first_window:
            hold = max(hold, period)
        self._throttler = Throttler(rate_limit=count, period=period, retry_interval=retry_interval)
        self._spacing = _spacing(rate, burst)
        self._next_slot = 0.0
        self._ceiling = float(rate)  # the gateway's budget, once it named one
        self._ceiling_until = 0.0
        self._budget = NamedBudget()
        self._clock = clock
        self._hold_until = clock() + hold if hold > 0 else 0.0
        self._last_change = clock()
        self.throttled_count = 0
        self.waited_seconds = 0.0

    @property
    def budget_rate(self) -> float:
        """Requests per second of the lowest budget a 429 named, while it holds and caps the configured rate
        (0: none does)."""
        return self._budget.rate(self._clock(), self.configured_rate)

    @property
    def degraded(self) -> bool:
        """Whether the server has pushed the rate below what was configured."""
        return self.effective_rate < self.configured_rate

    async def acquire(self) -> None:
        """Wait for a slot. Call from a fixed, small number of tasks (see the module docstring)."""
        start = self._clock()
        hold = self._hold_until - start
        if hold > 0:
            await asyncio.sleep(hold)
        if self._spacing:  # reserve the next even slot first: several waiters each get their own
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self._spacing
            # Waits under a millisecond are not slept (a timer costs more than the wait): the reservations still
            # advance, so admissions run at most a millisecond ahead of the even schedule (in the spacing).
            if slot - now > _MIN_SLEEP:
                await asyncio.sleep(slot - now)
                hold = self._hold_until - self._clock()  # a Retry-After that came while we waited
                if hold > 0:
                    await asyncio.sleep(hold)
        await self._throttler.acquire()  # type: ignore[no-untyped-call]
        self.waited_seconds += self._clock() - start

    def _set_rate(self, rate: float) -> None:
        self.effective_rate = rate
        burst = self._burst if rate == self.configured_rate else None
        count, period = _window(rate, burst)
        self._throttler.rate_limit = count
        self._throttler.period = period
        self._spacing = _spacing(rate, burst)
        self._last_change = self._clock()

    def throttled(self, retry_after: float | None = None, budget: tuple[int, float] | None = None) -> None:
        """The server answered 429: slow down, and hold everything for ``retry_after`` seconds if given;
        ``budget`` (``(requests, seconds)`` named by the gateway) caps the rate from now on."""
        self.throttled_count += 1
        now = self._clock()
        if retry_after is not None and retry_after > 0:
            self._hold_until = max(self._hold_until, now + retry_after)
        if budget is not None:
            ceiling = min(self.configured_rate, self._budget.named(budget, now))
            self._ceiling_until = max(self._ceiling_until, now + budget_hold(budget[1]))
            if ceiling < self._ceiling:
                self._ceiling = ceiling
                logger.warning(
                    "the API gateway allows %d requests per %gs: holding the rate to %.3g/s (configured %g/s)",
                    budget[0],
                    budget[1],
                    ceiling,
                    self.configured_rate,
                )
            if self.effective_rate > self._ceiling:
                self._set_rate(self._ceiling)
                return
        # One halving per period of the current rate, so a burst of 429s from requests already in
        # flight does not collapse the rate to the floor at once.
        if now - self._last_change >= 1.0 or self.effective_rate == self.configured_rate:
            floor = self.configured_rate * _MIN_FRACTION
            self._set_rate(min(self._ceiling, max(floor, self.effective_rate / 2)))

    def succeeded(self) -> None:
        """A request went through: after a quiet period, recover a step toward the configured rate (or the
        gateway's budget)."""
        now = self._clock()
        if self._ceiling < self.configured_rate and now >= self._ceiling_until:
            self._ceiling = self.configured_rate  # no 429 has named the budget for a while: probe upward again
        if self.effective_rate >= self._ceiling:
            return
        quiet = max(1.0, 1.0 / self.effective_rate)
        if now - self._last_change >= quiet and now >= self._hold_until:
            step = self.configured_rate * _RECOVER_STEP
            self._set_rate(min(self._ceiling, self.effective_rate + step))
