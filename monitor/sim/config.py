"""The simulator's settings: :class:`SimulatorConfig`, fixed for its life, and :class:`FaultSettings`, the
fault probabilities and throttle that can change at run time; both validate themselves on construction.
Secrets (token, SK, IAM password) never appear in a repr.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

__all__ = ["FaultSettings", "SimulatorConfig"]


def _mask(value: str | None) -> str:
    return "None" if value is None else "'***'"


@dataclass(frozen=True, slots=True, repr=False)
class SimulatorConfig:
    """Everything fixed for the life of a simulator; the fault fields are only the starting values.

    Probabilities are per request to the job API. ``rate_limit`` is requests per second (``None``: no
    limit) with a bucket of ``rate_burst`` (default: the rate, at least 1). Default job durations are
    ``job_duration`` times a per-type factor, jittered ±20 %, times ``time_scale``. ``token_length`` is the
    length of the tokens IAM issues (real ones are up to 16 KB; the server accepts request headers that large).
    ``security_token`` makes the AK/SK a temporary one (an agency's): signed requests must carry it in a signed
    ``X-Security-Token``. IAM lists ``(project_id, project_name)`` and ``extra_projects`` at ``GET /v3/projects``.
    """

    seed: int = 0
    project_id: str = "0b9c3a5e8e8f4e4a9d5c7a3b2f1e0d9c"
    project_name: str = "eu-de"
    token: str = "MIIsimulator-static-token"  # noqa: S105 - a fixture value for a loopback test server
    token_ttl: float = 86_400.0
    token_length: int = 123
    ak: str | None = None
    sk: str | None = None
    security_token: str | None = None  # set: the AK/SK is temporary, and requests must sign X-Security-Token
    extra_projects: tuple[tuple[str, str], ...] = ()  # (id, name) pairs IAM lists besides (project_id, project_name)
    iam_user: str = "monitor"
    iam_password: str = "sim-password"  # noqa: S105 - a fixture value for a loopback test server
    iam_domain: str = "sim-domain"
    iam_delay: float = 0.0
    rate_limit: float | None = None
    rate_burst: int | None = None
    retry_after: bool = True
    throttle_style: Literal["apigw", "apig-minute", "cce"] = "apigw"
    p_500: float = 0.0
    p_503_html: float = 0.0
    p_malformed: float = 0.0
    p_slow: float = 0.0
    slow_seconds: float = 2.0
    p_drop: float = 0.0
    faults_on_iam: bool = False
    time_scale: float = 1.0
    job_duration: float = 20.0
    live_timestamps: bool = False  # an unfinished job's updateTimestamp is the request time: every body differs

    def __post_init__(self) -> None:
        if (self.ak is None) != (self.sk is None):
            raise ValueError("ak and sk go together")
        if self.token_ttl <= 0 or self.time_scale <= 0 or self.job_duration < 0 or self.iam_delay < 0:
            raise ValueError("token_ttl and time_scale must be positive, job_duration and iam_delay >= 0")
        if self.security_token is not None and self.ak is None:
            raise ValueError("security_token goes with ak and sk")
        if self.token_length < 4:
            raise ValueError("token_length must be at least 4 (tokens start with 'MII')")
        self.faults()  # validates the fault fields

    def faults(self) -> FaultSettings:
        """The starting fault settings."""
        return FaultSettings(
            p_500=self.p_500,
            p_503_html=self.p_503_html,
            p_malformed=self.p_malformed,
            p_slow=self.p_slow,
            slow_seconds=self.slow_seconds,
            p_drop=self.p_drop,
            rate_limit=self.rate_limit,
            rate_burst=self.rate_burst,
            retry_after=self.retry_after,
            throttle_style=self.throttle_style,
        )

    def __repr__(self) -> str:
        fields = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = _mask(value) if f.name in {"token", "sk", "iam_password", "security_token"} else repr(value)
            fields.append(f"{f.name}={shown}")
        return f"SimulatorConfig({', '.join(fields)})"


@dataclass(frozen=True, slots=True)
class FaultSettings:
    """Fault probabilities and the throttle, changeable at run time (:meth:`Simulator.set_faults`)."""

    p_500: float = 0.0
    p_503_html: float = 0.0
    p_malformed: float = 0.0
    p_slow: float = 0.0
    slow_seconds: float = 2.0
    p_drop: float = 0.0
    rate_limit: float | None = None
    rate_burst: int | None = None
    retry_after: bool = True
    throttle_style: Literal["apigw", "apig-minute", "cce"] = "apigw"

    def __post_init__(self) -> None:
        for name in ("p_500", "p_503_html", "p_malformed", "p_slow", "p_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.slow_seconds < 0:
            raise ValueError("slow_seconds must be >= 0")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError("rate_limit must be positive or None")
        if self.rate_burst is not None and self.rate_burst < 1:
            raise ValueError("rate_burst must be >= 1")
        if self.throttle_style not in ("apigw", "apig-minute", "cce"):
            raise ValueError("throttle_style must be 'apigw', 'apig-minute' or 'cce'")
