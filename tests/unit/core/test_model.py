"""Parsing job snapshots (``monitor.core.model``): the API document's example, lenient shapes, Go timestamps, ids."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.errors import InvalidIdError, MalformedResponseError
from monitor.core.model import (
    Job,
    ParseMemo,
    Phase,
    Timestamp,
    parse_go_time,
    parse_job,
    parse_job_object,
    parse_job_reusing,
    validate_id,
)

# The example response of "Reading Job Progress" (cce_02_0247), verbatim, including the trailing comma after the
# ``subJobs`` list that makes it invalid JSON.
SEED_EXAMPLE = """\
{
"kind": "Job",
"apiVersion": "v3",
"metadata": {
"uid": "354331b2c-229a-11e8-9c75-0255ac100ceb",
"creationTimestamp": "2020-02-02 08:12:40.672772389 +0000 UTC",
"updateTimestamp": "2020-02-02 08:21:50.478108569 +0000 UTC"
},
"spec": {
"type": "CreateCluster",
"clusterUID": "4d1ecb2c-229a-11e8-9c75-0255ac100ceb",
"resourceID": "6f4dcb2c-229a-11e8-9c75-0255ac100ceb",
"resourceName": "cluster-name",
"extendParam": {
"serverID": "bc467e3a-2338-11e8-825b-0255ac100c13"
},
"subJobs": [
{
"kind": "Job",
"apiVersion": "v3",
"metadata": {
"uid": "fd474fab-9606-11e8-baa9-0255ac10215d",
"creationTimestamp": "2020-02-02 03:52:34.615819618 +0000 UTC",
"updateTimestamp": "2020-02-02 04:05:29.196243031 +0000 UTC"
},
"spec": {
"type": "InstallMaster",
"clusterUID": "fcc72de0-9606-11e8-baa8-0255ac10215d",
"resourceID": "fd3b4ac0-9606-11e8-baa8-0255ac10215d",
"extendParam": {
"serverID": "fd3b4ac0-9606-11e8-baa8-0255ac10215d"
}
},
"status": {
"phase": "Success"
}
},
{
"kind": "Job",
"apiVersion": "v3",
"metadata": {
"uid": "fd474f82-9606-11e8-baa8-0255ac10215d",
"creationTimestamp": "2020-02-02 03:52:33.859150791 +0000 UTC",
"updateTimestamp": "2020-02-02 03:52:34.615655429 +0000 UTC"
},
"spec": {
"type": "CreatePSMCert",
"clusterUID": "fcc72de0-9606-11e8-baa8-0255ac10215d"
},
"status": {
"phase": "Success"
}
}
],
},
"status": {
"phase": "Running",
"reason": ""
}
}
"""
SEED_STRICT = SEED_EXAMPLE.replace("}\n],\n},", "}\n]\n},")

DOCUMENTED = ["Initializing", "Running", "Failed", "Success"]
UNKNOWN = ["Abnormal", "Synchronized", "Pending", "running"]


def ts(raw: str, at: datetime | None) -> Timestamp:
    """A Timestamp equal to the one parsed from ``raw``, after checking that it reads as ``at``."""
    stamp = Timestamp(raw)
    assert stamp.at == at, (raw, stamp.at, at)
    return stamp


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def minimal(**status: Any) -> dict[str, Any]:
    return {"metadata": {"uid": "j-1"}, "spec": {"type": "CreateNode"}, "status": {"phase": "Running", **status}}


# --- the API document's example ----------------------------------------------------------------------------


def test_seed_example_is_not_strict_json() -> None:
    # The precondition of the repair path: the document's example really is rejected by a strict parser.
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(SEED_EXAMPLE)
    assert orjson.loads(SEED_STRICT)["spec"]["subJobs"][1]["spec"]["type"] == "CreatePSMCert"


@pytest.mark.parametrize("body", [SEED_EXAMPLE, SEED_STRICT, SEED_EXAMPLE.encode(), SEED_STRICT.encode()])
def test_seed_example_every_field(body: str | bytes) -> None:
    job = parse_job(body)

    assert job.id == "354331b2c-229a-11e8-9c75-0255ac100ceb"
    assert job.type == "CreateCluster"
    assert job.cluster_id == "4d1ecb2c-229a-11e8-9c75-0255ac100ceb"
    assert job.resource_id == "6f4dcb2c-229a-11e8-9c75-0255ac100ceb"
    assert job.resource_name == "cluster-name"
    assert job.extend_params == {"serverID": "bc467e3a-2338-11e8-825b-0255ac100c13"}
    assert job.phase is Phase.RUNNING
    assert job.reason == ""
    assert not job.is_terminal
    assert job.created == ts("2020-02-02 08:12:40.672772389 +0000 UTC", utc(2020, 2, 2, 8, 12, 40, 672772))
    assert job.updated == ts("2020-02-02 08:21:50.478108569 +0000 UTC", utc(2020, 2, 2, 8, 21, 50, 478108))
    assert job.created.at is not None
    assert job.created.at.utcoffset() == timedelta(0)

    assert len(job.sub_jobs) == 2
    master, cert = job.sub_jobs
    assert master == Job(
        id="fd474fab-9606-11e8-baa9-0255ac10215d",
        type="InstallMaster",
        phase=Phase.SUCCESS,
        reason="",
        cluster_id="fcc72de0-9606-11e8-baa8-0255ac10215d",
        resource_id="fd3b4ac0-9606-11e8-baa8-0255ac10215d",
        resource_name="",
        extend_params={"serverID": "fd3b4ac0-9606-11e8-baa8-0255ac10215d"},
        created=ts("2020-02-02 03:52:34.615819618 +0000 UTC", utc(2020, 2, 2, 3, 52, 34, 615819)),
        updated=ts("2020-02-02 04:05:29.196243031 +0000 UTC", utc(2020, 2, 2, 4, 5, 29, 196243)),
        sub_jobs=(),
    )
    assert cert == Job(
        id="fd474f82-9606-11e8-baa8-0255ac10215d",
        type="CreatePSMCert",
        phase=Phase.SUCCESS,
        cluster_id="fcc72de0-9606-11e8-baa8-0255ac10215d",
        resource_id="",
        resource_name="",
        extend_params=None,
        created=ts("2020-02-02 03:52:33.859150791 +0000 UTC", utc(2020, 2, 2, 3, 52, 33, 859150)),
        updated=ts("2020-02-02 03:52:34.615655429 +0000 UTC", utc(2020, 2, 2, 3, 52, 34, 615655)),
    )
    assert master.is_terminal and cert.is_terminal
    assert job.walk() == [master, cert]


def test_seed_example_same_job_with_and_without_trailing_comma() -> None:
    assert parse_job(SEED_EXAMPLE) == parse_job(SEED_STRICT)


def test_trailing_comma_inside_a_string_is_kept() -> None:
    body = '{"metadata": {"uid": "a"}, "status": {"phase": "Failed", "reason": "x,}y,]",},}'
    job = parse_job(body)
    assert job.reason == "x,}y,]"
    assert job.phase is Phase.FAILED


# --- lenient shapes ------------------------------------------------------------------------------------------


def test_unknown_fields_anywhere_are_ignored() -> None:
    data = orjson.loads(SEED_STRICT)
    data["extra"] = {"deep": [1, 2, {"x": None}]}
    data["metadata"]["labels"] = {"a": "b"}
    data["spec"]["nodeCount"] = 3
    data["status"]["conditions"] = [{"type": "Ready"}]
    data["spec"]["subJobs"][0]["unknownTop"] = True
    data["spec"]["subJobs"][0]["status"]["progress"] = 0.5
    assert parse_job(orjson.dumps(data)) == parse_job(SEED_STRICT)


@pytest.mark.parametrize("how", ["missing", "null"])
@pytest.mark.parametrize("name", ["metadata", "spec", "status"])
def test_optional_object_missing_or_null(name: str, how: str) -> None:
    data: dict[str, Any] = {
        "metadata": {"uid": "j-1", "creationTimestamp": "2021-08-26 11:46:31 +0000 UTC"},
        "spec": {"type": "CreateNode", "clusterUID": "c-1"},
        "status": {"phase": "Failed", "reason": "quota"},
    }
    if how == "missing":
        del data[name]
    else:
        data[name] = None
    job = parse_job(orjson.dumps(data))
    assert job.id == ("" if name == "metadata" else "j-1")
    assert job.created == (
        ts("", None) if name == "metadata" else ts("2021-08-26 11:46:31 +0000 UTC", utc(2021, 8, 26, 11, 46, 31))
    )
    assert job.type == ("" if name == "spec" else "CreateNode")
    assert job.cluster_id == ("" if name == "spec" else "c-1")
    # No status at all: the job has not reported a phase yet.
    assert job.phase is (Phase.INITIALIZING if name == "status" else Phase.FAILED)
    assert job.reason == ("" if name == "status" else "quota")
    assert job.sub_jobs == ()


@pytest.mark.parametrize("sub_jobs", ["missing", None, []])
def test_sub_jobs_missing_null_or_empty(sub_jobs: object) -> None:
    data = minimal()
    if sub_jobs != "missing":
        data["spec"]["subJobs"] = sub_jobs
    job = parse_job(orjson.dumps(data))
    assert job.sub_jobs == ()
    assert job.walk() == []


def test_sub_job_without_resource_name_or_reason() -> None:
    data = minimal()
    data["spec"]["subJobs"] = [
        {"metadata": {"uid": "s-1"}, "spec": {"type": "InstallNode"}, "status": {"phase": "Running"}}
    ]
    (sub,) = parse_job(orjson.dumps(data)).sub_jobs
    assert sub == Job(id="s-1", type="InstallNode", phase=Phase.RUNNING)
    assert sub.resource_name == ""
    assert sub.reason == ""
    assert sub.extend_params is None


def test_empty_extend_param_is_none_and_null_phase_is_malformed() -> None:
    data = minimal(phase="Running")
    data["spec"]["extendParam"] = {}
    job = parse_job(orjson.dumps(data))
    assert job.extend_params is None
    # A status without a phase used to become Initializing: it is a broken answer, to be retried.
    with pytest.raises(MalformedResponseError, match="status has no phase"):
        parse_job(orjson.dumps(minimal(phase=None)))
    no_status = minimal(phase="Running")
    del no_status["status"]
    assert parse_job(orjson.dumps(no_status)).phase is Phase.INITIALIZING


def test_nested_sub_jobs() -> None:
    leaf = {
        "metadata": {"uid": "leaf"},
        "spec": {"type": "InstallKubelet"},
        "status": {"phase": "Failed", "reason": "boom"},
    }
    middle = {
        "metadata": {"uid": "mid"},
        "spec": {"type": "InstallNode", "subJobs": [leaf]},
        "status": {"phase": "Running"},
    }
    other = {"metadata": {"uid": "other"}, "spec": {"type": "CreateNodeVM"}, "status": {"phase": "Success"}}
    data = minimal()
    data["spec"]["subJobs"] = [middle, other]
    job = parse_job(orjson.dumps(data))
    assert [s.id for s in job.sub_jobs] == ["mid", "other"]
    (leaf_job,) = job.sub_jobs[0].sub_jobs
    assert leaf_job == Job(id="leaf", type="InstallKubelet", phase=Phase.FAILED, reason="boom")
    assert [s.id for s in job.walk()] == ["mid", "leaf", "other"]


def _chain(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"metadata": {"uid": f"s{levels}"}, "status": {"phase": "Running"}}
    for i in range(levels - 1, -1, -1):
        node = {"metadata": {"uid": f"s{i}"}, "spec": {"subJobs": [node]}, "status": {"phase": "Running"}}
    return node


def test_sub_jobs_nested_up_to_the_limit() -> None:
    job = parse_job(orjson.dumps(_chain(16)))
    assert [s.id for s in job.walk()] == [f"s{i}" for i in range(1, 17)]


def _deep_sub_jobs_text(levels: int) -> bytes:
    # Built as text: orjson.dumps itself refuses to nest this deep.
    head = '{"metadata": {"uid": "s"}, "spec": {"subJobs": ['
    return (head * levels + '{"status": {"phase": "Running"}}' + "]}}" * levels).encode()


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps(_chain(17)),
        _deep_sub_jobs_text(500),
        b'{"spec":' * 5000 + b"1" + b"}" * 5000,
        b"[" * 100_000 + b"]" * 100_000,
        ('{"a":' * 3000 + "1" + "}" * 3000 + ",}").encode(),  # deep and needing the trailing-comma repair
    ],
    ids=["subjobs-17", "subjobs-500", "json-5000", "array-100000", "deep-with-comma"],
)
def test_deep_nesting_is_malformed_not_recursion_error(body: bytes) -> None:
    with pytest.raises(MalformedResponseError) as info:
        parse_job(body)
    assert "\n" not in str(info.value)


# --- phases ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["Abnormal", "Synchronized"])
def test_unknown_phase_is_carried_through(value: str) -> None:
    phase = Phase(value)
    assert phase.value == value
    assert phase == value
    assert str(phase) == value
    assert isinstance(phase, Phase)
    assert phase is Phase(value)
    assert not phase.is_terminal
    assert not phase.is_known
    assert orjson.dumps(phase) == orjson.dumps(value)
    job = parse_job(orjson.dumps(minimal(phase=value)))
    assert job.phase is phase
    assert not job.is_terminal


@pytest.mark.parametrize(
    ("value", "terminal"), [("Initializing", False), ("Running", False), ("Failed", True), ("Success", True)]
)
def test_documented_phases(value: str, terminal: bool) -> None:
    phase = Phase(value)
    assert phase.is_known
    assert phase.is_terminal is terminal
    assert parse_job(orjson.dumps(minimal(phase=value))).phase is phase


def test_phase_is_case_sensitive() -> None:
    assert Phase("success") is not Phase.SUCCESS
    assert not Phase("success").is_terminal
    assert not Phase("success").is_known


# --- malformed bodies --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b"not json at all",
        b"",
        b"[]",
        b'[{"metadata": {"uid": "x"}}]',
        b"42",
        b'"a string"',
        b"null",
        b"true",
        b"{}",
        b'{"kind": "Job", "apiVersion": "v3"}',
        b'{"metadata": {}, "spec": {}, "status": {}}',
        b'{"metadata": "uid", "status": {"phase": "Running"}}',
        b'{"metadata": {"uid": "x"}, "spec": [], "status": {"phase": "Running"}}',
        b'{"metadata": {"uid": "x"}, "status": "Running"}',
        b'{"metadata": {"uid": "x"}, "status": {"phase": 3}}',
        b'{"metadata": {"uid": "x"}, "status": {"phase": ["Running"]}}',
        b'{"metadata": {"uid": "x"}, "status": {"phase": true}}',
        b'{"metadata": {"uid": "x"}, "spec": {"subJobs": {"a": 1}}}',
        b'{"metadata": {"uid": "x"}, "spec": {"subJobs": "none"}}',
        b'{"metadata": {"uid": "x"}, "spec": {"subJobs": [1]}}',
        b'{"metadata": {"uid": "x"}, "spec": {"subJobs": [null]}}',
        b'{"metadata": {"uid": "x"}, "spec": {"subJobs": [{}]}}',
        b'{"metadata": {"uid": "x"}, "spec": {"subJobs": [{"unknown": 1}]}}',
        SEED_STRICT.encode()[: len(SEED_STRICT) // 2],
        SEED_EXAMPLE.encode()[:-3],
        b"\xff\xfe{}",
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(MalformedResponseError) as info:
        parse_job(body)
    message = str(info.value)
    assert message
    assert "\n" not in message
    assert info.value.retryable is True


def test_parse_job_object_rejects_non_dict() -> None:
    with pytest.raises(MalformedResponseError, match="job is list, expected an object"):
        parse_job_object([])


# --- Go timestamps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2020-02-02 08:12:40.672772389 +0000 UTC", utc(2020, 2, 2, 8, 12, 40, 672772)),
        ("2019-02-01 12:09:28.712099 +0000 UTC", utc(2019, 2, 1, 12, 9, 28, 712099)),
        ("2021-08-26 11:46:31 +0000 UTC", utc(2021, 8, 26, 11, 46, 31)),
        ("2021-08-26 11:46:31.5 +0000 UTC", utc(2021, 8, 26, 11, 46, 31, 500000)),
        ("2021-08-26 11:46:31.000001 +0000 UTC", utc(2021, 8, 26, 11, 46, 31, 1)),
        ("2021-08-26 11:46:31.0000009 +0000 UTC", utc(2021, 8, 26, 11, 46, 31, 0)),
        (
            "2020-02-02 16:12:40.672772389 +0800 CST",
            datetime(2020, 2, 2, 16, 12, 40, 672772, tzinfo=timezone(timedelta(hours=8))),
        ),
        (
            "2020-02-02 02:42:40.1 -0530",
            datetime(2020, 2, 2, 2, 42, 40, 100000, tzinfo=timezone(-timedelta(hours=5, minutes=30))),
        ),
        ("2020-02-02 08:12:40 +0000 GMT", utc(2020, 2, 2, 8, 12, 40)),
        ("2020-02-02T08:12:40Z", utc(2020, 2, 2, 8, 12, 40)),
        ("2020-02-02T08:12:40.672772389Z", utc(2020, 2, 2, 8, 12, 40, 672772)),
        ("2020-02-02T16:12:40+08:00", datetime(2020, 2, 2, 16, 12, 40, tzinfo=timezone(timedelta(hours=8)))),
        ("2020-02-02T03:12:40.25-05:00", datetime(2020, 2, 2, 3, 12, 40, 250000, tzinfo=timezone(timedelta(hours=-5)))),
        ("2020-02-02 08:12:40", utc(2020, 2, 2, 8, 12, 40)),  # no offset: UTC
        ("  2020-02-02 08:12:40 +0000 UTC\n", utc(2020, 2, 2, 8, 12, 40)),
    ],
)
def test_parse_go_time(text: str, expected: datetime) -> None:
    parsed = parse_go_time(text)
    assert parsed == expected
    assert parsed is not None
    assert parsed.utcoffset() == expected.utcoffset()
    assert parsed.microsecond == expected.microsecond


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2020-02-30 08:12:40 +0000 UTC",
        "2020-13-02 08:12:40 +0000 UTC",
        "2020-02-02 25:12:40 +0000 UTC",
        "2020-02-02 08:12:40.1234567890 +0000 UTC",
        "2020-02-02 08:12:40 +2400 XX",
        "2020/02/02 08:12:40",
        "1580631160",
        "2020-02-02 08:12:40 +0000 UTC trailing words",
    ],
)
def test_parse_go_time_unparseable(text: str) -> None:
    assert parse_go_time(text) is None


def test_unparseable_timestamp_keeps_raw_and_job_still_parses() -> None:
    data = minimal()
    data["metadata"]["creationTimestamp"] = "sometime last week"
    data["metadata"]["updateTimestamp"] = "2020-02-30 08:12:40 +0000 UTC"
    job = parse_job(orjson.dumps(data))
    assert job.created == ts("sometime last week", None)
    assert job.updated == ts("2020-02-30 08:12:40 +0000 UTC", None)
    assert job.id == "j-1"
    assert job.phase is Phase.RUNNING


@pytest.mark.parametrize(
    ("text", "hours"),
    [
        ("2021-08-26 11:46:31 +0400 +04", 4),
        ("2020-02-02 08:12:40.5 +0800 +0800", 8),
        ("2021-08-26 11:46:31 -0300 -03", -3),
    ],
)
def test_parse_go_time_numeric_zone_abbreviation(text: str, hours: int) -> None:
    # Go's time.Time.String() prints a zone with no letter abbreviation (time.FixedZone("", ...), or tzdata
    # zones such as Asia/Dubai and America/Sao_Paulo) as its numeric offset, e.g. "+0400 +04".
    parsed = parse_go_time(text)
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(hours=hours)


def _go_offset(minutes: int, *, rfc3339: bool) -> str:
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    return f"{sign}{hh:02d}:{mm:02d}" if rfc3339 else f"{sign}{hh:02d}{mm:02d}"


@settings(max_examples=300, deadline=None)
@given(
    when=st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9998, 12, 30)),
    nanos=st.integers(0, 999_999_999),
    digits=st.integers(0, 9),
    offset_minutes=st.integers(-(23 * 60 + 59), 23 * 60 + 59),
    zone=st.sampled_from(["", "UTC", "CST", "IST", "EST", "MSK", "numeric"]),
    style=st.sampled_from(["go", "rfc3339"]),
)
def test_parse_go_time_roundtrip(
    when: datetime, nanos: int, digits: int, offset_minutes: int, zone: str, style: str
) -> None:
    # Keep `digits` fraction digits, then print the fraction the way Go does: trailing zeros trimmed, no dot
    # when nothing is left.
    nanos -= nanos % 10 ** (9 - digits)
    fraction = f"{nanos:09d}".rstrip("0")
    wall = when.replace(microsecond=0).strftime("%Y-%m-%d %H:%M:%S")
    dot = f".{fraction}" if fraction else ""
    if style == "go":
        offset = _go_offset(offset_minutes, rfc3339=False)
        text = f"{wall}{dot} {offset}"
        if zone == "numeric":
            text += f" {offset}"  # what Go prints for a zone without a letter abbreviation
        elif zone:
            text += f" {zone}"
    else:
        text = wall.replace(" ", "T") + dot
        text += "Z" if offset_minutes == 0 and zone else _go_offset(offset_minutes, rfc3339=True)
    tz = timezone(timedelta(minutes=offset_minutes))
    expected = when.replace(microsecond=nanos // 1000, tzinfo=tz)
    parsed = parse_go_time(text)
    assert parsed == expected, text
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(minutes=offset_minutes)
    assert parsed.replace(tzinfo=None) == expected.replace(tzinfo=None)


# --- arbitrary job documents -------------------------------------------------------------------------------

RESERVED = {
    "metadata",
    "spec",
    "status",
    "uid",
    "creationTimestamp",
    "updateTimestamp",
    "type",
    "clusterUID",
    "resourceID",
    "resourceName",
    "extendParam",
    "subJobs",
    "phase",
    "reason",
}
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
unknown_keys = st.dictionaries(st.text(max_size=8).filter(lambda k: k not in RESERVED), json_values, max_size=2)
go_times = st.sampled_from(
    ["2020-02-02 08:12:40.672772389 +0000 UTC", "2021-08-26 11:46:31 +0800 CST", "2020-02-02T08:12:40Z", "", "later"]
)
short_text = st.text(max_size=12)
FIELDS = {
    "metadata": {"uid": short_text, "creationTimestamp": go_times, "updateTimestamp": go_times},
    "spec": {
        "type": st.sampled_from(["CreateCluster", "InstallMaster", "CreateNode", ""]),
        "clusterUID": short_text,
        "resourceID": short_text,
        "resourceName": short_text,
        "extendParam": st.none() | st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    },
    "status": {"phase": st.sampled_from([*DOCUMENTED, *UNKNOWN, ""]), "reason": short_text},
}


@st.composite
def job_dicts(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    node: dict[str, Any] = draw(unknown_keys)
    for name, fields in FIELDS.items():
        how = draw(st.sampled_from(["missing", "null", "object"]))
        if how == "null":
            node[name] = None
        elif how == "object":
            obj: dict[str, Any] = draw(unknown_keys)
            for key, strategy in fields.items():
                choice = draw(st.sampled_from(["missing", "null", "value"]))
                if choice != "missing":
                    obj[key] = None if choice == "null" else draw(strategy)
            node[name] = obj
    spec = node.get("spec")
    if isinstance(spec, dict) and depth < 2 and draw(st.booleans()):
        spec["subJobs"] = draw(st.none() | st.lists(job_dicts(depth + 1), max_size=3))
    return node


def expected_job(node: dict[str, Any], depth: int = 0) -> Job | None:
    """What parse_job should build from ``node``; ``None`` when it must refuse it."""
    metadata = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    if not (metadata or spec or status):
        return None
    if depth == 0 and node.get("status") is not None and not status.get("phase"):
        return None  # a job's status without its phase is malformed (a sub-job's is Initializing)
    subs = []
    for sub in spec.get("subJobs") or []:
        parsed = expected_job(sub, depth + 1)
        if parsed is None:
            return None
        subs.append(parsed)
    extend = spec.get("extendParam")
    return Job(
        id=metadata.get("uid") or "",
        type=spec.get("type") or "",
        phase=Phase(status.get("phase") or "Initializing"),
        reason=status.get("reason") or "",
        cluster_id=spec.get("clusterUID") or "",
        resource_id=spec.get("resourceID") or "",
        resource_name=spec.get("resourceName") or "",
        extend_params=extend or None,
        created=Timestamp.parse(metadata.get("creationTimestamp") or ""),
        updated=Timestamp.parse(metadata.get("updateTimestamp") or ""),
        sub_jobs=tuple(subs),
    )


@settings(max_examples=250, deadline=None)
@given(job_dicts())
def test_parse_job_arbitrary_documents(data: dict[str, Any]) -> None:
    expected = expected_job(data)
    body = orjson.dumps(data)
    if expected is None:
        with pytest.raises(MalformedResponseError):
            parse_job(body)
        return
    job = parse_job(body)
    assert job == expected
    assert job.phase.value == ((data.get("status") or {}).get("phase") or "Initializing")
    # A trailing comma after the last member is repaired to the same job.
    assert parse_job(body[:-1] + b",}") == expected


def _mutations() -> st.SearchStrategy[bytes]:
    seed = SEED_STRICT.encode()
    truncated = st.integers(0, len(seed)).map(lambda n: seed[:n])
    flipped = st.tuples(st.integers(0, len(seed) - 1), st.binary(min_size=1, max_size=3)).map(
        lambda t: seed[: t[0]] + t[1] + seed[t[0] + 1 :]
    )
    return truncated | flipped


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200) | _mutations() | st.text(max_size=60).map(str.encode))
def test_parse_job_arbitrary_bytes(body: bytes) -> None:
    try:
        job = parse_job(body)
    except MalformedResponseError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(job, Job)
        assert isinstance(job.phase, Phase)


# --- ids ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "354331b2c-229a-11e8-9c75-0255ac100ceb",
        "4d1ecb2c-229a-11e8-9c75-0255ac100ceb",
        "0b0f5d1d9c8a4bfa9d0c6c1b0f3d2e1a",
        "a",
        "job_1",
        "A" * 128,
    ],
)
def test_validate_id_accepts(value: str) -> None:
    assert validate_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "../x",
        "a/b",
        "a?b",
        "a%2F",
        "a#b",
        " a",
        "a ",
        "a\n",
        "\na",
        "",
        ".",
        "..",
        "jöb",
        "\uff4aob",
        "a\x00b",
        "a.b",
        "a;b",
        "-a",
        "_a",
        "a+b",
        "A" * 129,
        None,
        123,
        b"abc",
        ["a"],
    ],
)
def test_validate_id_refuses(value: object) -> None:
    with pytest.raises(InvalidIdError) as info:
        validate_id(value, "project id")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert message.startswith("invalid project id ")
    assert "\n" not in message
    assert len(message) < 200


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=140)
    | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.~%/-]{0,130}", fullmatch=True)
    | st.text(alphabet="abc-_./%?#~ 01", max_size=10)
)
def test_validate_id_accepts_only_path_safe_text(value: str) -> None:
    try:
        accepted = validate_id(value)
    except InvalidIdError:
        return
    assert accepted == value
    assert quote(value, safe="") == value
    assert value not in {".", ".."}
    assert 1 <= len(value) <= 128


# --- reusing unchanged sub-jobs ----------------------------------------------------------------------------


def _restamp(node: dict[str, Any], stamp: str) -> dict[str, Any]:
    """``node`` with its own ``metadata.updateTimestamp`` set to ``stamp`` (what a running job's poll changes)."""
    copy = orjson.loads(orjson.dumps(node))
    if isinstance(copy.get("metadata"), dict):
        copy["metadata"]["updateTimestamp"] = stamp
    return copy


@settings(max_examples=300, deadline=None)
@given(st.lists(job_dicts(), min_size=1, max_size=4), st.data())
def test_parse_reusing_equals_a_fresh_parse_over_a_history(pool: list[dict[str, Any]], data: st.DataObject) -> None:
    """A history of bodies drawn from a pool and from copies that differ only in the job's updateTimestamp (so
    sub-jobs repeat, change and move): every reused snapshot equals a fresh parse, and a top-level sub-job whose
    JSON did not change is the previous snapshot's very object."""
    pool = pool + [_restamp(node, f"2026-12-01 10:00:0{i} +0000 UTC") for i, node in enumerate(pool)]
    previous: Job | None = None
    previous_raw: list[Any] = []
    digests: tuple[int, ...] = ()
    for index in data.draw(st.lists(st.integers(0, len(pool) - 1), min_size=1, max_size=8)):
        body = orjson.dumps(pool[index])
        try:
            expected = parse_job(body)
        except MalformedResponseError:
            with pytest.raises(MalformedResponseError):
                parse_job_reusing(body, previous, digests)
            continue
        job, digests = parse_job_reusing(body, previous, digests)
        assert job == expected
        raw_subs = (pool[index].get("spec") or {}).get("subJobs") or []
        if previous is not None:
            for raw, sub in zip(raw_subs, job.sub_jobs, strict=True):
                same = [old for old, old_raw in zip(previous.sub_jobs, previous_raw, strict=True) if old_raw == raw]
                if same:
                    assert any(sub is old for old in same)
        previous, previous_raw = job, raw_subs


def test_parse_reusing_a_body_that_only_moved_its_timestamp_is_the_previous_snapshot_restamped() -> None:
    node = orjson.loads(SEED_STRICT)
    first, digests = parse_job_reusing(orjson.dumps(node), None, ())
    later, later_digests = parse_job_reusing(
        orjson.dumps(_restamp(node, "2026-12-01 10:00:00 +0000 UTC")), first, digests
    )
    assert later.updated.raw == "2026-12-01 10:00:00 +0000 UTC"
    assert later.sub_jobs is first.sub_jobs and later_digests == digests
    assert later == dataclasses.replace(first, updated=Timestamp("2026-12-01 10:00:00 +0000 UTC"))
    # The same body again (whitespace aside): the very same snapshot.
    again, _ = parse_job_reusing(orjson.dumps(node, option=orjson.OPT_INDENT_2), first, digests)
    assert again is first
    # A missing updateTimestamp never takes the shortcut.
    del node["metadata"]["updateTimestamp"]
    bare, _ = parse_job_reusing(orjson.dumps(node), first, digests)
    assert bare.updated.raw == "" and bare == parse_job(orjson.dumps(node))


def test_parse_reusing_parses_a_changed_sub_job_and_keeps_the_others() -> None:
    def body(second_phase: str, updated: str) -> bytes:
        subs = [
            {"metadata": {"uid": f"s{i}"}, "spec": {"type": "CreateNode"}, "status": {"phase": phase}}
            for i, phase in enumerate(["Success", second_phase, "Initializing"])
        ]
        return orjson.dumps(
            {
                "metadata": {"uid": "root", "updateTimestamp": updated},
                "spec": {"subJobs": subs},
                "status": {"phase": "Running"},
            }
        )

    first, digests = parse_job_reusing(body("Running", "t1"), None, ())
    second, _ = parse_job_reusing(body("Success", "t2"), first, digests)
    assert second.updated.raw == "t2"
    assert second.sub_jobs[0] is first.sub_jobs[0] and second.sub_jobs[2] is first.sub_jobs[2]
    assert second.sub_jobs[1] is not first.sub_jobs[1]
    assert second.sub_jobs[1].phase is Phase.SUCCESS
    # Digests that belong to another snapshot are harmless: nothing matches, everything is parsed.
    third, _ = parse_job_reusing(body("Failed", "t3"), None, digests)
    assert third == parse_job(body("Failed", "t3"))


def test_parse_memo_takes_a_body_nested_deeper_than_orjson_writes() -> None:
    """orjson reads 1,024 levels but writes only 255: such a body is parsed without reuse, never an error."""
    node = orjson.loads(SEED_STRICT)
    node["spec"]["extendParam"]["deep"] = "PLACEHOLDER"
    deep = b'{"x":' * 300 + b'"leaf"' + b"}" * 300
    body = orjson.dumps(node).replace(b'"PLACEHOLDER"', deep)
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(orjson.loads(body))
    memo = ParseMemo()
    assert memo.parse(body) == parse_job(body)
    assert memo.parse(body) is memo.job  # the same bytes again: the same snapshot
    later = body.replace(b"08:21:50.478108569", b"08:22:00.000000001")  # another body, still too deep
    assert later != body
    assert memo.parse(later) == parse_job(later)
