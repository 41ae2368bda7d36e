"""The HTTP control API (``monitor.daemon.api``) on a real server on 127.0.0.1, over a real SQLite ``State``."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import event, given, settings
from hypothesis import strategies as st
from yarl import URL

from monitor.core.errors import ConfigError
from monitor.core.model import Job, Phase, Timestamp, job_to_json
from monitor.core.secret import Secret
from monitor.daemon.api import make_app, serve
from monitor.daemon.store import State
from monitor.testing import make_event
from tests.unit.daemon.conftest import METRICS, Api, ApiFactory, FakeControl, assert_error

TOKEN = "tok-3f9a1c5e-very-secret-bearer"
JSON = {"Content-Type": "application/json"}


def parse_rfc3339(text: str) -> datetime:
    assert text.endswith("Z"), text
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() == timedelta(0)
    return parsed


def make_job(job_id: str, phase: str = "Running") -> Job:
    return Job(
        id=job_id,
        type="CreateCluster",
        phase=Phase(phase),
        cluster_id="c-1",
        created=Timestamp.parse("2020-02-02 08:12:40.672772389 +0000 UTC"),
        sub_jobs=(Job(id=job_id + "-sub", type="CreateNode", phase=Phase.RUNNING),),
    )


# What the API tests' events share (``make_event(**API_EVENT, job_id=..., phase=...)``).
API_EVENT: dict[str, Any] = {
    "project_id": "proj",
    "job_type": "CreateCluster",
    "phase": "Running",
    "previous_phase": None,
    "reason": None,
    "labels": {"team": "a"},
}


# --------------------------------------------------------------------------------------- POST /v1/jobs


async def test_post_jobs_accepts_new_and_reports_known(api: Api, state: State) -> None:
    status, body, _ = await api.call(
        "POST", "/v1/jobs", body={"job_ids": ["job-a", "job-b"], "labels": {"team": "a"}, "rollout": "r1"}
    )
    assert status == 202
    assert body == {"accepted": ["job-a", "job-b"], "known": []}

    status, body, _ = await api.call("POST", "/v1/jobs", body={"job_ids": ["job-b", "job-c", "job-c"]})
    assert status == 202
    assert body == {"accepted": ["job-c"], "known": ["job-b"]}

    stored = {j.job_id: j for j in await state.jobs()}
    assert stored["job-a"].labels == {"team": "a"} and stored["job-a"].rollout == "r1"
    assert stored["job-c"].labels == {} and stored["job-c"].rollout is None


async def test_post_jobs_null_labels_and_rollout_mean_not_given(api: Api) -> None:
    status, body, _ = await api.call("POST", "/v1/jobs", body={"job_ids": ["j1"], "labels": None, "rollout": None})
    assert (status, body) == (202, {"accepted": ["j1"], "known": []})


async def test_post_jobs_passes_deduplicated_ids_to_control(api: Api, state: State) -> None:
    ids = [f"job-{i % 7}" for i in range(30)]
    status, body, _ = await api.call("POST", "/v1/jobs", body={"job_ids": ids})
    assert status == 202
    assert body["accepted"] == [f"job-{i}" for i in range(7)]
    assert len(await state.jobs()) == 7


async def test_post_jobs_accepts_the_limits_exactly(api: Api) -> None:
    ids = [f"j{i}" for i in range(10_000)]
    labels = {f"k{i}": "v" * 256 for i in range(63)} | {"K" * 63: "é ü 日本 ✓"}
    status, body, _ = await api.call("POST", "/v1/jobs", body={"job_ids": ids, "labels": labels, "rollout": "r" * 128})
    assert status == 202
    assert len(body["accepted"]) == 10_000


def _ids(n: int) -> list[str]:
    return [f"j{i}" for i in range(n)]


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("not json", b"not json", "not valid JSON"),
    ("empty body", b"", "not valid JSON"),
    ("truncated", b'{"job_ids": ["a"', "not valid JSON"),
    ("invalid utf-8", b'{"job_ids": ["\xff"]}', "not valid JSON"),
    ("lone surrogate", b'{"job_ids": ["\\ud800"]}', "not valid JSON"),
    ("nan", b'{"job_ids": [NaN]}', "not valid JSON"),
    ("deep lists", b"[" * 10_000 + b"]" * 10_000, "not valid JSON"),
    ("deep objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "not valid JSON"),
    ("deep in job_ids", b'{"job_ids": ' + b"[" * 5000 + b"]" * 5000 + b"}", "not valid JSON"),
    ("array body", b'["job-a"]', "body must be a JSON object, not array"),
    ("string body", b'"job-a"', "body must be a JSON object, not string"),
    ("null body", b"null", "body must be a JSON object, not null"),
    ("number body", b"12", "body must be a JSON object, not number"),
    ("unknown key", orjson.dumps({"job_ids": ["a"], "jobIds": ["b"]}), "unknown key 'jobIds'"),
    ("missing job_ids", orjson.dumps({"labels": {}}), "job_ids is required"),
    ("empty job_ids", orjson.dumps({"job_ids": []}), "job_ids must not be empty"),
    ("job_ids string", orjson.dumps({"job_ids": "job-a"}), "job_ids must be an array of strings, not string"),
    ("job_ids object", orjson.dumps({"job_ids": {"a": 1}}), "job_ids must be an array of strings, not object"),
    ("job_ids null", orjson.dumps({"job_ids": None}), "job_ids must be an array of strings, not null"),
    ("id number", orjson.dumps({"job_ids": ["ok", 5]}), "job_ids[1] must be a string, not number"),
    ("id null", orjson.dumps({"job_ids": [None]}), "job_ids[0] must be a string, not null"),
    ("id list", orjson.dumps({"job_ids": [["a"]]}), "job_ids[0] must be a string, not array"),
    ("id bool", orjson.dumps({"job_ids": [True]}), "job_ids[0] must be a string, not boolean"),
    ("too many ids", orjson.dumps({"job_ids": _ids(10_001)}), "job_ids has 10001 ids; at most 10000"),
    ("dot dot slash", orjson.dumps({"job_ids": ["ok", "../x"]}), "job_ids[1]: invalid job id '../x'"),
    ("slash", orjson.dumps({"job_ids": ["a/b"]}), "job_ids[0]: invalid job id 'a/b'"),
    ("encoded dots", orjson.dumps({"job_ids": ["%2e%2e"]}), "job_ids[0]: invalid job id '%2e%2e'"),
    ("dot dot", orjson.dumps({"job_ids": [".."]}), "job_ids[0]: invalid job id"),
    ("query", orjson.dumps({"job_ids": ["a?b=1"]}), "job_ids[0]: invalid job id"),
    ("unicode", orjson.dumps({"job_ids": ["jöb"]}), "job_ids[0]: invalid job id 'jöb'"),
    ("fullwidth digit", orjson.dumps({"job_ids": ["\uff11"]}), "job_ids[0]: invalid job id"),
    ("newline", orjson.dumps({"job_ids": ["a\nb"]}), "job_ids[0]: invalid job id 'a\\nb'"),
    ("nul", orjson.dumps({"job_ids": ["a\x00b"]}), "job_ids[0]: invalid job id"),
    ("space", orjson.dumps({"job_ids": ["a b"]}), "job_ids[0]: invalid job id"),
    ("empty id", orjson.dumps({"job_ids": [""]}), "job_ids[0]: invalid job id ''"),
    ("leading dash", orjson.dumps({"job_ids": ["-a"]}), "job_ids[0]: invalid job id"),
    ("129 chars", orjson.dumps({"job_ids": ["a" * 129]}), "job_ids[0]: invalid job id"),
    ("huge id", orjson.dumps({"job_ids": ["a" * 100_000 + "/"]}), "..."),
    ("labels array", orjson.dumps({"job_ids": ["a"], "labels": ["k=v"]}), "labels must be an object"),
    ("labels string", orjson.dumps({"job_ids": ["a"], "labels": "k=v"}), "labels must be an object"),
    ("label number", orjson.dumps({"job_ids": ["a"], "labels": {"k": 1}}), "label 'k': value must be a string"),
    ("label null", orjson.dumps({"job_ids": ["a"], "labels": {"k": None}}), "value must be a string, not null"),
    ("label object", orjson.dumps({"job_ids": ["a"], "labels": {"k": {"x": "y"}}}), "not object"),
    ("label key char", orjson.dumps({"job_ids": ["a"], "labels": {"team name": "v"}}), "invalid label key"),
    ("label key slash", orjson.dumps({"job_ids": ["a"], "labels": {"a/b": "v"}}), "invalid label key 'a/b'"),
    ("label key empty", orjson.dumps({"job_ids": ["a"], "labels": {"": "v"}}), "invalid label key ''"),
    ("label key long", orjson.dumps({"job_ids": ["a"], "labels": {"k" * 64: "v"}}), "invalid label key"),
    ("label key unicode", orjson.dumps({"job_ids": ["a"], "labels": {"tëam": "v"}}), "invalid label key"),
    ("label key newline", orjson.dumps({"job_ids": ["a"], "labels": {"k\n": "v"}}), "invalid label key 'k\\n'"),
    ("label value long", orjson.dumps({"job_ids": ["a"], "labels": {"k": "v" * 257}}), "longer than 256"),
    ("label newline", orjson.dumps({"job_ids": ["a"], "labels": {"k": "a\nb"}}), "label k: value contains a control"),
    ("label cr", orjson.dumps({"job_ids": ["a"], "labels": {"k": "a\rb"}}), "control character"),
    ("label nul", orjson.dumps({"job_ids": ["a"], "labels": {"k": "\x00"}}), "control character"),
    ("label esc", orjson.dumps({"job_ids": ["a"], "labels": {"k": "\x1b[31mred"}}), "control character"),
    ("label del", orjson.dumps({"job_ids": ["a"], "labels": {"k": "\x7f"}}), "control character"),
    ("label c1", orjson.dumps({"job_ids": ["a"], "labels": {"k": "a\x85b"}}), "control character"),
    ("label line sep", orjson.dumps({"job_ids": ["a"], "labels": {"k": "a\u2028b"}}), "control character"),
    ("label bidi", orjson.dumps({"job_ids": ["a"], "labels": {"k": "\u202eevil"}}), "control character"),
    ("too many labels", orjson.dumps({"job_ids": ["a"], "labels": {f"k{i}": "v" for i in range(65)}}), "at most 64"),
    ("rollout slash", orjson.dumps({"job_ids": ["a"], "rollout": "../r"}), "invalid rollout name '../r'"),
    ("rollout empty", orjson.dumps({"job_ids": ["a"], "rollout": ""}), "invalid rollout name ''"),
    ("rollout number", orjson.dumps({"job_ids": ["a"], "rollout": 5}), "rollout must be a string, not number"),
    ("rollout list", orjson.dumps({"job_ids": ["a"], "rollout": ["r"]}), "rollout must be a string, not array"),
    ("rollout unicode", orjson.dumps({"job_ids": ["a"], "rollout": "rollöut"}), "invalid rollout name"),
]


@pytest.mark.parametrize(("body", "text"), [(b, t) for _, b, t in BAD_BODIES], ids=[n for n, _, _ in BAD_BODIES])
async def test_post_jobs_rejects_invalid_bodies(api: Api, state: State, body: bytes, text: str) -> None:
    status, parsed, resp = await api.call("POST", "/v1/jobs", data=body)
    assert_error(status, parsed, resp, 400, text)
    assert await state.jobs() == []
    assert "add_jobs" not in api.control.calls


async def test_post_jobs_respects_a_lower_job_limit(start: ApiFactory) -> None:
    api = await start(max_jobs_per_request=3)
    status, body, resp = await api.call("POST", "/v1/jobs", body={"job_ids": _ids(4)})
    assert_error(status, body, resp, 400, "job_ids has 4 ids; at most 3 per request")
    status, body, _ = await api.call("POST", "/v1/jobs", body={"job_ids": _ids(3)})
    assert status == 202


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"])
async def test_post_jobs_needs_a_json_content_type(api: Api, content_type: str) -> None:
    status, body, resp = await api.call(
        "POST", "/v1/jobs", data=orjson.dumps({"job_ids": ["a"]}), headers={"Content-Type": content_type}
    )
    assert_error(status, body, resp, 415, "Content-Type must be application/json")


async def test_post_jobs_accepts_json_with_charset(api: Api) -> None:
    status, _, _ = await api.call(
        "POST",
        "/v1/jobs",
        data=orjson.dumps({"job_ids": ["a"]}),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert status == 202


# ------------------------------------------------------------------------------------------ body size


async def test_oversized_body_with_content_length_is_413_json(start: ApiFactory, state: State) -> None:
    api = await start(max_body=1000)
    body = orjson.dumps({"job_ids": _ids(300)})
    assert len(body) > 1000
    status, parsed, resp = await api.call("POST", "/v1/jobs", data=body)
    assert_error(status, parsed, resp, 413, "request body is larger than 1000 bytes")
    assert await state.jobs() == []


async def test_oversized_chunked_body_is_413_json(start: ApiFactory) -> None:
    api = await start(max_body=1000)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"job_ids": ['
        for i in range(200):
            yield b'"j%d",' % i
        yield b'"last"]}'

    status, parsed, resp = await api.call("POST", "/v1/jobs", data=chunks())
    assert_error(status, parsed, resp, 413, "request body is larger than 1000 bytes")


async def test_default_limit_is_one_mebibyte(api: Api) -> None:
    pad = b" " * ((1 << 20) - len(b'{"job_ids": ["a"]}'))
    status, _, _ = await api.call("POST", "/v1/jobs", data=b'{"job_ids": ["a"]}' + pad)
    assert status == 202
    status, body, resp = await api.call("POST", "/v1/jobs", data=b'{"job_ids": ["a"]}' + pad + b" ")
    assert_error(status, body, resp, 413, "larger than 1048576 bytes")


# ---------------------------------------------------------------------------------------- GET /v1/jobs


async def seed(api: Api, state: State) -> None:
    await api.call("POST", "/v1/jobs", body={"job_ids": ["a1", "a2"], "labels": {"team": "a", "env": "prod"}})
    await api.call("POST", "/v1/jobs", body={"job_ids": ["b1"], "labels": {"team": "b"}, "rollout": "r1"})
    await api.call("POST", "/v1/jobs", body={"job_ids": ["c1"], "rollout": "r2"})
    await state.record("a2", make_job("a2", "Running"), [make_event(**API_EVENT, job_id="a2")])
    await state.record(
        "b1",
        make_job("b1", "Success"),
        [make_event(**{**API_EVENT, "phase": "Success"}, job_id="b1")],
        outcome="Success",
    )


async def test_list_jobs_shape(api: Api, state: State) -> None:
    await seed(api, state)
    status, body, resp = await api.call("GET", "/v1/jobs")
    assert status == 200 and resp.content_type == "application/json"
    assert list(body) == ["jobs"]
    jobs = {j["job_id"]: j for j in body["jobs"]}
    assert set(jobs) == {"a1", "a2", "b1", "c1"}
    for job in jobs.values():
        assert set(job) == {"job_id", "labels", "rollout", "added_at", "phase", "outcome", "finished_at"}
        parse_rfc3339(job["added_at"])
    assert jobs["a1"] == {**jobs["a1"], "labels": {"team": "a", "env": "prod"}, "rollout": None, "phase": None}
    assert jobs["a1"]["outcome"] is None and jobs["a1"]["finished_at"] is None
    assert jobs["a2"]["phase"] == "Running"
    assert jobs["b1"]["phase"] == "Success" and jobs["b1"]["outcome"] == "Success" and jobs["b1"]["rollout"] == "r1"
    finished = parse_rfc3339(jobs["b1"]["finished_at"])
    assert finished >= parse_rfc3339(jobs["b1"]["added_at"])


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {"a1", "a2", "b1", "c1"}),
        ("?rollout=r1", {"b1"}),
        ("?rollout=nope", set()),
        ("?phase=Running", {"a2"}),
        ("?phase=Success", {"b1"}),
        ("?label=team=a", {"a1", "a2"}),
        ("?label=team=a&label=env=prod", {"a1", "a2"}),
        ("?label=team=a&label=env=dev", set()),
        ("?label=team=b&rollout=r1&phase=Success", {"b1"}),
        ("?label=team%3Db", {"b1"}),
        ("?label=empty=", set()),
    ],
)
async def test_list_jobs_filters(api: Api, state: State, query: str, expected: set[str]) -> None:
    await seed(api, state)
    status, body, _ = await api.call("GET", "/v1/jobs" + query)
    assert status == 200
    assert {j["job_id"] for j in body["jobs"]} == expected


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ("?labels=team=a", "unknown query parameter 'labels'"),
        ("?phase=Running&phase=Failed", "phase given more than once"),
        ("?rollout=a&rollout=b", "rollout given more than once"),
        ("?phase=", "invalid phase ''"),
        ("?phase=Run%20ning", "invalid phase"),
        ("?phase=a%0Ab", "invalid phase 'a\\nb'"),
        ("?rollout=..%2Fx", "invalid rollout name '../x'"),
        ("?rollout=%2e%2e", "invalid rollout name '..'"),
        ("?label=team", "invalid label filter 'team'"),
        ("?label==v", "invalid label key ''"),
        ("?label=a%2Fb=v", "invalid label key 'a/b'"),
        ("?label=k=a%0Ab", "label k: value contains a control character"),
        ("?label=k=a%00b", "control character"),
        ("?label=k=" + "v" * 257, "longer than 256"),
        ("?label=k=1&label=k=2", "label k given more than once"),
    ],
)
async def test_list_jobs_rejects_bad_filters(api: Api, query: str, text: str) -> None:
    status, body, resp = await api.call("GET", "/v1/jobs" + query)
    assert_error(status, body, resp, 400, text)
    assert "list_jobs" not in api.control.calls


# ------------------------------------------------------------------------------------ GET /v1/jobs/{id}


async def test_get_job_with_snapshot_and_history(api: Api, state: State) -> None:
    await api.call("POST", "/v1/jobs", body={"job_ids": ["job-1"], "labels": {"team": "a"}, "rollout": "r1"})
    job = make_job("job-1")
    events = [make_event(**{**API_EVENT, "phase": phase}, job_id="job-1") for phase in ("Initializing", "Running")]
    await state.record("job-1", job, events)

    status, body, _ = await api.call("GET", "/v1/jobs/job-1")
    assert status == 200
    assert set(body) == {"job", "history"}
    got = body["job"]
    assert set(got) == {"job_id", "labels", "rollout", "added_at", "phase", "outcome", "finished_at", "snapshot"}
    assert got["job_id"] == "job-1" and got["labels"] == {"team": "a"} and got["rollout"] == "r1"
    assert got["phase"] == "Running" and got["outcome"] is None and got["finished_at"] is None
    parse_rfc3339(got["added_at"])
    assert got["snapshot"] == orjson.loads(job_to_json(job))
    assert got["snapshot"]["sub_jobs"][0]["id"] == "job-1-sub"
    assert body["history"] == [e.to_dict() for e in events]


async def test_get_job_without_snapshot(api: Api) -> None:
    await api.call("POST", "/v1/jobs", body={"job_ids": ["job-2"]})
    status, body, _ = await api.call("GET", "/v1/jobs/job-2")
    assert status == 200
    assert body["job"]["snapshot"] is None and body["job"]["phase"] is None
    assert body["history"] == []


async def test_get_unknown_job_is_404(api: Api) -> None:
    status, body, resp = await api.call("GET", "/v1/jobs/nope")
    assert_error(status, body, resp, 404, "job nope is not tracked")


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("%2e%2e", "invalid job id '..'"),
        ("%2E%2E", "invalid job id '..'"),
        ("..", "invalid job id '..'"),
        ("a%2Fb", "invalid job id 'a/b'"),
        ("a%2fb", "invalid job id 'a/b'"),
        ("%C3%A9", "invalid job id 'é'"),
        ("a%00b", "invalid job id 'a\\x00b'"),
        ("a%0D%0AX-Injected:%201", "invalid job id 'a\\r\\nX-Injected: 1'"),
        ("a%20b", "invalid job id 'a b'"),
        ("-x", "invalid job id '-x'"),
        ("a" * 129, "invalid job id"),
    ],
)
async def test_job_path_rejects_invalid_ids(api: Api, method: str, path: str, text: str) -> None:
    status, body, resp = await api.call(method, "/v1/jobs/" + path)
    assert_error(status, body, resp, 400, text)
    assert not {"get_job", "remove_job"} & set(api.control.calls)


@pytest.mark.parametrize("path", ["/v1/jobs/a/b", "/v1/jobs/../x", "/v1/jobs/", "/v1/job", "/v2/jobs", "/x", "/ui/x/y"])
async def test_unknown_routes_are_404_json(api: Api, path: str) -> None:
    status, body, resp = await api.call("GET", path)
    assert_error(status, body, resp, 404, "Not Found")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/v1/jobs", {"GET", "HEAD", "POST"}),
        ("PATCH", "/v1/jobs/a", {"GET", "HEAD", "DELETE"}),
        ("POST", "/v1/jobs/a", {"GET", "HEAD", "DELETE"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
        ("DELETE", "/metrics", {"GET", "HEAD"}),
    ],
)
async def test_wrong_method_is_405_json(api: Api, method: str, path: str, allow: set[str]) -> None:
    status, body, resp = await api.call(method, path)
    assert_error(status, body, resp, 405, "Method Not Allowed")
    assert set(resp.headers["Allow"].split(",")) == allow


# ----------------------------------------------------------------------------------- DELETE /v1/jobs/{id}


async def test_delete_job(api: Api, state: State) -> None:
    await api.call("POST", "/v1/jobs", body={"job_ids": ["job-1", "job-2"]})
    await state.record("job-1", make_job("job-1"), [make_event(**API_EVENT, job_id="job-1")])
    status, body, _ = await api.call("DELETE", "/v1/jobs/job-1")
    assert (status, body) == (200, {"removed": True})
    assert [j.job_id for j in await state.jobs()] == ["job-2"]
    assert await state.history("job-1") == []
    status, body, resp = await api.call("DELETE", "/v1/jobs/job-1")
    assert_error(status, body, resp, 404, "job job-1 is not tracked")


# --------------------------------------------------------------------------------------------- probes


async def test_healthz(api: Api) -> None:
    status, body, resp = await api.call("GET", "/healthz")
    assert (status, body) == (200, {"status": "ok"})
    assert resp.content_type == "application/json"
    async with api.session.head(api.url("/healthz")) as head:
        assert head.status == 200


async def test_readyz_200_when_all_checks_pass_else_503(api: Api) -> None:
    checks = {"state": True, "scheduler": True, "cce": True}
    status, body, _ = await api.call("GET", "/readyz")
    assert (status, body) == (200, {"ready": True, "checks": checks, "sinks": {}, "behind": []})
    api.control.ready["cce"] = False
    status, body, _ = await api.call("GET", "/readyz")
    assert (status, body["ready"], body["checks"]["cce"]) == (503, False, False)
    api.control.ready["cce"] = True
    status, _, _ = await api.call("GET", "/readyz")
    assert status == 200


async def test_readyz_names_the_sinks_behind_without_failing(api: Api) -> None:
    slow = {"depth": 120, "oldest_age_s": 95.5, "behind": True}
    api.control.lag = {
        "webhook:https://hooks.example.com/cce": slow,
        "file:/tmp/e.jsonl": {"depth": 0, "oldest_age_s": 0.0, "behind": False},
    }
    status, body, _ = await api.call("GET", "/readyz")
    assert status == 200 and body["ready"] is True, "a slow receiver does not take the daemon out of service"
    assert body["behind"] == ["webhook:https://hooks.example.com/cce"]
    assert body["sinks"]["webhook:https://hooks.example.com/cce"] == slow


async def test_metrics_passes_body_and_content_type_through(api: Api) -> None:
    status, body, resp = await api.call("GET", "/metrics")
    assert status == 200
    assert resp.headers["Content-Type"] == METRICS[1]
    assert body == METRICS[0]


# ---------------------------------------------------------------------------------------------- auth


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


PROTECTED = [
    ("POST", "/v1/jobs", {"job_ids": ["job-1"]}),
    ("GET", "/v1/jobs", None),
    ("GET", "/v1/jobs/job-1", None),
    ("DELETE", "/v1/jobs/job-1", None),
]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize(
    ("headers", "text", "challenge"),
    [
        ({}, "missing bearer token", 'Bearer realm="cce-monitor"'),
        (bearer("wrong"), "invalid bearer token", 'error="invalid_token"'),
        (bearer(TOKEN + "x"), "invalid bearer token", 'error="invalid_token"'),
        (bearer(TOKEN[:-1]), "invalid bearer token", 'error="invalid_token"'),
        (bearer(""), "invalid bearer token", 'error="invalid_token"'),
        ({"Authorization": TOKEN}, "invalid bearer token", 'error="invalid_token"'),
        ({"Authorization": f"Basic {TOKEN}"}, "invalid bearer token", 'error="invalid_token"'),
        ({"Authorization": ""}, "invalid bearer token", 'error="invalid_token"'),
    ],
)
async def test_protected_routes_need_the_token(
    start: ApiFactory,
    state: State,
    method: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    text: str,
    challenge: str,
) -> None:
    api = await start(token=Secret(TOKEN))
    status, parsed, resp = await api.call(method, path, body=body, headers=headers)
    assert_error(status, parsed, resp, 401, text)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert challenge in resp.headers["WWW-Authenticate"]
    assert TOKEN not in str(parsed) and TOKEN not in str(resp.headers)
    assert api.control.calls == []
    assert await state.jobs() == []


async def test_right_token_opens_every_route(start: ApiFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api = await start(token=Secret(TOKEN))
    auth = bearer(TOKEN)
    status, body, _ = await api.call("POST", "/v1/jobs", body={"job_ids": ["job-1"]}, headers=auth)
    assert (status, body) == (202, {"accepted": ["job-1"], "known": []})
    status, body, _ = await api.call("GET", "/v1/jobs", headers=auth)
    assert status == 200 and [j["job_id"] for j in body["jobs"]] == ["job-1"]
    status, _, _ = await api.call("GET", "/v1/jobs/job-1", headers={"Authorization": f"bearer  {TOKEN} "})
    assert status == 200
    status, body, _ = await api.call("DELETE", "/v1/jobs/job-1", headers=auth)
    assert (status, body) == (200, {"removed": True})
    # Unknown routes stay 401 without the token, 404 with it.
    status, body, resp = await api.call("GET", "/v1/nope")
    assert_error(status, body, resp, 401)
    status, body, resp = await api.call("GET", "/v1/nope", headers=auth)
    assert_error(status, body, resp, 404)
    # A failing request with the token logs nothing of it either.
    api.control.fail = RuntimeError("boom")
    status, body, resp = await api.call("GET", "/v1/jobs", headers=auth)
    assert_error(status, body, resp, 500, "internal error")
    await api.call("GET", "/v1/jobs", headers=bearer("wrong-" + TOKEN))
    assert caplog.records, "expected some log lines to check"
    assert TOKEN not in caplog.text
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert "Authorization" not in record.getMessage()


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_probes_and_metrics_stay_open_with_a_token(start: ApiFactory, path: str) -> None:
    api = await start(token=Secret(TOKEN))
    status, _, _ = await api.call("GET", path)
    assert status == 200
    status, _, _ = await api.call("GET", path, headers=bearer("wrong"))
    assert status == 200


async def test_non_utf8_authorization_header_is_401_not_500(start: ApiFactory) -> None:
    api = await start(token=Secret(TOKEN))
    url = URL(api.base)
    assert url.host is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xed\r\nConnection: close\r\n\r\n")
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ")
    assert orjson.loads(body) == {"error": "invalid bearer token"}


async def test_no_token_means_open(api: Api) -> None:
    status, _, _ = await api.call("GET", "/v1/jobs")
    assert status == 200
    status, _, _ = await api.call("GET", "/v1/jobs", headers=bearer("anything"))
    assert status == 200


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"token": Secret("")}, "api token is empty"),
        ({"token": None, "max_body": 0}, "max_body"),
        ({"token": None, "max_jobs_per_request": 0}, "max_jobs_per_request"),
    ],
)
async def test_make_app_rejects_bad_settings(state: State, kwargs: dict[str, Any], text: str) -> None:
    with pytest.raises(ConfigError, match=text):
        make_app(FakeControl(state), **kwargs)


# -------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/jobs", {"job_ids": ["job-1"]}),
        ("GET", "/v1/jobs", None),
        ("GET", "/v1/jobs/job-1", None),
        ("DELETE", "/v1/jobs/job-1", None),
        ("GET", "/readyz", None),
        ("GET", "/metrics", None),
    ],
)
async def test_exception_in_control_is_500_logged_not_shown(
    api: Api, caplog: pytest.LogCaptureFixture, method: str, path: str, body: Any
) -> None:
    secret_text = "db password is hunter2 at /var/lib/secret"
    api.control.fail = RuntimeError(secret_text)
    with caplog.at_level(logging.ERROR, logger="monitor.daemon.api"):
        status, parsed, resp = await api.call(method, path, body=body)
    assert (status, parsed) == (500, {"error": "internal error"})
    assert resp.content_type == "application/json"
    assert secret_text not in str(resp.headers)
    records = [r for r in caplog.records if r.name == "monitor.daemon.api" and r.levelno == logging.ERROR]
    assert len(records) == 1
    assert records[0].exc_info is not None and records[0].exc_info[1] is api.control.fail
    assert method in records[0].getMessage()
    assert secret_text in caplog.text  # the traceback went to the log


async def test_http_exceptions_from_control_keep_their_status(api: Api) -> None:
    api.control.fail = web.HTTPServiceUnavailable(reason="draining")
    status, body, resp = await api.call("GET", "/v1/jobs")
    assert_error(status, body, resp, 503, "draining")


async def test_serve_returns_a_usable_url(state: State) -> None:
    runner, base = await serve(make_app(FakeControl(state), token=None), "127.0.0.1", 0)
    try:
        url = URL(base)
        assert url.scheme == "http" and url.host == "127.0.0.1" and url.port not in (None, 0)
        async with aiohttp.ClientSession() as session, session.get(base + "/healthz") as resp:
            assert resp.status == 200
    finally:
        await runner.cleanup()


async def test_serve_cleans_up_when_the_port_is_taken(state: State) -> None:
    runner, base = await serve(make_app(FakeControl(state), token=None), "127.0.0.1", 0)
    try:
        port = URL(base).port
        assert port is not None
        with pytest.raises(OSError):
            await serve(make_app(FakeControl(state), token=None), "127.0.0.1", port)
    finally:
        await runner.cleanup()


# ----------------------------------------------------------------------------------------- property


class _Keep(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _ThreadServer:
    """One API server (and client) on its own loop in a thread, shared by every hypothesis example."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-api-server", daemon=True)
        self._handler = _Keep(logging.ERROR)
        self.errors = self._handler.records

    def run(self, coro: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout=30)

    def __enter__(self) -> _ThreadServer:
        self.thread.start()
        logging.getLogger("monitor.daemon.api").addHandler(self._handler)
        self.run(self._setup())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self._teardown())
        finally:
            logging.getLogger("monitor.daemon.api").removeHandler(self._handler)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()

    async def _setup(self) -> None:
        self.state = await State.open(self.path)
        app = make_app(FakeControl(self.state), token=None, max_body=4096, max_jobs_per_request=40)
        self.runner, self.base = await serve(app, "127.0.0.1", 0)
        self.session = aiohttp.ClientSession()

    async def _teardown(self) -> None:
        await self.session.close()
        await self.runner.cleanup()
        await self.state.close()

    async def post(self, body: bytes) -> tuple[int, str, bytes]:
        async with self.session.post(self.base + "/v1/jobs", data=body, headers=JSON) as resp:
            return resp.status, resp.content_type, await resp.read()


@pytest.fixture(scope="module")
def thread_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_ThreadServer]:
    with _ThreadServer(tmp_path_factory.mktemp("api") / "s.db") as server:
        yield server


_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _leaf, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
)
_id = st.text(max_size=30) | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
_label_key = st.from_regex(r"[A-Za-z0-9_.-]{1,63}", fullmatch=True) | st.text(max_size=70)
_near_valid = st.fixed_dictionaries(
    {"job_ids": st.lists(_id, max_size=45) | _json},
    optional={
        "labels": st.dictionaries(_label_key, st.text(max_size=300) | _leaf, max_size=5) | _json,
        "rollout": _id | _json,
        "extra": _json,
    },
)
_valid_id = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
_mostly_valid = st.fixed_dictionaries(
    {"job_ids": st.lists(_valid_id | _id, min_size=1, max_size=45)},
    optional={
        "labels": st.dictionaries(st.from_regex(r"[A-Za-z0-9_.-]{1,63}", fullmatch=True), st.text(max_size=40)),
        "rollout": _valid_id,
    },
)
_bodies = (
    _near_valid.map(orjson.dumps)
    | _mostly_valid.map(orjson.dumps)
    | st.tuples(_mostly_valid.map(orjson.dumps), st.integers(3000, 9000)).map(lambda t: t[0] + b" " * t[1])
    | _json.map(orjson.dumps)
    | st.binary(max_size=200)
    | st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)
    | st.text(max_size=5000).map(lambda t: orjson.dumps({"job_ids": ["a"], "labels": {"k": t}}))
)


@settings(max_examples=150, deadline=None)
@given(body=_bodies)
def test_random_bodies_never_cause_500(thread_server: _ThreadServer, body: bytes) -> None:
    status, content_type, raw = thread_server.run(thread_server.post(body))
    event(f"status {status}")
    assert status in (202, 400, 413), (status, raw)
    assert content_type == "application/json"
    parsed = orjson.loads(raw)
    if status == 202:
        assert set(parsed) == {"accepted", "known"}
        assert all(isinstance(i, str) for i in parsed["accepted"] + parsed["known"])
    else:
        assert list(parsed) == ["error"] and isinstance(parsed["error"], str)
        assert "\n" not in parsed["error"] and len(parsed["error"]) < 400
    assert thread_server.errors == []
