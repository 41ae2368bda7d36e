"""Dead letters over the control API: ``GET /v1/deliveries`` and ``POST /v1/deliveries/replay``.

A real daemon on the simulator delivers to a real webhook receiver on 127.0.0.1 (whose URL carries a token in its
query) that refuses the events of some jobs (400), or fails them (500) for a while.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from monitor.sim import Simulator
from monitor.testing import Received, Receiver, Reply
from tests.unit.daemon.test_daemon import (
    HOOK_SECRET,
    UP,
    Running,
    all_finished,
    make_config,
    running,
    until,
)

URL_SECRET = "s3cret-in-url"
HOOK_PATH = "/dead+letters/hook"  # a '+': a sink name sent unencoded in a query would not match


class Answers:
    """What the receiver answers: 400 to the events of ``refused`` jobs, 500 to those of ``failing`` ones."""

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.failing: set[str] = set()

    def __call__(self, received: Received) -> Reply:
        job = received.json.get("job_id")
        if job in self.refused:
            return Reply(400, "unknown tenant")
        if job in self.failing:
            return Reply(500, "database is down")
        return UP


@pytest.fixture
async def hook() -> AsyncIterator[Receiver]:
    async with Receiver(Answers(), secret=HOOK_SECRET, path=f"{HOOK_PATH}?token={URL_SECRET}") as recv:
        yield recv


def answers(recv: Receiver) -> Answers:
    assert isinstance(recv.reply, Answers)
    return recv.reply


def sink_name(recv: Receiver) -> str:
    return f"webhook:{recv.base}{HOOK_PATH}"


async def listed(api: Running, query: str = "") -> list[dict[str, Any]]:
    status, body = await api.call("GET", "/v1/deliveries" + query)
    assert status == 200, body
    assert URL_SECRET not in orjson.dumps(body).decode()
    rows: list[dict[str, Any]] = body["deliveries"]
    return rows


async def replay(api: Running, body: dict[str, Any]) -> list[dict[str, Any]]:
    status, answer = await api.call("POST", "/v1/deliveries/replay", body)
    assert status == 200, answer
    replayed: list[dict[str, Any]] = answer["replayed"]
    return replayed


async def ids_of(api: Running, job_id: str) -> list[str]:
    """The job's event ids in the order recorded (its stored history: the sinks may not have them all yet)."""
    status, body = await api.call("GET", f"/v1/jobs/{job_id}")
    assert status == 200, body
    return [e["id"] for e in body["history"]]


async def test_refused_events_are_listed_and_replayed_by_id_job_and_sink_with_their_event_ids(
    sim: Simulator, hook: Receiver, tmp_path: Path
) -> None:
    refused, refused_too, fine = (sim.add_job("Custom", duration=0.4) for _ in range(3))
    answers(hook).refused = {refused, refused_too}
    async with running(make_config(sim, tmp_path, hook.url)) as api:
        assert (await api.call("POST", "/v1/jobs", {"job_ids": [refused, refused_too, fine]}))[0] == 202
        await until(lambda: all_finished(api, [refused, refused_too, fine]), 15, "every job to finish")

        async def all_refused() -> bool:
            ids = await ids_of(api, refused) + await ids_of(api, refused_too)
            return bool(ids) and sorted(r["event"]["id"] for r in await listed(api)) == sorted(ids)

        await until(all_refused, 10, "every event of the refused jobs in the rejected list")
        rows = await listed(api)
        name = sink_name(hook)
        assert {r["sink"] for r in rows} == {name} and {r["state"] for r in rows} == {"rejected"}
        assert all(r["attempts"] == 1 and r["last_error"] == f"{name}: HTTP 400: unknown tenant" for r in rows)
        assert all(datetime.fromisoformat(r["rejected_at"]).utcoffset() is not None for r in rows)
        assert [r["seq"] for r in rows] == sorted(r["seq"] for r in rows)
        assert {r["event"]["job_id"] for r in rows} == {refused, refused_too}
        assert await listed(api, f"?job_id={fine}") == []

        async def nothing_pending() -> bool:  # (delivered rows are marked in batches: a moment later)
            return await listed(api, "?state=pending") == []

        await until(nothing_pending, 5, "the other sink's rows to be marked delivered")
        assert await listed(api, f"?sink={quote(name, safe='')}&state=rejected") == rows
        assert await listed(api, "?sink=" + quote(f"file:{tmp_path / 'events.jsonl'}", safe="")) == []
        assert await listed(api, f"?job_id={refused}&limit=1") == rows[:1]

        answers(hook).refused.clear()

        def sent(event_ids: list[str]) -> list[str]:
            """Which of these ids reached the receiver as delivered, each with its own webhook-id."""
            got = [r for r in hook.delivered if r.webhook_id in event_ids]
            assert all(r.json["id"] == r.webhook_id for r in got)
            return sorted({r.webhook_id for r in got})

        async def delivered(event_ids: list[str]) -> None:
            async def check() -> bool:
                return sent(event_ids) == sorted(event_ids)

            await until(check, 10, f"{len(event_ids)} replayed events delivered")

        first, *rest = await ids_of(api, refused)
        replayed = await replay(api, {"ids": [first]})
        [seq] = [r["seq"] for r in rows if r["event"]["id"] == first]
        assert replayed == [{"seq": seq, "sink": name, "event_id": first}]
        await delivered([first])
        assert first not in [r["event"]["id"] for r in await listed(api)]

        assert [r["event_id"] for r in await replay(api, {"job_id": refused})] == rest
        await delivered([first, *rest])
        assert {r["event"]["job_id"] for r in await listed(api)} == {refused_too}

        others = await ids_of(api, refused_too)
        assert [r["event_id"] for r in await replay(api, {"sink": name})] == others
        await delivered(others)
        assert await listed(api) == []
        assert await replay(api, {"sink": name}) == []  # nothing left
        await asyncio.sleep(0.3)
    assert len({r.webhook_id for r in hook.delivered}) == len(hook.delivered), "each replayed event was sent once"


async def test_events_a_failing_receiver_holds_are_listed_as_pending(
    sim: Simulator, hook: Receiver, tmp_path: Path
) -> None:
    job = sim.add_job("Custom", duration=0.3)
    answers(hook).failing = {job}
    cfg = make_config(sim, tmp_path, hook.url, delivery={"retry_initial": 0.1, "retry_max": 0.3})
    async with running(cfg) as api:
        assert (await api.call("POST", "/v1/jobs", {"job_ids": [job]}))[0] == 202
        await until(lambda: all_finished(api, [job]), 15, "the job to finish")

        async def failed_once() -> bool:
            rows = await listed(api, f"?state=pending&job_id={job}")
            return bool(rows) and rows[0]["attempts"] >= 1

        await until(failed_once, 10, "a failed attempt on the job's first event")
        [first, *_] = await listed(api, f"?state=pending&job_id={job}")
        assert first["state"] == "pending" and first["rejected_at"] is None and first["sink"] == sink_name(hook)
        assert first["event"]["id"] == (await ids_of(api, job))[0]
        assert first["last_error"].startswith(f"{sink_name(hook)}: HTTP 500"), first  # one try per attempt
        assert await listed(api) == [], "failing is not refusing"

        answers(hook).failing.clear()

        async def drained() -> bool:
            return await listed(api, "?state=pending") == []

        await until(drained, 10, "the held events to be delivered once the receiver answers")
        assert {r.webhook_id for r in hook.delivered} == set(await ids_of(api, job))


async def test_bad_requests_unknown_sinks_and_empty_replays_are_refused_in_one_line(
    sim: Simulator, hook: Receiver, tmp_path: Path
) -> None:
    async with running(make_config(sim, tmp_path, hook.url)) as api:

        async def refused(method: str, path: str, body: object = None, status: int = 400) -> str:
            code, answer = await api.call(method, path, body)
            assert code == status, (path, body, answer)
            message: str = answer["error"]
            assert "\n" not in message and URL_SECRET not in message
            return message

        assert "name the sink" in await refused("POST", "/v1/deliveries/replay", {})
        assert "name the sink" in await refused("POST", "/v1/deliveries/replay", {"sink": None})
        unknown = await refused("POST", "/v1/deliveries/replay", {"sink": "webhook:https://elsewhere/x"})
        assert unknown == (
            "sink 'webhook:https://elsewhere/x' is not a configured durable sink; "
            f"those are: file:{tmp_path / 'events.jsonl'}, {sink_name(hook)}"
        )
        for body in (
            {"ids": []},
            {"ids": "abc"},
            {"ids": ["ok", 3]},
            {"ids": ["../etc"]},
            {"job_id": "a/b"},
            {"job_id": 5},
            {"sink": ""},
            {"sink": "bad\nname"},
            {"sink": ["x"]},
            {"everything": True},
            [],
        ):
            await refused("POST", "/v1/deliveries/replay", body)
        await refused("POST", "/v1/deliveries/replay", status=415)  # no JSON body
        for query in (
            "?state=done",
            "?state=rejected&state=pending",
            "?limit=0",
            "?limit=1001",
            "?limit=ten",
            "?limit=-1",
            "?job_id=..%2Fx",
            "?sink=",
            "?sink=a%0Ab",
            "?seq=1",
        ):
            await refused("GET", "/v1/deliveries" + query)
        assert await listed(api, "?limit=1000&state=pending") == []

        for method, path, body in (("GET", "/v1/deliveries", None), ("POST", "/v1/deliveries/replay", {"sink": "x"})):
            code, answer = await api.call(method, path, body, auth=False)
            assert code == 401, answer
            async with api.session.request(
                method, api.base + path, json=body, headers={"Authorization": "Bearer wrong"}
            ) as resp:
                assert resp.status == 401
