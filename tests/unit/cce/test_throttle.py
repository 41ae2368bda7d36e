"""The adaptive rate limiter (``monitor.cce.throttle``): the window on a real clock, adaptation on a fake one."""

from __future__ import annotations

import logging
import math
import time

import pytest

from monitor.cce.throttle import RateLimiter, budget_hold
from monitor.testing import FakeClock, busiest_window

# --- the window on a real clock ----------------------------------------------------------------------------


async def test_no_one_second_window_above_the_rate() -> None:
    limiter = RateLimiter(20)
    stamps = []
    for _ in range(60):
        await limiter.acquire()
        stamps.append(time.monotonic())
    # The stamps are taken a few microseconds after the limiter's own; 1 ms of slack absorbs that jitter.
    assert busiest_window(stamps, 1.0 - 1e-3) <= 20
    assert stamps[-1] - stamps[0] >= 2.0 - 1e-3  # 60 at 20/s: the 41st..60th waited two full windows
    assert limiter.waited_seconds >= 1.9
    assert not limiter.degraded


async def test_throttled_rate_is_enforced() -> None:
    limiter = RateLimiter(20)
    limiter.throttled()
    assert limiter.effective_rate == 10.0
    stamps = []
    for _ in range(11):
        await limiter.acquire()
        stamps.append(time.monotonic())
    assert busiest_window(stamps, 1.0 - 1e-3) <= 10
    assert stamps[10] - stamps[0] >= 1.0 - 1e-3


async def test_fractional_rate_never_exceeds_its_floor_in_any_second() -> None:
    """4.5/s: the fraction cannot be honoured in a 1-second window without exceeding it, so 4 per second."""
    limiter = RateLimiter(4.5)
    stamps = []
    for _ in range(9):
        await limiter.acquire()
        stamps.append(time.monotonic())
    for i, start in enumerate(stamps):
        assert sum(1 for t in stamps[i:] if t - start < 1.0) <= 4
    # Paced evenly at what a second may hold (4), with the margin for late requests: 8 gaps of 1.101/4 s.
    assert 2.15 < stamps[-1] - stamps[0] < 2.5


async def test_sub_one_rate_spaces_requests() -> None:
    limiter = RateLimiter(2.0, clock=time.monotonic)
    limiter._set_rate(0.5)  # as after repeated 429s
    stamps = []
    for _ in range(2):
        await limiter.acquire()
        stamps.append(time.monotonic())
    assert stamps[1] - stamps[0] >= 2.0 - 1e-3


async def test_retry_after_holds_the_next_acquire() -> None:
    limiter = RateLimiter(100)
    await limiter.acquire()
    start = time.monotonic()
    limiter.throttled(retry_after=0.2)
    await limiter.acquire()
    assert time.monotonic() - start >= 0.2 - 1e-3
    assert limiter.waited_seconds >= 0.19
    assert limiter.throttled_count == 1
    # Once the hold has passed, nothing more is held (50/s after the halving: well under the 0.2 s hold).
    start = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - start < 0.15


async def test_retry_after_zero_or_none_does_not_hold() -> None:
    limiter = RateLimiter(100)
    limiter.throttled(retry_after=0)
    limiter.throttled(retry_after=None)
    start = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - start < 0.15
    assert limiter.throttled_count == 2


# --- adaptation on a fake clock ----------------------------------------------------------------------------


def test_throttled_halves_once_per_second_down_to_the_floor() -> None:
    clock = FakeClock()
    limiter = RateLimiter(20, clock=clock)
    assert (limiter.configured_rate, limiter.effective_rate, limiter.degraded) == (20.0, 20.0, False)

    limiter.throttled()
    assert limiter.effective_rate == 10.0
    assert limiter.degraded
    # A burst of 429s from requests already in flight halves only once.
    limiter.throttled()
    limiter.throttled()
    assert limiter.effective_rate == 10.0
    assert limiter.throttled_count == 3

    rates = []
    for _ in range(8):
        clock.advance(1.0)
        limiter.throttled()
        rates.append(limiter.effective_rate)
    assert rates == [5.0, 2.5, 1.25, 1.0, 1.0, 1.0, 1.0, 1.0]  # floor: 5 % of 20
    assert limiter.configured_rate == 20.0


def test_floor_is_five_percent_of_configured() -> None:
    clock = FakeClock()
    limiter = RateLimiter(3, clock=clock)
    for _ in range(20):
        limiter.throttled()
        clock.advance(10.0)
    assert math.isclose(limiter.effective_rate, 0.15)


def test_succeeded_recovers_gradually() -> None:
    clock = FakeClock()
    limiter = RateLimiter(20, clock=clock)
    limiter.throttled()
    assert limiter.effective_rate == 10.0

    # Not before a quiet second has passed since the last change.
    clock.advance(0.5)
    limiter.succeeded()
    assert limiter.effective_rate == 10.0

    rates = []
    for _ in range(7):
        clock.advance(0.5)
        limiter.succeeded()
        limiter.succeeded()  # several successes within the quiet period count once
        clock.advance(0.5)
        limiter.succeeded()
        rates.append(limiter.effective_rate)
    # One step (a tenth of the configured rate) per quiet second, capped at the configured rate.
    assert rates == [12.0, 14.0, 16.0, 18.0, 20.0, 20.0, 20.0]
    assert not limiter.degraded


def test_succeeded_at_full_rate_changes_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(20, clock=clock)
    clock.advance(100.0)
    limiter.succeeded()
    assert limiter.effective_rate == 20.0
    # And the next 429 still halves at once.
    limiter.throttled()
    assert limiter.effective_rate == 10.0


def test_no_recovery_during_retry_after_hold() -> None:
    clock = FakeClock()
    limiter = RateLimiter(20, clock=clock)
    limiter.throttled(retry_after=5.0)
    for _ in range(4):
        clock.advance(1.0)
        limiter.succeeded()
        assert limiter.effective_rate == 10.0
    clock.advance(1.0)
    limiter.succeeded()
    assert limiter.effective_rate == 12.0


def test_slow_rate_waits_one_period_before_recovering() -> None:
    clock = FakeClock()
    limiter = RateLimiter(4, clock=clock)
    for _ in range(10):
        limiter.throttled()
        clock.advance(1.0)
    assert math.isclose(limiter.effective_rate, 0.2)
    clock.advance(3.0)  # 4 s since the last change: less than one period (5 s) at 0.2/s
    limiter.succeeded()
    assert math.isclose(limiter.effective_rate, 0.2)
    clock.advance(1.0)
    limiter.succeeded()
    assert math.isclose(limiter.effective_rate, 0.6)


def test_recovery_after_throttle_restarts_the_quiet_period() -> None:
    clock = FakeClock()
    limiter = RateLimiter(20, clock=clock)
    limiter.throttled()
    clock.advance(1.0)
    limiter.succeeded()
    assert limiter.effective_rate == 12.0
    clock.advance(1.0)
    limiter.throttled()
    assert limiter.effective_rate == 6.0
    clock.advance(0.9)
    limiter.succeeded()
    assert limiter.effective_rate == 6.0
    clock.advance(0.1)
    limiter.succeeded()
    assert limiter.effective_rate == 8.0


@pytest.mark.parametrize("rate", [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf])
def test_invalid_rates(rate: float) -> None:
    with pytest.raises(ValueError, match="rate must be a positive number"):
        RateLimiter(rate)


def test_a_named_budget_caps_the_rate_until_no_429_has_named_it_for_ten_windows() -> None:
    """A budget cut for a while (a storm, a quota raised since) does not cap the rate for good: a minute (or ten
    of its windows) after the last 429 that named it, the rate recovers toward the configured one again."""
    clock = FakeClock()
    limiter = RateLimiter(20, clock=clock)
    limiter.throttled(budget=(2, 1.0))  # "limit:2,time:1 second"
    assert limiter.effective_rate == 2.0
    for _ in range(59):
        clock.advance(1.0)
        limiter.succeeded()
    assert limiter.effective_rate == 2.0, "held while the budget may still be real"
    clock.advance(1.5)
    limiter.succeeded()
    assert limiter.effective_rate == 4.0, "then one step at a time, as after any 429"
    limiter.throttled(budget=(2, 1.0))  # still real: named again, capped again
    assert limiter.effective_rate == 2.0


def test_a_budget_named_again_and_again_is_logged_once(logs: pytest.LogCaptureFixture) -> None:
    """Every 429 of a storm names the same budget: one warning says it (and the limit it holds), not one per
    429; ``budget_rate`` gives it to the metrics until its hold ends."""
    clock = FakeClock()
    limiter = RateLimiter(10.0, clock=clock)
    assert limiter.budget_rate == 0.0
    for _ in range(3):
        limiter.throttled(budget=(120, 60.0))
        clock.advance(2.0)
    limiter.throttled()  # a 429 naming no budget
    [warning] = [r for r in logs.records if r.name == "monitor.cce.throttle" and r.levelno == logging.WARNING]
    assert warning.getMessage() == (
        "the API gateway allows 120 requests per 60s: holding the rate to 2/s (configured 10/s)"
    )
    assert limiter.budget_rate == 2.0
    clock.advance(budget_hold(60.0))
    assert limiter.budget_rate == 0.0, "no 429 has named it for a while"
