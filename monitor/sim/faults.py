"""Fault decisions and the throttle: the per-request draw of which faults strike, and the API gateway's
token bucket.

Every request that can fail draws the same six numbers from the fault stream whatever the probabilities,
so the fault decisions depend only on the order of requests.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from monitor.sim.config import FaultSettings

__all__ = [
    "Draw",
    "JobAnswers",
    "TokenBucket",
    "bucket_for",
    "draw_faults",
    "not_found_body",
]


class TokenBucket:
    """Requests per second with a burst: each request takes one token, refilled at ``rate`` per second."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst, self.tokens, self.last = rate, burst, float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, slots=True)
class Draw:
    """Which faults strike one request, and where a truncated body is cut (a fraction of its length)."""

    slow: bool
    drop: bool
    html_503: bool
    error_500: bool
    malformed: bool
    cut: float


def draw_faults(rng: random.Random, faults: FaultSettings) -> Draw:
    """The fault decisions for one request: always six numbers, so the stream depends only on order."""
    u = [rng.random() for _ in range(6)]
    return Draw(
        slow=u[0] < faults.p_slow,
        drop=u[1] < faults.p_drop,
        html_503=u[2] < faults.p_503_html,
        error_500=u[3] < faults.p_500,
        malformed=u[4] < faults.p_malformed,
        cut=0.2 + 0.6 * u[5],
    )


def bucket_for(faults: FaultSettings, clock: Callable[[], float]) -> TokenBucket | None:
    """A full bucket, as of ``clock()``, for the throttle in ``faults`` (burst by default the rate, at least
    1); ``None``: no limit."""
    rate = faults.rate_limit
    if rate is None:
        return None
    return TokenBucket(rate, faults.rate_burst or max(1, round(rate)), clock())


class JobAnswers:
    """Answers a test sets for one job in place of its document, until an instant (ns): a lock, a refusal."""

    __slots__ = ("_answers",)

    def __init__(self) -> None:
        self._answers: dict[str, tuple[float, int, dict[str, str]]] = {}

    def lock(self, job_id: str, until_ns: float) -> None:
        """429 ``CCE.01429002``: the job's resource is locked by another request (a lock, not throttling)."""
        self._answers[job_id] = (until_ns, 429, {"errorCode": "CCE.01429002", "errorMessage": _LOCKED})

    def forbid(self, job_id: str, until_ns: float) -> None:
        """403 ``CCE.01403001`` for this job only (a cluster the user may not read, or a busy one)."""
        self._answers[job_id] = (until_ns, 403, {"errorCode": "CCE.01403001", "errorMessage": _FORBIDDEN})

    def get(self, job_id: str, now_ns: int) -> tuple[int, dict[str, str]] | None:
        answer = self._answers.get(job_id)
        return (answer[1], answer[2]) if answer is not None and now_ns < answer[0] else None


_LOCKED = "Resource locked by other requests."
_FORBIDDEN = "Forbidden: the user has no permission on this cluster"


def not_found_body(message: str) -> dict[str, object]:
    """CCE's 404 body: a Kubernetes-style ``Status`` carrying CCE's error code (``CCE.01404001``)."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "NotFound",
        "code": 404,
        "errorCode": "CCE.01404001",
        "errorMessage": "The resource is not found",
    }
