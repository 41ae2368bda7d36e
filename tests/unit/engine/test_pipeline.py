"""End to end: simulator with faults → watch() → file sink and a flaky real webhook receiver."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from monitor.core.events import EventType
from monitor.engine.bus import EventFilter
from monitor.engine.pipeline import Outcome, SinkBinding, watch
from monitor.engine.scheduler import SchedulerSettings
from monitor.sim import Simulator
from monitor.sinks import create_sink
from monitor.testing import Receiver, Reply
from tests.conftest import BotReceiver, Recorder, SimFactory, client_for

SECRET_KEY = b"e2e-webhook-key"
SECRET = "whsec_" + base64.b64encode(SECRET_KEY).decode()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    """A webhook receiver that verifies Standard Webhooks signatures and fails 20 % of requests (seeded) with 503."""
    rng = random.Random(1)
    async with Receiver(lambda _: Reply(503) if rng.random() < 0.2 else Reply(204), secret=SECRET) as recv:
        yield recv, recv.url


SETTINGS = SchedulerSettings(
    rate=100.0,
    interval=0.2,
    min_interval=0.05,
    max_interval=0.3,
    error_backoff=0.05,
    error_backoff_max=0.3,
    failure_threshold=3,
    job_timeout=30.0,
)


async def test_everything_reaches_file_and_flaky_webhook(
    sim_factory: SimFactory, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    recv, url = receiver
    sim, _ = await sim_factory(seed=3, p_500=0.1, p_malformed=0.05, p_drop=0.03, p_503_html=0.05)
    jobs = sim.start_rollout(20, fail_ratio=0.15, duration=1.5)
    out = tmp_path / "events.jsonl"
    file_sink = create_sink(f"file:{out}")
    hook = create_sink(f"webhook:{url}", {"secret": SECRET, "backoff_initial": 0.01, "backoff_max": 0.05, "rate": 200})
    observer = Recorder()
    async with client_for(sim) as client:
        result = await asyncio.wait_for(
            watch(
                jobs,
                client=client,
                settings=SETTINGS,
                sinks=[
                    SinkBinding(file_sink),
                    SinkBinding(hook, EventFilter.of(types=["job.phase_changed", "subjob.phase_changed"])),
                ],
                observers=[observer],
                labels={"rollout": "e2e"},
            ),
            40,
        )

    # Outcomes match the simulator's ground truth, job by job.
    for job in jobs:
        truth_final = [t.phase for t in sim.truth(job) if not t.is_sub_job][-1]
        assert result.outcomes[job] == Outcome(truth_final)
    assert result.exit_code == 1  # 15 % of the rollout fails on purpose
    assert not result.interrupted

    # The file has every event, in the order observed; the webhook every phase event exactly once by id.
    file_events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [e["id"] for e in file_events] == [e.id for e in observer.events]
    phase_ids = {e.id for e in observer.events if e.type in ("job.phase_changed", "subjob.phase_changed")}
    assert {r.webhook_id for r in recv.delivered} == phase_ids
    assert recv.bad_signatures == 0
    assert len(recv.requests) > len(phase_ids), "the receiver failed some requests, so there were retries"
    assert all(e["labels"] == {"rollout": "e2e"} for e in file_events)
    # Faults happened and were absorbed.
    assert sim.stats.by_status.get(500, 0) > 0


async def test_stop_event_interrupts_and_flushes(sim: Simulator, tmp_path: Path) -> None:
    jobs = [sim.add_job(duration=60) for _ in range(4)]
    out = tmp_path / "events.jsonl"
    stop = asyncio.Event()
    seen = Recorder()

    async def stop_after_first_observations() -> None:
        while len(seen.of(EventType.JOB_PHASE_CHANGED)) < 4:
            await asyncio.sleep(0.02)
        stop.set()

    async with client_for(sim) as client:
        stopper = asyncio.create_task(stop_after_first_observations())
        result = await asyncio.wait_for(
            watch(
                jobs, client=client, settings=SETTINGS, sinks=[SinkBinding(create_sink(f"file:{out}"))],
                observers=[seen], stop=stop,
            ),
            20,
        )  # fmt: skip
        await stopper
    assert result.interrupted and result.exit_code == 130
    assert set(result.outcomes.values()) == {Outcome.UNFINISHED}
    assert len(out.read_bytes().splitlines()) == len(seen.events)


async def test_watch_waits_for_the_chat_budget_to_send_the_final_summary(sim: Simulator, bot: BotReceiver) -> None:
    """Was: at the end of watch the chat sinks closed at once; the summary waiting for the budget was lost."""
    ids = [sim.add_job(duration=0.4, fail=i < 2) for i in range(6)]
    # One message a second: the first failure's digest spends it, so the summary has to wait for the budget.
    sink = create_sink(f"wecom:{bot.url}", {"rate_per_minute": 60, "rate_per_second": 1, "coalesce": 0})
    notices: list[str] = []
    async with client_for(sim) as client:
        result = await watch(
            ids, client=client, settings=SETTINGS, sinks=[SinkBinding(sink)], rollout="pool-a", notify=notices.append
        )
    assert result.unsent == {} and bot.violations == 0
    texts = bot.texts()
    assert "Rollout pool-a finished: 4/6 succeeded, 2 did not" in texts[-1]
    assert sum("Rollout pool-a finished" in t for t in texts) == 1
