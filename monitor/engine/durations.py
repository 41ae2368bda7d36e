"""Learned durations: how long each kind of CCE step takes, from what the monitor has watched.

A *step* is a job type, one of its sub-job types (``""`` for the job itself) and the phase it is in — e.g.
``CreateNode/InstallNode/Running``. Each step's duration is modelled as lognormal (durations of cloud
provisioning steps are positive and right-skewed), fitted robustly — the median and the median absolute deviation
of the log durations over a window of the latest samples — so one node that hung for an hour does not drag the
estimate. Until a step has samples, a shipped prior (:data:`PRIORS`) stands in, counted as two samples in the
median: from the third observation on, the observations decide.

Durations come from CCE's own timestamps where it gives them (``updateTimestamp`` moves when a job or sub-job
changes phase), so they do not depend on how often the monitor looked.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from statistics import NormalDist, median

__all__ = ["PRIORS", "Durations", "Estimate", "step_key"]

_NORMAL = NormalDist()
_MAD_TO_SIGMA = 1.4826  # the MAD of a normal distribution is 0.6745 sigma
_MIN_SIGMA = 0.03
_PRIOR_WEIGHT = 2  # samples a prior counts for
_WINDOW = 256  # latest samples kept per step


def step_key(job_type: str, sub_type: str, phase: str) -> str:
    """The name a step is learned under: ``JobType/SubJobType/Phase`` (``""`` sub-job type: the job itself)."""
    return f"{job_type}/{sub_type}/{phase}"


@dataclass(frozen=True, slots=True)
class Estimate:
    """A lognormal duration: ``mu`` and ``sigma`` of the log seconds; ``samples`` behind it (0: a prior)."""

    mu: float
    sigma: float
    samples: int = 0

    @property
    def median(self) -> float:
        return math.exp(self.mu)

    @property
    def mean(self) -> float:
        return math.exp(self.mu + self.sigma**2 / 2)

    @property
    def variance(self) -> float:
        return (math.exp(self.sigma**2) - 1) * math.exp(2 * self.mu + self.sigma**2)

    @classmethod
    def total(cls, parts: Iterable[Estimate]) -> Estimate | None:
        """The duration of steps one after another, as a lognormal of the same mean and variance (Fenton and
        Wilkinson's approximation); ``None`` for no steps."""
        parts = list(parts)
        if not parts:
            return None
        mean = sum(p.mean for p in parts)
        var = sum(p.variance for p in parts)
        sigma2 = math.log1p(var / mean**2)
        samples = min(p.samples for p in parts)  # (as well learned as its least learned step)
        return cls(math.log(mean) - sigma2 / 2, max(_MIN_SIGMA, math.sqrt(sigma2)), samples)

    def cdf(self, seconds: float) -> float:
        """P(duration <= seconds)."""
        if seconds <= 0:
            return 0.0
        return _NORMAL.cdf((math.log(seconds) - self.mu) / self.sigma)

    def quantile(self, q: float) -> float:
        """The duration not exceeded with probability ``q`` (0 < q < 1)."""
        return math.exp(self.mu + self.sigma * _NORMAL.inv_cdf(min(max(q, 1e-9), 1 - 1e-9)))

    def moved_on(self, since: float, now: float) -> float:
        """P(the step ended by elapsed time ``now`` | it had not at elapsed ``since``): the chance a poll now
        reveals a change the previous poll (at ``since``) could not have seen."""
        survived = 1.0 - self.cdf(since)
        if survived <= 1e-12:
            return 1.0  # past every plausible end: overdue, a poll is as good as certain to find news
        return max(0.0, min(1.0, (self.cdf(now) - self.cdf(since)) / survived))

    def waited(self, since: float, now: float) -> float:
        """Expected seconds a change has gone unseen by elapsed time ``now``, given none at ``since`` (the last
        look): the integral over (since, now] of P(ended by t | not by since). Near zero before the likely end,
        it grows like ``now - t_end`` once the end is sure — so ranking by it polls predictable steps just after
        they end and, where everything has surely moved on, the longest-unseen first (round-robin)."""
        if now <= since:
            return 0.0
        survived = 1.0 - self.cdf(since)
        if survived <= 1e-12:
            return now - since
        area = self._area(now) - self._area(since) - self.cdf(since) * (now - since)
        return max(0.0, min(now - since, area / survived))

    def _area(self, x: float) -> float:
        """The integral of the CDF from 0 to ``x``: x F(x) - E[T; T <= x] (closed form for a lognormal)."""
        if x <= 0:
            return 0.0
        z = (math.log(x) - self.mu) / self.sigma
        return x * _NORMAL.cdf(z) - math.exp(self.mu + self.sigma**2 / 2) * _NORMAL.cdf(z - self.sigma)

    def remaining(self, elapsed: float, q: float) -> float:
        """The ``q`` quantile of the time left, given the step has run ``elapsed`` seconds without ending."""
        done = self.cdf(elapsed)
        if done >= 1 - 1e-9:
            return 0.0
        return max(0.0, self.quantile(done + q * (1.0 - done)) - elapsed)


# Shipped priors (seconds, as medians with a log spread), for the common CCE steps, until the monitor has watched
# its own. Where they come from: CCE reclaims a node not available within 30 minutes of its creation (CCE user
# guide, "Executing the Post-installation Command During Node Creation"), and the Huawei Cloud and OTC Terraform
# providers wait 20 minutes for a node and 30 for a cluster by default; the medians are well inside those bounds
# and the spread wide, so the first samples of a team's own rollouts take over at once.
_PRIOR_TABLE: dict[tuple[str, str, str], float] = {
    ("CreateNode", "", "Initializing"): 10.0,
    ("CreateNode", "", "Running"): 300.0,
    ("CreateNode", "GetPSMCert", "Running"): 5.0,
    ("CreateNode", "CreateNodeVM", "Running"): 90.0,
    ("CreateNode", "InstallNode", "Running"): 180.0,
    ("DeleteNode", "", "Running"): 120.0,
    ("ScaleupCluster", "", "Running"): 360.0,
    ("ScaleupCluster", "CreateNode", "Running"): 300.0,
    ("CreateCluster", "", "Running"): 600.0,
    ("DeleteCluster", "", "Running"): 300.0,
    ("UpgradeCluster", "", "Running"): 1800.0,
}
_PRIOR_SIGMA = 1.0  # a factor of e either way: vague on purpose, so a wrong guess does not hold polls back
PRIORS: Mapping[str, Estimate] = {step_key(*k): Estimate(math.log(m), _PRIOR_SIGMA) for k, m in _PRIOR_TABLE.items()}


class Durations:
    """Per step: the latest samples (log seconds) and the robust lognormal fit over them, blended with a prior.

    ``observe`` a finished step's duration; ``estimate`` a step's distribution (``None``: neither samples nor a
    prior). :meth:`dump` and :meth:`load` carry the samples across restarts (the daemon's store keeps them)."""

    def __init__(self, priors: Mapping[str, Estimate] = PRIORS, *, window: int = _WINDOW) -> None:
        self._priors = dict(priors)
        self._window = window
        self._samples: dict[str, deque[float]] = {}
        self._fits: dict[str, Estimate] = {}
        self.changed = False
        """Samples were added since the last :meth:`dump` (for a store that saves now and then)."""

    def observe(self, key: str, seconds: float) -> None:
        """One finished step took ``seconds`` (ignored unless positive and finite)."""
        if not (seconds > 0 and math.isfinite(seconds)):
            return
        samples = self._samples.get(key)
        if samples is None:
            samples = self._samples[key] = deque(maxlen=self._window)
        samples.append(math.log(seconds))
        self._fits.pop(key, None)
        self.changed = True

    def estimate(self, key: str) -> Estimate | None:
        fit = self._fits.get(key)
        if fit is not None:
            return fit
        samples = self._samples.get(key)
        prior = self._priors.get(key)
        if not samples:
            return prior
        logs = list(samples)
        n = len(logs)
        # The prior is two samples among the real ones, in the median: from the third sample on it can move the
        # estimate by a rank at most, however far off it was (a mean of logs would drag it by a factor).
        mu = median([*logs, *([prior.mu] * _PRIOR_WEIGHT)] if prior is not None else logs)
        if n >= 3:
            middle = median(logs)
            sigma = _MAD_TO_SIGMA * median(abs(x - middle) for x in logs)
        else:
            sigma = (prior or _WIDE).sigma
        fit = self._fits[key] = Estimate(mu, max(sigma, _MIN_SIGMA), n)
        return fit

    def keys(self) -> Iterable[str]:
        """Steps with samples."""
        return self._samples.keys()

    def dump(self) -> dict[str, list[float]]:
        """The samples (seconds, oldest first), for the store."""
        self.changed = False
        return {key: [round(math.exp(x), 3) for x in samples] for key, samples in self._samples.items()}

    def load(self, saved: Mapping[str, Iterable[float]]) -> None:
        """Samples saved by :meth:`dump` (kept before any observed since)."""
        for key, seconds in saved.items():
            for value in seconds:
                self.observe(str(key), float(value))
        self.changed = False


_WIDE = Estimate(0.0, 0.8)  # the spread assumed from one or two samples of a step without a prior
