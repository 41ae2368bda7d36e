"""Our one rate limiter: asyncio-throttle's sliding-window log, behind a small adaptive front.

asyncio-throttle's ``Throttler`` admits at most ``rate_limit`` acquisitions in any ``period`` — exactly the
"no 1-second window above the rate" property we promise CCE — but each waiter polls every ``retry_interval``.
So the rule here is: **few, fixed waiters**. The scheduler has one dispatcher that acquires, then starts the
request; a sink has one task. Nothing acquires per job.

On top of it, :class:`RateLimiter` adapts to the server: :meth:`throttled` (a 429) halves the effective rate
(down to a floor) and, with a ``Retry-After``, holds every acquisition until it has passed; each
:meth:`succeeded` call after a quiet period raises the rate again by a tenth of the configured rate
(additive increase, multiplicative decrease), never above what was configured.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Protocol

from asyncio_throttle.throttler import Throttler

__all__ = ["Limiter", "RateLimiter"]

_MIN_FRACTION = 0.05
_RECOVER_STEP = 0.1


_SLACK = 1.01


def _window(rate: float, burst: int | None) -> tuple[int, float]:
    """``(count, period)`` for a sliding window that admits ``rate`` per second on average.

    With a rate of at least one per second the window is one second and holds ``floor(rate)`` requests (so no
    1-second window is ever over the rate); slower rates use one request per ``1/rate`` seconds. ``burst`` widens
    the window to ``burst`` requests per ``burst/rate`` seconds.

    Every period is 1 % longer than exact: the window counts admissions, and a request leaves the process a
    moment (0.1-2 ms) after its admission, so with zero slack two requests could still land less than a second
    apart on the wire. bench/bench_rate.py measured 21-32 requests in some 1-second sliding windows without it.
    """
    if burst is not None and burst >= 1:
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
    :class:`RateLimiter` today, one shared by replicas later. Metrics read the four figures."""

    configured_rate: float
    effective_rate: float
    throttled_count: int
    waited_seconds: float

    async def acquire(self) -> None:
        """Wait for a slot; call from a fixed, small number of tasks."""
        ...

    def throttled(self, retry_after: float | None = None) -> None:
        """The server answered 429: slow down (and hold everything for ``retry_after`` seconds)."""
        ...

    def succeeded(self) -> None:
        """A request went through."""
        ...


class RateLimiter:
    """An adaptive rate limit over one resource (all requests to CCE, or one webhook endpoint)."""

    __slots__ = (
        "_burst",
        "_clock",
        "_hold_until",
        "_last_change",
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
        self._clock = clock
        self._hold_until = clock() + hold if hold > 0 else 0.0
        self._last_change = clock()
        self.throttled_count = 0
        self.waited_seconds = 0.0

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
        await self._throttler.acquire()  # type: ignore[no-untyped-call]
        self.waited_seconds += self._clock() - start

    def _set_rate(self, rate: float) -> None:
        self.effective_rate = rate
        count, period = _window(rate, self._burst if rate == self.configured_rate else None)
        self._throttler.rate_limit = count
        self._throttler.period = period
        self._last_change = self._clock()

    def throttled(self, retry_after: float | None = None) -> None:
        """The server answered 429: slow down, and hold everything for ``retry_after`` seconds if given."""
        self.throttled_count += 1
        now = self._clock()
        if retry_after is not None and retry_after > 0:
            self._hold_until = max(self._hold_until, now + retry_after)
        # One halving per period of the current rate, so a burst of 429s from requests already in
        # flight does not collapse the rate to the floor at once.
        if now - self._last_change >= 1.0 or self.effective_rate == self.configured_rate:
            floor = self.configured_rate * _MIN_FRACTION
            self._set_rate(max(floor, self.effective_rate / 2))

    def succeeded(self) -> None:
        """A request went through: after a quiet period, recover a step toward the configured rate."""
        if self.effective_rate >= self.configured_rate:
            return
        now = self._clock()
        quiet = max(1.0, 1.0 / self.effective_rate)
        if now - self._last_change >= quiet and now >= self._hold_until:
            step = self.configured_rate * _RECOVER_STEP
            self._set_rate(min(self.configured_rate, self.effective_rate + step))
