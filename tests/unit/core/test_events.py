"""The event contract (``monitor.core.events``): schema ``cce-monitor/v1``, one flat JSON object per event."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType

import orjson
import pytest

from monitor.core.events import SCHEMA, Event, EventType, event_id
from monitor.testing import EVENT_TIME as WHEN
from monitor.testing import JOB_ID, PROJECT_ID, make_event

CONTRACT_FIELDS = [
    "schema",
    "id",
    "type",
    "time",
    "project_id",
    "job_id",
    "job_type",
    "phase",
    "previous_phase",
    "reason",
    "subjob_id",
    "subjob_type",
    "resource_name",
    "cluster_id",
    "labels",
    "detail",
    "rollout",
    "summary",
    "node_id",  # added within v1, at the end
    "nodepool_id",
]
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


def test_to_json_full_event() -> None:
    event = make_event(
        type=EventType.SUBJOB_PHASE_CHANGED,
        time=datetime(2026, 11, 28, 6, 41, 0, 123456, tzinfo=UTC),
        subjob_id="fd474fab-9606-11e8-baa9-0255ac10215d",
        subjob_type="InstallNode",
        resource_name="node-1",
        cluster_id="4d1ecb2c-229a-11e8-9c75-0255ac100ceb",
        labels={"team": "platform", "ünï": "cödé"},
        detail="one line",
    )
    raw = event.to_json()
    assert isinstance(raw, bytes)
    assert not raw.endswith(b"\n")
    data = orjson.loads(raw)
    assert list(data) == CONTRACT_FIELDS
    assert data == {
        "schema": "cce-monitor/v1",
        "id": event.id,
        "type": "subjob.phase_changed",
        "time": "2026-11-28T06:41:00.123456Z",
        "project_id": PROJECT_ID,
        "job_id": JOB_ID,
        "job_type": "CreateNode",
        "phase": "Failed",
        "previous_phase": "Running",
        "reason": "Install node failed: timeout",
        "subjob_id": "fd474fab-9606-11e8-baa9-0255ac10215d",
        "subjob_type": "InstallNode",
        "resource_name": "node-1",
        "cluster_id": "4d1ecb2c-229a-11e8-9c75-0255ac100ceb",
        "labels": {"team": "platform", "ünï": "cödé"},
        "detail": "one line",
        "rollout": None,
        "summary": None,
        "node_id": None,
        "nodepool_id": None,
    }
    assert event.to_dict() == data


def test_to_json_minimal_event_has_every_field() -> None:
    event = Event(id="0" * 32, type=EventType.JOB_NOT_FOUND, time=WHEN, project_id=PROJECT_ID, job_id=JOB_ID)
    assert orjson.loads(event.to_json()) == {
        "schema": SCHEMA,
        "id": "0" * 32,
        "type": "job.not_found",
        "time": "2026-11-28T06:41:00Z",
        "project_id": PROJECT_ID,
        "job_id": JOB_ID,
        "job_type": None,
        "phase": None,
        "previous_phase": None,
        "reason": None,
        "subjob_id": None,
        "subjob_type": None,
        "resource_name": None,
        "cluster_id": None,
        "labels": {},
        "detail": None,
        "rollout": None,
        "summary": None,
        "node_id": None,
        "nodepool_id": None,
    }
    assert SCHEMA == "cce-monitor/v1"


def test_default_time_is_now_in_utc() -> None:
    before = datetime.now(UTC)
    event = Event(id="x", type=EventType.JOB_STALLED, project_id=PROJECT_ID, job_id=JOB_ID)
    assert before <= event.time <= datetime.now(UTC)
    assert event.time.utcoffset() == timedelta(0)
    assert RFC3339_UTC.match(event.to_dict()["time"])


def test_read_only_labels_mapping_is_serialized() -> None:
    event = make_event(labels=MappingProxyType({"a": "b"}))
    assert event.to_dict()["labels"] == {"a": "b"}


def test_unserializable_value_is_a_type_error() -> None:
    event = make_event(detail=object())
    with pytest.raises(TypeError):
        event.to_json()


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 11, 28, 14, 41, 0, tzinfo=timezone(timedelta(hours=8))),
        datetime(2026, 11, 28, 1, 11, 0, tzinfo=timezone(-timedelta(hours=5, minutes=30))),
        datetime(2026, 11, 28, 6, 41, 0, tzinfo=timezone(timedelta(0), "GMT")),
    ],
)
def test_time_in_another_zone_is_written_in_utc(when: datetime) -> None:
    # Regression: a non-UTC aware time used to be written with its own offset ("+08:00").
    event = make_event(time=when)
    assert event.to_dict()["time"] == "2026-11-28T06:41:00Z"
    assert event.time == WHEN
    assert event.time.utcoffset() == timedelta(0)
    assert event == make_event(time=WHEN)


def test_frozen() -> None:
    event = make_event()
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.phase = "Success"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.id = "other"  # type: ignore[misc]
    assert event.phase == "Failed"


def test_slotted() -> None:
    event = make_event()
    assert not hasattr(event, "__dict__")
    assert set(Event.__slots__) == set(CONTRACT_FIELDS)
    with pytest.raises((AttributeError, TypeError)):
        event.extra = 1  # type: ignore[attr-defined]


def test_equal_by_value() -> None:
    assert make_event() == make_event()
    assert make_event() != make_event(reason="other")
    assert dataclasses.replace(make_event(), phase="Success").phase == "Success"


@pytest.mark.parametrize(
    ("kind", "phase", "final"),
    [
        (EventType.JOB_PHASE_CHANGED, "Success", True),
        (EventType.JOB_PHASE_CHANGED, "Failed", True),
        (EventType.JOB_PHASE_CHANGED, "Running", False),
        (EventType.JOB_PHASE_CHANGED, "Initializing", False),
        (EventType.JOB_PHASE_CHANGED, "Abnormal", False),
        (EventType.SUBJOB_PHASE_CHANGED, "Success", False),
        (EventType.SUBJOB_PHASE_CHANGED, "Failed", False),
        (EventType.JOB_TIMED_OUT, None, True),
        (EventType.JOB_NOT_FOUND, None, True),
        (EventType.JOB_STALLED, "Running", False),
        (EventType.JOB_POLL_FAILED, None, False),
        (EventType.JOB_RECOVERED, "Running", False),
        (EventType.MONITOR_AUTH_FAILED, None, False),
    ],
)
def test_is_final(kind: EventType, phase: str | None, final: bool) -> None:
    assert make_event(type=kind, phase=phase).is_final is final


def test_event_type_values() -> None:
    assert {t.value for t in EventType} == {
        "job.phase_changed",
        "subjob.phase_changed",
        "job.timed_out",
        "job.stalled",
        "job.not_found",
        "job.poll_failed",
        "job.recovered",
        "monitor.auth_failed",
        "monitor.config_error",
        "node.active",
        "node.failed",
        "nodepool.phase_changed",
        "nodepool.settled",
        "rollout.progress",
        "rollout.finished",
    }
    assert {t for t in EventType if t.is_final} == {EventType.JOB_TIMED_OUT, EventType.JOB_NOT_FOUND}


def test_event_id() -> None:
    a = event_id(PROJECT_ID, JOB_ID, None, "job.phase_changed", "Running", "Success")
    assert re.fullmatch(r"[0-9a-f]{32}", a)
    assert a == event_id(PROJECT_ID, JOB_ID, None, "job.phase_changed", "Running", "Success")
    assert a != event_id(PROJECT_ID, JOB_ID, None, "job.phase_changed", "Initializing", "Success")
    assert a != event_id(PROJECT_ID, JOB_ID, "s1", "job.phase_changed", "Running", "Success")
    # Part boundaries matter: ("ab", "c") is not ("a", "bc").
    assert event_id("ab", "c") != event_id("a", "bc")
