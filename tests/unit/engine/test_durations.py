"""Learned durations (monitor.engine.durations): estimates converge on samples from known distributions, outliers
do not drag them, priors give way to observations, and the conditional probabilities the adaptive scheduler
ranks polls by behave as probabilities."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.engine.durations import PRIORS, Durations, Estimate, step_key
from monitor.engine.freshness import Left, rollout_eta

KEY = step_key("CreateNode", "InstallNode", "Running")


@settings(max_examples=60, deadline=None)
@given(
    mu=st.floats(math.log(2), math.log(3600)),
    sigma=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**32 - 1),
    outliers=st.floats(0.0, 0.1),
)
def test_estimates_converge_on_lognormal_samples_despite_outliers(
    mu: float, sigma: float, seed: int, outliers: float
) -> None:
    rng = random.Random(seed)
    learned = Durations()
    n = 256
    for _ in range(n):
        if rng.random() < outliers:  # a node that hung, or one that failed at once
            learned.observe(KEY, math.exp(mu) * rng.choice([30.0, 1 / 30]))
        else:
            learned.observe(KEY, rng.lognormvariate(mu, sigma))
    est = learned.estimate(KEY)
    assert est is not None and est.samples == n
    # Median and MAD: the error shrinks like sigma/sqrt(n); up to 10 % outliers shift them by a fraction of sigma.
    assert abs(est.mu - mu) < 0.25 * sigma + 0.05, (est, mu, sigma)
    assert abs(est.sigma - sigma) < 0.35 * sigma + 0.05, (est, mu, sigma)


@given(st.lists(st.floats(1.0, 10_000.0), min_size=3, max_size=40))
def test_the_prior_gives_way_to_observations(seconds: list[float]) -> None:
    learned = Durations()
    prior = PRIORS[KEY]
    assert learned.estimate(KEY) == prior
    for s in seconds:
        learned.observe(KEY, s)
    est = learned.estimate(KEY)
    assert est is not None
    logs = sorted(math.log(s) for s in seconds)
    # The prior counts as two samples in the median: from the third sample on, however far off the prior is, the
    # estimate is one of the middle samples (it can move the median by one rank, not drag it out of them).
    n = len(logs)
    assert logs[(n - 1) // 2 - 1] - 1e-9 <= est.mu <= logs[n // 2 + 1] + 1e-9 if n >= 4 else logs[0] <= est.mu
    assert logs[0] - 1e-9 <= est.mu <= logs[-1] + 1e-9


@given(
    mu=st.floats(0.0, 8.0),
    sigma=st.floats(0.03, 1.5),
    a=st.floats(0.0, 5000.0),
    b=st.floats(0.0, 5000.0),
    c=st.floats(0.0, 5000.0),
)
def test_moved_on_is_a_conditional_probability_growing_with_time(
    mu: float, sigma: float, a: float, b: float, c: float
) -> None:
    est = Estimate(mu, sigma)
    since, mid, now = sorted((a, b, c))
    p_mid, p_now = est.moved_on(since, mid), est.moved_on(since, now)
    assert 0.0 <= p_mid <= p_now + 1e-12 <= 1.0 + 1e-12
    assert est.moved_on(since, since) in (0.0, 1.0)  # nothing new, unless the step is long overdue
    assert est.remaining(since, 0.5) <= est.remaining(since, 0.9) + 1e-9
    # The expected unseen time of a change: between 0 and the time since the last look, growing with it.
    w_mid, w_now = est.waited(since, mid), est.waited(since, now)
    assert 0.0 <= w_mid <= w_now + 1e-6 and w_now <= now - since + 1e-9


def test_samples_survive_a_dump_and_load_and_bad_values_are_ignored() -> None:
    learned = Durations()
    for s in (10.0, 12.0, 11.0, float("nan"), -1.0, 0.0, float("inf")):
        learned.observe("Custom//Running", s)
    saved = learned.dump()
    assert saved == {"Custom//Running": [10.0, 12.0, 11.0]} and not learned.changed
    again = Durations()
    again.load(saved)
    assert again.estimate("Custom//Running") == learned.estimate("Custom//Running")
    assert again.estimate("Unknown//Running") is None


@given(
    mu=st.floats(0.0, 7.0),
    sigma=st.floats(0.05, 1.2),
    n=st.integers(1, 2000),
)
def test_a_rollouts_eta_is_when_its_last_unit_is_done(mu: float, sigma: float, n: int) -> None:
    """n alike units: P(all done by t) = F(t)^n, so the median ETA is F^-1(0.5^(1/n)), the p90 F^-1(0.9^(1/n))."""
    unit = Estimate(mu, sigma)
    found = rollout_eta([Left(then=unit)] * n)
    assert found is not None
    p50, p90 = found
    assert math.isclose(p50, unit.quantile(0.5 ** (1 / n)), rel_tol=1e-3)
    assert math.isclose(p90, unit.quantile(0.9 ** (1 / n)), rel_tol=1e-3)
    assert p50 <= p90
    assert rollout_eta([]) is None


@given(st.lists(st.tuples(st.floats(0.0, 6.0), st.floats(0.05, 1.0)), min_size=1, max_size=6))
def test_steps_one_after_another_keep_their_mean_and_variance(parts: list[tuple[float, float]]) -> None:
    steps = [Estimate(mu, sigma) for mu, sigma in parts]
    total = Estimate.total(steps)
    assert total is not None
    if total.sigma > 0.03:  # (a spread below the floor is raised to it, which moves the mean a little)
        assert math.isclose(total.mean, sum(s.mean for s in steps), rel_tol=1e-6)
        assert math.isclose(total.variance, sum(s.variance for s in steps), rel_tol=1e-6)
    else:
        assert math.isclose(total.mean, sum(s.mean for s in steps), rel_tol=1e-3)
