"""Watch a set of jobs to the end: scheduler → bus → sinks, with a structured shutdown.

:func:`watch` is what ``cce-monitor watch`` and ``cce-monitor demo`` run. It returns when every job has reached
a final outcome (Success, Failed, timed out, not found) or when ``stop`` is set (a signal). Either way it stops
polling, lets polls in flight finish, drains every sink's queue within the deadline, closes the sinks and only
then returns — so the exit code is decided after the sinks are flushed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from monitor.cce.client import CCEClient
from monitor.core.events import Event, EventType
from monitor.engine.bus import Bus, Callback, EventFilter
from monitor.engine.outputs import Output, Unsent, close_sinks, drain_sinks
from monitor.engine.rollout import JOB_EVENT_TYPES, RolloutTracker
from monitor.engine.scheduler import Scheduler, SchedulerSettings

__all__ = ["Outcome", "SinkBinding", "WatchResult", "watch"]

logger = logging.getLogger(__name__)


class Outcome(StrEnum):
    """How watching one job ended."""

    SUCCESS = "Success"
    FAILED = "Failed"
    TIMED_OUT = "timed_out"
    NOT_FOUND = "not_found"
    UNFINISHED = "unfinished"


@dataclass(frozen=True, slots=True)
class SinkBinding:
    """A sink and the events it wants."""

    sink: Output
    filter: EventFilter = field(default_factory=EventFilter)


@dataclass(frozen=True, slots=True)
class WatchResult:
    outcomes: Mapping[str, Outcome]
    interrupted: bool
    unsent: Unsent = field(default_factory=dict)  # per sink, events it held back and could not send in time

    @property
    def exit_code(self) -> int:
        """0 all Success; 1 any Failed, timed out, not found or unfinished; 130 interrupted by a signal."""
        if self.interrupted:
            return 130
        return 0 if all(o is Outcome.SUCCESS for o in self.outcomes.values()) else 1


class _Outcomes:
    """A bus subscriber that records each job's final outcome."""

    __slots__ = ("outcomes",)

    def __init__(self, job_ids: Sequence[str]) -> None:
        self.outcomes: dict[str, Outcome] = dict.fromkeys(job_ids, Outcome.UNFINISHED)

    def __call__(self, event: Event) -> None:
        if event.job_id is None:
            return
        if event.type is EventType.JOB_PHASE_CHANGED and event.phase in ("Success", "Failed"):
            self.outcomes[event.job_id] = Outcome(event.phase)
        elif event.type is EventType.JOB_TIMED_OUT:
            self.outcomes[event.job_id] = Outcome.TIMED_OUT
        elif event.type is EventType.JOB_NOT_FOUND:
            self.outcomes[event.job_id] = Outcome.NOT_FOUND


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
) -> WatchResult:
    """Poll ``job_ids`` until each is final or ``stop`` is set; deliver events to sinks and observers.

    With ``rollout``, the jobs form one rollout: its ``rollout.progress`` digests (every ``rollout_interval``)
    and ``rollout.finished`` summary go to the sinks too.

    Sinks that hold events back (chat digests within a rate budget) get to send them before they close: after
    a normal end each waits up to its own bound (a chat sink's ``final_wait``) so the final summary arrives;
    after ``stop`` (or if it is set meanwhile) they wait ``settings.drain`` at most. What could not be sent is
    in :attr:`WatchResult.unsent`; ``notify`` hears what they are waiting for.
    """
    stop = stop or asyncio.Event()
    if rollout is not None:
        labels = {**(labels or {}), "rollout": rollout}
    tracker = _Outcomes(job_ids)
    interrupted = False
    unsent: Unsent = {}
    try:
        async with Bus() as bus:
            for binding in sinks:
                bus.subscribe(binding.sink.send, binding.filter, name=binding.sink.name)
            for observer in observers:
                bus.subscribe(observer)
            bus.subscribe(tracker, name="outcomes")
            rollouts = RolloutTracker(bus.publish, project_id=client.settings.project_id, interval=rollout_interval)
            if rollout is not None:
                rollouts.add(rollout, job_ids)
                bus.subscribe(rollouts.on_event, EventFilter.of(types=JOB_EVENT_TYPES), name="rollouts")
            scheduler = Scheduler(client, bus.publish, settings)
            scheduler.add_many(job_ids, labels)
            async with asyncio.TaskGroup() as tg:
                runner = tg.create_task(scheduler.run(), name="scheduler")
                digests = tg.create_task(rollouts.run(), name="rollout-digests")
                idle = tg.create_task(scheduler.wait_idle(), name="wait-idle")
                stopped = tg.create_task(stop.wait(), name="wait-stop")
                await asyncio.wait({idle, stopped, runner}, return_when=asyncio.FIRST_COMPLETED)
                interrupted = stop.is_set() and not idle.done()
                if interrupted:
                    logger.info("stopping: %d jobs still tracked", len(scheduler))
                scheduler.stop()
                idle.cancel()
                stopped.cancel()
                await runner
                # Let the rollout tracker see the last job events, then publish its final digest.
                await bus.drain(settings.drain)
                digests.cancel()
                await rollouts.flush()
            await bus.aclose(settings.drain)
        unsent = await drain_sinks(
            [b.sink for b in sinks],
            within=settings.drain if stop.is_set() else None,
            stop=stop,
            after_stop=settings.drain,
            notify=notify,
        )
    finally:
        await close_sinks(b.sink for b in sinks)
    return WatchResult(tracker.outcomes, interrupted or stop.is_set(), unsent)
