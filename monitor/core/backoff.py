"""Exponential backoff with full jitter, the one formula every retry uses (polls, outbox rows, sinks).

Before retry *n* (0-based) the wait is drawn uniformly from ``[0, min(cap, initial * 2**n)]`` ("full jitter",
as in the AWS architecture blog's comparison): retries of many jobs or rows spread out instead of arriving
together at a server that is just recovering.
"""

from __future__ import annotations

import random

__all__ = ["backoff_ceiling", "full_jitter"]

_RNG = random.Random()  # jitter, not cryptography


def full_jitter(
    attempt: int, initial: float, cap: float, rng: random.Random | None = None, *, least: float = 0.0
) -> float:
    """Seconds to wait before retry ``attempt`` (0 = the first retry); ``least``: the fraction of the ceiling
    always waited (0.5 is "equal jitter": never retry much sooner than the schedule)."""
    ceiling = backoff_ceiling(attempt, initial, cap)
    return (rng or _RNG).uniform(ceiling * least, ceiling)


def backoff_ceiling(attempt: int, initial: float, cap: float) -> float:
    """The most to wait before retry ``attempt``: ``min(cap, initial * 2**attempt)``."""
    return min(cap, initial * 2.0 ** min(max(0, attempt), 64))
