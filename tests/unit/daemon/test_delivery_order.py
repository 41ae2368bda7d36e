"""Delivery order under random receiver failures (hypothesis): the real outbox (SQLite), the real Deliverer and
the real webhook sink, against a receiver on 127.0.0.1 that fails and delays requests in a drawn pattern.

Whatever the pattern: each job's events arrive (first delivered) in the order recorded, none is lost, a
duplicate is only the same id again, two events of one job are never in flight at once; with one event at a
time (``delivery.ordering: sink``) the whole sink's order holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.daemon.delivery import Deliverer
from monitor.daemon.store import State
from monitor.engine.bus import EventFilter
from monitor.sinks import create_sink
from monitor.testing import Received, Receiver, Reply, make_event

JOBS = 5


@dataclass(frozen=True)
class Answer:
    status: int  # 204, or 500 / 503 (retried)
    delay: float


_answers = st.builds(
    Answer,
    status=st.sampled_from([204, 204, 204, 500, 503]),
    delay=st.sampled_from([0.0, 0.0, 0.001, 0.004]),
)


async def _deliver(plan: Sequence[int], answers: Sequence[Answer], early: int, concurrency: int) -> None:
    events = [
        make_event(id=f"{n:032x}", job_id=f"job-{job}", phase="Running", reason=f"#{n}") for n, job in enumerate(plan)
    ]
    script = list(answers)
    in_flight: dict[str, int] = {}
    overlap: list[str] = []

    async def answer(received: Received) -> Reply:
        job = orjson.loads(received.body)["job_id"]
        in_flight[job] = in_flight.get(job, 0) + 1
        if in_flight[job] > 1:
            overlap.append(job)
        step = script.pop(0) if script else Answer(204, 0.0)
        if step.delay:
            await asyncio.sleep(step.delay)
        in_flight[job] -= 1
        return Reply(step.status)

    async with Receiver(answer) as recv:
        state = await State.open(":memory:")
        sink = create_sink(f"webhook:{recv.url}", {"max_attempts": 1, "backoff_initial": 0, "backoff_max": 0})
        try:
            state.route(sink.name, EventFilter.of((), (), {}))
            deliverer = Deliverer(
                sink, state, retry_initial=0.001, retry_max=0.004, batch=7, concurrency=concurrency, mark_every=0.01
            )
            for event in events[:early]:  # a backlog before the deliverer starts, the rest while it runs
                await state.record(event.job_id or "", None, [event])
            task = asyncio.create_task(deliverer.run())
            for event in events[early:]:
                await state.record(event.job_id or "", None, [event])
                deliverer.notify()
                await asyncio.sleep(0)
            deliverer.notify()
            async with asyncio.timeout(20):
                await deliverer.wait_idle()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert await state.outbox_depth() == {}
        finally:
            await sink.aclose()
            await state.close()

    first = list(dict.fromkeys(r.headers["webhook-id"] for r in recv.delivered))
    assert sorted(first) == sorted(e.id for e in events), "every event delivered, nothing else"
    for r in recv.requests:
        assert orjson.loads(r.body)["id"] == r.headers["webhook-id"], "a retry is the same event with its id"
    for job in {e.job_id for e in events}:
        mine = [e.id for e in events if e.job_id == job]
        assert [i for i in first if i in set(mine)] == mine, f"{job}: delivered out of order"
    assert not overlap, f"two events of one job in flight at once: {overlap}"
    if concurrency == 1:
        assert first == [e.id for e in events], "ordering: sink keeps the order recorded"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(st.integers(0, JOBS - 1), min_size=1, max_size=30),
    answers=st.lists(_answers, max_size=60),
    early=st.integers(0, 30),
    concurrency=st.sampled_from([1, 3, 8]),
)
def test_each_jobs_events_arrive_in_order_whatever_fails(
    plan: list[int], answers: list[Answer], early: int, concurrency: int
) -> None:
    asyncio.run(_deliver(plan, answers, min(early, len(plan)), concurrency))
