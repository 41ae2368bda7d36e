"""Change detection between job snapshots (``monitor.engine.diff``)."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core.events import Event, EventType
from monitor.core.model import Job, Phase, Timestamp, parse_job
from monitor.engine.diff import JobContext, detect, progressed

PROJECT_ID = "0b0f5d1d9c8a4bfa9d0c6c1b0f3d2e1a"
JOB_ID = "354331b2c-229a-11e8-9c75-0255ac100ceb"
CTX = JobContext(project_id=PROJECT_ID, job_id=JOB_ID, labels={"team": "platform", "env": "prod"})
NOW = datetime(2026, 11, 28, 6, 41, 0, tzinfo=UTC)
HEX32 = re.compile(r"^[0-9a-f]{32}$")

SEED_JOB = parse_job(
    b"""{
 "metadata": {"uid": "354331b2c-229a-11e8-9c75-0255ac100ceb",
              "updateTimestamp": "2020-02-02 08:21:50.478108569 +0000 UTC"},
 "spec": {"type": "CreateCluster", "clusterUID": "4d1ecb2c-229a-11e8-9c75-0255ac100ceb",
          "resourceID": "6f4dcb2c-229a-11e8-9c75-0255ac100ceb", "resourceName": "cluster-name",
          "subJobs": [
            {"metadata": {"uid": "fd474fab-9606-11e8-baa9-0255ac10215d"},
             "spec": {"type": "InstallMaster"}, "status": {"phase": "Success"}},
            {"metadata": {"uid": "fd474f82-9606-11e8-baa8-0255ac10215d"},
             "spec": {"type": "CreatePSMCert"}, "status": {"phase": "Success"}}]},
 "status": {"phase": "Running", "reason": ""}
}"""
)


def job(phase: str, *subs: Job, reason: str = "", updated: str = "2020-02-02 08:21:50 +0000 UTC") -> Job:
    return Job(
        id=JOB_ID,
        type="CreateNode",
        phase=Phase(phase),
        reason=reason,
        cluster_id="c-1",
        resource_name="node-1",
        updated=Timestamp.parse(updated),
        sub_jobs=subs,
    )


def sub(sub_id: str, type_: str, phase: str, *subs: Job, reason: str = "") -> Job:
    return Job(id=sub_id, type=type_, phase=Phase(phase), reason=reason, sub_jobs=subs)


def summary(events: list[Event]) -> list[tuple[str, str | None, str | None, str | None]]:
    return [(e.type.value, e.subjob_id, e.previous_phase, e.phase) for e in events]


# --- first observation -------------------------------------------------------------------------------------


def test_first_observation_of_the_seed_job() -> None:
    events = detect(None, SEED_JOB, CTX, NOW)
    assert summary(events) == [
        ("subjob.phase_changed", "fd474fab-9606-11e8-baa9-0255ac10215d", None, "Success"),
        ("subjob.phase_changed", "fd474f82-9606-11e8-baa8-0255ac10215d", None, "Success"),
        ("job.phase_changed", None, None, "Running"),
    ]
    master, cert, job_event = events
    for event in events:
        assert event.time == NOW
        assert event.project_id == PROJECT_ID
        assert event.job_id == JOB_ID
        assert event.job_type == "CreateCluster"
        assert event.resource_name == "cluster-name"
        assert event.cluster_id == "4d1ecb2c-229a-11e8-9c75-0255ac100ceb"
        assert dict(event.labels) == {"team": "platform", "env": "prod"}
        assert event.reason is None
        assert event.detail is None
        assert HEX32.match(event.id)
    assert master.type is EventType.SUBJOB_PHASE_CHANGED
    assert master.subjob_type == "InstallMaster"
    assert cert.subjob_type == "CreatePSMCert"
    assert not master.is_final
    assert job_event.type is EventType.JOB_PHASE_CHANGED
    assert job_event.subjob_id is None
    assert job_event.subjob_type is None
    assert not job_event.is_final
    assert len({e.id for e in events}) == 3


def test_first_observation_without_sub_jobs_or_optional_fields() -> None:
    bare = Job(id="", type="", phase=Phase.INITIALIZING)
    (event,) = detect(None, bare, CTX, NOW)
    assert event.type is EventType.JOB_PHASE_CHANGED
    assert event.phase == "Initializing"
    assert event.previous_phase is None
    assert event.job_type is None
    assert event.resource_name is None
    assert event.cluster_id is None
    assert event.reason is None
    assert event.job_id == JOB_ID  # from the context, not the (empty) uid


# --- changes -----------------------------------------------------------------------------------------------


def test_unchanged_snapshot_gives_no_events() -> None:
    assert detect(SEED_JOB, SEED_JOB, CTX, NOW) == []
    copy = parse_job(b'{"metadata": {"uid": "x"}, "status": {"phase": "Running"}}')
    assert detect(copy, parse_job(b'{"metadata": {"uid": "x"}, "status": {"phase": "Running"}}'), CTX, NOW) == []
    # Only the update time moved: progress for stall detection, but nothing to report.
    before = job("Running", sub("s1", "CreateNodeVM", "Running"))
    after = job("Running", sub("s1", "CreateNodeVM", "Running"), updated="2020-02-02 08:22:00 +0000 UTC")
    assert detect(before, after, CTX, NOW) == []


def test_running_to_success() -> None:
    (event,) = detect(job("Running"), job("Success"), CTX, NOW)
    assert event.type is EventType.JOB_PHASE_CHANGED
    assert (event.previous_phase, event.phase) == ("Running", "Success")
    assert event.job_type == "CreateNode"
    assert event.resource_name == "node-1"
    assert event.cluster_id == "c-1"
    assert event.reason is None
    assert event.is_final


def test_running_to_failed_with_reason() -> None:
    (event,) = detect(job("Running"), job("Failed", reason="Install node failed: timeout"), CTX, NOW)
    assert (event.previous_phase, event.phase, event.reason) == ("Running", "Failed", "Install node failed: timeout")
    assert event.is_final


def test_unknown_phase_change() -> None:
    (event,) = detect(job("Running"), job("Abnormal"), CTX, NOW)
    assert (event.previous_phase, event.phase) == ("Running", "Abnormal")
    assert not event.is_final


def test_sub_job_appearing() -> None:
    before = job("Running")
    after = job("Running", sub("s1", "CreateNodeVM", "Initializing"))
    (event,) = detect(before, after, CTX, NOW)
    assert event.type is EventType.SUBJOB_PHASE_CHANGED
    assert event.subjob_id == "s1"
    assert event.subjob_type == "CreateNodeVM"
    assert (event.previous_phase, event.phase) == (None, "Initializing")
    assert event.job_type == "CreateNode"  # the job's, not the sub-job's
    assert event.resource_name == "node-1"
    assert event.cluster_id == "c-1"


def test_sub_job_disappearing_is_not_an_event() -> None:
    before = job("Running", sub("s1", "CreateNodeVM", "Running"), sub("s2", "InstallNode", "Running"))
    after = job("Running", sub("s2", "InstallNode", "Running"))
    assert detect(before, after, CTX, NOW) == []


def test_sub_job_phase_change_at_depth_two() -> None:
    before = job("Running", sub("s1", "InstallNode", "Running", sub("s1a", "InstallKubelet", "Running")))
    after = job("Running", sub("s1", "InstallNode", "Running", sub("s1a", "InstallKubelet", "Failed", reason="oom")))
    (event,) = detect(before, after, CTX, NOW)
    assert event.type is EventType.SUBJOB_PHASE_CHANGED
    assert event.subjob_id == "s1a"
    assert event.subjob_type == "InstallKubelet"
    assert (event.previous_phase, event.phase, event.reason) == ("Running", "Failed", "oom")
    assert not event.is_final  # a failed sub-job does not end the job


def test_sub_job_events_come_before_the_job_event() -> None:
    before = job("Running", sub("s1", "CreateNodeVM", "Success"), sub("s2", "InstallNode", "Running"))
    after = job("Success", sub("s1", "CreateNodeVM", "Success"), sub("s2", "InstallNode", "Success"))
    assert summary(detect(before, after, CTX, NOW)) == [
        ("subjob.phase_changed", "s2", "Running", "Success"),
        ("job.phase_changed", None, "Running", "Success"),
    ]


def test_reason_change_while_failed() -> None:
    first = detect(job("Running"), job("Failed", reason="quota exceeded"), CTX, NOW)
    (event,) = detect(job("Failed", reason="quota exceeded"), job("Failed", reason="rollback failed"), CTX, NOW)
    assert event.type is EventType.JOB_PHASE_CHANGED
    assert (event.previous_phase, event.phase, event.reason) == ("Failed", "Failed", "rollback failed")
    assert event.id != first[0].id
    # The same reason again is nothing new; a reason change while running is not reported.
    assert detect(job("Failed", reason="rollback failed"), job("Failed", reason="rollback failed"), CTX, NOW) == []
    assert detect(job("Running", reason="a"), job("Running", reason="b"), CTX, NOW) == []


def test_sub_jobs_without_ids_matched_by_type_and_position() -> None:
    before = job("Running", sub("", "CreateNodeVM", "Running"), sub("", "InstallNode", "Initializing"))
    after = job("Running", sub("", "CreateNodeVM", "Success"), sub("", "InstallNode", "Initializing"))
    (event,) = detect(before, after, CTX, NOW)
    assert event.subjob_id == "/CreateNodeVM#0"
    assert event.subjob_type == "CreateNodeVM"
    assert (event.previous_phase, event.phase) == ("Running", "Success")

    later = job("Running", sub("", "CreateNodeVM", "Success"), sub("", "InstallNode", "Running"))
    (event2,) = detect(after, later, CTX, NOW)
    assert event2.subjob_id == "/InstallNode#1"
    assert (event2.previous_phase, event2.phase) == ("Initializing", "Running")


def test_nested_sub_jobs_without_ids() -> None:
    before = job("Running", sub("s1", "InstallNode", "Running", sub("", "InstallKubelet", "Running")))
    after = job("Running", sub("s1", "InstallNode", "Running", sub("", "InstallKubelet", "Success")))
    (event,) = detect(before, after, CTX, NOW)
    assert event.subjob_id == "s1/InstallKubelet#0"
    assert (event.previous_phase, event.phase) == ("Running", "Success")


# --- event ids ---------------------------------------------------------------------------------------------


def test_same_transition_gives_same_id() -> None:
    before = job("Running", sub("s1", "CreateNodeVM", "Running"))
    after = job("Success", sub("s1", "CreateNodeVM", "Success"), updated="2020-02-02 09:00:00 +0000 UTC")
    first = detect(before, after, CTX, NOW)
    again = detect(before, after, CTX, NOW + timedelta(hours=3))  # seen again after a restart
    assert [e.id for e in first] == [e.id for e in again]
    assert len({e.id for e in first}) == 2
    assert detect(before, after, CTX, NOW) == first


def test_different_transitions_give_different_ids() -> None:
    ids = [
        detect(None, job("Running"), CTX, NOW)[0].id,
        detect(job("Initializing"), job("Running"), CTX, NOW)[0].id,
        detect(job("Running"), job("Success"), CTX, NOW)[0].id,
        detect(job("Running"), job("Failed", reason="a"), CTX, NOW)[0].id,
        detect(job("Running"), job("Failed", reason="b"), CTX, NOW)[0].id,
        detect(job("Failed", reason="a"), job("Failed", reason="b"), CTX, NOW)[0].id,
        detect(job("Running"), job("Success"), JobContext(PROJECT_ID, "other-job", {}), NOW)[0].id,
        detect(job("Running"), job("Success"), JobContext("other-project", JOB_ID, {}), NOW)[0].id,
        detect(job("Running"), job("Running", sub("s1", "X", "Success")), CTX, NOW)[0].id,
        detect(job("Running"), job("Running", sub("s2", "X", "Success")), CTX, NOW)[0].id,
    ]
    assert all(HEX32.match(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_labels_do_not_change_the_id() -> None:
    other = JobContext(PROJECT_ID, JOB_ID, {"team": "other"})
    (a,) = detect(job("Running"), job("Success"), CTX, NOW)
    (b,) = detect(job("Running"), job("Success"), other, NOW)
    assert a.id == b.id
    assert dict(b.labels) == {"team": "other"}


# --- progressed --------------------------------------------------------------------------------------------


def test_progressed() -> None:
    base = job("Running")
    assert progressed(None, base)
    assert not progressed(base, job("Running"))
    assert progressed(base, job("Success"))
    assert progressed(base, job("Running", updated="2020-02-02 08:21:51 +0000 UTC"))
    # A sub-job change without a new updateTimestamp or phase is not progress of the job.
    assert not progressed(base, job("Running", sub("s1", "CreateNodeVM", "Success")))
    assert not progressed(base, job("Running", reason="still going"))
    # Compared as raw text: a different spelling of the same instant counts as movement.
    assert progressed(base, job("Running", updated="2020-02-02T08:21:50Z"))


# --- random histories --------------------------------------------------------------------------------------

PHASES = ["Initializing", "Running", "Failed", "Success", "Abnormal", "Synchronized"]


@st.composite
def snapshots(draw: st.DrawFn) -> Job:
    subs = []
    for sub_id in draw(st.lists(st.sampled_from(["s1", "s2", "s3"]), unique=True, max_size=3)):
        children = [
            sub(child_id, "Child", draw(st.sampled_from(PHASES)))
            for child_id in draw(st.lists(st.sampled_from([f"{sub_id}a", f"{sub_id}b"]), unique=True, max_size=2))
        ]
        subs.append(sub(sub_id, "Step", draw(st.sampled_from(PHASES)), *children))
    return job(draw(st.sampled_from(PHASES)), *subs, reason=draw(st.sampled_from(["", "quota", "timeout"])))


def flat(snapshot: Job | None) -> dict[str, str]:
    return {} if snapshot is None else {s.id: s.phase.value for s in snapshot.walk()}


@settings(max_examples=200, deadline=None)
@given(pool=st.lists(snapshots(), min_size=1, max_size=4), order=st.lists(st.integers(0, 3), min_size=1, max_size=12))
def test_random_histories(pool: list[Job], order: list[int]) -> None:
    history = [pool[i % len(pool)] for i in order]
    previous: Job | None = None
    last_phase: str | None = None
    job_ids: dict[tuple[Any, ...], str] = {}
    for step, current in enumerate(history):
        events = detect(previous, current, CTX, NOW + timedelta(seconds=step))
        if previous == current:
            assert events == []
        job_events = [e for e in events if e.type is EventType.JOB_PHASE_CHANGED]
        sub_events = [e for e in events if e.type is EventType.SUBJOB_PHASE_CHANGED]
        assert len(job_events) + len(sub_events) == len(events)

        # The job: one event at most, last, and the phases form a chain.
        should = (
            previous is None
            or previous.phase != current.phase
            or (current.phase is Phase.FAILED and previous.reason != current.reason)
        )
        assert len(job_events) == (1 if should else 0)
        if job_events:
            (event,) = job_events
            assert events[-1] is event
            assert event.previous_phase == last_phase
            assert event.phase == current.phase.value
            assert event.reason == (current.reason or None)
            last_phase = event.phase
            key = (event.previous_phase, event.phase, event.reason if event.phase == "Failed" else None)
            assert job_ids.setdefault(key, event.id) == event.id
            assert sorted(job_ids.values()).count(event.id) == 1

        # Sub-jobs: exactly the ones that appeared or changed phase, with the right previous phase.
        before, after = flat(previous), flat(current)
        expected = {(k, before.get(k), v) for k, v in after.items() if before.get(k) != v}
        assert {(e.subjob_id, e.previous_phase, e.phase) for e in sub_events} == expected
        assert len(sub_events) == len(expected)
        previous = current
    assert last_phase == history[-1].phase.value


@settings(max_examples=200, deadline=None)
@given(previous=snapshots(), current=snapshots())
def test_shared_sub_job_snapshots_give_the_same_events(previous: Job, current: Job) -> None:
    """The parser hands back the previous snapshot's own object for an unchanged sub-job, and detect skips
    those by identity: the events must be exactly those of a snapshot with fresh, equal objects."""
    shared = tuple(
        previous.sub_jobs[i] if i < len(previous.sub_jobs) and previous.sub_jobs[i] == top else top
        for i, top in enumerate(current.sub_jobs)
    )
    reused = dataclasses.replace(current, sub_jobs=shared)
    assert reused == current
    assert detect(previous, reused, CTX, NOW) == detect(previous, current, CTX, NOW)
