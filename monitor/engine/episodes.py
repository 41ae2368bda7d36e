"""What a failed poll leads to: per-job backoff, the 404 grace, the pause on refused credentials, and a wrong
endpoint that stops polling. :class:`~monitor.engine.scheduler.Scheduler` takes these functions as its methods
(``sched`` is the scheduler).

* 5xx, timeouts, connection errors, malformed bodies, ``CCE.01429002`` (a lock, not throttling) → the job backs
  off exponentially with full jitter; after ``failure_threshold`` in a row one ``job.poll_failed``.
* 404 → retried; ``job.not_found`` only after ``not_found_count`` 404s over ``not_found_grace``. 404 with
  ``APIGW.0101`` → one ``monitor.config_error``: no job can be read at this endpoint.
* 401, or 403s from every job (as many different jobs as are tracked, at most 3, with no successful read
  between) → one ``monitor.auth_failed`` and all polling pauses with backoff. A 403 on one job while others are
  read is that job's failure, and stays so when that job is the last one tracked.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from monitor.core.backoff import full_jitter
from monitor.core.errors import (
    AuthError,
    EndpointError,
    MonitorError,
    NotFoundError,
    ThrottledError,
    TransportError,
)
from monitor.core.events import EventType, Outcome
from monitor.engine.tracked import Tracked

if TYPE_CHECKING:
    from monitor.engine.scheduler import Scheduler

__all__ = ["auth_ok", "episode", "on_auth_failed", "on_endpoint_error", "on_error", "on_not_found", "on_poll_error"]

logger = logging.getLogger("monitor.engine.scheduler")


async def on_poll_error(sched: Scheduler, tracked: Tracked, exc: MonitorError) -> None:
    """What a failed read of a job (or probe) leads to; the limiter has already heard of a 429."""
    if not isinstance(exc, TransportError):
        sched.stats.last_contact = sched._clock()  # CCE (or its gateway) answered
    if isinstance(exc, EndpointError):
        await on_endpoint_error(sched, tracked, exc)
    elif isinstance(exc, NotFoundError):
        await on_not_found(sched, tracked, exc)
    elif isinstance(exc, AuthError) and exc.status == 403 and not _forbidden_everywhere(sched, tracked):
        # One job refused (CCE.01403001, a cluster that is busy) while others are read: that job's failure.
        await on_error(sched, tracked, exc)
    elif isinstance(exc, AuthError):
        await on_auth_failed(sched, tracked, exc)
    elif isinstance(exc, ThrottledError):
        retry = exc.retry_after or 0.0
        sched._reschedule(tracked, max(sched.settings.min_interval, retry) + sched._rng.uniform(0, 1))
    else:  # LockedError too: this job's resource is busy, retry it later; the others go on at full rate
        await on_error(sched, tracked, exc)


def _forbidden_everywhere(sched: Scheduler, tracked: Tracked) -> bool:
    """Whether 403s come from every job, not one: from as many different jobs (at most 3) as are tracked,
    with no successful read between (:func:`auth_ok` forgets them). One job refused again and again — it
    retries on its own backoff, faster than the others poll — is still one job; and a job refused while
    another was read stays refused on its own, even once it is the last job tracked."""
    if tracked.refused_alone:
        return False
    sched._forbidden.add(tracked.job_id)
    return len(sched._forbidden) >= min(3, max(1, len(sched)))


async def on_endpoint_error(sched: Scheduler, tracked: Tracked, exc: EndpointError) -> None:
    """404 ``APIGW.0101``: the gateway knows no such API — the endpoint (or a path in it) is wrong, for every
    job. One ``monitor.config_error``, and polling stops: ``watch`` ends with exit 2, the daemon keeps serving
    its API (``/readyz`` says ``cce: false``) until its configuration is fixed and it is restarted."""
    if sched.config_error is None:
        endpoint, prefix = sched._client.settings.endpoint, sched._client.settings.api_prefix
        sched.config_error = (
            f"endpoint {endpoint} has no such API ({exc}): check endpoint (no path such as /api/v3) "
            f"and api_prefix ({prefix})"
        )
        logger.debug("%s; polling stops", sched.config_error)  # the event says it (watch prints it once)
        event = sched._event(tracked, EventType.MONITOR_CONFIG_ERROR, detail=sched.config_error, key=endpoint)
        await sched._commit(tracked, [event])
    sched._paused_until = math.inf
    sched._wake.set()
    sched._halted.set()


async def on_not_found(sched: Scheduler, tracked: Tracked, exc: NotFoundError) -> None:
    now = sched._clock()
    s = sched.settings
    if tracked.not_found == 0:
        tracked.first_not_found = now
    tracked.not_found += 1
    sched._auth_ok(tracked)
    if tracked.not_found >= s.not_found_count and now - tracked.first_not_found >= s.not_found_grace:
        sched._finish(tracked)
        detail = f"{tracked.not_found} consecutive 404s over {now - tracked.first_not_found:.0f}s: {exc}"
        await sched._commit(
            tracked, [sched._event(tracked, EventType.JOB_NOT_FOUND, detail=detail)], outcome=Outcome.NOT_FOUND
        )
        return
    # Spread the confirming polls over the grace period.
    delay = max(s.not_found_grace / s.not_found_count, s.min_interval)
    sched._reschedule(tracked, sched._jittered(min(delay, s.interval)))


async def on_error(sched: Scheduler, tracked: Tracked, exc: BaseException) -> None:
    s = sched.settings
    tracked.failures += 1
    delay = max(s.min_interval, full_jitter(tracked.failures - 1, s.error_backoff, s.error_backoff_max, sched._rng))
    sched._reschedule(tracked, delay)
    logger.info(
        "job %s: poll failed (%d in a row), next try in %.1fs: %s", tracked.job_id, tracked.failures, delay, exc
    )
    if tracked.failures == s.failure_threshold:
        await sched._commit(
            tracked,
            [
                sched._event(
                    tracked,
                    EventType.JOB_POLL_FAILED,
                    detail=f"{tracked.failures} polls failed in a row; last: {exc}",
                    key=sched._episode(),
                )
            ],
        )


def episode(sched: Scheduler) -> str:
    return f"{sched._run_key}.{next(sched._episodes)}"


def auth_ok(sched: Scheduler, read: Tracked) -> None:
    """``read`` was read: the credentials work, so the other jobs refused since are refused on their own.
    (On every good read: the usual case — nothing refused, no episode — costs two tests.)"""
    if read.refused_alone:
        read.refused_alone = False
    if sched._forbidden:
        for job_id in sched._forbidden:
            if job_id != read.job_id and (refused := sched._jobs.get(job_id)) is not None:
                refused.refused_alone = True
        sched._forbidden.clear()
    if sched._auth_episode:
        logger.info("authentication works again; polling resumes")
        sched._auth_episode = False
        sched._auth_delay = sched.settings.auth_backoff


async def on_auth_failed(sched: Scheduler, tracked: Tracked, exc: AuthError) -> None:
    if sched.config_error is not None:  # polling has stopped for a wrong endpoint: nothing to resume
        return
    now = sched._clock()
    s = sched.settings
    first = not sched._auth_episode
    if first or sched._paused_until <= now:
        if not first:
            sched._auth_delay = min(s.auth_backoff_max, sched._auth_delay * 2)
        sched._paused_until = now + sched._auth_delay
        sched._wake.set()
        logger.error("authentication failed (%s); pausing all polling for %.0fs", exc, sched._auth_delay)
    sched._auth_episode = True
    sched._reschedule(tracked, sched._paused_until - now + sched._rng.uniform(0, 1))
    if first:
        await sched._commit(
            tracked,
            [
                sched._event(
                    tracked,
                    EventType.MONITOR_AUTH_FAILED,
                    detail=str(exc),
                    key=sched._episode(),
                )
            ],
        )
