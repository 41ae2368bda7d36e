"""The polling settings: one definition, validated once; the config file builds them (``monitor.config``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from monitor.core.errors import ConfigError

__all__ = ["SchedulerSettings"]


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    """Polling policy. Times are seconds. Defaults suit CCE's default API quotas."""

    rate: float = 10.0
    """Requests per second to CCE, over all jobs, retries included."""
    burst: int | None = None
    """Requests allowed back to back; ``None`` means at most ``rate`` in any one second."""
    max_in_flight: int = 16
    interval: float = 10.0
    """Delay between polls of a job, after its first poll and after every change."""
    min_interval: float = 1.0
    """Floor of every delay, including error backoff: never a tight loop."""
    max_interval: float = 30.0
    """Ceiling of the delay while a job is unchanged."""
    backoff: float = 1.5
    """Factor by which the delay grows after each unchanged poll (1 = never grows)."""
    jitter: float = 0.1
    """Each delay is multiplied by a random factor in [1 - jitter, 1 + jitter]."""
    initial_delay: float = 0.0
    """Delay before a newly added job's first poll (spread over [0, initial_delay])."""
    job_timeout: float = 3600.0
    stall_after: float = 1800.0
    not_found_grace: float = 60.0
    not_found_count: int = 3
    failure_threshold: int = 3
    error_backoff: float = 2.0
    error_backoff_max: float = 300.0
    auth_backoff: float = 30.0
    auth_backoff_max: float = 600.0
    drain: float = 10.0

    def __post_init__(self) -> None:
        checks = [
            ("rate", 0 < self.rate < math.inf, "must be a finite number > 0"),
            ("max_in_flight", self.max_in_flight >= 1, "must be >= 1"),
            ("interval", self.interval > 0, "must be > 0"),
            ("min_interval", 0 < self.min_interval <= self.interval, f"must be > 0 and <= interval ({self.interval})"),
            ("max_interval", self.max_interval >= self.interval, f"must be >= interval ({self.interval})"),
            ("backoff", self.backoff >= 1, "must be >= 1"),
            ("jitter", 0 <= self.jitter < 1, "must be in [0, 1)"),
            ("initial_delay", self.initial_delay >= 0, "must be >= 0"),
            ("job_timeout", self.job_timeout > 0, "must be > 0"),
            ("stall_after", self.stall_after > 0, "must be > 0"),
            ("not_found_grace", self.not_found_grace >= 0, "must be >= 0"),
            ("not_found_count", self.not_found_count >= 1, "must be >= 1"),
            ("failure_threshold", self.failure_threshold >= 1, "must be >= 1"),
            ("error_backoff", self.error_backoff > 0, "must be > 0"),
            ("error_backoff_max", self.error_backoff_max >= self.error_backoff, "must be >= error_backoff"),
            ("auth_backoff", self.auth_backoff > 0, "must be > 0"),
            ("auth_backoff_max", self.auth_backoff_max >= self.auth_backoff, "must be >= auth_backoff"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"polling.{name} = {getattr(self, name)!r} {rule}")
