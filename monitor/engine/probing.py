"""The scheduler's part for node pools and nodes: following pools, polling probes, keeping their state.

:class:`~monitor.engine.scheduler.Scheduler` takes these functions as its methods (``sched`` is the scheduler):
a probe (a cluster's node list, a node pool; see
:mod:`monitor.engine.fleet`) is a tracked entry in the scheduler's one heap, polled by the same dispatcher
under the same rate limit, its errors handled by the same backoff and episodes as a job's. What differs is
here: a probe's answer goes to the fleet, not to change detection, and its events are not a job's.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from monitor.core.errors import (
    AuthError,
    EndpointError,
    LockedError,
    MalformedResponseError,
    MonitorError,
    NotFoundError,
    ThrottledError,
)
from monitor.core.events import Event, Outcome
from monitor.core.model import Job, validate_id
from monitor.core.nodes import NODE_JOB_TYPES
from monitor.engine.fleet import ClusterNodes, PoolNode, PoolProbe, Probe, ProbeResult
from monitor.engine.tracked import Tracked

if TYPE_CHECKING:
    from monitor.engine.scheduler import Scheduler

__all__ = [
    "commit_probe",
    "follow_nodepool",
    "outcome_of",
    "pending",
    "poll_probe",
    "record_fleet",
    "start_probe",
    "with_sub_jobs",
]

logger = logging.getLogger("monitor.engine.scheduler")
_NO_LABELS: Mapping[str, str] = {}


def outcome_of(exc: MonitorError) -> str:
    """The label a failed poll is counted under (stats, metrics)."""
    if isinstance(exc, EndpointError):
        return "config_error"
    if isinstance(exc, NotFoundError):
        return "not_found"
    if isinstance(exc, LockedError):
        return "locked"
    if isinstance(exc, AuthError):
        return "auth_failed"
    if isinstance(exc, ThrottledError):
        return "throttled"
    return "error"


def follow_nodepool(
    sched: Scheduler,
    cluster_id: str,
    nodepool_id: str,
    *,
    target: int | None = None,
    labels: Mapping[str, str] | None = None,
    since: float | None = None,
    seen: Iterable[tuple[str, str]] = (),
) -> bool:
    """Follow a node pool until it settles (``target``: the node count to reach, else the pool's
    ``initialNodeCount``), and the jobs and nodes of the nodes it creates or deletes. ``False`` if stopping
    or already followed. ``since`` and ``seen``: see :class:`~monitor.engine.fleet.PoolProbe`."""
    validate_id(cluster_id, "cluster id")
    validate_id(nodepool_id, "node pool id")
    if sched._stopping or f"nodepool/{cluster_id}/{nodepool_id}" in sched._jobs:
        return False
    labels = dict(labels) if labels else {}
    sched.fleet.follow_pool(cluster_id, nodepool_id, target=target, labels=labels, since=since, seen=seen)
    return True


def pending(sched: Scheduler) -> list[str]:
    """What is still followed: job ids, ``nodepool/...`` and ``node/<id>`` keys (awaited nodes)."""
    keys = [key for key, tracked in sched._jobs.items() if not isinstance(tracked.probe, ClusterNodes)]
    return keys + sched.fleet.awaited_keys()


def start_probe(sched: Scheduler, probe: Probe) -> None:
    now = sched._clock()
    pool = isinstance(probe, PoolProbe)  # a pool has a deadline; a node list ends when nothing needs it
    tracked = Tracked(probe.key, _NO_LABELS, now, sched.settings.job_timeout if pool else math.inf, 0.0)
    tracked.delay = sched.settings.interval
    tracked.probe = probe
    sched._jobs[probe.key] = tracked
    sched._push(tracked, now)
    sched._idle.clear()


async def poll_probe(sched: Scheduler, tracked: Tracked, probe: Probe) -> None:
    """A node list or a node pool: one request, the same limiter, error tree and backoff as a job's."""
    sched.stats.polls += 1
    s = sched.settings
    result: ProbeResult | None = None
    try:
        result = await probe.poll(sched._client, sched.limiter.acquire)
        sched.limiter.succeeded()
    except MonitorError as exc:
        sched._count(outcome_of(exc))
        if isinstance(exc, ThrottledError):
            sched.limiter.throttled(exc.retry_after, exc.budget)
        elif isinstance(exc, MalformedResponseError):
            sched.limiter.succeeded()
        if isinstance(exc, NotFoundError) and not isinstance(exc, EndpointError):
            tracked.not_found += 1
            if tracked.not_found >= s.not_found_count:
                result = probe.gone(f"{tracked.not_found} consecutive 404s: {exc}")
            else:
                sched._reschedule(tracked, sched._jittered(s.interval))
        elif isinstance(exc, AuthError) and exc.status == 403:
            # Reading node lists or pools is its own permission: a refusal fails this probe, not all polling.
            await sched._on_error(tracked, exc)
        else:
            await sched._on_poll_error(tracked, exc)  # backoff, one poll_failed after K, the auth pause
    except Exception as exc:  # a bug below us: keep following, loudly (as for a job's poll)
        logger.exception("probe %s: unexpected error", probe.key)
        await sched._on_error(tracked, exc)
    else:
        sched._count("ok")
        sched._auth_ok(tracked)
        tracked.failures = tracked.not_found = 0
    if result is None:  # the read failed: awaited nodes still time out, and so does a pool
        result = probe.expire(ProbeResult()) if isinstance(probe, ClusterNodes) else ProbeResult()
        if not result.done and not result.events:
            if sched._clock() < tracked.deadline:
                return
            result = probe.gone(sched._timeout_detail(), Outcome.TIMED_OUT)
    elif not result.done and sched._clock() >= tracked.deadline:
        result.events += (late := probe.gone(sched._timeout_detail(), Outcome.TIMED_OUT)).events
        result.outcomes += late.outcomes
        result.done = True
    for found in result.discovered:
        sched.fleet.remember(found)
    await record_fleet(sched, discovered=result.discovered)
    for found in result.discovered:  # stored first: the daemon keeps every job it polls
        if sched.add(found.node.job_id, found.labels) and sched._on_node_job is not None:
            sched._on_node_job(found)
    # Only now: with the jobs it found tracked, a finished probe cannot leave the scheduler idle for a moment.
    if result.done:
        sched._finish(tracked)
    elif tracked.failures == 0 and tracked.not_found == 0:
        tracked.delay = s.interval if result.changed else min(s.max_interval, tracked.delay * s.backoff)
        sched._reschedule(tracked, sched._jittered(tracked.delay))
    for key, outcome in result.outcomes:
        if sched._on_outcome is not None:
            sched._on_outcome(key, outcome)
    await commit_probe(sched, result.events)
    await record_fleet(sched, outcomes=result.outcomes)  # after the events: a node is never left unconfirmed


async def record_fleet(
    sched: Scheduler, discovered: Sequence[PoolNode] = (), outcomes: Sequence[tuple[str, Outcome]] = ()
) -> None:
    awaited, resolved = sched.fleet.take_changes()
    if sched._store is None or not (discovered or awaited or resolved or outcomes):
        return
    try:
        await sched._store.record_fleet(discovered, awaited, resolved, outcomes)
    except Exception:
        logger.exception("could not persist the state of node pools and awaited nodes")


async def commit_probe(sched: Scheduler, events: list[Event]) -> None:
    """A node's events are stored with its job's history, a pool's as events of no one job (as rollout
    digests); the outbox takes an id once, so a repeat after a restart goes to no durable sink twice. All
    are published: the rollout tracker must see a node confirmed again after a restart."""
    if sched._store is not None and events:
        try:
            for event in events:
                if event.job_id is not None:
                    # By the node's follower, who need not own the job (it may have ended on another replica).
                    await sched._store.record(event.job_id, None, [event], fenced=False)
                else:
                    await sched._store.record_events([event])
        except Exception:
            logger.exception("could not persist %d node or node pool events", len(events))
    for event in events:
        sched.stats.events += 1
        await sched._publish(event)


async def with_sub_jobs(sched: Scheduler, tracked: Tracked, job: Job) -> Job:
    """``job`` with each per-node sub-job that came without its own sub-jobs read by id, as the Huawei provider
    does (``getResourceIDFromJob`` re-reads the ``CreateNode`` by its uid): at most once per phase of that
    sub-job, each read taking a rate-limit slot. A read that fails leaves the sub-job as it came until its
    phase changes; a 429 or a refused token ends the reads for this poll (and fails it, as a job's read)."""
    cache = tracked.expanded
    subs = list(job.sub_jobs)
    changed = False
    for index, sub in enumerate(subs):
        if sub.sub_jobs or not sub.id or sub.type not in NODE_JOB_TYPES:
            continue
        key = f"{sub.id}:{sub.phase.value}"
        found = cache.get(key) if cache is not None else None
        if found is None:
            await sched.limiter.acquire()
            try:
                found = await sched._client.fetch(sub.id, permit=sched.limiter.acquire)
                sched.limiter.succeeded()
            except (ThrottledError, AuthError):
                raise  # the scheduler slows down or pauses, as for the job itself
            except MonitorError as exc:
                if isinstance(exc, MalformedResponseError):
                    sched.limiter.succeeded()
                logger.info("job %s: could not read sub-job %s: %s", tracked.job_id, sub.id, exc)
                found = sub  # not again until its phase changes
            if cache is None:
                cache = tracked.expanded = {}
            for old in [k for k in cache if k.startswith(f"{sub.id}:")]:
                del cache[old]
            cache[key] = found
        if found is not sub:
            subs[index] = found
            changed = True
    return dataclasses.replace(job, sub_jobs=tuple(subs)) if changed else job
