"""The polling settings: one definition, validated once; the config file builds them (``monitor.config``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Lt
from pydantic import ConfigDict, with_config

from monitor.core.bounds import check_bounds
from monitor.core.errors import ConfigError

__all__ = ["SchedulerSettings"]

_Positive = Annotated[float, Gt(0)]
_NonNegative = Annotated[float, Ge(0)]
_Count = Annotated[int, Ge(1)]


# The config file's ``polling:`` section is this class (pydantic reads its fields and bounds): no other copy.
@with_config(ConfigDict(extra="forbid", allow_inf_nan=False))
@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    """Polling policy. Times are seconds. Defaults suit CCE's default API quotas."""

    rate: _Positive = 10.0
    """Requests per second to CCE, over all jobs, retries included."""
    burst: _Count | None = None
    """Requests allowed back to back; ``None`` means at most ``rate`` in any one second."""
    max_in_flight: _Count = 16
    interval: _Positive = 10.0
    """Delay between polls of a job, after its first poll and after every change."""
    min_interval: _Positive = 1.0
    """Floor of every delay, including error backoff: never a tight loop."""
    max_interval: _Positive = 30.0
    """Ceiling of the delay while a job is unchanged."""
    backoff: Annotated[float, Ge(1)] = 1.5
    """Factor by which the delay grows after each unchanged poll (1 = never grows)."""
    jitter: Annotated[float, Ge(0), Lt(1)] = 0.1
    """Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter]."""
    initial_delay: _NonNegative = 0.0
    """Delay before a newly added job's first poll (spread over [0, initial_delay])."""
    job_timeout: _Positive = 3600.0
    stall_after: _Positive = 1800.0
    not_found_grace: _NonNegative = 60.0
    not_found_count: _Count = 3
    failure_threshold: _Count = 3
    error_backoff: _Positive = 2.0
    error_backoff_max: _Positive = 300.0
    auth_backoff: _Positive = 30.0
    auth_backoff_max: _Positive = 600.0
    node_check: bool = True
    """After a node's job succeeds, follow the node until it is ``Active`` (``node.active``/``node.failed``)."""
    node_timeout: _Positive = 900.0
    """How long a node may take to become ``Active`` after its job succeeded."""
    strategy: Literal["interval", "adaptive"] = "interval"
    """How the next poll is chosen: ``interval`` — each job on its own interval, growing while it is unchanged —
    or ``adaptive`` — whenever a slot is free, the due job whose changes have likely gone unseen longest, from the
    durations the monitor has learned (:mod:`monitor.engine.freshness`)."""

    def __post_init__(self) -> None:
        check_bounds(self, "polling")
        if self.strategy not in ("interval", "adaptive"):  # (the file's parser says the same; code too)
            raise ConfigError(f"polling.strategy = {self.strategy!r} must be interval or adaptive")
        checks = [
            ("min_interval", self.min_interval <= self.interval, f"must be <= interval ({self.interval})"),
            ("max_interval", self.max_interval >= self.interval, f"must be >= interval ({self.interval})"),
            ("error_backoff_max", self.error_backoff_max >= self.error_backoff, "must be >= error_backoff"),
            ("auth_backoff_max", self.auth_backoff_max >= self.auth_backoff, "must be >= auth_backoff"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"polling.{name} = {getattr(self, name)!r} {rule}")
