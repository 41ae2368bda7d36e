"""The API's routes for the page (``monitor.daemon.api_live``, ``monitor.ui.page``) on a real server on 127.0.0.1:
the event stream, a rollout's timeline from the stored history, recent failures, the page's files and headers,
and what the token guards."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from xml.etree import ElementTree

import aiohttp
import orjson

from monitor.core.events import EventType
from monitor.core.secret import Secret
from monitor.daemon.store import State
from monitor.testing import EVENT_TIME, make_event
from tests.unit.daemon.conftest import Api, ApiFactory, assert_error

TOKEN = "live-routes-token"


async def read_events(resp: aiohttp.ClientResponse, n: int) -> list[tuple[str, bytes]]:
    """The next ``n`` (event, data) pairs of a server-sent event stream."""
    out: list[tuple[str, bytes]] = []
    kind = ""
    async with asyncio.timeout(5):
        async for raw in resp.content:
            line = raw.rstrip(b"\n")
            if line.startswith(b"event: "):
                kind = line[7:].decode()
            elif line.startswith(b"data: "):
                out.append((kind, line[6:]))
                if len(out) == n:
                    return out
    return out


async def test_the_stream_sends_each_event_then_says_when_a_listener_lagged(api: Api) -> None:
    feed = api.control.live
    async with api.session.get(api.url("/v1/events/stream")) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-store"
        while feed.listeners == 0:
            await asyncio.sleep(0.01)
        first = make_event(rollout="r1")
        feed.publish(first)
        [(kind, data)] = await read_events(resp, 1)
        assert kind == "job.phase_changed" and orjson.loads(data) == first.to_dict()
        # A listener that does not read loses its backlog, and is told so instead of slowing anyone.
        for i in range(10):
            feed.publish(make_event(reason=f"r{i}"))
        [(kind, _)] = await read_events(resp, 1)
        assert kind == "lagged" and feed.lagged >= 1
        feed.publish(make_event(reason="after"))
        later = [orjson.loads(data)["reason"] for _, data in await read_events(resp, 5)]
        assert later == ["r6", "r7", "r8", "r9", "after"], "then the events since, in order"
        feed.close()  # the daemon stops: the stream ends, so the server's shutdown does not wait on it
        async with asyncio.timeout(5):
            assert (await resp.content.read()).strip() == b"", "the stream ended"
    assert feed.listeners == 0


async def test_the_stream_can_follow_one_rollout_and_rejects_bad_queries(api: Api) -> None:
    feed = api.control.live
    async with api.session.get(api.url("/v1/events/stream?rollout=r2")) as resp:
        while feed.listeners == 0:
            await asyncio.sleep(0.01)
        feed.publish(make_event(rollout="r1", reason="other rollout"))
        feed.publish(make_event(rollout="r2", reason="this one"))
        [(_, data)] = await read_events(resp, 1)
        assert orjson.loads(data)["reason"] == "this one"
    for query, text in [("?rollout=a/b", "invalid rollout name"), ("?x=1", "unknown query parameter 'x'")]:
        status, body, resp = await api.call("GET", "/v1/events/stream" + query)
        assert_error(status, body, resp, 400, text)


async def test_failures_newest_first_with_limits(api: Api) -> None:
    feed = api.control.live
    feed.publish(make_event(type=EventType.JOB_PHASE_CHANGED, phase="Running", reason=None))  # not a failure
    for i in range(3):
        feed.publish(make_event(reason=f"failure {i}", time=EVENT_TIME + timedelta(seconds=i)))
    feed.publish(make_event(type=EventType.NODE_FAILED, phase="Abnormal", reason="node is Abnormal"))
    status, body, _ = await api.call("GET", "/v1/failures?limit=2")
    assert status == 200
    assert [f["reason"] for f in body["failures"]] == ["node is Abnormal", "failure 2"]
    status, body, _ = await api.call("GET", "/v1/failures")
    assert len(body["failures"]) == 4
    for query in ("?limit=0", "?limit=201", "?limit=x", "?limit=1&limit=2x", "?since=1"):
        status, body, resp = await api.call("GET", "/v1/failures" + query)
        assert_error(status, body, resp, 400)


async def test_a_timeline_from_the_stored_history(api: Api, state: State) -> None:
    await state.add_jobs(["job-a", "job-b"], {"rollout": "r1"}, "r1")
    t0 = EVENT_TIME
    a = [
        make_event(job_id="job-a", phase="Running", previous_phase="Initializing", reason=None, time=t0),
        make_event(
            job_id="job-a",
            phase="Success",
            previous_phase="Running",
            reason=None,
            job_type="Other",
            time=t0 + timedelta(seconds=30),
        ),
    ]
    b = [
        make_event(job_id="job-b", phase="Running", previous_phase="Initializing", reason=None, time=t0),
        make_event(job_id="job-b", reason="<b>bold</b> & broken", time=t0 + timedelta(seconds=20)),
    ]
    await state.record("job-a", None, a)
    await state.record("job-b", None, b)
    api.control.summaries["r1"] = {"rollout": "r1", "ended": None, "node_check": False}
    status, body, _ = await api.call("GET", "/v1/rollouts/r1/timeline")
    assert status == 200
    timeline = body["timeline"]
    rows = {r["key"]: r for r in timeline["rows"]}
    assert set(rows) == {"job-a", "job-b"}
    assert rows["job-b"]["state"] == "Failed" and rows["job-b"]["reason"] == "<b>bold</b> & broken"
    assert rows["job-a"]["spans"][0][:2] == ["Running", t0.timestamp()]
    svg = ElementTree.fromstring(timeline["svg"])  # well-formed XML, whatever the reasons held
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    assert "<b>" not in timeline["svg"] and "&lt;b&gt;bold&lt;/b&gt; &amp; broken" in timeline["svg"]
    status, body, resp = await api.call("GET", "/v1/rollouts/nope/timeline")
    assert_error(status, body, resp, 404, "rollout nope is not known")
    status, body, resp = await api.call("GET", "/v1/rollouts/a%2Fb/timeline")
    assert status in (400, 404)


async def test_the_page_loads_for_anyone_and_the_data_needs_the_token(start: ApiFactory) -> None:
    api = await start(token=Secret(TOKEN))
    for path in ("/ui/", "/ui/app.js", "/ui/style.css", "/ui/favicon.svg", "/ui/session.json"):
        async with api.session.get(api.url(path)) as resp:
            assert resp.status == 200, path
            csp = resp.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            assert TOKEN.encode() not in await resp.read(), "the token is never in a page"
    async with api.session.get(api.url("/ui/session.json")) as resp:
        assert await resp.json() == {"token_required": True}
    async with api.session.get(api.url("/ui/style.css")) as resp:
        assert ".s-Active{background:" in await resp.text(), "the state colours come from monitor.ui.svg"
    for path in ("/", "/ui"):
        async with api.session.get(api.url(path), allow_redirects=False) as resp:
            assert (resp.status, resp.headers["Location"]) == (302, "/ui/")
    async with api.session.get(api.url("/ui/nothing.js")) as resp:
        assert resp.status == 404
    for path in ("/v1/rollouts/r1/timeline", "/v1/failures", "/v1/events/stream", "/v1/rollouts"):
        status, body, resp = await api.call("GET", path)
        assert_error(status, body, resp, 401, "missing bearer token")
        status, _, _ = await api.call(
            "GET", path.replace("stream", "stream?x=1"), headers={"Authorization": "Bearer wrong"}
        )
        assert status == 401
    status, body, _ = await api.call("GET", "/v1/failures", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and body == {"failures": []}


async def test_without_a_token_the_page_says_none_is_needed(api: Api) -> None:
    async with api.session.get(api.url("/ui/session.json")) as resp:
        assert await resp.json() == {"token_required": False}


async def test_listeners_beyond_the_limit_are_told_to_come_back(api: Api) -> None:
    feed = api.control.live
    feed.max_listeners = 1
    async with api.session.get(api.url("/v1/events/stream")) as resp:
        assert resp.status == 200
        while feed.listeners == 0:
            await asyncio.sleep(0.01)
        status, body, second = await api.call("GET", "/v1/events/stream")
        assert_error(status, body, second, 503, "too many event stream listeners")
        assert second.headers["Retry-After"] == "10"
