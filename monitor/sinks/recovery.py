"""Knowing that a receiver is back: after a streak of failed tries, the first success wakes every try that is
waiting out its backoff, so a backlog drains at the receiver's pace instead of at each retry's next time.

Used by the webhook sink (its own retries, several sends at once under parallel delivery) and by the daemon's
outbox deliverer (its retries after a sink gave up). A streak counts failures in a row across all tries, so one
event that keeps failing among others that succeed never wakes anyone: only an outage builds a streak.
"""

from __future__ import annotations

import asyncio

__all__ = ["Recovery"]


class Recovery:
    """Failures in a row at one receiver, across concurrent tries, and the wake-up when it answers again."""

    __slots__ = ("_back", "_streak", "threshold")

    def __init__(self, threshold: int = 3) -> None:
        self.threshold = threshold
        self._streak = 0
        self._back = asyncio.Event()  # set, then replaced, at the first success after a streak

    @property
    def streak(self) -> int:
        """Failures in a row so far."""
        return self._streak

    def failed(self) -> None:
        self._streak += 1

    def succeeded(self) -> None:
        if self._streak >= self.threshold:
            self._back.set()
            self._back = asyncio.Event()
        self._streak = 0

    async def sleep(self, delay: float) -> bool:
        """Wait ``delay`` seconds, or less if the receiver answers again meanwhile; whether it did."""
        back = self._back
        try:
            async with asyncio.timeout(delay):
                await back.wait()
        except TimeoutError:
            return False
        return True
