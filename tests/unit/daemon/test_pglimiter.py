"""The shared rate limit (``monitor.daemon.pglimiter``) on a real PostgreSQL server: replicas — here several
limiters, each with its own connection pool, as separate processes would have — share one even schedule."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from monitor.daemon.pglimiter import SharedLimiter, limit_name
from monitor.daemon.pgstore import PgState
from monitor.testing import PostgresServer

pytestmark = [pytest.mark.usefixtures("postgres"), pytest.mark.solo]  # arrivals per second: alone

NAME = limit_name("https://cce.example.com", "0" * 32)


async def pools(dsn: str, n: int) -> list[AsyncConnectionPool[AsyncConnection[Any]]]:
    await (await PgState.open(dsn)).close()  # the schema, with the limiter's table
    made = [AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) for _ in range(n)]
    for pool in made:
        await pool.open(wait=True, timeout=10)
    return made


def busiest_window(times: list[float], width: float = 1.0) -> int:
    """The most admissions in any sliding window of ``width`` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_three_replicas_share_one_rate_and_never_pass_it(pg_dsn: str) -> None:
    rate, seconds = 20.0, 3.0
    made = await pools(pg_dsn, 3)
    try:
        limiters = [await SharedLimiter.open(pool, NAME, rate) for pool in made]
        admitted: list[list[float]] = [[] for _ in limiters]

        async def replica(i: int) -> None:  # one dispatcher per replica, always wanting a request
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                await limiters[i].acquire()
                admitted[i].append(time.monotonic())

        await asyncio.gather(*(replica(i) for i in range(3)))
    finally:
        await asyncio.gather(*(p.close() for p in made))
    everyone = [t for times in admitted for t in times]
    assert busiest_window(everyone) <= rate, "no 1-second window over the tenant's rate"
    assert len(everyone) >= 0.8 * rate * seconds, f"the rate is used: {len(everyone)} in {seconds:g}s"
    assert all(len(times) >= 0.2 * len(everyone) for times in admitted), [len(t) for t in admitted]


async def test_a_429_at_one_replica_slows_every_replica_and_retry_after_holds_them_all(pg_dsn: str) -> None:
    made = await pools(pg_dsn, 2)
    try:
        first, second = [await SharedLimiter.open(pool, NAME, 20.0) for pool in made]
        first.throttled(retry_after=1.0)
        await first.aclose()  # the update has reached the row
        start = time.monotonic()
        await second.acquire()
        assert time.monotonic() - start >= 0.9, "the other replica waited out the Retry-After too"
        assert second.effective_rate == pytest.approx(10.0), "and goes at half the rate"
        assert first.budget_rate == 0.0
        first.throttled(budget=(120, 60.0))  # the gateway: 120 per minute
        await first.aclose()
        await second.acquire()
        assert second.effective_rate <= 2.0
        assert (first.budget_rate, second.budget_rate) == (2.0, 0.0), "the metric says what this replica heard"
    finally:
        await asyncio.gather(*(p.close() for p in made))


async def test_the_rate_recovers_for_every_replica_after_quiet_seconds(pg_dsn: str) -> None:
    made = await pools(pg_dsn, 2)
    try:
        first, second = [await SharedLimiter.open(pool, NAME, 20.0) for pool in made]
        first.throttled()
        await first.aclose()
        await second.acquire()
        assert second.effective_rate == pytest.approx(10.0)
        await asyncio.sleep(1.1)
        second.succeeded()
        await second.aclose()
        await first.acquire()
        assert first.effective_rate == pytest.approx(12.0), "one step of a tenth, seen by the other replica"
    finally:
        await asyncio.gather(*(p.close() for p in made))


async def test_a_named_budget_stops_capping_every_replica_once_it_has_not_been_named_for_a_while(pg_dsn: str) -> None:
    made = await pools(pg_dsn, 2)
    try:
        first, second = [await SharedLimiter.open(pool, NAME, 20.0) for pool in made]
        first.throttled(budget=(2, 1.0))
        await first.aclose()
        await second.acquire()
        assert second.effective_rate == pytest.approx(2.0)
        async with made[0].connection() as conn:  # as if the hold (a minute) had passed
            await conn.execute("UPDATE rate_limits SET ceiling_until = 0, last_change = 0")
        second.succeeded()
        await second.aclose()
        await first.acquire()
        assert first.effective_rate == pytest.approx(4.0), "recovering above the old budget, for both"
    finally:
        await asyncio.gather(*(p.close() for p in made))


async def test_without_the_database_there_is_no_request(postgres: PostgresServer, pg_dsn: str) -> None:
    """Fail closed: a replica cut off from the database waits in acquire instead of sending on its own."""
    (pool,) = await pools(pg_dsn, 1)
    dbname = pg_dsn.rsplit("/", 1)[1]
    try:
        limiter = await SharedLimiter.open(pool, NAME, 50.0)
        await limiter.acquire()
        async with await AsyncConnection.connect(postgres.dsn(), autocommit=True) as admin:
            await admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false'.encode())
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
            waiting = asyncio.create_task(limiter.acquire())
            await asyncio.sleep(2.0)
            assert not waiting.done(), "no slot without the database"
            await admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true'.encode())
        async with asyncio.timeout(15):
            await waiting
    finally:
        await pool.close()
