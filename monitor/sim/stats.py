"""Request statistics: the live counters the server bumps and :class:`SimulatorStats`, a snapshot of them."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Counters", "SimulatorStats"]


@dataclass(frozen=True, slots=True)
class SimulatorStats:
    """What the server saw, excluding ``/_sim/`` control requests.

    ``per_second`` counts CCE API requests (job, node and node pool routes; throttled ones too) per whole
    second of the simulator clock since construction, so a benchmark can check a client's rate from the
    server side. ``by_route`` counts them per route kind (``job``, ``node_list``, ``node``, ``nodepool``,
    ``create_nodes``, ``update_nodepool``), so a benchmark can report what following a pool costs.
    """

    requests: int
    job_requests: int
    iam_token_requests: int
    tokens_issued: int
    throttled: int
    dropped: int
    by_status: dict[int, int]
    per_second: dict[int, int]
    by_route: dict[str, int] = field(default_factory=dict)

    @property
    def max_per_second(self) -> int:
        """The busiest one-second window."""
        return max(self.per_second.values(), default=0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (integer keys become strings)."""
        return {
            "requests": self.requests,
            "job_requests": self.job_requests,
            "iam_token_requests": self.iam_token_requests,
            "tokens_issued": self.tokens_issued,
            "throttled": self.throttled,
            "dropped": self.dropped,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "per_second": {str(k): v for k, v in sorted(self.per_second.items())},
            "max_per_second": self.max_per_second,
            "by_route": dict(sorted(self.by_route.items())),
        }


@dataclass(slots=True)
class Counters:
    """What the server counts as it answers (``/_sim/`` control requests excluded)."""

    requests: int = 0
    job_requests: int = 0
    iam_token_requests: int = 0
    tokens_issued: int = 0
    throttled: int = 0
    dropped: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    per_second: dict[int, int] = field(default_factory=dict)
    by_route: dict[str, int] = field(default_factory=dict)
    arrivals: array[float] = field(default_factory=lambda: array("d"))
    """Arrival time of every CCE API request (seconds of the simulator clock since construction), for sliding
    windows: 8 bytes a request."""

    def snapshot(self) -> SimulatorStats:
        """The counters now, as an immutable :class:`SimulatorStats`."""
        return SimulatorStats(
            self.requests,
            self.job_requests,
            self.iam_token_requests,
            self.tokens_issued,
            self.throttled,
            self.dropped,
            dict(self.by_status),
            dict(self.per_second),
            dict(self.by_route),
        )
