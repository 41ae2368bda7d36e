"""One rate limit for the tenant, whatever the number of replicas: a GCRA on one PostgreSQL row.

The CCE quota is the tenant's, not a process's: two daemons each paced at ``rate`` would send twice the rate.
:class:`SharedLimiter` implements the scheduler's :class:`~monitor.cce.throttle.Limiter` on a row of an
``UNLOGGED`` table (no WAL: a crash of the server only resets the schedule) that every replica updates:

* :meth:`~SharedLimiter.acquire` is one round trip: ``UPDATE ... SET tat = greatest(tat, now, hold_until) +
  spacing RETURNING`` the slot and the server's clock, then a sleep until the slot. The theoretical arrival time
  (``tat``) of the next request is the database's, on the database's clock, so replicas share one even schedule
  whatever their own clocks say. The spacing is ``1.025 / int(rate)`` seconds, and a replica that would send
  more than 15 ms after its slot (a busy event loop, a slow answer from the database: measured from before the
  query, so it is an upper bound) forfeits the slot and takes another: no 1-second window of arrivals at CCE
  holds more than ``rate`` requests, whichever replica sent them, and 97.5 % of the rate is used when demand
  exceeds it (the local limiter, which cannot forfeit a slot, keeps 100 ms of slack: 91 %).
* :meth:`~SharedLimiter.throttled` (a 429) halves the shared rate (once per second at most), holds every
  replica for ``Retry-After``, and keeps a budget the gateway named as a ceiling; :meth:`~SharedLimiter.succeeded`
  recovers a tenth of the configured rate after a quiet second — both on the row, so every replica slows and
  recovers together. They are called without waiting (the protocol's are plain calls): their update runs in
  the background, one at a time.
* **Fail closed**: without the database there is no slot, so no request — ``acquire`` waits, retrying, and
  says so once. A replica cut off from the database stops polling CCE rather than guessing.

``burst`` does not apply here: the shared schedule is always even.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from monitor.cce.throttle import NamedBudget, budget_hold
from monitor.core.backoff import full_jitter

__all__ = ["SharedLimiter", "limit_name"]

logger = logging.getLogger("monitor.daemon.limiter")

_MIN_FRACTION = 0.05  # as the local limiter: never below a twentieth of the configured rate
_RECOVER_STEP = 0.1
_LATE = 0.015  # a slot this replica would use later than this is forfeited: it takes the next one instead
_MARGIN = 1.0 + _LATE + 0.01  # spacing: any `rate` + 1 slots span 1 s + 25 ms, so no 1-s window of arrivals
# holds more than `rate` requests while each leaves at most 25 ms after its slot (15 ms of them checked here)

# The statements are built from this module's constants only; values go in as parameters.
_NOW = "extract(epoch from clock_timestamp())"
_SPACING = f"(CASE WHEN rate >= 1 THEN {_MARGIN} / floor(rate) ELSE {_MARGIN} / rate END)"
_ACQUIRE = (
    f"UPDATE rate_limits SET tat = greatest(tat, {_NOW}, hold_until) + {_SPACING} WHERE name = %s "  # noqa: S608
    f"RETURNING tat - {_SPACING}, {_NOW}, rate"
)
# A budget the gateway named caps the rate until `ceiling_until` (cce.throttle.budget_hold after the last 429
# naming it); past that the ceiling is the configured rate again.
_CEILING = f"(CASE WHEN {_NOW} >= ceiling_until THEN configured ELSE ceiling END)"
_THROTTLED = f"""
UPDATE rate_limits SET
    hold_until = greatest(hold_until, {_NOW} + %(hold)s),
    ceiling = least({_CEILING}, %(ceiling)s),
    ceiling_until = CASE WHEN %(named)s THEN greatest(ceiling_until, {_NOW} + %(keep)s) ELSE ceiling_until END,
    rate = CASE WHEN {_NOW} - last_change >= 1 OR rate = configured
                THEN least(least({_CEILING}, %(ceiling)s), greatest(configured * {_MIN_FRACTION}, rate / 2))
                ELSE least(rate, least({_CEILING}, %(ceiling)s)) END,
    last_change = CASE WHEN {_NOW} - last_change >= 1 OR rate = configured THEN {_NOW} ELSE last_change END
WHERE name = %(name)s RETURNING rate
"""  # noqa: S608
_RECOVERED = f"""
UPDATE rate_limits SET rate = least({_CEILING}, rate + configured * {_RECOVER_STEP}), ceiling = {_CEILING},
    last_change = {_NOW}
WHERE name = %s AND rate < {_CEILING} AND {_NOW} - last_change >= greatest(1, 1 / rate) AND {_NOW} >= hold_until
RETURNING rate
"""  # noqa: S608


def limit_name(endpoint: str, project_id: str) -> str:
    """The row of one tenant's quota: the CCE endpoint and project, hashed (no URL in the database)."""
    return "cce:" + hashlib.sha256(f"{endpoint.rstrip('/')}|{project_id}".encode()).hexdigest()[:32]


class SharedLimiter:
    """The tenant's rate limit, shared through the state database (see the module docstring). Create with
    :meth:`open` on the state's pool; one per daemon, owned by its scheduler."""

    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[Any]], name: str, rate: float) -> None:
        self._pool = pool
        self._name = name
        self.configured_rate = float(rate)
        self.effective_rate = float(rate)
        self.throttled_count = 0
        self.waited_seconds = 0.0
        self.forfeited = 0
        """Slots given up because this replica would have used them too late (see :data:`_LATE`)."""
        self._background: asyncio.Task[None] | None = None
        self._budget = NamedBudget()  # what this replica's 429s named (see budget_rate)
        self._last_recovery_try = 0.0
        self._down = False

    def __repr__(self) -> str:
        return f"SharedLimiter(name={self._name!r}, rate={self.effective_rate:g}/{self.configured_rate:g})"

    @property
    def budget_rate(self) -> float:
        """Requests per second of the lowest budget a 429 *to this replica* named within its hold (0: none);
        the row's ceiling, which every replica's 429s lower, is what caps the rate."""
        return self._budget.rate(time.monotonic(), self.configured_rate)

    @classmethod
    async def open(cls, pool: AsyncConnectionPool[AsyncConnection[Any]], name: str, rate: float) -> SharedLimiter:
        """The limiter of ``name`` at ``rate`` (the row is created, or takes this configured rate)."""
        if not rate > 0:
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        async with pool.connection() as conn, conn.transaction():  # (the table: monitor.daemon.pgschema)
            await conn.execute(
                b"INSERT INTO rate_limits (name, configured, rate, ceiling) VALUES (%s, %s, %s, %s) "
                b"ON CONFLICT (name) DO UPDATE SET configured = excluded.configured, "
                b"rate = least(rate_limits.rate, excluded.configured), "
                b"ceiling = least(rate_limits.ceiling, excluded.configured)",
                (name, rate, rate, rate),
            )
        return cls(pool, name, rate)

    async def acquire(self) -> None:
        """Wait for this request's slot in the shared schedule (and for the database, if it is down)."""
        start = time.monotonic()
        failures = 0
        while True:
            try:
                async with self._pool.connection() as conn:
                    sent = time.monotonic()
                    cur = await conn.execute(_ACQUIRE.encode(), (self._name,))
                    row = await cur.fetchone()
            except psycopg.Error as exc:
                if not self._down:
                    self._down = True
                    logger.warning("shared rate limit: the database failed (%s); no requests until it answers", exc)
                await asyncio.sleep(full_jitter(failures, 0.5, 5.0, least=0.5))
                failures += 1
                continue
            if self._down:
                self._down = False
                logger.info("shared rate limit: the database answers again")
            if row is None:
                raise RuntimeError(f"rate limit row {self._name} is missing")  # only if someone deleted it
            slot, now, rate = float(row[0]), float(row[1]), float(row[2])
            self.effective_rate = rate
            wait = max(0.0, slot - now)
            if wait:
                await asyncio.sleep(wait)
            # The slot, on this clock, is no earlier than `sent + wait` (the database ran the query after `sent`).
            if time.monotonic() - (sent + wait) <= _LATE:
                break
            self.forfeited += 1
        self.waited_seconds += time.monotonic() - start

    def throttled(self, retry_after: float | None = None, budget: tuple[int, float] | None = None) -> None:
        """A 429: halve the shared rate, hold every replica for ``retry_after``, cap it at a named budget."""
        self.throttled_count += 1
        ceiling = self.configured_rate if budget is None else min(self.configured_rate, budget[0] / budget[1])
        keep = budget_hold(budget[1]) if budget is not None else 0.0
        if budget is not None:
            self._budget.named(budget, time.monotonic())
        args = {
            "name": self._name,
            "hold": max(0.0, retry_after or 0.0),
            "ceiling": ceiling,
            "named": budget is not None,
            "keep": keep,
        }
        self._in_background(_THROTTLED, args)

    def succeeded(self) -> None:
        """A request went through: at most once a second, try a recovery step of the shared rate."""
        if self.effective_rate >= self.configured_rate:
            return
        now = time.monotonic()
        if now - self._last_recovery_try < 1.0:
            return
        self._last_recovery_try = now
        self._in_background(_RECOVERED, (self._name,))

    def _in_background(self, sql: str, args: Any) -> None:
        busy = self._background is not None and not self._background.done()
        if busy and sql is _RECOVERED:
            return  # a recovery can wait for the next success; a 429 is queued behind the running update
        previous = self._background
        self._background = asyncio.get_running_loop().create_task(self._update(previous, sql, args))

    async def _update(self, previous: asyncio.Task[None] | None, sql: str, args: Any) -> None:
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(sql.encode(), args)
                row = await cur.fetchone()
        except psycopg.Error as exc:  # the next acquire will wait for the database; this change is lost
            logger.debug("shared rate limit: update failed: %s", exc)
            return
        if row is not None:
            self.effective_rate = float(row[0])

    async def aclose(self) -> None:
        """Let a background update finish (before the pool closes)."""
        if self._background is not None:
            await asyncio.gather(self._background, return_exceptions=True)
