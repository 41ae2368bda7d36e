"""A chat destination's request budget, and where a chat sink gets time from.

Chat bots punish excess hard (DingTalk mutes a robot for ten minutes after its 21st message in a minute), so
limits here are never exceeded, not merely enforced on average. :class:`Budget` keeps sliding windows and
answers "may I send now, else in how long?" without waiting; :func:`budget_windows` gives a destination's
windows. :class:`Timing` is injectable so tests run a whole rollout on a fake clock.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

__all__ = ["Budget", "Timing", "budget_windows"]


async def _sleep(delay: float) -> None:
    await asyncio.sleep(delay)


@dataclass(frozen=True, slots=True)
class Timing:
    """Where a chat sink gets time from. Tests pass a fake clock and sleep that move together."""

    clock: Callable[[], float] = time.monotonic  # seconds, for budgets and pauses
    sleep: Callable[[float], Awaitable[None]] = _sleep
    wall: Callable[[], float] = time.time  # unix seconds, for signature timestamps
    jitter: Callable[[float, float], float] = random.uniform


class Budget:
    """Sliding-window request budgets over several windows at once, asked without waiting.

    ``Budget([(1, 1.0), (18, 60.0)])`` admits a request only while fewer than 1 stamp lies in the last second
    and fewer than 18 in the last minute. :meth:`delay` says how long until the next request may go (0: now);
    :meth:`record` stamps a request (call it when the answer arrived or the attempt failed); :meth:`hold` stops
    everything until a time (a rate-limit answer). Never more than ``count`` stamps in any half-open interval
    of ``period`` seconds: a stamp leaves its window exactly ``period`` seconds after it was made.
    """

    __slots__ = ("_hold_until", "_windows")

    def __init__(self, windows: Iterable[tuple[int, float]]) -> None:
        self._windows: tuple[tuple[int, float, deque[float]], ...] = tuple(
            (count, period, deque()) for count, period in windows
        )
        for count, period, _ in self._windows:
            if count < 1 or not period > 0:
                raise ValueError(f"a window needs a count of at least 1 and a positive period, got {count}/{period}")
        self._hold_until = -math.inf

    @property
    def windows(self) -> tuple[tuple[int, float], ...]:
        """``(count, period)`` of every window."""
        return tuple((count, period) for count, period, _ in self._windows)

    def delay(self, now: float) -> float:
        """Seconds until a request may be made; 0 when it may be made now."""
        wait = self._hold_until - now
        for count, period, stamps in self._windows:
            while stamps and stamps[0] <= now - period:
                stamps.popleft()
            if len(stamps) >= count:
                wait = max(wait, stamps[len(stamps) - count] + period - now)
        return max(0.0, wait)

    def record(self, now: float) -> None:
        """Count one request at ``now`` (times must not go backwards)."""
        for count, _period, stamps in self._windows:
            stamps.append(now)
            while len(stamps) > count:  # only the newest ``count`` stamps can ever block
                stamps.popleft()

    def hold(self, until: float) -> None:
        """Admit nothing before ``until``."""
        self._hold_until = max(self._hold_until, until)


def budget_windows(per_minute: int, per_second: int | None) -> list[tuple[int, float]]:
    """The windows of a destination: per second (if any), per minute, and a sixth of the minute per 10 s."""
    windows: list[tuple[int, float]] = []
    if per_second is not None:
        windows.append((per_second, 1.0))
    windows.append((per_minute, 60.0))
    burst = math.ceil(per_minute / 6)
    if burst < per_minute:
        windows.append((burst, 10.0))
    return windows
