"""The helpers in ``monitor.testing`` themselves: fake clock, event factory, simulators, receiver."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from monitor.config import parse_config
from monitor.core.events import Event, EventType
from monitor.testing import (
    EVENT_TIME,
    JOB_ID,
    PROJECT_ID,
    FakeClock,
    Received,
    Receiver,
    Reply,
    Simulators,
    busiest_window,
    make_event,
    running_daemon,
    sim_arrivals,
    webhook_signature,
)

SECRET = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZg=="  # base64 of b"0123456789abcdef"


def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock()
    assert clock() == 1000.0
    clock.advance(2.5)
    assert clock() == 1002.5
    clock.now = 7.0
    assert clock() == 7.0
    assert FakeClock(0.0)() == 0.0


def test_make_event_defaults_are_a_valid_event() -> None:
    event = make_event()
    assert isinstance(event, Event)
    assert (event.type, event.project_id, event.job_id) == (EventType.JOB_PHASE_CHANGED, PROJECT_ID, JOB_ID)
    assert (event.previous_phase, event.phase, event.time) == ("Running", "Failed", EVENT_TIME)
    assert len(event.id) == 32 and int(event.id, 16) >= 0
    assert Event.from_json(event.to_json()) == event
    assert make_event() == event, "the same overrides give the same event, id included"


def test_make_event_overrides_and_derived_ids() -> None:
    other = make_event(job_id="job-2", phase="Success", reason=None, labels={"team": "a"})
    assert (other.job_id, other.phase, other.reason, other.labels) == ("job-2", "Success", None, {"team": "a"})
    assert other.id != make_event().id
    assert make_event(id="f" * 32).id == "f" * 32
    assert make_event(type="job.not_found").type is EventType.JOB_NOT_FOUND
    with pytest.raises(TypeError):
        make_event(no_such_field=1)


def test_monitor_testing_does_not_import_pytest() -> None:
    code = "import sys, monitor.testing; assert 'pytest' not in sys.modules, 'pytest imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_webhook_signature_matches_the_standard_webhooks_example() -> None:
    # The example in the Standard Webhooks specification.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert webhook_signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body) == expected


async def test_receiver_records_and_answers_from_its_script() -> None:
    async with Receiver(Reply(204)) as receiver, aiohttp.ClientSession() as session:
        assert receiver.url.startswith("http://127.0.0.1:") and receiver.url.endswith("/hook")
        receiver.script = [Reply.json({"error": "busy"}, status=503)]
        async with session.post(receiver.url + "?a=1", data=b'{"x": 1}', headers={"X-Test": "yes"}) as resp:
            assert resp.status == 503 and await resp.json() == {"error": "busy"}
        async with session.put(receiver.base + "/other", data=b"{}") as resp:
            assert resp.status == 204
        first, second = receiver.requests
        assert (first.method, first.path, first.raw_query, first.query) == ("POST", "/hook", "a=1", {"a": "1"})
        assert first.path_qs == "/hook?a=1" and first.headers["X-Test"] == "yes"
        assert first.json == {"x": 1} and first.status == 503 and first.answered
        assert first.signed is None and receiver.bad_signatures == 0
        assert (second.method, second.path, second.status) == ("PUT", "/other", 204)
        assert receiver.delivered == [second]


async def test_receiver_reply_function_clock_and_restart() -> None:
    clock = FakeClock(5.0)
    seen: list[Received] = []

    async def answer(received: Received) -> Reply:
        seen.append(received)
        return Reply(201, "made")

    receiver = Receiver(answer, clock=clock)
    url = await receiver.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(url) as resp:
                assert (resp.status, await resp.text()) == (201, "made")
            await receiver.stop()
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.post(url):
                    pass
            assert await receiver.start() == url, "back on the same port"
            clock.advance(1)
            receiver.reply = Reply(202)
            async with session.post(url) as resp:
                assert resp.status == 202
    finally:
        await receiver.close()
    assert [r.at for r in receiver.requests] == [5.0, 6.0]
    assert seen == receiver.requests[:1]


async def test_receiver_checks_signatures() -> None:
    async with Receiver(Reply(204), secret=SECRET) as receiver, aiohttp.ClientSession() as session:
        body = b'{"id": "e1"}'
        good = webhook_signature(SECRET, "e1", "1700000000", body)
        headers = {"webhook-id": "e1", "webhook-timestamp": "1700000000"}
        async with session.post(receiver.url, data=body, headers={**headers, "webhook-signature": good}) as resp:
            assert resp.status == 204
        async with session.post(receiver.url, data=body, headers={**headers, "webhook-signature": "v1,bad"}) as resp:
            assert resp.status == 400
        assert [r.signed for r in receiver.requests] == [True, False]
        assert receiver.bad_signatures == 1
        assert [r.webhook_id for r in receiver.delivered] == ["e1"]


async def test_receiver_holds_a_delayed_answer_until_released() -> None:
    async with Receiver(Reply(200, delay=30)) as receiver, aiohttp.ClientSession() as session:

        async def post() -> int:
            async with session.post(receiver.url) as resp:
                return resp.status

        task = asyncio.create_task(post())
        while not receiver.requests:
            await asyncio.sleep(0.01)
        [held] = receiver.requests
        assert held.status == 200 and not held.answered
        receiver.release.set()
        assert await asyncio.wait_for(task, 5) == 200
        assert held.answered


async def test_simulators_start_and_close_every_one() -> None:
    clock = FakeClock()
    async with Simulators(clock=clock) as simulators:
        sim, endpoint = await simulators.start(seed=3)
        other, _ = await simulators(token="other-token")
        assert endpoint.startswith("http://127.0.0.1:") and sim.endpoint == endpoint
        assert sim.config.seed == 3 and other.config.token == "other-token"
        assert simulators.started == [sim, other]
        job_id = sim.add_job(duration=10)
        async with aiohttp.ClientSession() as session:
            path = f"/api/v3/projects/{sim.config.project_id}/jobs/{job_id}"
            async with session.get(endpoint + path, headers={"X-Auth-Token": sim.config.token}) as resp:
                assert resp.status in (200, 404)  # visible or not yet, on the fake clock
    assert simulators.started == []
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(endpoint):
                pass


async def test_sim_arrivals_and_the_busiest_window() -> None:
    clock = FakeClock()
    async with Simulators(clock=clock) as simulators:
        sim, endpoint = await simulators.start()
        async with aiohttp.ClientSession() as session:
            for step in (0.0, 0.5, 0.49, 0.01, 0.5):  # arrivals at 0, 0.5, 0.99, 1.0, 1.5
                clock.advance(step)
                async with session.get(f"{endpoint}/api/v3/projects/{sim.config.project_id}/jobs/j"):
                    pass
        assert await sim_arrivals(endpoint) == pytest.approx([0.0, 0.5, 0.99, 1.0, 1.5])
    assert busiest_window([1.5, 0.0, 1.0, 0.5, 0.99]) == 3  # [0.5, 1.5) or [0.99, 1.99)
    assert busiest_window([0.0, 0.5, 0.99], 0.5) == 2
    assert busiest_window([]) == 0


async def test_running_daemon_serves_until_the_block_ends(tmp_path: Path) -> None:
    async with Simulators() as simulators:
        sim, endpoint = await simulators.start()
        yaml = (
            f"endpoint: {endpoint}\nproject_id: {sim.config.project_id}\nauth: {{token: '${{TOK}}'}}\n"
            f"state: {{path: '{tmp_path / 'state.db'}'}}\napi: {{listen: '127.0.0.1:0'}}\n"
        )
        config = parse_config(yaml, env={"TOK": sim.config.token})
        async with running_daemon(config) as run:
            assert run.base.startswith("http://127.0.0.1:") and not run.task.done()
            async with aiohttp.ClientSession() as session, session.get(run.base + "/healthz") as resp:
                assert resp.status == 200
        assert run.task.done() and run.stop.is_set()
