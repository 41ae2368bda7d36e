"""The one pipeline — scheduler → bus → sinks, with rollouts and a structured shutdown — and ``watch`` on it.

:class:`Pipeline` is assembled the same way for ``watch`` and for the daemon, which only add their own parts
(the daemon: a store, outbox feeds, an API and chores).

:func:`watch` is what ``cce-monitor watch`` and ``cce-monitor demo`` run. It returns when every job has reached
a final outcome (Success, Failed, timed out, not found) or when ``stop`` is set (a signal). Either way it stops
polling, lets polls in flight finish, drains every sink's queue within the deadline, closes the sinks and only
then returns — so the exit code is decided after the sinks are flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from monitor.cce.client import CCEClient
from monitor.cce.throttle import Limiter
from monitor.core.events import Event, Outcome
from monitor.engine.bus import Bus, Callback, EventFilter
from monitor.engine.durations import Durations
from monitor.engine.fleet import PoolNode
from monitor.engine.journal import JobStore
from monitor.engine.outputs import Output, Unsent, close_sinks, drain_sinks
from monitor.engine.rollout import RolloutTracker
from monitor.engine.scheduler import Scheduler, SchedulerSettings

__all__ = ["Deadline", "Feed", "NodePoolTarget", "Outcome", "Pipeline", "SinkBinding", "WatchResult", "watch"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SinkBinding:
    """A sink and the events it wants."""

    sink: Output
    filter: EventFilter = field(default_factory=EventFilter)


@dataclass(frozen=True, slots=True)
class NodePoolTarget:
    """A node pool to follow until it settles (at ``target`` nodes, else its ``initialNodeCount``)."""

    cluster_id: str
    nodepool_id: str
    target: int | None = None


@dataclass(frozen=True, slots=True)
class WatchResult:
    outcomes: Mapping[str, Outcome]
    interrupted: bool
    unsent: Unsent = field(default_factory=dict)  # per sink, events it held back and could not send in time
    config_error: str | None = None  # polling stopped: the endpoint has no such API (a wrong path)

    @property
    def exit_code(self) -> int:
        """0 all Success; 1 any Failed, timed out, not found or unfinished; 2 a configuration error found while
        polling (a wrong endpoint); 130 interrupted by a signal."""
        if self.interrupted:
            return 130
        if self.config_error is not None:
            return 2
        return 0 if all(o is Outcome.SUCCESS for o in self.outcomes.values()) else 1


class Feed(Protocol):
    """An output fed from elsewhere than the bus (the daemon's outbox deliverers): run, wait until idle."""

    @property
    def sink(self) -> Output: ...

    async def run(self) -> None: ...

    async def wait_idle(self) -> None: ...


class Deadline:
    """Seconds left of a shutdown that must end ``seconds`` after it started (at least ``floor`` per step)."""

    __slots__ = ("_end", "_floor")

    def __init__(self, seconds: float, *, floor: float = 0.1) -> None:
        self._end = time.monotonic() + seconds
        self._floor = floor

    def left(self) -> float:
        return max(self._floor, self._end - time.monotonic())


class Pipeline:
    """Scheduler → bus → sinks, with rollouts, assembled once for ``watch`` and the daemon.

    ``async with Pipeline(...) as p:`` opens the bus and subscribes the sinks; :meth:`run` polls until ``end``
    completes and then shuts down in order within ``deadline`` seconds: stop polling and let polls in flight
    finish; let the rollout tracker publish its final digests; close the bus
    (every sink's queue drained); let feeds go idle and drainable sinks send what they hold back; cancel the
    chores. Leaving the ``async with`` closes every sink, whatever happened.
    """

    def __init__(
        self,
        client: CCEClient,
        settings: SchedulerSettings,
        *,
        sinks: Sequence[SinkBinding] = (),
        feeds: Sequence[Feed] = (),
        observers: Sequence[Callback] = (),
        limiter: Limiter | None = None,
        store: JobStore | None = None,
        on_poll: Callable[[str, float], None] | None = None,
        on_outcome: Callable[[str, Outcome], None] | None = None,
        rollout_interval: float = 30.0,
        track_rollouts: bool = True,
        on_node_job: Callable[[PoolNode], None] | None = None,
        publish_digest: Callable[[Bus], Callable[[Event], Awaitable[None]]] | None = None,
        durations: Durations | None = None,
    ) -> None:
        self._sinks = list(sinks)
        self._feeds = list(feeds)
        self.bus = Bus()
        for binding in self._sinks:
            self.bus.subscribe(binding.sink.send, binding.filter, name=binding.sink.name)
        for observer in observers:
            self.bus.subscribe(observer)
        publish = publish_digest(self.bus) if publish_digest is not None else self.bus.publish
        self.rollouts = RolloutTracker(
            publish,
            project_id=client.settings.project_id,
            interval=rollout_interval,
            node_check=(settings or SchedulerSettings()).node_check,
        )
        self._track_rollouts = track_rollouts
        self._on_node_job = on_node_job
        self.scheduler = Scheduler(
            client,
            self._publish,
            settings,
            limiter=limiter,
            store=store,
            on_poll=on_poll,
            on_outcome=on_outcome,
            on_change=self.rollouts.on_snapshot if track_rollouts else None,
            on_node_job=self._node_job,
            durations=durations,
        )
        self.rollouts.eta_source = self.scheduler.eta

    def _node_job(self, found: PoolNode) -> None:
        """A followed pool's node is being created or deleted by a job, now tracked."""
        rollout, job_id, node = found.labels.get("rollout"), found.node.job_id, found.node
        if self._track_rollouts and rollout:
            self.rollouts.add(rollout, [job_id])
            self.rollouts.add_node(rollout, job_id, node_id=node.id, node_name=node.name, deleting=found.deleting)
        if self._on_node_job is not None:
            self._on_node_job(found)

    async def _publish(self, event: Event) -> None:
        """What the scheduler found: the rollout tracker sees it first (its digests then go to the bus, never
        back to where they came from), then the bus fans it out."""
        if self._track_rollouts:
            self.rollouts.on_event(event)
        await self.bus.publish(event)

    @property
    def outputs(self) -> list[Output]:
        """Every sink, those on the bus and those behind a feed."""
        return [b.sink for b in self._sinks] + [f.sink for f in self._feeds]

    async def __aenter__(self) -> Pipeline:
        await self.bus.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.bus.__aexit__(*exc)
        finally:
            await close_sinks(self.outputs)

    async def run(
        self,
        end: Awaitable[Any],
        *,
        deadline: float,
        chores: Sequence[Coroutine[Any, Any, None]] = (),
        on_stopping: Callable[[], Awaitable[None]] | None = None,
        wait_for_budget: bool = False,
        stop: asyncio.Event | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> Unsent:
        """Poll until ``end`` completes (or the scheduler fails), then shut down (see the class docstring).

        ``on_stopping`` runs first (the daemon closes its API). Drainable sinks get what is left of ``deadline``
        to send what they hold back — or, with ``wait_for_budget`` and ``stop`` not set, each its own bound (a
        chat sink's ``final_wait``); if ``stop`` is set meanwhile, ``deadline`` more at most. Returns what
        drainable sinks could not send, per sink.
        """
        async with asyncio.TaskGroup() as tg:
            # Polls in flight get half the deadline; the sinks' queues and outboxes the rest.
            poller = tg.create_task(self.scheduler.run(drain=deadline / 2), name="scheduler")
            helpers = [tg.create_task(self.rollouts.run(), name="rollout-digests")]
            helpers += [tg.create_task(f.run(), name=f"deliver:{f.sink.name}") for f in self._feeds]
            helpers += [tg.create_task(c, name=getattr(c, "__qualname__", "chore")) for c in chores]
            ending = asyncio.ensure_future(end)
            try:
                await asyncio.wait({ending, poller}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ending.cancel()
            # A failing ``end`` (the daemon's start-up callback) still gets the orderly shutdown, then is raised.
            failed = ending.exception() if ending.done() and not ending.cancelled() else None
            left = Deadline(deadline, floor=0.5)
            if on_stopping is not None:
                await on_stopping()
            self.scheduler.stop()
            await poller  # within half of the deadline
            digests = helpers[0]
            digests.cancel()  # its periodic flush must not hold the final digest while the bus closes
            with contextlib.suppress(asyncio.CancelledError):
                await digests
            await self.rollouts.flush()  # it saw every job event as the scheduler published it
            await self.bus.aclose(left.left())
            own_bound = wait_for_budget and not (stop is not None and stop.is_set())
            unsent = await self._drain_outputs(left, None if own_bound else left.left(), stop, deadline, notify)
            for task in helpers:
                task.cancel()
        if failed is not None:
            raise failed
        return unsent

    async def _drain_outputs(
        self,
        left: Deadline,
        within: float | None,
        stop: asyncio.Event | None,
        after_stop: float,
        notify: Callable[[str], None] | None,
    ) -> Unsent:
        draining = asyncio.ensure_future(
            drain_sinks(self.outputs, within=within, stop=stop, after_stop=after_stop, notify=notify)
        )
        if not self._feeds:
            return await draining
        idle = [asyncio.ensure_future(f.wait_idle()) for f in self._feeds]
        _done, pending = await asyncio.wait([*idle, draining], timeout=left.left())
        for fut in pending:
            fut.cancel()
        if pending:
            logger.warning("outbox not empty at the shutdown deadline; it will be delivered after restart")
        return draining.result() if draining.done() and not draining.cancelled() else {}


async def watch(
    job_ids: Sequence[str],
    *,
    client: CCEClient,
    settings: SchedulerSettings,
    sinks: Sequence[SinkBinding] = (),
    observers: Sequence[Callback] = (),
    labels: Mapping[str, str] | None = None,
    stop: asyncio.Event | None = None,
    rollout: str | None = None,
    rollout_interval: float = 30.0,
    notify: Callable[[str], None] | None = None,
    deadline: float = 20.0,
    nodepools: Sequence[NodePoolTarget] = (),
) -> WatchResult:
    """Poll ``job_ids`` (and follow ``nodepools``) until each is final or ``stop`` is set; deliver events to
    sinks and observers. A pool's nodes' jobs join the rollout as they are found; its outcome is keyed
    ``nodepool/<cluster>/<pool>``, an awaited node's ``node/<id>``.

    With ``rollout``, the jobs form one rollout: its ``rollout.progress`` digests (every ``rollout_interval``)
    and ``rollout.finished`` summary go to the sinks too.

    Sinks that hold events back (chat digests within a rate budget) get to send them before they close: after
    a normal end each waits up to its own bound (a chat sink's ``final_wait``) so the final summary arrives;
    after ``stop`` (or if it is set meanwhile) they share what is left of ``deadline`` (half of it is for polls
    in flight). What could not be sent is
    in :attr:`WatchResult.unsent`; ``notify`` hears what they are waiting for.
    """
    stop = stop or asyncio.Event()
    if rollout is not None:
        labels = {**(labels or {}), "rollout": rollout}
    outcomes: dict[str, Outcome] = dict.fromkeys(job_ids, Outcome.UNFINISHED)

    def found(node: PoolNode) -> None:
        outcomes.setdefault(node.node.job_id, Outcome.UNFINISHED)

    pipeline = Pipeline(
        client,
        settings,
        sinks=sinks,
        observers=observers,
        on_outcome=outcomes.__setitem__,
        rollout_interval=rollout_interval,
        track_rollouts=rollout is not None,
        on_node_job=found,
    )
    async with pipeline:
        if rollout is not None:
            pipeline.rollouts.add(rollout, job_ids)
        scheduler = pipeline.scheduler
        scheduler.add_many(job_ids, labels)
        for pool in nodepools:
            if scheduler.follow_nodepool(pool.cluster_id, pool.nodepool_id, target=pool.target, labels=labels):
                outcomes[f"nodepool/{pool.cluster_id}/{pool.nodepool_id}"] = Outcome.UNFINISHED
                if rollout is not None:
                    pipeline.rollouts.add_pool(rollout, pool.nodepool_id)

        async def end() -> None:
            idle = asyncio.ensure_future(scheduler.wait_idle())
            stopped = asyncio.ensure_future(stop.wait())
            halted = asyncio.ensure_future(scheduler.wait_halted())  # the endpoint has no such API
            try:
                await asyncio.wait({idle, stopped, halted}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                idle.cancel()
                stopped.cancel()
                halted.cancel()
            if stop.is_set() and len(scheduler):
                logger.info("stopping: %d jobs still tracked", len(scheduler))

        unsent = await pipeline.run(
            end(),
            deadline=deadline,
            wait_for_budget=True,
            stop=stop,
            notify=notify,
        )
        for key in scheduler.pending():  # still followed when the watch ended: not a success
            outcomes[key] = Outcome.UNFINISHED
    return WatchResult(outcomes, stop.is_set(), unsent, scheduler.config_error)
