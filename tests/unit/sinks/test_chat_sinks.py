"""The chat sinks (slack, teams, feishu, dingtalk, wecom) against real aiohttp receivers on 127.0.0.1.

Time is fake: every sink gets a clock and a sleep from :class:`FakeTime`, which only moves when a test calls
``advance``; a sleeping flusher wakes when the clock passes its deadline. The receivers stamp each request with
that clock, so rate limits are checked on the timeline the sink believes in, and a whole rollout takes well
under a second.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import heapq
import hmac
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.errors import ConfigError, SinkError
from monitor.core.events import Event, EventType, event_id
from monitor.core.model import parse_job
from monitor.engine.rollout import RolloutTracker
from monitor.sinks import Sink, create_sink
from monitor.sinks.chat import (  # importing registers them
    Budget,
    ChatSink,
    RolloutEntry,
    Timing,
    build_finished,
    dingtalk,
    feishu,
    parse_options,
    plain_text,
    rollout_state,
    slack,
    teams,
    wecom,
)
from monitor.testing import Received, Receiver, Reply, create_node_body

WALL = 1764312060.25  # 2025-11-28T06:41:00.25Z: the wall clock signatures see
SIGNING_SECRET = "SECb7e0c2f94a1d4e6b8c3f5a7d9e1b2c4d6f8a0b1c3e5d7f9a2b4c6d8e0f1a3b5c7"
FAST = {"backoff_initial": 0.5, "backoff_max": 2.0, "coalesce": 1.0}  # short pauses for the small tests


# ------------------------------------------------------------------------------------------- fake time


class FakeTime:
    """A clock that moves only in :meth:`advance`, and a sleep that wakes when it has moved far enough."""

    def __init__(self) -> None:
        self.now = 5000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._count = 0
        self.busy: Callable[[], bool] = lambda: False

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._count += 1
        heapq.heappush(self._sleepers, (self.now + delay, self._count, future))
        await future

    def timing(self) -> Timing:
        return Timing(clock=self.clock, sleep=self.sleep, wall=lambda: WALL, jitter=lambda _lo, hi: hi)

    async def settle(self) -> None:
        """Let the sinks run until they wait for the clock or for events (real HTTP included)."""
        deadline = time.monotonic() + 10
        quiet = 0
        while quiet < 20:
            await asyncio.sleep(0)
            if self.busy():
                quiet = 0
                await asyncio.sleep(0.001)
                assert time.monotonic() < deadline, "the sink never settled"
            else:
                quiet += 1

    async def advance(self, seconds: float) -> None:
        target = self.now + seconds
        await self.settle()
        while True:
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            when, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            future.set_result(None)
            await self.settle()
        self.now = target
        await self.settle()


# ------------------------------------------------------------------------------------------- receivers


@dataclass(frozen=True)
class Bot:
    kind: str
    cls: type[ChatSink]
    path: str  # path and query of the webhook URL; holds the credential
    token: str  # the credential inside it
    ok: Reply


def _ok_json(**fields: object) -> Reply:
    return Reply.json(fields)


BOTS = {
    "slack": Bot(
        "slack",
        slack.SlackSink,
        "/services/T0AB12CD/B0EF34GH/slackTOKENsecret42",
        "slackTOKENsecret42",
        Reply(200, "ok"),
    ),
    "teams": Bot(
        "teams",
        teams.TeamsSink,
        "/workflows/4f2e9a/triggers/manual/paths/invoke?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun"
        "&sv=1.0&sig=teamsSIGsecret42",
        "teamsSIGsecret42",
        Reply(202, ""),
    ),
    "feishu": Bot(
        "feishu",
        feishu.FeishuSink,
        "/open-apis/bot/v2/hook/feishuHOOKsecret42",
        "feishuHOOKsecret42",
        _ok_json(code=0, msg="success", data={}),
    ),
    "dingtalk": Bot(
        "dingtalk",
        dingtalk.DingTalkSink,
        "/robot/send?access_token=dingtalkTOKENsecret42",
        "dingtalkTOKENsecret42",
        _ok_json(errcode=0, errmsg="ok"),
    ),
    "wecom": Bot(
        "wecom",
        wecom.WeComSink,
        "/cgi-bin/webhook/send?key=wecomKEYsecret42",
        "wecomKEYsecret42",
        _ok_json(errcode=0, errmsg="ok"),
    ),
}
LIMITS = {"slack": (60, 1), "teams": (30, 1), "feishu": (100, 5), "dingtalk": (18, None), "wecom": (18, None)}


@dataclass
class Harness:
    clock: FakeTime
    sinks: list[ChatSink] = field(default_factory=list)
    receivers: list[Receiver] = field(default_factory=list)

    async def start(self, kind: str, *, defaults: bool = False, **options: object) -> tuple[ChatSink, Receiver]:
        """A bot endpoint (answers from its script, then the bot's usual success; stamped with the fake clock)."""
        bot = BOTS[kind]
        receiver = Receiver(bot.ok, clock=self.clock.clock)
        await receiver.start()
        self.receivers.append(receiver)
        url = receiver.base + bot.path
        options = options if defaults else {**FAST, **options}
        sink = bot.cls(parse_options(bot.cls.platform, url, options), timing=self.clock.timing())
        self.sinks.append(sink)
        return sink, receiver


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness(FakeTime())
    h.clock.busy = lambda: any(not sink.idle for sink in h.sinks)
    yield h
    for sink in h.sinks:
        await sink.aclose()
    for receiver in h.receivers:
        await receiver.close()


# ---------------------------------------------------------------------------------------------- events


def job_event(
    n: int,
    kind: EventType = EventType.JOB_PHASE_CHANGED,
    *,
    phase: str | None = "Failed",
    reason: str | None = "Install node failed",
    rollout: str | None = "pool-a",
) -> Event:
    job_id = f"job-{n:03d}"
    return Event(
        id=event_id("proj", job_id, kind.value, phase),
        type=kind,
        project_id="proj",
        job_id=job_id,
        job_type="CreateNode",
        phase=phase,
        previous_phase="Running" if phase else None,
        reason=reason,
        resource_name=f"node-{n:03d}",
        rollout=rollout,
    )


def rollout_event(
    counts: Counter[str],
    done: int,
    *,
    finished: bool = False,
    failed: list[dict[str, str]] | None = None,
    name: str = "pool-a",
    total: int = 300,
) -> Event:
    summary = {
        "rollout": name,
        "total": total,
        "counts": {
            "Success": counts["Success"],
            "Failed": counts["Failed"],
            "Running": total - done,
            "Initializing": 0,
            "waiting": 0,
            "timed_out": counts["timed_out"],
            "not_found": 0,
        },
        "finished": done,
        "subjobs_done": done * 2,
        "subjobs_total": total * 2,
        "failed": failed or [],
        "started": "2026-11-28T06:41:00Z",
        "ended": "2026-11-28T07:06:03Z" if finished else None,
        "duration_s": 1503.0 if finished else done * 5.0,
        "eta_s": None if finished else (total - done) * 5.0,
    }
    kind = EventType.ROLLOUT_FINISHED if finished else EventType.ROLLOUT_PROGRESS
    return Event(
        id=event_id("proj", name, kind.value, str(done)),
        type=kind,
        project_id="proj",
        job_id=None,
        rollout=name,
        summary=summary,
    )


_STRUCTURAL = {"type", "msgtype", "msg_type", "contentType", "tag", "version", "$schema", "weight", "size"}
_STRUCTURAL |= {"spacing", "width", "href", "timestamp", "sign", "title_"}


def texts(value: Any, key: str = "") -> Iterator[str]:
    """Every human-readable string in a body."""
    if isinstance(value, str):
        if key not in _STRUCTURAL:
            yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from texts(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from texts(v, key)


def text_of(seen: Received) -> str:
    return "\n".join(texts(seen.json))


# ------------------------------------------------------------------------------------------- signatures


def test_dingtalk_signature_known_answer() -> None:
    timestamp = 1764312060250
    expected = base64.b64encode(
        hmac.new(SIGNING_SECRET.encode(), f"{timestamp}\n{SIGNING_SECRET}".encode(), hashlib.sha256).digest()
    ).decode()
    assert dingtalk.sign(SIGNING_SECRET, timestamp) == expected
    # The example from DingTalk's documentation style: a fixed secret and millisecond timestamp.
    assert (
        dingtalk.sign("SEC000", 1577808000000)
        == base64.b64encode(hmac.new(b"SEC000", b"1577808000000\nSEC000", hashlib.sha256).digest()).decode()
    )


def test_feishu_signature_known_answer_and_differs_from_dingtalk() -> None:
    timestamp = 1764312060
    key = f"{timestamp}\n{SIGNING_SECRET}".encode()
    expected = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    assert feishu.sign(SIGNING_SECRET, timestamp) == expected
    assert feishu.sign(SIGNING_SECRET, timestamp) != dingtalk.sign(SIGNING_SECRET, timestamp)


async def test_dingtalk_signs_in_the_query(harness: Harness) -> None:
    sink, receiver = await harness.start("dingtalk", secret=SIGNING_SECRET)
    await sink.send(job_event(7))
    await harness.clock.advance(2)
    [seen] = receiver.requests
    timestamp = int(WALL * 1000)
    digest = hmac.new(SIGNING_SECRET.encode(), f"{timestamp}\n{SIGNING_SECRET}".encode(), hashlib.sha256).digest()
    sign = quote_plus(base64.b64encode(digest).decode())
    assert seen.path == "/robot/send"
    assert seen.raw_query == f"access_token=dingtalkTOKENsecret42&timestamp={timestamp}&sign={sign}"
    assert seen.query["sign"] == base64.b64encode(digest).decode()
    assert "sign" not in seen.json and "timestamp" not in seen.json


async def test_feishu_signs_in_the_body(harness: Harness) -> None:
    sink, receiver = await harness.start("feishu", secret=SIGNING_SECRET)
    await sink.send(job_event(7))
    await harness.clock.advance(2)
    [seen] = receiver.requests
    body = seen.json
    timestamp = int(WALL)
    key = f"{timestamp}\n{SIGNING_SECRET}".encode()
    assert body["timestamp"] == str(timestamp)
    assert body["sign"] == base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    assert seen.raw_query == ""


async def test_unsigned_bodies_carry_no_signature(harness: Harness) -> None:
    sink, receiver = await harness.start("feishu")
    await sink.send(job_event(7))
    await harness.clock.advance(2)
    assert set(receiver.requests[0].json) == {"msg_type", "content"}


# -------------------------------------------------------------------------------------------- payloads

LINK = "https://console.example.com/cce/{rollout}/jobs/{job_id}"


async def _one_digest(harness: Harness, kind: str, **options: object) -> Received:
    sink, receiver = await harness.start(kind, link=LINK, **options)
    await sink.send(rollout_event(Counter(Success=250, Failed=3), 255))
    await sink.send(job_event(7, reason="Install node failed: disk full"))
    await harness.clock.advance(2)
    [seen] = receiver.requests
    assert seen.headers["Content-Type"].startswith("application/json")
    return seen


async def test_slack_payload(harness: Harness) -> None:
    body = (await _one_digest(harness, "slack")).json
    assert set(body) == {"text", "blocks"}
    assert body["text"] == "cce-monitor: 1 job failed · pool-a 255/300 finished"
    for block in body["blocks"]:
        assert set(block) == {"type", "text"} and block["type"] == "section"
        assert set(block["text"]) == {"type", "text"} and block["text"]["type"] == "mrkdwn"
    text = "\n".join(b["text"]["text"] for b in body["blocks"])
    assert "*pool-a*: 255/300 finished, 250 Success, 3 Failed, 45 Running, subjobs 510/600, ETA 3m" in text
    assert "*Failed jobs (1)*" in text
    assert "<https://console.example.com/cce/pool-a/jobs/job-007|node-007> (job job-007): Install node failed" in text


async def test_teams_payload(harness: Harness) -> None:
    body = (await _one_digest(harness, "teams")).json
    assert set(body) == {"type", "attachments"} and body["type"] == "message"
    [attachment] = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert {element["type"] for element in card["body"]} == {"TextBlock", "FactSet"}
    assert card["body"][0] == {
        "type": "TextBlock",
        "text": "cce-monitor: 1 job failed · pool-a 255/300 finished",
        "wrap": True,
        "weight": "Bolder",
        "size": "Medium",
    }
    [facts] = [e for e in card["body"] if e["type"] == "FactSet"]
    assert facts["facts"][0]["title"] == "pool-a"
    assert facts["facts"][0]["value"].startswith("255/300 finished, 250 Success, 3 Failed")
    lines = [e["text"] for e in card["body"] if e["type"] == "TextBlock"]
    assert "• [node-007](https://console.example.com/cce/pool-a/jobs/job-007) (job job-007): " in "\n".join(lines)


async def test_feishu_payload(harness: Harness) -> None:
    body = (await _one_digest(harness, "feishu")).json
    assert set(body) == {"msg_type", "content"} and body["msg_type"] == "post"
    post = body["content"]["post"]["zh_cn"]
    assert set(post) == {"title", "content"}
    assert post["title"] == "cce-monitor: 1 job failed · pool-a 255/300 finished"
    for row in post["content"]:
        assert isinstance(row, list)
        for element in row:
            assert element["tag"] in ("text", "a")
    links = [e for row in post["content"] for e in row if e["tag"] == "a"]
    assert links == [{"tag": "a", "text": "node-007", "href": "https://console.example.com/cce/pool-a/jobs/job-007"}]


async def test_dingtalk_payload(harness: Harness) -> None:
    body = (await _one_digest(harness, "dingtalk")).json
    assert set(body) == {"msgtype", "markdown"} and body["msgtype"] == "markdown"
    assert set(body["markdown"]) == {"title", "text"}
    assert body["markdown"]["title"] == "cce-monitor: 1 job failed · pool-a 255/300 finished"
    text = body["markdown"]["text"]
    assert text.startswith("### cce-monitor: 1 job failed")
    assert "**Rollouts (1)**\n\n- pool-a: 255/300 finished, 250 Success, 3 Failed" in text
    assert "- [node-007](https://console.example.com/cce/pool-a/jobs/job-007) (job job-007): Install" in text


async def test_wecom_payload(harness: Harness) -> None:
    body = (await _one_digest(harness, "wecom")).json
    assert body == {"msgtype": "markdown", "markdown": {"content": body["markdown"]["content"]}}
    content = body["markdown"]["content"]
    assert content.startswith("**cce-monitor: 1 job failed · pool-a 255/300 finished**")
    assert "• [node-007](https://console.example.com/cce/pool-a/jobs/job-007) (job job-007)" in content


@pytest.mark.parametrize(
    ("kind", "shape"),
    [
        ("dingtalk", lambda b: b["msgtype"] == "text" and set(b["text"]) == {"content"}),
        ("wecom", lambda b: b["msgtype"] == "text" and set(b["text"]) == {"content"}),
        ("feishu", lambda b: b["msg_type"] == "text" and set(b["content"]) == {"text"}),
    ],
)
async def test_text_format(harness: Harness, kind: str, shape: Callable[[Any], bool]) -> None:
    seen = await _one_digest(harness, kind, format="text")
    assert shape(seen.json)
    assert "node-007 (job job-007): Install node failed: disk full https://console.example.com/" in text_of(seen)


# ----------------------------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("kind", "reply", "pause"),
    [
        ("dingtalk", _ok_json(errcode=130101, errmsg="send too fast, exceed 20 times per minute"), 60.0),
        ("wecom", _ok_json(errcode=45009, errmsg="api freq out of limit"), 60.0),
        ("feishu", _ok_json(code=11232, msg="frequency limited"), 10.0),
        ("feishu", _ok_json(code=9499, msg="too many request"), 10.0),
        ("slack", Reply(429, "rate_limited", {"Retry-After": "7"}), 7.0),
        ("teams", Reply(429, "", {"Retry-After": "3"}), 3.0),
    ],
)
async def test_rate_limit_answer_is_retried_after_a_pause(
    harness: Harness, kind: str, reply: Reply, pause: float
) -> None:
    sink, receiver = await harness.start(kind)
    receiver.script = [reply]
    await sink.send(job_event(7))
    await harness.clock.advance(pause + 5)
    assert len(receiver.requests) == 2
    assert receiver.requests[1].at - receiver.requests[0].at >= pause
    assert receiver.requests[1].body == receiver.requests[0].body
    assert sink.sent_messages == 1 and sink.backlog == 0


@pytest.mark.parametrize(
    ("kind", "reply", "detail"),
    [
        ("dingtalk", _ok_json(errcode=310000, errmsg="keywords not in content"), "310000"),
        ("feishu", _ok_json(code=19021, msg="sign match fail or timestamp is not within one hour"), "19021"),
        ("feishu", _ok_json(code=9499, msg="Bad Request"), "9499"),
        ("wecom", _ok_json(errcode=93000, errmsg="invalid webhook url"), "93000"),
        ("slack", Reply(400, "invalid_payload"), "invalid_payload"),
        ("slack", Reply(200, "no_text"), "no_text"),
        ("teams", Reply(400, "Bad Request"), "HTTP 400"),
    ],
)
async def test_final_answer_is_not_retried_and_events_are_kept(
    harness: Harness, caplog: pytest.LogCaptureFixture, kind: str, reply: Reply, detail: str
) -> None:
    sink, receiver = await harness.start(kind)
    receiver.script = [reply]
    with caplog.at_level(logging.WARNING, logger="monitor.sinks.chat"):
        await sink.send(job_event(7))
        await harness.clock.advance(1.5)
        assert len(receiver.requests) == 1
        assert sink.backlog == 1  # kept for the next digest
        assert any(detail in r.getMessage() and "carrying 1 event " in r.getMessage() for r in caplog.records)
        await sink.send(job_event(8))
        await harness.clock.advance(FAST["backoff_max"] + 1)
    assert len(receiver.requests) == 2
    text = text_of(receiver.requests[1])
    assert "node-007" in text and "node-008" in text and "Failed jobs (2)" in text
    assert sink.backlog == 0


async def test_server_errors_are_retried_with_backoff(harness: Harness) -> None:
    sink, receiver = await harness.start("dingtalk", max_attempts=3)
    receiver.script = [Reply(502, "bad gateway"), _ok_json(errcode=-1, errmsg="system busy")]
    await sink.send(job_event(7))
    await harness.clock.advance(10)
    assert [s.at - receiver.requests[0].at for s in receiver.requests] == [0.0, 0.5, 1.5]  # backoff 0.5, then 1.0
    assert sink.sent_messages == 1


async def test_given_up_message_goes_back_into_the_next_digest(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    sink, receiver = await harness.start("wecom", max_attempts=2)
    receiver.script = [Reply(500), Reply(503)]
    with caplog.at_level(logging.WARNING, logger="monitor.sinks.chat"):
        for n in range(3):
            await sink.send(job_event(n))
        await harness.clock.advance(1.8)
    assert len(receiver.requests) == 2
    assert "carrying 3 events was not delivered after 2 attempts: HTTP 503" in caplog.text
    assert sink.failed_messages == 1 and sink.backlog == 3
    await sink.send(job_event(3))
    await harness.clock.advance(5)
    assert len(receiver.requests) == 3
    text = text_of(receiver.requests[2])
    assert "Failed jobs (4)" in text and all(f"node-00{n}" in text for n in range(4))


async def test_repeatedly_refused_jobs_become_counts(harness: Harness) -> None:
    sink, receiver = await harness.start("slack")
    receiver.script = [Reply(400, "invalid_blocks")] * 3
    await sink.send(job_event(7))
    for _ in range(3):
        await harness.clock.advance(FAST["backoff_max"] + 1)
    assert len(receiver.requests) == 4
    last = text_of(receiver.requests[3])
    assert "Failed jobs (1)" in last and "… and 1 more" in last and "node-007" not in last


# ---------------------------------------------------------------------------------------------- digests


async def test_default_filter_drops_successes(harness: Harness) -> None:
    sink, receiver = await harness.start("slack")
    await sink.send(job_event(1, phase="Success", reason=None))
    await sink.send(job_event(2, EventType.SUBJOB_PHASE_CHANGED, phase="Failed"))
    await sink.send(job_event(3, EventType.JOB_POLL_FAILED, phase=None))
    assert sink.backlog == 0
    await sink.send(job_event(4, EventType.JOB_STALLED, phase=None, reason="no progress for 30m"))
    await sink.send(job_event(5, EventType.JOB_NOT_FOUND, phase=None, reason=None))
    await sink.send(job_event(6, EventType.MONITOR_AUTH_FAILED, phase=None, reason="token expired"))
    await harness.clock.advance(2)
    text = text_of(receiver.requests[0])
    assert "Stalled (1)" in text and "node-004 (job job-004): no progress for 30m" in text
    assert "Not found (1)" in text and "Authentication failures (1)" in text
    assert "node-001" not in text and "node-002" not in text and "node-003" not in text


async def test_events_option_overrides_the_filter(harness: Harness) -> None:
    sink, receiver = await harness.start("slack", events=["job.phase_changed", "job.recovered"])
    await sink.send(job_event(1, phase="Success", reason=None))
    await sink.send(job_event(2, EventType.JOB_TIMED_OUT, phase=None))
    await harness.clock.advance(2)
    text = text_of(receiver.requests[0])
    assert "Other updates (1)" in text and "node-001 (job job-001) job.phase_changed Running → Success" in text
    assert "node-002" not in text


async def test_a_burst_becomes_a_handful_of_messages(harness: Harness) -> None:
    sink, receiver = await harness.start("dingtalk", max_items=5)
    for n in range(300):
        await sink.send(job_event(n))
    await harness.clock.advance(2)
    [seen] = receiver.requests
    text = text_of(seen)
    assert seen.json["markdown"]["title"] == "cce-monitor: 300 jobs failed"
    assert "Failed jobs (300)" in text and "… and 295 more" in text
    assert "node-000" in text and "node-004" in text and "node-005" not in text


async def test_latest_progress_supersedes_and_finished_gets_its_own_message(harness: Harness) -> None:
    sink, receiver = await harness.start("wecom")
    for done in (50, 100, 150):
        await sink.send(rollout_event(Counter(Success=done), done))
    await sink.send(rollout_event(Counter(Success=20), 20, name="pool-b", total=40))
    await harness.clock.advance(2)
    [first] = receiver.requests
    text = text_of(first)
    assert "pool-a: 150/300 finished" in text and " 50/300" not in text and "100/300" not in text
    assert "pool-b: 20/40 finished" in text and "Rollouts (2)" in text
    # More progress waits for progress_every (60 s); a finished rollout does not wait for anything.
    await sink.send(rollout_event(Counter(Success=200), 200))
    await harness.clock.advance(5)
    assert len(receiver.requests) == 1
    failed = [{"job_id": "job-007", "resource_name": "node-7", "reason": "Install failed", "outcome": "Failed"}]
    await sink.send(rollout_event(Counter(Success=299, Failed=1), 300, finished=True, failed=failed))
    await harness.clock.advance(5)
    assert len(receiver.requests) == 2
    finished = text_of(receiver.requests[1])
    assert finished.startswith("**cce-monitor: Rollout pool-a finished: 299/300 succeeded, 1 did not**")
    assert "pool-a: 300/300 finished in 25m, 299 Success, 1 Failed" in finished
    assert "Not successful (1)" in finished and "node-7 (job job-007): Install failed" in finished
    assert sink.backlog == 0  # the pending 200/300 progress was superseded by the end


async def test_pending_events_are_bounded_and_counted(harness: Harness) -> None:
    sink, receiver = await harness.start("teams", max_pending=5, max_items=3)
    for n in range(12):
        await sink.send(job_event(n))
    await sink.send(job_event(12, EventType.JOB_TIMED_OUT, phase=None))
    assert sink.dropped_events == 8
    await harness.clock.advance(2)
    text = text_of(receiver.requests[0])
    assert "Failed jobs (12)" in text and "… and 9 more" in text and "Timed out (1)" in text
    assert "cce-monitor: 12 jobs failed, 1 timed out" in text


ECS_REASON = 'Create node vm failed: {"error":{"code":"Ecs.0319","message":"The ECS quota is insufficient."}}'
ECS_READABLE = "Create node vm failed: Ecs.0319: The ECS quota is insufficient."


async def test_digest_failure_lines_show_embedded_errors_readably(harness: Harness) -> None:
    sink, receiver = await harness.start("teams")
    await sink.send(job_event(4, reason=ECS_REASON))
    await harness.clock.advance(2)
    text = text_of(receiver.requests[0])
    assert f"node-004 (job job-004): {ECS_READABLE}" in text, text
    assert '"error"' not in text


def test_renders_the_rollout_trackers_summaries() -> None:
    """The summary shape is the rollout tracker's: render what it really produces."""
    now = [1000.0]

    async def publish(_event: Event) -> None:  # pragma: no cover - flush is not called
        pass

    tracker = RolloutTracker(publish, project_id="proj", clock=lambda: now[0])
    tracker.add("pool-a", [f"job-{n:03d}" for n in range(8)])
    now[0] = 1060.0
    for n in range(5):
        tracker.on_event(job_event(n, phase="Success", reason=None))
    tracker.on_event(job_event(5, reason=ECS_REASON))
    tracker.on_event(job_event(6, EventType.JOB_TIMED_OUT, phase=None, reason=None))
    rollout = tracker.get("pool-a")
    assert rollout is not None
    state = rollout_state(rollout.summary(1030.0), finished=False)
    assert state == "7/8 finished, 5 Success, 1 Failed, 1 timed out, 1 waiting, ETA 30s"
    now[0] = 1500.0
    tracker.on_event(job_event(7, phase="Success", reason=None))
    event = Event(
        id="e",
        type=EventType.ROLLOUT_FINISHED,
        project_id="p",
        job_id=None,
        rollout="pool-a",
        summary=rollout.summary(1500.0),
    )
    settings_ = parse_options(wecom.PLATFORM, "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k1234", {})
    text = plain_text(build_finished(RolloutEntry(1, event), settings_))
    assert text.startswith("cce-monitor: Rollout pool-a finished: 6/8 succeeded, 2 did not\n")
    assert "8/8 finished in 8m, 6 Success, 1 Failed, 1 timed out" in text
    assert f"node-005 (job job-005): {ECS_READABLE}\n" in text and 'Ecs.0319"' not in text
    assert "node-006 (job job-006) [timed out]" in text


def test_rollout_state_is_exact_and_tolerant() -> None:
    counts = Counter(Success=250, Failed=3, timed_out=1)
    summary = rollout_event(counts, 254).summary
    assert rollout_state(summary, finished=False) == (
        "254/300 finished, 250 Success, 3 Failed, 1 timed out, 46 Running, subjobs 508/600, ETA 3m"
    )
    assert rollout_state({"total": "x", "counts": {"Success": True}}, finished=True) == "finished"
    assert rollout_state(None, finished=False) == "in progress"


# -------------------------------------------------------------------------------------------- truncation

CJK_REASON = "节点安装失败 磁盘空间不足 请检查数据盘 ⚠️ 🚧 "  # 3- and 4-byte UTF-8, 4-byte ones are 2 UTF-16 units


def _bytes_within(kind: str, seen: Received) -> bool:
    body = seen.json
    if kind == "wecom":
        key = body["msgtype"]
        limit = {"markdown": 4096, "text": 2048}[key]
        return len(body[key]["content"].encode()) <= limit
    if kind == "slack":
        sizes = [len(b["text"]["text"].encode("utf-16-le")) // 2 for b in body["blocks"]]
        return max(sizes) <= 3000 and sum(sizes) <= 40_000 and len(body["blocks"]) <= 50
    limit = {"dingtalk": 20_000, "feishu": 20_000, "teams": 28_000}[kind]
    return len(seen.body) <= limit


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("wecom", {"format": "text"}),
        ("wecom", {}),
        ("dingtalk", {}),
        ("feishu", {"secret": SIGNING_SECRET}),
        ("slack", {}),
        ("teams", {}),
    ],
)
async def test_long_lists_are_cut_to_the_size_limit(harness: Harness, kind: str, options: dict[str, object]) -> None:
    sink, receiver = await harness.start(kind, max_items=2000, max_pending=2000, **options)
    for n in range(1500):
        await sink.send(job_event(n, reason=CJK_REASON * 8))
    await harness.clock.advance(2)
    [seen] = receiver.requests
    assert _bytes_within(kind, seen)
    text = text_of(seen)
    assert "Failed jobs (1500)" in text
    more = int(re.search(r"… and (\d+) more", text).group(1))  # type: ignore[union-attr]
    listed = len(re.findall(r"node-\d{3,4}\s*\(job", text))
    assert listed >= 1 and listed + more == 1500
    assert "磁盘空间不足" in text  # multi-byte text survives whole where it is shown


# ------------------------------------------------------------------------------------------------ secrets


@pytest.mark.parametrize("kind", sorted(BOTS))
async def test_secrets_never_show(harness: Harness, caplog: pytest.LogCaptureFixture, kind: str) -> None:
    bot = BOTS[kind]
    options = {"secret": SIGNING_SECRET} if bot.cls.platform.signed else {}
    sink, receiver = await harness.start(kind, max_attempts=2, **options)
    full_url = f"http://127.0.0.1{bot.path}"
    receiver.script = [Reply(500, f"upstream said: {full_url} {bot.token}"), Reply(400, f"bad {bot.token}")]
    with caplog.at_level(logging.DEBUG):
        await sink.send(job_event(7))
        await harness.clock.advance(3)
        assert len(receiver.requests) == 2
        await sink.aclose()
        with pytest.raises(SinkError) as info:
            await sink.send(job_event(8))
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("monitor."))
    shown = [sink.name, repr(sink), repr(sink.settings), str(sink.settings), str(info.value), ours]
    assert "not delivered" in ours, "expected failure log lines"
    for text in shown:
        assert bot.token not in text
        assert SIGNING_SECRET not in text
        assert "sig=" not in text and "access_token=" not in text and "key=" not in text
    assert sink.name.startswith(f"{kind}:http://127.0.0.1:")


async def test_transport_errors_are_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeTime()
    url = "http://127.0.0.1:9/robot/send?access_token=dingtalkTOKENsecret42"  # discard port: refused
    sink = dingtalk.DingTalkSink(
        parse_options(dingtalk.PLATFORM, url, {"max_attempts": 1, "timeout": 2}), timing=clock.timing()
    )
    clock.busy = lambda: not sink.idle
    with caplog.at_level(logging.DEBUG):
        await sink.send(job_event(1))
        await clock.advance(2)
        await sink.aclose()
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("monitor."))
    assert "not delivered" in ours and "dingtalkTOKENsecret42" not in ours


@pytest.mark.parametrize(
    ("kind", "target", "options", "message"),
    [
        ("slack", "https://hooks.slack.com/services/T/B/x", {"secret": "s"}, "unknown option 'secret'"),
        ("slack", "https://hooks.slack.com/services/T/B/x", {"format": "text"}, "unknown option 'format'"),
        ("slack", None, {}, "webhook URL is required"),
        ("slack", "ftp://hooks.slack.com/x", {}, "http:// or https://"),
        ("dingtalk", "https://oapi.dingtalk.com/robot/send", {}, "lacks its access_token="),
        ("wecom", "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?k=1", {}, "lacks its key="),
        ("dingtalk", "https://x/robot/send?access_token=t", {"secret": 12345}, "'secret' must be a non-empty string"),
        ("dingtalk", "https://x/robot/send?access_token=t", {"format": "card"}, "'format' must be one of"),
        ("teams", "https://x/workflows/1", {"rate_per_minute": 0}, "'rate_per_minute' must be an integer"),
        ("teams", "https://x/workflows/1", {"rate_per_second": True}, "'rate_per_second' must be an integer"),
        ("teams", "https://x/workflows/1", {"timeout": "10"}, "'timeout' must be a number"),
        ("teams", "https://x/workflows/1", {"backoff_initial": 5, "backoff_max": 1}, "'backoff_max' must be"),
        ("teams", "https://x/workflows/1", {"events": "job.stalled"}, "'events' must be a non-empty list"),
        ("teams", "https://x/workflows/1", {"events": ["job.exploded"]}, "unknown event type 'job.exploded'"),
        ("teams", "https://x/workflows/1", {"events": ["job.phase_changed:"]}, "bad phase"),
        ("teams", "https://x/workflows/1", {"link": "https://x/{cluster}"}, "only use {rollout} and {job_id}"),
        ("teams", "https://x/workflows/1", {"link": "https://x/{job_id!r}"}, "only use {rollout} and {job_id}"),
        ("teams", "https://x/workflows/1", {"link": "https://x/{job_id"}, "not a valid template"),
        ("teams", "https://x/workflows/1", {"link": "javascript:alert(1)"}, "http(s) URL template"),
        ("teams", "https://x/workflows/1", {"title": "a\nb"}, "one printable line"),
        ("feishu", "https://open.feishu.cn/open-apis/bot/v2/hook/t", {"max_items": 0}, "'max_items' must be"),
    ],
)
def test_bad_options_are_config_errors(kind: str, target: str | None, options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_sink(f"{kind}:{target}" if target else kind, options)
    assert message in str(info.value)
    assert "12345" not in str(info.value)


def test_create_sink_builds_registered_sinks() -> None:
    sink = create_sink("dingtalk:https://oapi.dingtalk.com/robot/send?access_token=abcdef123456", {"title": "rollouts"})
    assert isinstance(sink, dingtalk.DingTalkSink) and isinstance(sink, Sink)
    assert sink.name == "dingtalk:https://oapi.dingtalk.com/robot/send"
    feishu_sink = create_sink("feishu:https://open.feishu.cn/open-apis/bot/v2/hook/0f1e2d3c-token")
    assert feishu_sink.name == "feishu:https://open.feishu.cn/open-apis/bot/v2/hook/***"
    slack_sink = create_sink("slack:https://hooks.slack.com/services/T00/B00/XXXXSECRET")
    assert slack_sink.name == "slack:https://hooks.slack.com/services/***"
    for made in (sink, feishu_sink, slack_sink):
        assert isinstance(made, ChatSink)
        assert made.budget.windows[:2] in (((18, 60.0), (3, 10.0)), ((1, 1.0), (60, 60.0)), ((5, 1.0), (100, 60.0)))


CHAT_TARGETS = {
    "slack": "https://hooks.slack.com/services/T00/B00/XXXXSECRET",
    "teams": "https://x/workflows/1",
    "feishu": "https://open.feishu.cn/open-apis/bot/v2/hook/0f1e2d3c-token",
    "dingtalk": "https://oapi.dingtalk.com/robot/send?access_token=abcdef123456",
    "wecom": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abcdef123456",
}
# A throw-away self-signed CA (EC P-256, valid for a century): a bundle that loads.
TEST_CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBlDCCATmgAwIBAgIUWrYPNqiNU/fjXMp4mu038Y44SY8wCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTY2NlLW1vbml0b3IgdGVzdCBDQTAgFw0yNjEyMDExMDQxNTBa
GA8yMTI2MTEwNzEwNDE1MFowHjEcMBoGA1UEAwwTY2NlLW1vbml0b3IgdGVzdCBD
QTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABEd/CCQxa1zedqSyIU+Whjafv2ik
tdSg746dKlZFY1l0zJJor35BK0lJfU/qX7oC4S6DJiD9CGoBU+B/uqS0GnyjUzBR
MB0GA1UdDgQWBBTpWJi/GlRreoipjAi/LNxujsoRWjAfBgNVHSMEGDAWgBTpWJi/
GlRreoipjAi/LNxujsoRWjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kA
MEYCIQCtdeaYoFvT/6daR9R8B06uOPLcMH8r5j6W5au1bQJfTAIhALXult1Zd08N
bTdSviCWyG/XVoIkPEUvEe5HY9Nfrw+X
-----END CERTIFICATE-----
"""


@pytest.mark.parametrize("kind", list(CHAT_TARGETS))
def test_a_missing_ca_bundle_is_a_config_error(kind: str, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError) as info:
        create_sink(f"{kind}:{CHAT_TARGETS[kind]}", {"ca_bundle": str(missing)})
    assert f"{kind} sink: option 'ca_bundle'" in str(info.value) and "does not exist" in str(info.value)


@pytest.mark.parametrize(("value", "message"), [(123, "must be a path"), ("not a bundle", "not a readable PEM")])
def test_a_bad_ca_bundle_is_a_config_error(tmp_path: Path, value: object, message: str) -> None:
    if isinstance(value, str):
        bundle = tmp_path / "bundle.pem"
        bundle.write_text(value)
        value = str(bundle)
    with pytest.raises(ConfigError) as info:
        create_sink(f"slack:{CHAT_TARGETS['slack']}", {"ca_bundle": value})
    assert "slack sink: option 'ca_bundle'" in str(info.value) and message in str(info.value)


@pytest.mark.parametrize("kind", list(CHAT_TARGETS))
def test_a_valid_ca_bundle_is_accepted(kind: str, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text(TEST_CA_PEM)
    sink = create_sink(f"{kind}:{CHAT_TARGETS[kind]}", {"ca_bundle": str(bundle)})
    assert isinstance(sink, ChatSink) and sink.settings.ca_bundle == str(bundle)


# --------------------------------------------------------------------------------------------------- close


async def test_aclose_sends_a_final_digest_and_stops_the_flusher(harness: Harness) -> None:
    sink, receiver = await harness.start("feishu")
    await sink.send(job_event(7))
    await harness.clock.settle()
    task = next(t for t in asyncio.all_tasks() if t.get_name() == f"chat flusher {sink.name}")
    assert receiver.requests == []  # still gathering (coalesce)
    await sink.aclose()
    assert task.done()
    [seen] = receiver.requests
    assert "node-007" in text_of(seen) and sink.backlog == 0
    with pytest.raises(SinkError) as info:
        await sink.send(job_event(8))
    assert not info.value.retryable


async def test_aclose_logs_what_the_budget_does_not_allow(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    sink, receiver = await harness.start("wecom", rate_per_minute=1)
    await sink.send(job_event(7))
    await harness.clock.advance(2)
    await sink.send(job_event(8))
    await sink.send(job_event(9))
    with caplog.at_level(logging.WARNING, logger="monitor.sinks.chat"):
        await sink.aclose()
    assert len(receiver.requests) == 1
    assert "closing with 2 events not sent: the rate budget is spent" in caplog.text


# -------------------------------------------------------------------------------------------------- budget


def test_budget_answers_without_waiting() -> None:
    budget = Budget([(1, 1.0), (3, 60.0)])
    assert budget.delay(0.0) == 0
    budget.record(0.0)
    assert budget.delay(0.5) == pytest.approx(0.5)
    budget.record(1.0)
    budget.record(2.0)
    assert budget.delay(3.0) == pytest.approx(57.0)  # the minute is spent until the first stamp leaves
    assert budget.delay(60.0) == 0
    budget.hold(100.0)
    assert budget.delay(60.0) == pytest.approx(40.0)


@settings(max_examples=200, deadline=None)
@given(
    windows=st.lists(st.tuples(st.integers(1, 20), st.sampled_from([1.0, 10.0, 60.0])), min_size=1, max_size=3),
    steps=st.lists(st.tuples(st.floats(0, 5), st.floats(0, 3), st.floats(0, 1)), min_size=1, max_size=120),
)
def test_budget_is_never_exceeded_at_the_server(
    windows: list[tuple[int, float]], steps: list[tuple[float, float, float]]
) -> None:
    """Whatever the gaps and latencies, no window of ``period`` seconds sees more than ``count`` arrivals."""
    budget = Budget(windows)
    now = 0.0
    arrivals = []
    for gap, latency, where in steps:
        now += gap
        while (wait := budget.delay(now)) > 0:  # as the flusher does: park at least a millisecond, ask again
            now += max(wait, 0.001)
        arrivals.append(now + latency * where)  # the server sees it somewhere during the request
        now += latency
        budget.record(now)
    arrivals.sort()
    for count, period in windows:
        for i, start in enumerate(arrivals):
            assert sum(1 for t in arrivals[i:] if t < start + period) <= count


# --------------------------------------------------------------------------------------------------- burst


def _burst(
    failed_at: set[int] | None = None, timed_out_at: set[int] | None = None, *, progress_every: int = 7
) -> tuple[list[Event], set[str], Counter[str]]:
    """300 job transitions of rollout pool-a (15 Failed and 5 timed out unless told), progress digests in
    between, and the finished summary; the names of the nodes that did not succeed; the final counts."""
    failed_at = set(range(7, 300, 20)) if failed_at is None else failed_at
    timed_out_at = {13, 95, 143, 211, 277} if timed_out_at is None else timed_out_at
    counts: Counter[str] = Counter()
    events: list[Event] = []
    bad: list[dict[str, str]] = []
    for n in range(300):
        if n in failed_at:
            events.append(job_event(n, reason=f"Install node failed on node-{n:03d}"))
            counts["Failed"] += 1
            bad.append({"job_id": f"job-{n:03d}", "resource_name": f"node-{n:03d}", "reason": "x", "outcome": "Failed"})
        elif n in timed_out_at:
            events.append(job_event(n, EventType.JOB_TIMED_OUT, phase=None, reason="no answer for 3600s"))
            counts["timed_out"] += 1
            bad.append(
                {"job_id": f"job-{n:03d}", "resource_name": f"node-{n:03d}", "reason": "", "outcome": "timed_out"}
            )
        else:
            events.append(job_event(n, phase="Success", reason=None))
            counts["Success"] += 1
        if n % progress_every == progress_every - 1:
            events.append(rollout_event(counts, n + 1))
    events.append(rollout_event(counts, 300, finished=True, failed=bad))
    names = {f"node-{n:03d}" for n in failed_at | timed_out_at}
    return events, names, counts


def _max_in_window(times: list[float], period: float) -> int:
    return max((sum(1 for t in times[i:] if t < start + period) for i, start in enumerate(times)), default=0)


@pytest.mark.parametrize("tight", [False, True], ids=["defaults", "budget-bound"])
@pytest.mark.parametrize("kind", sorted(BOTS))
async def test_burst_of_300_transitions(harness: Harness, kind: str, tight: bool) -> None:
    """300 transitions in a minute (defaults), or in 15 s with nothing but the rate budget holding messages back."""
    options: dict[str, object] = {"coalesce": 0, "progress_every": 0} if tight else {}
    sink, receiver = await harness.start(kind, defaults=True, **options)
    events, bad_names, counts = _burst()
    for event in events:
        await sink.send(event)
        if event.job_id is not None:
            await harness.clock.advance(0.05 if tight else 0.2)
    for _ in range(600):
        if sink.backlog == 0:
            break
        await harness.clock.advance(1.0)
    await sink.aclose()
    assert sink.backlog == 0 and sink.failed_messages == 0

    per_minute, per_second = LIMITS[kind]
    times = sorted(seen.at for seen in receiver.requests)
    assert _max_in_window(times, 60.0) <= per_minute
    if per_second is not None:
        assert _max_in_window(times, 1.0) <= per_second
    if not tight:
        assert len(times) <= 20  # a digest every few seconds, not one message per event

    bodies = [text_of(seen) for seen in receiver.requests]
    union = "\n".join(bodies)
    digests = [b for b in bodies if "Rollout pool-a finished" not in b]
    # Failures still pending when the summary goes out are listed by the summary alone ("Not successful (20)").
    assert sum(int(n) for b in digests for n in re.findall(r"Failed jobs \((\d+)\)", b)) <= 15
    assert sum(int(n) for b in digests for n in re.findall(r"Timed out \((\d+)\)", b)) <= 5
    unnamed = {name for name in bad_names if name not in union}
    assert len(unnamed) <= sum(int(n) for n in re.findall(r"… and (\d+) more", union))
    [final] = [b for b in bodies if "Rollout pool-a finished" in b]
    assert counts == Counter(Success=280, Failed=15, timed_out=5)
    assert "Rollout pool-a finished: 280/300 succeeded, 20 did not" in final
    assert "300/300 finished in 25m, 280 Success, 15 Failed, 5 timed out" in final
    assert "Not successful (20)" in final


async def test_an_unused_sink_closes_cleanly() -> None:
    """The flusher and the session are made lazily, so a sink that never sent closes without either."""
    sink = wecom.make_wecom_sink("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k123456", {})
    await sink.aclose()
    assert sink.idle


# ---------------------------------------------------------------------------------------- the final summary

# What each platform answers past its published limit, and for how long it then refuses everything.
ENFORCED: dict[str, tuple[int, float, Reply, float]] = {
    # DingTalk custom robots: 20 a minute; more mutes the robot for 10 minutes (errcode 410100).
    "dingtalk": (20, 60.0, _ok_json(errcode=410100, errmsg="send too fast, exceed 20 times per minute"), 600.0),
    # WeCom group robots: 20 a minute (errcode 45009, "api freq out of limit").
    "wecom": (20, 60.0, _ok_json(errcode=45009, errmsg="api freq out of limit"), 60.0),
    # Slack incoming webhooks: about one a second (HTTP 429 with Retry-After).
    "slack": (1, 1.0, Reply(429, "rate_limited", {"Retry-After": "1"}), 1.0),
    # Teams workflows: 4 a second gets the sender throttled (HTTP 429).
    "teams": (4, 1.0, Reply(429, "", {"Retry-After": "1"}), 1.0),
    # Feishu custom bots: 5 a second and 100 a minute (code 11232, frequency limited).
    "feishu": (5, 1.0, _ok_json(code=11232, msg="frequency limited"), 1.0),
}


def enforce(receiver: Receiver, kind: str) -> list[float]:
    """Make ``receiver`` answer as the platform does past its limit; returns the times it refused."""
    count, period, refusal, mute = ENFORCED[kind]
    accepted: list[float] = []
    refused: list[float] = []
    muted_until = -1.0
    original = receiver.handle

    async def handle(request: web.Request) -> web.Response:
        nonlocal muted_until
        now = receiver.clock.now
        recent = [t for t in accepted if t > now - period]
        if now < muted_until or len(recent) >= count:
            muted_until = max(muted_until, now + mute)
            refused.append(now)
            receiver.script.insert(0, refusal)
        else:
            accepted.append(now)
        return await original(request)

    receiver.handle = handle  # type: ignore[method-assign]
    return refused


def _burst_with_failures(failures: int = 25) -> tuple[list[Event], set[str]]:
    events, names, _ = _burst(set(range(5, 300, 300 // failures)), set(), progress_every=10)
    return events, names


async def _drive(harness: Harness, work: asyncio.Future[Any], step: float = 1.0, limit: float = 900.0) -> None:
    """Move the fake clock until ``work`` is done."""
    moved = 0.0
    while not work.done():
        assert moved < limit, "the sink never finished"
        await harness.clock.advance(step)
        moved += step


@pytest.mark.parametrize("tight", [False, True], ids=["defaults", "budget-bound"])
@pytest.mark.parametrize("kind", sorted(BOTS))
async def test_final_summary_arrives_after_a_burst_within_every_bots_limit(
    harness: Harness, kind: str, tight: bool
) -> None:
    """Was: watch closed the chat sinks at once, and with the budget spent by the burst the summary was lost."""
    options: dict[str, object] = {"coalesce": 0, "progress_every": 0} if tight else {}
    sink, receiver = await harness.start(kind, defaults=True, **options)
    refused = enforce(receiver, kind)
    events, bad_names = _burst_with_failures()
    assert len(bad_names) == 25
    for event in events:  # 300 transitions and 25 failures within 15 s, as a fast rollout ends
        await sink.send(event)
        await harness.clock.advance(0.05)
    notices: list[str] = []
    drain = asyncio.ensure_future(sink.drain(notify=notices.append))  # what watch does at a normal end
    await _drive(harness, drain)
    assert drain.result() == {}
    await sink.aclose()
    assert refused == [] and sink.failed_messages == 0 and sink.backlog == 0
    bodies = [text_of(seen) for seen in receiver.requests]
    final = bodies[-1]
    assert "Rollout pool-a finished: 275/300 succeeded, 25 did not" in final
    assert "300/300 finished in 25m, 275 Success, 25 Failed" in final
    assert "Not successful (25)" in final
    assert sum(1 for b in bodies if "Rollout pool-a finished" in b) == 1  # the summary is the last word
    assert not any("pool-a" in b and "/300 finished" in b and "Rollout pool-a" not in b for b in bodies[-1:])
    if tight and kind in ("dingtalk", "wecom"):  # the burst spent the budget: it said what it waited for
        assert any("waiting" in n and "final message" in n for n in notices)


async def test_drain_gives_up_at_its_deadline_and_says_what_was_not_sent(harness: Harness) -> None:
    sink, receiver = await harness.start("wecom", rate_per_minute=1)
    await sink.send(job_event(7))
    await harness.clock.advance(2)  # the one message a minute is spent
    for done in (100, 200):
        await sink.send(rollout_event(Counter(Success=done), done))
    await sink.send(rollout_event(Counter(Success=300), 300, finished=True))
    drain = asyncio.ensure_future(sink.drain(10.0))
    await _drive(harness, drain)
    assert len(receiver.requests) == 1
    assert drain.result() == {"rollout.finished": 1, "rollout.progress": 2}
    # Asked again with a longer bound (no signal came): the budget frees within a minute and it is sent.
    again = asyncio.ensure_future(sink.drain(120.0))
    await _drive(harness, again)
    assert again.result() == {"rollout.finished": 1, "rollout.progress": 2}  # a drain never moves a deadline out
    await sink.aclose()


async def test_final_message_merges_pending_digest_and_summary(harness: Harness) -> None:
    sink, receiver = await harness.start("slack", coalesce=30)
    await sink.send(job_event(1, EventType.JOB_STALLED, phase=None, reason="no progress for 30m", rollout="pool-b"))
    events, _ = _burst_with_failures(5)
    for event in events:
        await sink.send(event)
    drain = asyncio.ensure_future(sink.drain(5.0))
    await _drive(harness, drain, step=0.1)
    assert drain.result() == {}
    [seen] = receiver.requests  # one message: nothing was sent before (coalesce), everything in the last
    body = text_of(seen)
    assert "Rollout pool-a finished" in body and "Not successful (5)" in body
    assert "Stalled (1)" in body and "node-001" in body
    assert "Failed jobs" not in body  # the summary lists the failures; they are not repeated
    await sink.aclose()


async def test_acknowledges_events_once_their_message_is_delivered(harness: Harness) -> None:
    sink, receiver = await harness.start("feishu")
    acked: list[str] = []

    async def on_delivered(ids: Any) -> None:
        acked.extend(ids)

    sink.on_delivered = on_delivered
    receiver.script.append(Reply(500, "busy"))
    success = job_event(3, phase="Success", reason=None)  # not for this sink: acknowledged at once
    await sink.send(success)
    assert acked == [success.id]
    failed = job_event(4)
    await sink.send(failed)
    await harness.clock.advance(0.5)
    assert acked == [success.id]  # the first attempt failed; nothing delivered yet
    await harness.clock.advance(5)
    assert acked == [success.id, failed.id] and len(receiver.requests) == 2
    await sink.aclose()


async def test_a_ready_summary_goes_before_an_older_digest(harness: Harness) -> None:
    """A failure and the rollout's summary arrive together (a daemon restarted with both in its outbox): the
    one message the budget allows is the summary, carrying the failure — not the failure alone with the
    summary a window behind it."""
    sink, receiver = await harness.start("wecom", rate_per_minute=1, coalesce=0)
    failed = [{"job_id": "job-001", "resource_name": "node-001", "reason": "Install node failed", "outcome": "Failed"}]
    await sink.send(job_event(1))
    await sink.send(rollout_event(Counter(Success=299, Failed=1), 300, finished=True, failed=failed))
    await harness.clock.advance(1.0)
    [seen] = receiver.requests
    assert "Rollout pool-a finished" in text_of(seen) and "node-001" in text_of(seen)
    await sink.aclose()


async def test_a_node_rollout_is_told_in_nodes_with_failed_nodes_and_a_sold_out_pool(harness: Harness) -> None:
    """The tracker's node summary (ScaleupCluster nodes: Active, failed with the deepest reason, Abnormal) and a
    pool that sold out: the chat message counts nodes and names each failed node and the pool."""
    now = [1000.0]

    async def publish(_event: Event) -> None:  # pragma: no cover - flush is not called
        pass

    def create_node(uid: str, phase: str, reason: str = "") -> dict[str, Any]:
        return create_node_body(uid, phase, name=f"node-{uid}", node_id=f"id-{uid}", reason=reason)

    subs = [create_node("a", "Success"), create_node("b", "Success"), create_node("c", "Failed", ECS_REASON)]
    body = {"metadata": {"uid": "job-1"}, "spec": {"type": "ScaleupCluster", "subJobs": subs},
            "status": {"phase": "Failed", "reason": "recycle resource"}}  # fmt: skip
    tracker = RolloutTracker(publish, project_id="proj", clock=lambda: now[0], node_check=True)
    tracker.add("wave", ["job-1"])
    tracker.on_snapshot("job-1", parse_job(orjson.dumps(body)))
    tracker.on_event(Event(id="f", type=EventType.JOB_PHASE_CHANGED, project_id="proj", job_id="job-1", phase="Failed"))
    now[0] = 1090.0
    for sub, kind, phase in (("a", EventType.NODE_ACTIVE, "Active"), ("b", EventType.NODE_FAILED, "Abnormal")):
        tracker.on_event(
            Event(id=sub, type=kind, project_id="proj", job_id="job-1", subjob_id=sub, phase=phase, node_id=f"id-{sub}")
        )
    rollout = tracker.get("wave")
    assert rollout is not None and rollout.finished
    finished = Event(
        id="r", type=EventType.ROLLOUT_FINISHED, project_id="proj", job_id=None, rollout="wave",
        summary=rollout.summary(now[0]),
    )  # fmt: skip
    sold_out = Event(
        id="s", type=EventType.NODEPOOL_SETTLED, project_id="proj", job_id=None, rollout="wave", phase="SoldOut",
        nodepool_id="pool-9", resource_name="workers-pool", reason="ResourceInsufficient: no capacity in eu-de-01",
    )  # fmt: skip
    sink, receiver = await harness.start("slack", coalesce=30)
    await sink.send(sold_out)
    await sink.send(finished)
    drain = asyncio.ensure_future(sink.drain(5.0))
    await _drive(harness, drain, step=0.1)
    assert drain.result() == {}
    [seen] = receiver.requests
    body_text = text_of(seen)
    assert "Rollout wave finished" in body_text and "1/3 nodes Active" in body_text, body_text
    assert f"node-c (job job-1): {ECS_READABLE}" in body_text, body_text  # the deepest reason, not "recycle"
    assert "node-b" in body_text and "Abnormal" in body_text
    assert "workers-pool" in body_text and "no capacity in eu-de-01" in body_text, body_text
    assert "recycle resource" not in body_text
    await sink.aclose()
