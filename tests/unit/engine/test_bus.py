"""The pub/sub bus: fan-out, filters, isolation of slow and failing subscribers, overflow, shutdown."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from monitor.core.events import Event, EventType, event_id
from monitor.engine.bus import Bus, EventFilter


def ev(n: int, kind: EventType = EventType.JOB_PHASE_CHANGED, phase: str = "Running", **labels: str) -> Event:
    return Event(id=event_id(str(n)), type=kind, project_id="p", job_id=f"job-{n}", phase=phase, labels=labels)


async def test_fan_out_to_sync_and_async_callbacks_in_order() -> None:
    sync_seen: list[str] = []
    async_seen: list[str] = []

    async def async_cb(event: Event) -> None:
        await asyncio.sleep(0)
        async_seen.append(event.job_id)

    async with Bus() as bus:
        bus.subscribe(lambda e: sync_seen.append(e.job_id))
        bus.subscribe(async_cb)
        for n in range(50):
            await bus.publish(ev(n))
    expected = [f"job-{n}" for n in range(50)]
    assert sync_seen == expected
    assert async_seen == expected


async def test_filters_by_type_phase_labels_and_job() -> None:
    got: dict[str, list[str]] = {"types": [], "phases": [], "labels": [], "jobs": []}
    async with Bus() as bus:
        bus.subscribe(lambda e: got["types"].append(e.id), EventFilter.of(types=["job.stalled"]))
        bus.subscribe(lambda e: got["phases"].append(e.id), EventFilter.of(phases=["Failed"]))
        bus.subscribe(lambda e: got["labels"].append(e.id), EventFilter.of(labels={"team": "a"}))
        bus.subscribe(lambda e: got["jobs"].append(e.id), EventFilter.of(job_ids=["job-3"]))
        events = [
            ev(1, EventType.JOB_STALLED),
            ev(2, phase="Failed"),
            ev(3, team="a"),
            ev(4, team="b"),
        ]
        for e in events:
            await bus.publish(e)
    assert got["types"] == [events[0].id]
    assert got["phases"] == [events[1].id]
    assert got["labels"] == [events[2].id]
    assert got["jobs"] == [events[2].id]


async def test_slow_subscriber_does_not_delay_publisher_or_others() -> None:
    fast_seen: list[float] = []
    release = asyncio.Event()

    async def slow(event: Event) -> None:
        await release.wait()

    async with Bus() as bus:
        slow_sub = bus.subscribe(slow, name="slow")
        bus.subscribe(lambda e: fast_seen.append(time.monotonic()), name="fast")
        start = time.monotonic()
        for n in range(100):
            await bus.publish(ev(n))
        publish_time = time.monotonic() - start
        await asyncio.sleep(0.05)
        assert len(fast_seen) == 100, "the fast subscriber got everything while the slow one is stuck"
        assert slow_sub.depth >= 99
        assert publish_time < 1.0
        release.set()
    assert slow_sub.delivered == 100


async def test_failing_callback_is_logged_and_isolated(caplog: pytest.LogCaptureFixture) -> None:
    good: list[str] = []

    def broken(event: Event) -> None:
        if event.job_id == "job-1":
            raise RuntimeError("sink exploded")

    async with Bus() as bus:
        bad_sub = bus.subscribe(broken, name="broken")
        bus.subscribe(lambda e: good.append(e.job_id))
        for n in range(3):
            await bus.publish(ev(n))
    assert good == ["job-0", "job-1", "job-2"]
    assert bad_sub.failed == 1 and bad_sub.delivered == 2
    assert "sink exploded" in caplog.text and "broken" in caplog.text
    assert ev(1).id in caplog.text


async def test_drop_oldest_counts_drops_and_keeps_newest() -> None:
    seen: list[str] = []
    release = asyncio.Event()

    async def gated(event: Event) -> None:
        await release.wait()
        seen.append(event.job_id)

    async with Bus() as bus:
        sub = bus.subscribe(gated, maxsize=5, overflow="drop_oldest")
        await bus.publish(ev(0))
        await asyncio.sleep(0.01)  # job-0 is now being handled, blocked on the gate
        for n in range(1, 21):
            await bus.publish(ev(n))
        assert sub.dropped == 15
        release.set()
    assert seen == ["job-0"] + [f"job-{n}" for n in range(16, 21)]


async def test_block_policy_waits_for_room_and_loses_nothing() -> None:
    seen: list[str] = []

    async def slowish(event: Event) -> None:
        await asyncio.sleep(0.001)
        seen.append(event.job_id)

    async with Bus() as bus:
        sub = bus.subscribe(slowish, maxsize=2)
        for n in range(30):
            await bus.publish(ev(n))
            assert sub.depth <= 2
    assert len(seen) == 30 and sub.dropped == 0


async def test_close_drains_within_deadline_then_cancels_stuck(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    done: list[str] = []

    async def stuck(event: Event) -> None:
        await asyncio.sleep(3600)

    bus = Bus()
    async with bus:
        bus.subscribe(stuck, name="stuck")
        bus.subscribe(lambda e: done.append(e.job_id), name="ok")
        for n in range(4):
            await bus.publish(ev(n))
        start = time.monotonic()
        await bus.aclose(deadline=0.2)
        assert time.monotonic() - start < 1.0
    assert done == [f"job-{n}" for n in range(4)]
    assert "stuck still held 3 events" in caplog.text
    # Intake is stopped: publishing after close delivers nothing and says so.
    await bus.publish(ev(9))
    assert done == [f"job-{n}" for n in range(4)]
    with pytest.raises(RuntimeError):
        bus.subscribe(lambda e: None)
