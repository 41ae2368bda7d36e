"""``cce-monitor run``: the long-lived daemon — scheduler, durable state, sinks, control API and metrics.

Start-up: open the state database, build the sinks (durable ones — :func:`~monitor.sinks.is_durable`: ``file``,
``webhook``, chat — get an outbox and a ``Deliverer``; others subscribe to the bus), track
every unfinished job from the database again with its last snapshot (a transition that happened while the daemon
was down is detected on the first poll), then serve the API.

Shutdown (SIGTERM/SIGINT, or ``stop`` set): stop the API (no new jobs), stop polling and let polls in flight
finish, drain the bus and the outboxes within ``shutdown_deadline``, close the sinks and the database. Anything
not delivered by then stays in the outbox and is sent after the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from monitor.cce.auth import Auth, auth_from_env
from monitor.cce.client import CCEClient
from monitor.cce.throttle import Limiter, RateLimiter
from monitor.config import Config
from monitor.core.errors import ConfigError, StateError
from monitor.core.events import Event, EventType
from monitor.core.secret import Secret
from monitor.daemon.api import AddResult, make_app, serve
from monitor.daemon.delivery import Deliverer
from monitor.daemon.feed import EventFeed
from monitor.daemon.metrics import LoopLagProbe, Metrics
from monitor.daemon.storage import DeliveryRecord, Store, StoredJob, open_store
from monitor.engine.bus import Bus, EventFilter
from monitor.engine.durations import Durations
from monitor.engine.pipeline import Pipeline, SinkBinding
from monitor.engine.rollout import RolloutTracker
from monitor.engine.scheduler import Scheduler
from monitor.sinks import create_sink, is_durable

if TYPE_CHECKING:
    from monitor.daemon.pgcluster import Cluster

__all__ = ["Daemon"]

logger = logging.getLogger(__name__)

_PRUNE_EVERY = 3600.0
_REFRESH_EVERY = 5.0  # seconds between reads of the outbox depth and age (metrics, /readyz)
_SAVE_DURATIONS_EVERY = 60.0  # seconds between saves of the learned step durations
_REACHABLE_WITHIN = 300.0


class Daemon:
    """One daemon process. ``await Daemon(config).run(stop)``; the API calls the ``Control`` methods below."""

    def __init__(self, config: Config, *, env: Mapping[str, str] | None = None, auth: Auth | None = None) -> None:
        self.config = config
        self._env = os.environ if env is None else env
        self._auth = auth
        self._metrics = Metrics()
        self._outbox_depth: dict[str, int] = {}
        self._outbox_oldest: dict[str, float] = {}  # sink -> Unix time its oldest undelivered event was detected
        self._state_ok = True  # the state database answered the last housekeeping round
        self._durations: Durations | None = None  # learned step durations (ETAs, polling.strategy adaptive), kept
        self._closing: list[Callable[[], Awaitable[None]]] = []  # before the state closes
        self._replica = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"  # this process, in leases
        self.endpoint: str | None = None
        """``http://host:port`` of the control API once it listens."""
        self.started = asyncio.Event()
        self._state: Store | None = None
        self._scheduler: Scheduler | None = None
        self._bus: Bus | None = None
        self._deliverers: list[Deliverer] = []
        self._running = False
        self._rollouts: RolloutTracker | None = None
        self._cluster: Cluster | None = None  # replicas sharing the jobs (state.backend: postgres)
        self._feed = EventFeed()  # /v1/events/stream and the page's recent failures

    # ------------------------------------------------------------------------------------ Control

    async def add_jobs(self, job_ids: Sequence[str], labels: Mapping[str, str], rollout: str | None) -> AddResult:
        state, scheduler = self._parts()
        labels = {**self.config.labels, **labels, **({"rollout": rollout} if rollout else {})}
        new = await state.add_jobs(job_ids, labels, rollout)
        shared = dict(labels)
        if rollout and self._rollouts is not None and new:
            self._rollouts.add(rollout, new)
        if self._cluster is not None:
            self._cluster.wake()  # replicas claim them (this one too): notified by the database as well
        else:
            for job_id in new:
                scheduler.add(job_id, shared)
        fresh = set(new)
        return AddResult(accepted=new, known=[j for j in job_ids if j not in fresh])

    async def add_nodepool(
        self, cluster_id: str, nodepool_id: str, target: int | None, labels: Mapping[str, str], rollout: str | None
    ) -> bool:
        """Follow a node pool (a rollout named after it unless given); ``False`` if it is followed already."""
        state, scheduler = self._parts()
        rollout = rollout or nodepool_id
        labels = {**self.config.labels, **labels, "rollout": rollout}
        since = time.time()
        if not await state.add_nodepool(cluster_id, nodepool_id, target, labels, rollout, since):
            return False
        if self._rollouts is not None:
            self._rollouts.add_pool(rollout, nodepool_id)
        return scheduler.follow_nodepool(cluster_id, nodepool_id, target=target, labels=labels, since=since)

    async def list_nodepools(self) -> list[dict[str, Any]]:
        """Every followed pool as stored, with the last state read from CCE while it is followed."""
        state, scheduler = self._parts()
        out = []
        for pool in await state.nodepools():
            live = scheduler.fleet.pool(pool.cluster_id, pool.nodepool_id)
            last = live.last if live is not None else None
            out.append(
                {
                    "cluster_id": pool.cluster_id,
                    "nodepool_id": pool.nodepool_id,
                    "target": pool.target,
                    "rollout": pool.rollout,
                    "labels": pool.labels,
                    "outcome": pool.outcome,
                    "phase": last.phase if last is not None else None,
                    "current": last.current if last is not None else None,
                    "creating": last.creating if last is not None else None,
                    "deleting": last.deleting if last is not None else None,
                    "problems": (last.problems or None) if last is not None else None,
                }
            )
        return out

    async def list_jobs(self, *, phase: str | None, rollout: str | None, labels: Mapping[str, str]) -> list[StoredJob]:
        state, _ = self._parts()
        return await state.jobs(phase=phase, rollout=rollout, labels=labels)

    async def get_job(self, job_id: str) -> tuple[StoredJob, list[Event]] | None:
        state, _ = self._parts()
        job = await state.get(job_id)
        if job is None:
            return None
        return job, await state.history(job_id)

    async def remove_job(self, job_id: str) -> bool:
        state, scheduler = self._parts()
        tracked = scheduler.remove(job_id)
        stored = await state.delete(job_id)
        if self._rollouts is not None:
            self._rollouts.forget(job_id)
        return tracked or stored

    async def deliveries(
        self, state: Literal["pending", "rejected"], *, sink: str | None, job_id: str | None, limit: int
    ) -> list[DeliveryRecord]:
        """Outbox rows still ``pending`` or ``rejected`` for good (dead letters), oldest first."""
        store, _ = self._parts()
        return await store.deliveries(state, sink=sink, job_id=job_id, limit=limit)

    async def replay(
        self, *, sink: str | None, event_ids: Sequence[str] | None, job_id: str | None
    ) -> list[DeliveryRecord]:
        """Dead letters of ``sink`` (``None``: every configured durable sink), optionally only those of the event
        ids or the job, become due again with their event ids; each affected deliverer reads its outbox again.

        Raises :class:`~monitor.core.errors.ConfigError` if ``sink`` is not a configured durable sink: its rows
        would have no deliverer to send them."""
        store, _ = self._parts()
        deliverers = {d.name: d for d in self._deliverers}
        if sink is not None and sink not in deliverers:
            shown = repr(sink) if len(sink) <= 100 else repr(sink[:97]) + "..."
            known = ", ".join(deliverers) or "none"
            raise ConfigError(f"sink {shown} is not a configured durable sink; those are: {known}")
        sinks = [sink] if sink is not None else list(deliverers)
        replayed = await store.replay(sinks, event_ids=event_ids, job_id=job_id)
        for name in dict.fromkeys(r.sink for r in replayed):
            deliverers[name].rewind()
        if replayed:
            logger.info("replayed %d rejected events: %s", len(replayed), dict(Counter(r.sink for r in replayed)))
        return replayed

    def rollouts(self) -> list[dict[str, Any]]:
        tracker = self._rollouts
        return [r.summary() for r in tracker.rollouts()] if tracker else []

    def rollout(self, name: str) -> dict[str, Any] | None:
        found = self._rollouts.get(name) if self._rollouts else None
        return found.summary() if found else None

    def cluster(self) -> dict[str, Any] | None:
        """This replica's membership when replicas share the jobs, else ``None``."""
        if self._cluster is None:
            return None
        lost = self._scheduler.stats.lost if self._scheduler is not None else 0
        return self._cluster.summary() | {"lost": lost}

    def feed(self) -> EventFeed:
        return self._feed

    def readiness(self) -> dict[str, bool]:
        scheduler = self._scheduler
        contact = scheduler.stats.last_contact if scheduler else None
        polled = bool(scheduler and scheduler.stats.polls)
        checks = {"cluster": self._cluster.member} if self._cluster is not None else {}
        return checks | {
            "state": self._state is not None and not self._state.closed and self._state_ok,
            "scheduler": self._running,
            # Nothing to poll yet counts as reachable; otherwise CCE must have answered recently — and the endpoint
            # must be one (a 404 APIGW.0101 stopped polling: see monitor.config_error).
            "cce": (scheduler is None or scheduler.config_error is None)
            and (not polled or (contact is not None and time.monotonic() - contact < _REACHABLE_WITHIN)),
        }

    def delivery_lag(self) -> dict[str, dict[str, Any]]:
        now = time.time()
        lags: dict[str, dict[str, Any]] = {}
        for d in self._deliverers:
            oldest = self._outbox_oldest.get(d.name)
            age = round(max(0.0, now - oldest), 3) if oldest is not None else 0.0
            lags[d.name] = {
                "depth": self._outbox_depth.get(d.name, 0),
                "oldest_age_s": age,
                "behind": age > self.config.delivery.behind_after,
                "delivering": d.delivering,  # this daemon holds the sink's lease (one daemon per database does)
            }
        return lags

    def metrics(self) -> tuple[bytes, str]:
        return self._metrics.render()

    def _parts(self) -> tuple[Store, Scheduler]:
        if self._state is None or self._scheduler is None:
            raise RuntimeError("the daemon is not running")
        return self._state, self._scheduler

    # ---------------------------------------------------------------------------------------- run

    def _build_sinks(self, state: Store) -> list[SinkBinding]:
        """Durable sinks get an outbox route and a deliverer (``self._deliverers``); the rest go on the bus."""
        plain: list[SinkBinding] = []
        seen: Counter[str] = Counter()
        for entry in self.config.sinks:
            sink = create_sink(entry.spec, entry.options)
            f = entry.filter
            event_filter = EventFilter.of(f.types, f.phases, f.labels)
            if is_durable(sink):
                seen[sink.name] += 1
                # Outbox rows are keyed by sink name: two sinks with the same target need distinct keys.
                name = sink.name if seen[sink.name] == 1 else f"{sink.name}#{seen[sink.name]}"
                state.route(name, event_filter, getattr(sink, "wants", None))
                d = self.config.delivery
                self._deliverers.append(
                    Deliverer(
                        sink,
                        state,
                        name=name,
                        retry_initial=d.retry_initial,
                        retry_max=d.retry_max,
                        concurrency=d.concurrency if d.ordering == "job" else 1,
                        observe=self._metrics.delivery_latency.labels(name).observe,
                        holder=self._replica,
                        lease_ttl=self.config.state.replica_ttl,
                    )
                )
            else:
                plain.append(SinkBinding(sink, event_filter))
        return plain

    async def _limiter(self, state: Store) -> Limiter:
        """The one rate limit over every request to CCE: shared by every daemon on the same PostgreSQL database
        (the quota is the tenant's), else this process's own."""
        settings = self.config.polling
        if self.config.state.backend == "postgres":
            from monitor.daemon.pglimiter import SharedLimiter, limit_name  # noqa: PLC0415 (psycopg users only)
            from monitor.daemon.pgstore import PgState  # noqa: PLC0415

            assert isinstance(state, PgState)  # (open_store made it from the same setting)
            where = self.config.client_settings()
            shared = await SharedLimiter.open(state.pool, limit_name(where.endpoint, where.project_id), settings.rate)
            self._closing.append(shared.aclose)  # its last update, before the pool closes
            return shared
        # Held for one window at start: a daemon restarted right after a crash must not add a full window of
        # requests to what the previous process sent in its last second.
        return RateLimiter(settings.rate, burst=settings.burst, hold_first_window=True)

    def _wire_metrics(self, scheduler: Scheduler, limiter: Limiter, bus: Bus, probe: LoopLagProbe) -> None:
        sources = self._metrics.sources
        sources.jobs_by_phase = scheduler.phase_counts
        sources.rate = lambda: (
            limiter.configured_rate,
            limiter.effective_rate,
            limiter.waited_seconds,
            limiter.throttled_count,
        )
        sources.budget = lambda: limiter.budget_rate
        sources.queue_depth = lambda: {s.name: s.depth for s in bus.subscriptions} | self._outbox_depth
        sources.deliveries = self._delivery_counts
        sources.outbox_age = lambda: {name: lag["oldest_age_s"] for name, lag in self.delivery_lag().items()}
        sources.loop_lag = lambda: probe.lag
        sources.schedule_lag = lambda: scheduler.stats.lag
        sources.cluster = self.cluster

    def _delivery_counts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for d in self._deliverers:
            counts[(d.name, "delivered")] = d.delivered
            counts[(d.name, "failed")] = d.failed
            counts[(d.name, "rejected")] = d.rejected
        if self._bus is not None:
            for sub in self._bus.subscriptions:
                counts[(sub.name, "delivered")] = sub.delivered
                counts[(sub.name, "failed")] = sub.failed
        return counts

    async def _housekeeping(self, state: Store) -> None:
        """Prune finished jobs past retention; refresh the outbox depth and age for metrics and /readyz."""
        last_prune = -math.inf  # prune once at start-up too
        saved = time.monotonic()
        failing = False
        while True:
            try:
                if time.monotonic() - last_prune >= _PRUNE_EVERY:
                    pruned = await state.prune(self.config.state.retention)
                    last_prune = time.monotonic()
                    if pruned:
                        logger.info("pruned %d finished jobs older than the retention", pruned)
                self._outbox_depth = await state.outbox_depth()
                self._outbox_oldest = await state.outbox_oldest()
                if time.monotonic() - saved >= _SAVE_DURATIONS_EVERY:
                    await self._save_durations(state)
                    saved = time.monotonic()
                self._state_ok = True
                failing = False
            except StateError as exc:  # the database is down: polling holds its news, delivery waits; try again
                self._state_ok = False
                if not failing:
                    logger.warning("the state database failed: %s", exc)
                failing = True
            await asyncio.sleep(_REFRESH_EVERY)

    async def _save_durations(self, state: Store) -> None:
        if self._durations is not None and self._durations.changed:
            await state.save_durations(self._durations.dump())

    async def run(self, stop: asyncio.Event, *, on_ready: Callable[[str], Any] | None = None) -> None:
        """Run until ``stop`` is set; then shut down in order (see the module docstring)."""
        cfg = self.config
        state = await open_store(cfg.state)
        self._state = state
        try:
            await self._serve(state, stop, on_ready)
        finally:
            await state.close()
            self._state = None

    async def _serve(self, state: Store, stop: asyncio.Event, on_ready: Callable[[str], Any] | None) -> None:
        cfg = self.config
        settings = cfg.polling
        auth = (
            self._auth
            or cfg.make_auth()
            or auth_from_env(self._env, project_id=cfg.project_id, iam_endpoint=cfg.iam_endpoint)
        )
        limiter = await self._limiter(state)
        probe = LoopLagProbe()
        async with CCEClient(cfg.client_settings(), auth) as client:
            plain = self._build_sinks(state)
            deliverers = self._deliverers

            def on_event(event: Event) -> None:
                self._metrics.count_event(event)
                self._feed.publish(event)
                if event.type is EventType.MONITOR_CONFIG_ERROR:
                    logger.error("%s; polling has stopped until the configuration is fixed", event.detail)
                for d in deliverers:
                    d.notify()

            def publish_digest(bus: Bus) -> Callable[[Event], Awaitable[None]]:
                async def publish(event: Event) -> None:
                    if self._cluster is not None and not self._cluster.coordinator:
                        return  # one replica publishes the digests (the others keep the view for the API)
                    # Durable sinks get digests through their outbox; a digest recorded before (a finished
                    # rollout announced again after a restart, or by another replica) is not published twice.
                    for new in await state.record_events([event]):
                        await bus.publish(new)

                return publish

            self._durations = Durations()  # ETAs and the adaptive strategy start from what was learned before
            self._durations.load(await state.durations())
            pipeline = Pipeline(
                client,
                settings,
                sinks=plain,
                feeds=deliverers,
                observers=[on_event],
                limiter=limiter,
                store=state,
                on_poll=self._metrics.observe_poll,
                rollout_interval=cfg.rollouts.interval,
                publish_digest=publish_digest,
                durations=self._durations,
            )
            async with pipeline:
                self._bus, self._scheduler, self._rollouts = pipeline.bus, pipeline.scheduler, pipeline.rollouts
                scheduler = pipeline.scheduler
                self._wire_metrics(scheduler, limiter, pipeline.bus, probe)
                restored = 0
                chores = [self._housekeeping(state), probe.run()]
                if cfg.state.backend == "postgres":  # replicas: the jobs polled here are those claimed
                    cluster = await self._join(state, pipeline)
                    chores.append(cluster.run())
                else:
                    now = time.time()
                    for job in await state.unfinished():
                        restored += scheduler.add(job.job_id, job.labels, previous=job.snapshot, age=now - job.added_at)
                if self._cluster is not None:  # first: what others write while the view is read is read again
                    await self._cluster.start_tail()
                await self._restore(state, pipeline, follow=self._cluster is None)
                await self._warn_stranded(state)
                if restored:
                    logger.info("tracking %d unfinished jobs from %s again", restored, state.where)
                token = Secret(cfg.api.token.get_secret_value()) if cfg.api.token is not None else None
                app = make_app(self, token=token, max_body=cfg.api.max_body)
                runner, endpoint = await serve(app, cfg.api.host, cfg.api.port)
                self.endpoint = endpoint

                async def ready_then_stop() -> None:
                    for d in deliverers:
                        d.notify()  # rows left from before a restart
                    self._running = True
                    self.started.set()
                    logger.info("cce-monitor daemon ready; API on %s", endpoint)
                    if on_ready is not None:
                        on_ready(endpoint)
                    await stop.wait()
                    logger.info("shutting down")

                async def close_api() -> None:
                    self._running = False
                    self._feed.close()  # open event streams end, or they would hold the API's shutdown
                    await runner.cleanup()  # no new jobs
                    with contextlib.suppress(StateError):
                        await self._save_durations(state)
                    if self._cluster is not None:
                        await self._cluster.leave()  # the other replicas take over now, not after the TTL

                try:
                    await pipeline.run(
                        ready_then_stop(),
                        deadline=cfg.shutdown_deadline,
                        chores=chores,
                        on_stopping=close_api,
                    )
                finally:
                    await close_api()
                    for close in self._closing:
                        await close()
                    stats = scheduler.stats
                    logger.info(
                        "stopped: %d polls %s, %d events; deliveries %s",
                        stats.polls,
                        dict(stats.outcomes),
                        stats.events,
                        {d.name: d.delivered for d in deliverers},
                    )

    async def _warn_stranded(self, state: Store) -> None:
        """Outbox rows of a sink no longer configured (renamed URL or path) would wait forever: say so."""
        configured = {d.name for d in self._deliverers}
        for sink, count in (await state.outbox_depth()).items():
            if sink not in configured:
                logger.warning(
                    "%d undelivered events wait for sink %s, which is no longer configured; "
                    "configure it again to deliver them",
                    count,
                    sink,
                )

    async def _join(self, state: Store, pipeline: Pipeline) -> Cluster:
        """Become a replica sharing the jobs with every daemon on the same database (monitor.daemon.pgcluster)."""
        from monitor.daemon.pgstore import PgState  # noqa: PLC0415 (psycopg users only)
        from monitor.daemon.replica import join  # noqa: PLC0415

        assert isinstance(state, PgState)  # (open_store made it from the same setting)
        self._cluster = join(state, self._replica, pipeline, self._deliverers, self.config.state.replica_ttl)
        return self._cluster

    @staticmethod
    async def _restore(state: Store, pipeline: Pipeline, *, follow: bool = True) -> None:
        """Rebuild rollout aggregates from the database (jobs of every rollout still kept), and follow again
        what was followed: the pools not settled, their nodes' jobs, the nodes still awaited (``follow``: on its
        own; replicas sharing the jobs follow what they claim). A rollout is judged finished only once all of
        it is back (its nodes, their confirmations, its pools)."""
        scheduler, rollouts = pipeline.scheduler, pipeline.rollouts
        members: dict[str, list[StoredJob]] = {}
        for job in await state.jobs():
            if job.rollout:
                members.setdefault(job.rollout, []).append(job)
        for name, jobs in members.items():
            rollouts.add(name, [j.job_id for j in jobs], started=min(j.added_at for j in jobs))
            for j in jobs:
                snap = j.snapshot
                rollouts.restore(
                    name,
                    j.job_id,
                    phase=j.outcome or j.phase,
                    ended=j.finished_at,
                    reason=snap.reason or None if snap else None,
                    resource_name=snap.resource_name or None if snap else None,
                    subjobs={s.id: s.phase.value for s in snap.walk()} if snap else None,
                )
                if snap is not None:  # a ScaleupCluster's nodes as last seen; a failed job's deepest reason
                    rollouts.on_snapshot(j.job_id, snap)
        pools = await state.nodepools(unfinished=True)
        nodes, awaited = await state.fleet_state()
        for found in nodes:
            if follow:
                scheduler.fleet.remember(found)
            node, rollout = found.node, found.labels.get("rollout")
            if rollout:
                rollouts.add_node(rollout, node.job_id, node_id=node.id, node_name=node.name, deleting=found.deleting)
        for event in await state.confirmations([j.job_id for jobs in members.values() for j in jobs]):
            rollouts.on_event(event)  # nodes confirmed (or failed) before the restart
        for pool in pools:
            if pool.rollout:
                rollouts.add_pool(pool.rollout, pool.nodepool_id)
            if not follow:
                continue
            seen = [(f.node.id, f.node.job_id) for f in nodes if f.nodepool_id == pool.nodepool_id]
            scheduler.follow_nodepool(
                pool.cluster_id,
                pool.nodepool_id,
                target=pool.target,
                labels=pool.labels,
                since=pool.added_at,
                seen=seen,
            )
        for waited in awaited if follow else ():
            scheduler.fleet.restore(waited)
        for name in {*members, *(p.rollout for p in pools if p.rollout)}:
            rollouts.recheck(name)
        if pools or awaited:
            logger.info("following %d node pools and awaiting %d nodes again", len(pools), len(awaited))
