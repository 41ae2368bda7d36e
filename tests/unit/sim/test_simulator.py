"""The CCE job simulator, exercised over real HTTP on 127.0.0.1 with aiohttp (and once with the vendor SDK)."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from huaweicloudsdkcce.v3 import CceClient, ShowJobRequest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.http.http_config import HttpConfig

from monitor.cce.signing import authorization, format_sdk_date
from monitor.sim import (
    JOB_TYPES,
    Simulator,
    SimulatorConfig,
    Transition,
    format_go_timestamp,
    run_forever,
)
from monitor.sim.shapes import PREPAID_MESSAGE
from monitor.testing import FakeClock, Simulators

GO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.(\d{0,8}[1-9]))? \+0000 UTC$")
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
JOB_KEYS = ["kind", "apiVersion", "metadata", "spec", "status"]
SUB_JOBS = {
    "CreateCluster": (["CreatePSMCert", "InstallMaster"], ["CreatePSMCert", "InstallMaster", "InstallAddons"]),
    "CreateNode": (["CreateNodeVM", "InstallNode"],),
    "DeleteNode": (["DeleteNodeVM"],),
    "ScaleupCluster": (["ScaleupMaster", "UpdateClusterConfig"],),
}
AK, SK = "SIMAKEXAMPLE0000", "sim-secret-key-0123456789"
IAM_BODY = {
    "auth": {
        "identity": {
            "methods": ["password"],
            "password": {"user": {"name": "monitor", "password": "sim-password", "domain": {"name": "sim-domain"}}},
        },
        "scope": {"project": {"id": SimulatorConfig().project_id}},
    }
}


Factory = Callable[..., Awaitable[tuple[Simulator, str]]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_sim(clock: FakeClock) -> AsyncIterator[Factory]:
    """Start simulators (fake clock unless ``real_clock=True``) and close them all at the end."""
    async with Simulators(clock=clock) as simulators:

        async def factory(
            config: SimulatorConfig | None = None, *, real_clock: bool = False, **kwargs: Any
        ) -> tuple[Simulator, str]:
            return await simulators.start(config, clock=time.monotonic if real_clock else None, **kwargs)

        yield factory


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def job_path(sim: Simulator, job_id: str, project_id: str | None = None) -> str:
    return f"/api/v3/projects/{project_id or sim.config.project_id}/jobs/{job_id}"


async def get_job(
    session: aiohttp.ClientSession,
    endpoint: str,
    sim: Simulator,
    job_id: str,
    *,
    token: str | None = "",
    headers: dict[str, str] | None = None,
    path: str | None = None,
) -> tuple[int, Any, bytes]:
    """GET a job; ``token=""`` means the config token, ``None`` no token. Returns status, headers, body."""
    sent = dict(headers or {})
    if token is not None:
        sent["X-Auth-Token"] = token or sim.config.token
    async with session.get(endpoint + (path or job_path(sim, job_id)), headers=sent) as response:
        return response.status, response.headers, await response.read()


def phase_of(truth: list[Transition], uid: str, now_ns: int) -> str:
    return [t.phase for t in truth if t.uid == uid and t.at_ns <= now_ns][-1]


def dedupe(values: list[str]) -> list[str]:
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def go_ns(text: str) -> int:
    """Parse a Go timestamp back to nanoseconds since the epoch."""
    base, _, frac = text.removesuffix(" +0000 UTC").partition(".")
    seconds = int(datetime.strptime(base, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp())
    return seconds * 1_000_000_000 + int(frac.ljust(9, "0") or 0)


# --- shape and timestamps ---------------------------------------------------------------------------------


async def test_job_shape_matches_the_api_document(make_sim: Factory, session: aiohttp.ClientSession) -> None:
    sim, endpoint = await make_sim(SimulatorConfig(seed=11))
    ids = {job_type: [sim.add_job(job_type, duration=100) for _ in range(6)] for job_type in JOB_TYPES}
    other = sim.add_job("UpgradeCluster", duration=100)
    reasons_omitted = 0
    for job_type, job_ids in ids.items():
        for job_id in job_ids:
            status, headers, raw = await get_job(session, endpoint, sim, job_id)
            assert status == 200
            assert headers["Content-Type"] == "application/json"
            assert REQUEST_ID.match(headers["X-Request-Id"])
            job = orjson.loads(raw)
            assert list(job) == JOB_KEYS
            assert (job["kind"], job["apiVersion"]) == ("Job", "v3")
            assert list(job["metadata"]) == ["uid", "creationTimestamp", "updateTimestamp"]
            assert job["metadata"]["uid"] == job_id
            spec = job["spec"]
            assert list(spec) == ["type", "clusterUID", "resourceID", "resourceName", "extendParam", "subJobs"]
            assert spec["type"] == job_type
            assert all(isinstance(v, str) for v in spec["extendParam"].values())
            assert list(job["status"]) == ["phase", "reason"]
            assert job["status"] == {"phase": "Initializing", "reason": ""}
            assert [sub["spec"]["type"] for sub in spec["subJobs"]] in [list(s) for s in SUB_JOBS[job_type]]
            for sub in spec["subJobs"]:
                assert list(sub) == JOB_KEYS
                assert (sub["kind"], sub["apiVersion"]) == ("Job", "v3")
                assert sub["metadata"]["uid"] != job_id
                assert sub["spec"]["clusterUID"] == spec["clusterUID"]
                assert "subJobs" not in sub["spec"]
                assert sub["status"]["phase"] == "Initializing"
                reasons_omitted += "reason" not in sub["status"]
                if sub["spec"]["type"] in {"CreatePSMCert", "UpdateClusterConfig"}:
                    assert list(sub["spec"]) == ["type", "clusterUID"]
                if sub["spec"]["type"] == "InstallNode":  # no resourceName, as InstallMaster in the document
                    assert "resourceName" not in sub["spec"]
    assert reasons_omitted > 0
    status, _, raw = await get_job(session, endpoint, sim, other)
    assert status == 200
    assert orjson.loads(raw)["spec"]["subJobs"] == []


def test_format_go_timestamp_trims_trailing_zeros() -> None:
    base = int(datetime(2021, 8, 26, 11, 46, 31, tzinfo=UTC).timestamp()) * 1_000_000_000
    assert format_go_timestamp(base) == "2021-08-26 11:46:31 +0000 UTC"
    assert format_go_timestamp(base + 672_772_389) == "2021-08-26 11:46:31.672772389 +0000 UTC"
    assert format_go_timestamp(base + 500_000_000) == "2021-08-26 11:46:31.5 +0000 UTC"
    assert format_go_timestamp(base + 10) == "2021-08-26 11:46:31.00000001 +0000 UTC"


async def test_timestamps_use_go_format_with_varying_digits(
    make_sim: Factory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    sim, endpoint = await make_sim(SimulatorConfig(seed=5))
    job_ids = sim.start_rollout(30, fail_ratio=0.2, duration=10)
    digits: set[int] = set()
    for _ in range(3):
        clock.advance(4)
        for job_id in job_ids:
            _, _, raw = await get_job(session, endpoint, sim, job_id)
            job = orjson.loads(raw)
            truth_ns = {t.at_ns for t in sim.truth(job_id)}
            for node in [job, *job["spec"]["subJobs"]]:
                for key in ("creationTimestamp", "updateTimestamp"):
                    match = GO_TIME.match(node["metadata"][key])
                    assert match, node["metadata"][key]
                    digits.add(len(match.group(1) or ""))
                    assert go_ns(node["metadata"][key]) in truth_ns  # served time == true time, to the ns
    assert 9 in digits
    assert len(digits) >= 5, digits


# --- timelines --------------------------------------------------------------------------------------------


async def poll_until_done(
    session: aiohttp.ClientSession, endpoint: str, sim: Simulator, clock: FakeClock, job_id: str, step: float
) -> list[dict[str, Any]]:
    """Poll every ``step`` clock seconds until the job is final; check each answer against the truth."""
    seen: list[dict[str, Any]] = []
    truth = sim.truth(job_id)
    while True:
        status, _, raw = await get_job(session, endpoint, sim, job_id)
        assert status == 200
        job = orjson.loads(raw)
        now = sim.now_ns()
        for node in [job, *job["spec"]["subJobs"]]:
            assert node["status"]["phase"] == phase_of(truth, node["metadata"]["uid"], now)
        seen.append(job)
        if job["status"]["phase"] in {"Success", "Failed"}:
            return seen
        clock.advance(step)


def check_consistency(job: dict[str, Any]) -> None:
    """Invariants between a parent and its sequential sub-jobs at any instant."""
    phases = [sub["status"]["phase"] for sub in job["spec"]["subJobs"]]
    if job["status"]["phase"] == "Success":  # the parent finishes a little after its last sub-job
        assert all(p == "Success" for p in phases)
    if job["status"]["phase"] == "Failed":
        assert phases.count("Failed") == 1 or not phases
    assert phases.count("Running") + phases.count("Failed") <= 1
    started = [p != "Initializing" for p in phases]
    assert started == sorted(started, reverse=True)  # sub-jobs start in order
    if "Running" in phases or "Failed" in phases:
        assert job["status"]["phase"] in {"Running", "Failed"}
    updates = [go_ns(sub["metadata"]["updateTimestamp"]) for sub in job["spec"]["subJobs"]]
    assert go_ns(job["metadata"]["updateTimestamp"]) >= max(updates, default=0)


async def test_success_timeline(make_sim: Factory, session: aiohttp.ClientSession, clock: FakeClock) -> None:
    sim, endpoint = await make_sim(SimulatorConfig(seed=2))
    job_id = sim.add_job("CreateCluster", duration=60)
    seen = await poll_until_done(session, endpoint, sim, clock, job_id, step=0.25)
    for job in seen:
        check_consistency(job)
    assert dedupe([job["status"]["phase"] for job in seen]) == ["Initializing", "Running", "Success"]
    for index in range(len(seen[0]["spec"]["subJobs"])):
        phases = dedupe([job["spec"]["subJobs"][index]["status"]["phase"] for job in seen])
        assert phases == ["Initializing", "Running", "Success"]
    # updateTimestamp moves exactly when some phase changes
    for before, after in itertools.pairwise(seen):
        changed = [n["status"] for n in [before, *before["spec"]["subJobs"]]] != [
            n["status"] for n in [after, *after["spec"]["subJobs"]]
        ]
        moved = before["metadata"]["updateTimestamp"] != after["metadata"]["updateTimestamp"]
        assert changed == moved
    assert all(job["metadata"]["creationTimestamp"] == seen[0]["metadata"]["creationTimestamp"] for job in seen)
    truth = sim.truth(job_id)
    assert [t.at_ns for t in truth] == sorted(t.at_ns for t in truth)
    assert truth[-1].uid == job_id and truth[-1].phase == "Success"
    assert truth[-1].at == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=truth[-1].at_ns // 1000)


async def test_failure_timeline(make_sim: Factory, session: aiohttp.ClientSession, clock: FakeClock) -> None:
    sim, endpoint = await make_sim(SimulatorConfig(seed=3))
    for attempt in range(4):  # different failing sub-jobs
        job_id = sim.add_job("CreateNode", fail=True, duration=10)
        seen = await poll_until_done(session, endpoint, sim, clock, job_id, step=0.2)
        for job in seen:
            check_consistency(job)
        final = seen[-1]
        assert final["status"]["phase"] == "Failed"
        assert "Success" not in [job["status"]["phase"] for job in seen]
        phases = [sub["status"]["phase"] for sub in final["spec"]["subJobs"]]
        failed = phases.index("Failed")
        assert phases == ["Success"] * failed + ["Failed"] + ["Initializing"] * (len(phases) - failed - 1)
        sub_reason = final["spec"]["subJobs"][failed]["status"]["reason"]
        assert sub_reason and final["status"]["reason"]
        assert sub_reason in final["status"]["reason"]
        last = sim.truth(job_id)[-1]
        assert (last.uid, last.phase, last.reason) == (job_id, "Failed", final["status"]["reason"])
        assert not last.is_sub_job, attempt


async def test_job_variants(make_sim: Factory, session: aiohttp.ClientSession, clock: FakeClock) -> None:
    """``Type/quiet-parent``: the job's updateTimestamp moves with its own phase only, while its sub-jobs move.
    ``Type/prepaid``: an orderID in extendParam all along, and a status.message while it waits Initializing."""
    sim, endpoint = await make_sim(SimulatorConfig(seed=5))
    quiet = sim.add_job("CreateNode/quiet-parent", duration=10)
    seen = await poll_until_done(session, endpoint, sim, clock, quiet, step=0.2)
    assert {job["spec"]["type"] for job in seen} == {"CreateNode"}
    own = {t.at_ns for t in sim.truth(quiet) if not t.is_sub_job}
    assert {go_ns(job["metadata"]["updateTimestamp"]) for job in seen} <= own
    subs = {tuple(sub["status"]["phase"] for sub in job["spec"]["subJobs"]) for job in seen}
    assert len(subs) >= 4, "the sub-jobs moved meanwhile"
    prepaid = sim.add_job("CreateNode/prepaid", start_delay=5, duration=5)
    seen = await poll_until_done(session, endpoint, sim, clock, prepaid, step=0.5)
    orders = {job["spec"]["extendParam"]["orderID"] for job in seen}
    assert len(orders) == 1 and re.fullmatch(r"CS\d{10}[0-9A-F]{5}", orders.pop())
    waiting = [job["status"].get("message") for job in seen if job["status"]["phase"] == "Initializing"]
    assert len(waiting) >= 9 and set(waiting) == {PREPAID_MESSAGE}
    assert not [job for job in seen if job["status"]["phase"] != "Initializing" and "message" in job["status"]]
    _, _, body = await get_job(session, endpoint, sim, sim.add_job("CreateNode/other"))
    assert orjson.loads(body)["spec"]["type"] == "CreateNode/other", "not a variant: a type of its own, as before"


async def test_start_delay_and_default_durations(make_sim: Factory, clock: FakeClock) -> None:
    sim, _ = await make_sim(SimulatorConfig(seed=4, job_duration=10, time_scale=0.5))
    delayed = sim.add_job("DeleteNode", duration=10, start_delay=30)
    running = next(t for t in sim.truth(delayed) if t.phase == "Running")
    assert running.at_ns - sim.truth(delayed)[0].at_ns >= 30 * 1_000_000_000
    # default: 10 s x factor 0.5 for DeleteNode x jitter 0.8-1.2 x time_scale 0.5
    job_id = sim.add_job("DeleteNode")
    truth = sim.truth(job_id)
    assert 1.5e9 <= truth[-1].at_ns - truth[0].at_ns <= 3.5e9


# --- errors: 404, 401, IAM --------------------------------------------------------------------------------


async def test_not_found(make_sim: Factory, session: aiohttp.ClientSession, clock: FakeClock) -> None:
    sim, endpoint = await make_sim()
    job_id = sim.add_job(not_found_for=5)
    for path in (job_path(sim, job_id), job_path(sim, "3f0c5c7e-0000-11ee-8000-0255ac100001")):
        status, headers, raw = await get_job(session, endpoint, sim, job_id, path=path)
        assert status == 404
        assert REQUEST_ID.match(headers["X-Request-Id"])
        body = orjson.loads(raw)
        assert {k: body[k] for k in ("kind", "apiVersion", "metadata", "status", "reason", "code")} == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "reason": "NotFound",
            "code": 404,
        }
        assert body["errorCode"] == "CCE.01404001" and body["errorMessage"] and body["message"]
    clock.advance(5)
    assert (await get_job(session, endpoint, sim, job_id))[0] == 200
    wrong_project = job_path(sim, job_id, project_id="ffffffffffffffffffffffffffffffff")
    assert (await get_job(session, endpoint, sim, job_id, path=wrong_project))[0] == 404
    async with session.get(endpoint + "/api/v3/nothing-here") as response:
        assert response.status == 404
        assert (await response.json())["error_code"] == "APIGW.0101"
        assert REQUEST_ID.match(response.headers["X-Request-Id"])


async def test_token_auth(make_sim: Factory, session: aiohttp.ClientSession, clock: FakeClock) -> None:
    sim, endpoint = await make_sim(SimulatorConfig(token_ttl=30))
    job_id = sim.add_job()
    for token in (None, "not-a-token"):
        status, headers, raw = await get_job(session, endpoint, sim, job_id, token=token)
        assert status == 401
        body = orjson.loads(raw)
        assert body["error_code"] == "APIGW.0301"
        assert body["error_msg"].startswith("Incorrect IAM authentication information")
        assert body["request_id"] == headers["X-Request-Id"]
    clock.advance(29.9)
    assert (await get_job(session, endpoint, sim, job_id))[0] == 200
    clock.advance(0.1)
    status, _, raw = await get_job(session, endpoint, sim, job_id)
    assert status == 401
    assert orjson.loads(raw)["error_code"] == "APIGW.0307"


async def test_iam_token(make_sim: Factory, session: aiohttp.ClientSession, clock: FakeClock) -> None:
    sim, endpoint = await make_sim(SimulatorConfig(token_ttl=600))
    job_id = sim.add_job()
    async with session.post(endpoint + "/v3/auth/tokens", json=IAM_BODY) as response:
        assert response.status == 201
        token = response.headers["X-Subject-Token"]
        body = await response.json()
    iam_time = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
    assert iam_time.match(body["token"]["expires_at"]) and iam_time.match(body["token"]["issued_at"])
    expires, issued = (
        datetime.strptime(body["token"][k], "%Y-%m-%dT%H:%M:%S.%fZ") for k in ("expires_at", "issued_at")
    )
    assert expires - issued == timedelta(seconds=600)
    assert body["token"]["project"]["id"] == sim.config.project_id
    assert (await get_job(session, endpoint, sim, job_id, token=token))[0] == 200

    by_name = json.loads(json.dumps(IAM_BODY))
    by_name["auth"]["scope"]["project"] = {"name": sim.config.project_name}
    async with session.post(endpoint + "/v3/auth/tokens", json=by_name) as response:
        assert response.status == 201

    wrong = json.loads(json.dumps(IAM_BODY))
    wrong["auth"]["identity"]["password"]["user"]["password"] = "nope"
    async with session.post(endpoint + "/v3/auth/tokens", json=wrong) as response:
        assert response.status == 401
        assert await response.json() == {
            "error": {"code": 401, "title": "Unauthorized", "message": "The username or password is wrong."}
        }
        assert "X-Subject-Token" not in response.headers
    async with session.post(endpoint + "/v3/auth/tokens", data=b"{") as response:
        assert response.status == 400

    stats = sim.stats
    assert (stats.iam_token_requests, stats.tokens_issued) == (4, 2)
    clock.advance(600)
    assert (await get_job(session, endpoint, sim, job_id, token=token))[0] == 401


async def test_iam_delay_and_faults(make_sim: Factory, session: aiohttp.ClientSession) -> None:
    sim, endpoint = await make_sim(SimulatorConfig(iam_delay=0.1, faults_on_iam=True, p_500=1.0))

    async def issue() -> int:
        async with session.post(endpoint + "/v3/auth/tokens", json=IAM_BODY) as response:
            return response.status

    started = time.monotonic()
    assert await asyncio.gather(issue(), issue(), issue()) == [500, 500, 500]
    assert time.monotonic() - started < 0.3  # the delay overlaps: concurrent requests are all in flight
    sim.set_faults(p_500=0.0)
    assert await issue() == 201
    assert (sim.stats.iam_token_requests, sim.stats.tokens_issued) == (4, 1)


# --- throttling and faults --------------------------------------------------------------------------------


async def test_rate_limit(make_sim: Factory, session: aiohttp.ClientSession, clock: FakeClock) -> None:
    sim, endpoint = await make_sim(SimulatorConfig(rate_limit=5))
    job_id = sim.add_job()
    statuses = [(await get_job(session, endpoint, sim, job_id))[0] for _ in range(5)]
    assert statuses == [200] * 5
    status, headers, raw = await get_job(session, endpoint, sim, job_id)
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert orjson.loads(raw) == {
        "error_code": "APIGW.0308",
        "error_msg": "The throttling threshold has been reached: policy user over ratelimit,limit:5,time:1 second",
        "request_id": headers["X-Request-Id"],
    }
    clock.advance(0.2)  # one token back
    assert [(await get_job(session, endpoint, sim, job_id))[0] for _ in range(2)] == [200, 429]
    clock.advance(1.0)
    sim.set_faults(retry_after=False, throttle_style="cce", rate_limit=1, rate_burst=1)
    assert (await get_job(session, endpoint, sim, job_id))[0] == 200
    status, headers, raw = await get_job(session, endpoint, sim, job_id)
    assert status == 429 and "Retry-After" not in headers
    assert orjson.loads(raw)["errorCode"] == "CCE.02429001"
    stats = sim.stats
    assert stats.throttled == 3
    assert stats.by_status == {200: 7, 429: 3}
    assert stats.per_second == {0: 8, 1: 2} and stats.max_per_second == 8


@pytest.mark.parametrize("fault", ["p_500", "p_503_html", "p_malformed", "p_slow", "p_drop"])
async def test_fault_under_certainty(make_sim: Factory, session: aiohttp.ClientSession, fault: str) -> None:
    certain: dict[str, Any] = {fault: 1.0}
    sim, endpoint = await make_sim(SimulatorConfig(slow_seconds=0.3, **certain))
    job_id = sim.add_job()
    started = time.monotonic()
    if fault == "p_drop":
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await get_job(session, endpoint, sim, job_id)
        # aiohttp's client retries an idempotent request once on a fresh connection after a disconnect
        assert sim.stats.dropped >= 1 and sim.stats.by_status == {}
        return
    status, headers, raw = await get_job(session, endpoint, sim, job_id)
    assert REQUEST_ID.match(headers["X-Request-Id"])
    if fault == "p_500":
        assert status == 500
        assert orjson.loads(raw) == {"errorCode": "CCE.01500001", "errorMessage": "Internal server error"}
    elif fault == "p_503_html":
        assert status == 503
        assert headers["Content-Type"].startswith("text/html")
        assert raw.startswith(b"<html>") and b"<title>503 Service Temporarily Unavailable</title>" in raw
    elif fault == "p_malformed":
        assert status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)
        sim.set_faults(p_malformed=0.0)
        whole = (await get_job(session, endpoint, sim, job_id))[2]
        assert whole.startswith(raw) and len(raw) < len(whole)
    else:
        assert status == 200 and time.monotonic() - started >= 0.3
        assert orjson.loads(raw)["metadata"]["uid"] == job_id


async def test_order_of_checks(make_sim: Factory, session: aiohttp.ClientSession) -> None:
    """The load balancer's 503 comes before auth; CCE's 500 only after it; throttling before auth."""
    sim, endpoint = await make_sim(SimulatorConfig(p_503_html=1.0))
    job_id = sim.add_job()
    assert (await get_job(session, endpoint, sim, job_id, token="bad"))[0] == 503
    sim.set_faults(p_503_html=0.0, p_500=1.0)
    assert (await get_job(session, endpoint, sim, job_id, token="bad"))[0] == 401
    assert (await get_job(session, endpoint, sim, job_id))[0] == 500
    sim.set_faults(p_500=0.0, rate_limit=1)
    assert (await get_job(session, endpoint, sim, job_id))[0] == 200
    assert (await get_job(session, endpoint, sim, job_id, token="bad"))[0] == 429


async def test_slow_answers_do_not_delay_close(make_sim: Factory, session: aiohttp.ClientSession) -> None:
    sim, endpoint = await make_sim(SimulatorConfig(p_slow=1.0, slow_seconds=30))
    job_id = sim.add_job()
    pending = asyncio.create_task(get_job(session, endpoint, sim, job_id))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await sim.close()
    assert time.monotonic() - started < 5
    await asyncio.gather(pending, return_exceptions=True)


# --- determinism ------------------------------------------------------------------------------------------


async def test_deterministic_under_the_seed(session: aiohttp.ClientSession) -> None:
    epoch = 1_700_000_000_123_456_789
    runs = []
    for seed in (7, 7, 8):
        clock = FakeClock()
        sim = Simulator(SimulatorConfig(seed=seed, p_500=0.3, p_503_html=0.2), clock=clock, epoch_ns=epoch)
        endpoint = await sim.start()
        try:
            ids = sim.start_rollout(10, fail_ratio=0.3, job_type="CreateCluster")
            truths = [sim.truth(job_id) for job_id in ids]
            answers = []
            for step in range(30):
                clock.advance(3)
                status, headers, raw = await get_job(session, endpoint, sim, ids[step % 10])
                answers.append((status, headers["X-Request-Id"], raw))
            runs.append((ids, truths, answers))
        finally:
            await sim.close()
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]
    statuses = {status for status, _, _ in runs[0][2]}
    assert {200, 500, 503} <= statuses
    failed = [t[-1].phase for t in runs[0][1]].count("Failed")
    assert failed == 3


# --- AK/SK and the vendor SDK -----------------------------------------------------------------------------


def signed_headers(
    endpoint: str,
    path: str,
    *,
    ak: str = AK,
    sk: str = SK,
    query: dict[str, str] | None = None,
    when: datetime | None = None,
) -> dict[str, str]:
    headers = {
        "Host": endpoint.removeprefix("http://"),
        "X-Sdk-Date": format_sdk_date(when),
        "Content-Type": "application/json",
    }
    auth = authorization(ak, sk, method="GET", path=path, query=list((query or {}).items()), headers=headers)
    return {**headers, "Authorization": auth}


async def test_aksk_signatures(make_sim: Factory, session: aiohttp.ClientSession) -> None:
    sim, endpoint = await make_sim(SimulatorConfig(ak=AK, sk=SK), real_clock=True)
    job_id, other_id = sim.add_job(), sim.add_job()
    path = job_path(sim, job_id)
    good = signed_headers(endpoint, path)
    assert (await get_job(session, endpoint, sim, job_id, token=None, headers=good))[0] == 200

    query = {"b": "2 3", "a": "x/y"}
    signed_query = signed_headers(endpoint, path, query=query)
    async with session.get(endpoint + path, headers=signed_query, params=query) as response:
        assert response.status == 200

    tampered = {
        **good,
        "Authorization": good["Authorization"][:-1] + ("0" if good["Authorization"][-1] != "0" else "1"),
    }
    other_job = signed_headers(endpoint, job_path(sim, other_id))
    stale = signed_headers(endpoint, path, when=datetime.now(UTC) - timedelta(minutes=20))
    for headers in (
        tampered,
        other_job,  # a valid signature for another path
        signed_headers(endpoint, path, sk="wrong-secret"),
        signed_headers(endpoint, path, ak="UNKNOWNAK"),
        {**good, "Content-Type": "text/plain"},  # a signed header changed in flight
        stale,
    ):
        status, _, raw = await get_job(session, endpoint, sim, job_id, token=None, headers=headers)
        assert status == 401, headers
        assert orjson.loads(raw)["error_code"] == "APIGW.0301"
    # a simulator without AK/SK refuses signatures
    plain, plain_endpoint = await make_sim(real_clock=True)
    plain_id = plain.add_job()
    status, _, _ = await get_job(
        session,
        plain_endpoint,
        plain,
        plain_id,
        token=None,
        headers=signed_headers(plain_endpoint, job_path(plain, plain_id)),
    )
    assert status == 401


def sdk_to_wire(value: Any) -> Any:
    """An SDK model back to the wire shape, by its attribute_map (``None`` fields dropped)."""
    if isinstance(value, list):
        return [sdk_to_wire(item) for item in value]
    if hasattr(value, "attribute_map"):
        return {
            wire: sdk_to_wire(getattr(value, attr))
            for attr, wire in value.attribute_map.items()
            if getattr(value, attr) is not None
        }
    return value


def vendor_client(endpoint: str, project_id: str) -> CceClient:
    """The vendor SDK's CCE client on the simulator (AK/SK, no retries: a failure shows at once)."""
    config = HttpConfig.get_default_config()
    config.retry_times = 0
    return (
        CceClient.new_builder()
        .with_http_config(config)
        .with_credentials(BasicCredentials(AK, SK, project_id))
        .with_endpoints([endpoint])
        .build()
    )


async def test_vendor_sdk_reads_the_simulator(
    make_sim: Factory, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    sim, endpoint = await make_sim(SimulatorConfig(seed=9, ak=AK, sk=SK))
    running = sim.add_job("CreateCluster", duration=100)
    failed = sim.add_job("CreateNode", fail=True, duration=10)
    clock.advance(40)  # one Running with sub-jobs in every phase, one Failed with reasons
    client = vendor_client(endpoint, sim.config.project_id)
    for job_id in (running, failed):
        served = orjson.loads((await get_job(session, endpoint, sim, job_id))[2])
        response = await asyncio.to_thread(client.show_job, ShowJobRequest(job_id=job_id))
        assert sdk_to_wire(response) == served
        assert response.metadata.uid == job_id
        assert response.spec.cluster_uid == served["spec"]["clusterUID"]
        assert response.spec.extend_param == served["spec"]["extendParam"]
        assert len(response.spec.sub_jobs) == len(served["spec"]["subJobs"])
    assert served["status"]["phase"] == "Failed" and response.status.reason == served["status"]["reason"]
    assert sim.stats.by_status == {200: 4}


# --- control endpoints, run_forever, config ---------------------------------------------------------------


async def test_control_endpoints(make_sim: Factory, session: aiohttp.ClientSession) -> None:
    sim, endpoint = await make_sim(SimulatorConfig(seed=1))
    spec = {"count": 5, "type": "CreateNode", "fail_ratio": 0.4, "duration": 20}
    async with session.post(endpoint + "/_sim/jobs", json=spec) as response:
        assert response.status == 200
        job_ids = (await response.json())["job_ids"]
    assert len(job_ids) == 5 and job_ids == sim.job_ids
    finals = []
    for job_id in job_ids:
        async with session.get(endpoint + "/_sim/truth", params={"job_id": job_id}) as response:
            body = await response.json()
        assert body["job_id"] == job_id
        assert body["transitions"][0]["phase"] == "Initializing"
        roots = [t for t in body["transitions"] if t["uid"] == job_id]
        finals.append(roots[-1]["phase"])
        assert roots[-1]["at_ns"] == sim.truth(job_id)[-1].at_ns
    assert sorted(finals) == ["Failed", "Failed", "Success", "Success", "Success"]
    async with session.get(endpoint + "/_sim/truth", params={"job_id": "nope"}) as response:
        assert response.status == 404

    async with session.post(endpoint + "/_sim/faults", json={"p_500": 1.0}) as response:
        assert (await response.json())["p_500"] == 1.0
    assert (await get_job(session, endpoint, sim, job_ids[0]))[0] == 500
    async with session.post(endpoint + "/_sim/faults", json={"p_500": 0, "expire_tokens": True}) as response:
        assert response.status == 200
    assert (await get_job(session, endpoint, sim, job_ids[0]))[0] == 401
    for bad in ({"p_bogus": 1}, {"p_500": 2.0}, [1]):
        async with session.post(endpoint + "/_sim/faults", json=bad) as response:
            assert response.status == 400
    async with session.post(endpoint + "/_sim/jobs", data=b"not json") as response:
        assert response.status == 400

    async with session.get(endpoint + "/_sim/stats") as response:
        stats = await response.json()
    assert stats["job_requests"] == stats["requests"] == 2  # control requests are not counted
    assert stats["by_status"] == {"401": 1, "500": 1}


async def test_run_forever_handshake(session: aiohttp.ClientSession) -> None:
    out = io.StringIO()
    task = asyncio.create_task(run_forever(SimulatorConfig(seed=3), jobs=4, fail_ratio=0.5, out=out))
    for _ in range(500):
        if out.getvalue().endswith("\n"):
            break
        await asyncio.sleep(0.01)
    handshake = json.loads(out.getvalue().splitlines()[0])
    assert set(handshake) == {"endpoint", "project_id", "token", "job_ids"}
    assert len(handshake["job_ids"]) == 4
    path = f"/api/v3/projects/{handshake['project_id']}/jobs/{handshake['job_ids'][0]}"
    async with session.get(handshake["endpoint"] + path, headers={"X-Auth-Token": handshake["token"]}) as response:
        assert response.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as fresh, fresh.get(handshake["endpoint"] + path):
            pass


def test_config_repr_hides_secrets_and_validates() -> None:
    config = SimulatorConfig(token="tok-secret", ak="AKVISIBLE", sk="sk-secret", iam_password="pw-secret")
    for text in (repr(config), repr(Simulator(config)), str(config)):
        assert "secret" not in text
    assert "AKVISIBLE" in repr(config)
    with pytest.raises(ValueError, match="ak and sk"):
        SimulatorConfig(ak="only-ak")
    with pytest.raises(ValueError, match="p_500"):
        SimulatorConfig(p_500=1.5)
    with pytest.raises(ValueError):
        Simulator().add_job(duration=-1)
