"""Prometheus metrics of the daemon (prometheus-client), in a registry of its own.

Counters that grow with every poll are kept as prometheus-client objects; everything that is already counted
elsewhere (the rate limiter, the bus, the deliverers, the scheduler's jobs) is read at scrape time by a collector,
so the hot path does no extra bookkeeping for them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from monitor.core.events import Event

__all__ = ["LoopLagProbe", "Metrics", "MetricsSources"]


class MetricsSources:
    """Callables that report current values at scrape time; the daemon fills them in."""

    def __init__(self) -> None:
        self.jobs_by_phase: Callable[[], Mapping[str, int]] = dict
        self.rate: Callable[[], tuple[float, float, float, int]] = lambda: (0.0, 0.0, 0.0, 0)
        """(configured rate, effective rate, seconds waited, 429 count)."""
        self.budget: Callable[[], float] = lambda: 0.0
        """Requests per second of the budget the API gateway named in a 429, while it caps the rate (0: none)."""
        self.queue_depth: Callable[[], Mapping[str, int]] = dict
        self.deliveries: Callable[[], Mapping[tuple[str, str], int]] = dict
        """(sink, result) -> count, result in delivered / failed / rejected."""
        self.outbox_age: Callable[[], Mapping[str, float]] = dict
        """Per durable sink: seconds since its oldest undelivered event was detected (0: none waiting)."""
        self.loop_lag: Callable[[], float] = lambda: 0.0
        self.schedule_lag: Callable[[], float] = lambda: 0.0
        """How late the latest poll started: above zero when demand exceeds the rate."""
        self.cluster: Callable[[], Mapping[str, Any] | None] = lambda: None
        """Replicas sharing the jobs (PostgreSQL): this replica's membership, or ``None`` on its own."""


class _Collector(Collector):
    def __init__(self, sources: MetricsSources) -> None:
        self._s = sources

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("cce_monitor_jobs", "Tracked jobs by last seen phase", labels=["phase"])
        for phase, n in sorted(self._s.jobs_by_phase().items()):
            jobs.add_metric([phase], n)
        yield jobs
        configured, effective, waited, throttled = self._s.rate()
        yield GaugeMetricFamily(
            "cce_monitor_rate_configured", "Configured requests per second to CCE", value=configured
        )
        yield GaugeMetricFamily(
            "cce_monitor_rate_effective", "Requests per second after slowing down for 429s", value=effective
        )
        yield CounterMetricFamily(
            "cce_monitor_rate_limit_wait_seconds", "Time spent waiting for the rate limit", value=waited
        )
        yield CounterMetricFamily("cce_monitor_throttled", "429 answers from CCE or its gateway", value=throttled)
        yield GaugeMetricFamily(
            "cce_monitor_rate_budget",
            "Requests per second the API gateway's throttle message named, while it caps the rate (0: none)",
            value=self._s.budget(),
        )
        depth = GaugeMetricFamily(
            "cce_monitor_sink_queue_depth", "Events waiting per sink (queue or outbox)", labels=["sink"]
        )
        for sink, n in sorted(self._s.queue_depth().items()):
            depth.add_metric([sink], n)
        yield depth
        age = GaugeMetricFamily(
            "cce_monitor_outbox_oldest_age_seconds",
            "Seconds since the oldest undelivered event of a durable sink was detected (0: none waiting)",
            labels=["sink"],
        )
        for sink, seconds in sorted(self._s.outbox_age().items()):
            age.add_metric([sink], seconds)
        yield age
        deliveries = CounterMetricFamily("cce_monitor_deliveries", "Deliveries per sink", labels=["sink", "result"])
        for (sink, result), n in sorted(self._s.deliveries().items()):
            deliveries.add_metric([sink, result], n)
        yield deliveries
        yield GaugeMetricFamily(
            "cce_monitor_event_loop_lag_seconds", "How late a 0.25 s timer fired, recently", value=self._s.loop_lag()
        )
        yield GaugeMetricFamily(
            "cce_monitor_schedule_lag_seconds",
            "How late the latest poll started after its due time (demand above the rate stretches intervals)",
            value=self._s.schedule_lag(),
        )
        cluster = self._s.cluster()
        if cluster is not None:
            yield GaugeMetricFamily(
                "cce_monitor_cluster_members", "Live replicas sharing the jobs", value=cluster["members"]
            )
            yield GaugeMetricFamily(
                "cce_monitor_cluster_member", "1 while this replica's membership is renewed", value=cluster["member"]
            )
            yield GaugeMetricFamily(
                "cce_monitor_owned_jobs", "Unfinished jobs this replica owns and polls", value=cluster["owned_jobs"]
            )
            yield GaugeMetricFamily(
                "cce_monitor_fair_share_jobs", "This replica's fair share of the jobs", value=cluster["fair_share"]
            )
            yield GaugeMetricFamily(
                "cce_monitor_publishes_digests",
                "1 on the replica that publishes rollout digests",
                value=cluster["publishes_digests"],
            )
            yield CounterMetricFamily(
                "cce_monitor_jobs_claimed",
                "Jobs this replica claimed (new, handed back, or of a lost replica)",
                value=cluster["claimed"],
            )
            yield CounterMetricFamily(
                "cce_monitor_jobs_lost",
                "Writes refused because another replica owned the job by then",
                value=cluster["lost"],
            )


class Metrics:
    """The daemon's metrics. ``observe_poll`` and ``count_event`` are cheap hooks for the hot path."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sources = MetricsSources()
        self.polls = PromCounter(
            "cce_monitor_polls", "Polls of CCE jobs by outcome", ["outcome"], registry=self.registry
        )
        self.poll_seconds = Histogram(
            "cce_monitor_poll_duration_seconds",
            "Latency of one poll (HTTP request, parse, change detection)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.delivery_latency = Histogram(
            "cce_monitor_delivery_latency_seconds",
            "From a transition's detection to its delivery by a durable sink",
            ["sink"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
            registry=self.registry,
        )
        self.events = PromCounter("cce_monitor_events", "Events emitted by type", ["type"], registry=self.registry)
        self.registry.register(_Collector(self.sources))

    def observe_poll(self, outcome: str, seconds: float) -> None:
        self.polls.labels(outcome).inc()
        self.poll_seconds.observe(seconds)

    def count_event(self, event: Event) -> None:
        self.events.labels(event.type.value).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class LoopLagProbe:
    """Measures event-loop lag: how late a short timer fires. Run :meth:`run` as a task."""

    def __init__(self, period: float = 0.25, window: int = 20) -> None:
        self.period = period
        self._recent: list[float] = []
        self._window = window

    @property
    def lag(self) -> float:
        """The worst lag over the last ``window`` periods."""
        return max(self._recent, default=0.0)

    async def run(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(self.period)
            self._recent.append(max(0.0, time.monotonic() - start - self.period))
            del self._recent[: -self._window]


def count_by(values: Iterable[str]) -> dict[str, int]:
    """Small helper for ``jobs_by_phase`` sources."""
    return dict(Counter(values))
