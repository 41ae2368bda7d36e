"""The durable state against both engines: a real SQLite file in ``tmp_path`` (``monitor.daemon.store``) and a
database of its own on a throwaway PostgreSQL server (``monitor.daemon.pgstore``). Every test that takes
``state`` or ``backend`` runs on both; the ones about the SQLite file itself take ``db_path``."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from monitor.core.errors import ConfigError, StateError
from monitor.core.events import Event, EventType, event_id
from monitor.core.model import Job, Phase, job_from_json, job_to_json, parse_job
from monitor.daemon.pgstore import PgState
from monitor.daemon.storage import Store
from monitor.daemon.store import State
from monitor.engine.bus import EventFilter

PROJECT = "0b9c3a5e8e8f4e4a9d5c7a3b2f1e0d9c"

# A realistic document: sub-jobs (nested), an undocumented phase, Go timestamps with odd precision and an
# offset, extendParam, a reason.
DOCUMENT = b"""{
  "kind": "Job", "apiVersion": "v3",
  "metadata": {"uid": "job-1", "creationTimestamp": "2020-02-02 08:12:40.6727 +0000 UTC",
               "updateTimestamp": "2020-02-02 09:12:41.672772389 +0100 CET"},
  "spec": {"type": "CreateNode", "clusterUID": "c-1", "resourceID": "r-1", "resourceName": "node-17",
           "extendParam": {"serverID": "s-1"},
           "subJobs": [
             {"metadata": {"uid": "sub-1", "updateTimestamp": "2020-02-02 08:12:42 +0000 UTC"},
              "spec": {"type": "CreateNodeVM", "subJobs": [
                  {"metadata": {"uid": "sub-1-1"}, "spec": {"type": "InstallNode"},
                   "status": {"phase": "Abnormal", "reason": "disk"}}]},
              "status": {"phase": "Running"}},
             {"metadata": {"uid": "sub-2"}, "spec": {"type": "WaitNode"}, "status": {"phase": "Initializing"}}
           ]},
  "status": {"phase": "Running", "reason": "installing"}
}"""


def snapshot(job_id: str = "job-1", phase: str = "Running") -> Job:
    job = parse_job(DOCUMENT.replace(b'"job-1"', f'"{job_id}"'.encode()))
    if phase != job.phase.value:
        job = Job(**{**{f: getattr(job, f) for f in Job.__dataclass_fields__}, "phase": Phase(phase)})
    return job


def event(
    job_id: str,
    phase: str,
    previous: str | None = None,
    *,
    kind: EventType = EventType.JOB_PHASE_CHANGED,
    labels: dict[str, str] | None = None,
) -> Event:
    return Event(
        id=event_id(PROJECT, job_id, None, kind.value, previous, phase),
        type=kind,
        project_id=PROJECT,
        job_id=job_id,
        job_type="CreateNode",
        phase=phase,
        previous_phase=previous,
        labels=labels or {},
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@dataclass
class Backend:
    """One storage engine under test: open it (again), and read or change its database behind its back."""

    name: str
    db_path: Path
    dsn: str | None = None

    async def open(self) -> Store:
        if self.dsn is not None:
            return await PgState.open(self.dsn)
        return await State.open(self.db_path)

    async def sql(self, statement: str) -> list[tuple[Any, ...]]:
        """One statement on another connection (committed at once); its rows, if it returns any."""
        if self.dsn is None:
            conn = sqlite3.connect(self.db_path)
            try:
                with conn:
                    return list(conn.execute(statement).fetchall())
            finally:
                conn.close()
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as pg:
            cur = await pg.execute(statement.encode())
            return list(await cur.fetchall()) if cur.description else []


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, db_path: Path) -> Backend:
    if request.param == "postgres":
        return Backend("postgres", db_path, request.getfixturevalue("pg_dsn"))
    return Backend("sqlite", db_path)


@pytest.fixture
async def state(backend: Backend) -> AsyncIterator[Store]:
    st = await backend.open()
    yield st
    await st.close()


async def outbox_rows(backend: Backend) -> list[tuple[str, str, int, int, float | None]]:
    """(sink, event_id, attempts, rejected, delivered_at) straight from the database, in queue order."""
    rows = await backend.sql("SELECT sink, event_id, attempts, rejected, delivered_at FROM outbox ORDER BY seq")
    return [(s, i, a, int(r), d) for s, i, a, r, d in rows]


# ------------------------------------------------------------------------------------------- opening


async def test_file_is_created_0600_with_its_wal(db_path: Path) -> None:
    old = os.umask(0o022)
    try:
        st = await State.open(db_path)
    finally:
        os.umask(old)
    try:
        await st.add_jobs(["a"], {}, None)  # write something so the WAL exists
        for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
            assert path.exists(), path
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        conn = sqlite3.connect(db_path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            conn.close()
    finally:
        await st.close()


async def test_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "state.db"
    with pytest.raises(ConfigError, match="does not exist"):
        await State.open(missing)
    assert not missing.parent.exists()


async def test_a_file_that_is_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite " * 100)
    with pytest.raises(ConfigError, match="not a usable SQLite database"):
        await State.open(path)


async def test_close_is_idempotent(state: Store) -> None:
    await state.close()
    await state.close()
    assert state.closed


# ----------------------------------------------------------------------------------------------- jobs


async def test_add_jobs_returns_only_new_ids(state: Store) -> None:
    assert await state.add_jobs(["a", "b"], {"team": "x"}, "r1") == ["a", "b"]
    assert await state.add_jobs(["b", "c", "a"], {"team": "other"}, "r2") == ["c"]
    assert await state.add_jobs(["c"], {}, None) == []
    b = await state.get("b")
    assert b is not None
    # A known job keeps what it was first added with.
    assert (b.labels, b.rollout) == ({"team": "x"}, "r1")
    assert (b.phase, b.snapshot, b.outcome, b.finished_at) == (None, None, None, None)
    assert b.added_at == pytest.approx(time.time(), abs=30)
    assert await state.get("zzz") is None
    assert [j.job_id for j in await state.unfinished()] == ["a", "b", "c"]


async def test_record_routes_events_only_to_sinks_whose_filter_matches(state: Store) -> None:
    state.route("file:/x", EventFilter())  # everything
    state.route("webhook:http://h/", EventFilter.of(types=["job.phase_changed"], phases=["Failed", "Success"]))
    state.route("labels-only", EventFilter.of(labels={"team": "b"}))
    await state.add_jobs(["j"], {"team": "a"}, None)
    snap = snapshot("j", "Running")
    first = event("j", "Running", "Initializing", labels={"team": "a"})
    sub = event("j", "Success", "Running", kind=EventType.SUBJOB_PHASE_CHANGED, labels={"team": "a"})
    final = event("j", "Success", "Running", labels={"team": "a"})
    await state.record("j", snap, [first])
    await state.record("j", None, [sub, final])

    stored = await state.get("j")
    assert stored is not None and stored.phase == "Running" and stored.snapshot == snap
    assert [e.id for e in await state.history("j")] == [first.id, sub.id, final.id]
    assert [r.event.id for r in await state.pending("file:/x")] == [first.id, sub.id, final.id]
    assert [r.event.id for r in await state.pending("webhook:http://h/")] == [final.id]
    assert await state.pending("labels-only") == []
    assert await state.outbox_depth() == {"file:/x": 3, "webhook:http://h/": 1}


async def test_record_without_routes_keeps_history_but_no_outbox(state: Store) -> None:
    await state.add_jobs(["j"], {}, None)
    await state.record("j", snapshot("j"), [event("j", "Running")])
    assert len(await state.history("j")) == 1
    assert await state.outbox_depth() == {}


async def test_record_with_outcome_finishes_the_job(state: Store) -> None:
    await state.add_jobs(["done", "busy"], {}, None)
    await state.record("done", snapshot("done", "Failed"), [event("done", "Failed", "Running")], outcome="Failed")
    await state.record("busy", snapshot("busy", "Running"), [event("busy", "Running")])
    done = await state.get("done")
    assert done is not None
    assert (done.phase, done.outcome) == ("Failed", "Failed")
    assert done.finished_at == pytest.approx(time.time(), abs=30)
    assert [j.job_id for j in await state.unfinished()] == ["busy"]
    # An outcome without a snapshot (timed out): the last phase stays, the job is finished.
    await state.record("busy", None, [event("busy", "Running", kind=EventType.JOB_TIMED_OUT)], outcome="timed_out")
    busy = await state.get("busy")
    assert busy is not None and (busy.phase, busy.outcome) == ("Running", "timed_out")
    assert await state.unfinished() == []


async def test_record_is_all_or_nothing(state: Store, backend: Backend) -> None:
    """A failure in the middle of the transaction (a trigger refuses the outbox row) changes nothing."""
    state.route("s", EventFilter())
    await state.add_jobs(["j"], {}, None)
    await state.record("j", snapshot("j", "Initializing"), [event("j", "Initializing")])
    poison = event("j", "Running", "Initializing")
    if backend.name == "sqlite":
        await backend.sql(
            f"CREATE TRIGGER refuse BEFORE INSERT ON outbox WHEN NEW.event_id = '{poison.id}' "
            "BEGIN SELECT RAISE(ABORT, 'refused by test'); END"
        )
    else:
        await backend.sql(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.event_id = '{poison.id}' THEN RAISE EXCEPTION 'refused by test'; END IF; RETURN NEW; END $$"
        )
        await backend.sql("CREATE TRIGGER refuse BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse()")
    with pytest.raises(StateError, match="refused by test"):
        await state.record("j", snapshot("j", "Running"), [poison], outcome="Failed")
    stored = await state.get("j")
    assert stored is not None and (stored.phase, stored.outcome) == ("Initializing", None)
    assert [e.phase for e in await state.history("j")] == ["Initializing"]
    assert await state.outbox_depth() == {"s": 1}
    # The connection is still usable afterwards.
    await state.record("j", snapshot("j", "Success"), [event("j", "Success", "Initializing")], outcome="Success")
    assert [e.phase for e in await state.history("j")] == ["Initializing", "Success"]


async def test_duplicate_event_ids_are_stored_once(state: Store) -> None:
    state.route("s", EventFilter())
    await state.add_jobs(["j"], {}, None)
    e = event("j", "Running", "Initializing")
    again = Event(**{**{f: getattr(e, f) for f in Event.__dataclass_fields__}, "reason": "seen twice"})
    await state.record("j", snapshot("j"), [e])
    await state.record("j", snapshot("j"), [again, e])
    history = await state.history("j")
    assert [x.id for x in history] == [e.id]
    assert history[0].reason is None, "the first row is kept"
    assert [r.event.id for r in await state.pending("s")] == [e.id]
    assert await state.outbox_depth() == {"s": 1}


async def test_jobs_filters(state: Store) -> None:
    await state.add_jobs(["a1", "a2"], {"team": "a", "env": "prod"}, "r1")
    await state.add_jobs(["b1"], {"team": "b", "env": "prod"}, "r2")
    await state.add_jobs(["c1"], {}, None)
    await state.record("a1", snapshot("a1", "Running"), [])
    await state.record("a2", snapshot("a2", "Success"), [], outcome="Success")
    await state.record("b1", None, [], outcome="not_found")

    async def ids(**kw: object) -> list[str]:
        return [j.job_id for j in await state.jobs(**kw)]  # type: ignore[arg-type]

    assert await ids() == ["a1", "a2", "b1", "c1"]
    assert await ids(phase="Running") == ["a1"]
    assert await ids(phase="Success") == ["a2"]
    assert await ids(phase="not_found") == ["b1"], "phase also matches outcomes"
    assert await ids(phase="Failed") == []
    assert await ids(rollout="r1") == ["a1", "a2"]
    assert await ids(rollout="nope") == []
    assert await ids(labels={"team": "a"}) == ["a1", "a2"]
    assert await ids(labels={"env": "prod"}) == ["a1", "a2", "b1"]
    assert await ids(labels={"env": "prod", "team": "b"}) == ["b1"]
    assert await ids(labels={"team": "a"}, phase="Success", rollout="r1") == ["a2"]
    assert await ids(labels={"team": "zzz"}) == []


async def test_history_round_trips_events(state: Store) -> None:
    await state.add_jobs(["j"], {}, None)
    events = [
        event("j", "Initializing", labels={"team": "a", "rollout": "r1"}),
        Event(
            id=event_id(PROJECT, "j", "sub-1", "subjob.phase_changed", "Initializing", "Running"),
            type=EventType.SUBJOB_PHASE_CHANGED,
            project_id=PROJECT,
            job_id="j",
            job_type="CreateNode",
            phase="Running",
            previous_phase="Initializing",
            reason="ünïcode reason",
            subjob_id="sub-1",
            subjob_type="InstallNode",
            resource_name="node-17",
            cluster_id="c-1",
            labels={"team": "a"},
        ),
        Event(
            id=event_id(PROJECT, "j", None, "job.poll_failed", "1"),
            type=EventType.JOB_POLL_FAILED,
            project_id=PROJECT,
            job_id="j",
            detail="3 polls failed in a row; last: HTTP 500",
        ),
    ]
    await state.record("j", None, events)
    got = await state.history("j")
    assert got == events
    assert [e.to_json() for e in got] == [e.to_json() for e in events]
    assert await state.history("unknown") == []


async def test_confirmations_are_the_node_events_of_the_jobs_asked_for_oldest_first(state: Store) -> None:
    await state.add_jobs(["j1", "j2", "j3"], {}, "r1")
    active = event("j1", "Success", kind=EventType.NODE_ACTIVE)
    failed = event("j2", "Success", kind=EventType.NODE_FAILED)
    other = event("j3", "Success", kind=EventType.NODE_ACTIVE)  # a job not asked for
    # A reason that reads like a node event's type must not pass for one (SQLite matches the body's text).
    decoy = dataclasses.replace(event("j1", "Running", "Initializing"), reason='"type":"node.active"')
    await state.record("j1", None, [event("j1", "Initializing"), decoy, active])
    await state.record("j2", None, [failed])
    await state.record("j3", None, [other])
    assert await state.confirmations(["j2", "j1", "nope"]) == [active, failed]
    assert await state.confirmations([]) == []


async def test_learned_durations_are_kept_and_replaced_per_step(backend: Backend) -> None:
    state = await backend.open()
    try:
        assert await state.durations() == {}
        await state.save_durations({"CreateNode/InstallNode/Running": [61.5, 70.25], "X//Running": [1.0]})
        await state.save_durations({"X//Running": [2.0, 3.0]})  # a step's samples replace what was kept
    finally:
        await state.close()
    again = await backend.open()  # across a restart
    try:
        assert await again.durations() == {"CreateNode/InstallNode/Running": [61.5, 70.25], "X//Running": [2.0, 3.0]}
    finally:
        await again.close()


async def test_delete_forgets_job_and_history(state: Store) -> None:
    await state.add_jobs(["a", "b"], {}, None)
    await state.record("a", snapshot("a"), [event("a", "Running")])
    await state.record("b", snapshot("b"), [event("b", "Running")])
    assert await state.delete("a") is True
    assert await state.delete("a") is False
    assert await state.get("a") is None
    assert await state.history("a") == []
    assert [j.job_id for j in await state.jobs()] == ["b"]
    assert len(await state.history("b")) == 1
    # Deleted, it can be added again as new.
    assert await state.add_jobs(["a"], {}, None) == ["a"]


# --------------------------------------------------------------------------------------------- outbox


async def test_pending_is_oldest_first_and_limited(state: Store) -> None:
    state.route("s", EventFilter())
    await state.add_jobs(["a", "b"], {}, None)
    order = [event("a", "Initializing"), event("b", "Initializing"), event("a", "Running", "Initializing")]
    for e in order:
        await state.record(e.job_id, None, [e])
    rows = await state.pending("s")
    assert [r.event for r in rows] == order
    assert [r.seq for r in rows] == sorted(r.seq for r in rows)
    assert all(r.sink == "s" and r.attempts == 0 for r in rows)
    assert [r.event for r in await state.pending("s", limit=2)] == order[:2]
    assert await state.pending("other") == []


async def test_delivered_failed_and_rejected_rows(state: Store, backend: Backend) -> None:
    state.route("s", EventFilter())
    await state.add_jobs(["j"], {}, None)
    e1, e2, e3 = event("j", "Initializing"), event("j", "Running", "Initializing"), event("j", "Success", "Running")
    await state.record("j", None, [e1, e2, e3])
    first, second, third = await state.pending("s")

    await state.delivered(first.seq)
    assert [r.event.id for r in await state.pending("s")] == [e2.id, e3.id]

    # A retryable failure counts an attempt; the row stays first in line.
    await state.attempt_failed(second.seq, "HTTP 503: " + "x" * 1000)
    await state.attempt_failed(second.seq, "HTTP 503 again")
    rows = await state.pending("s")
    assert [(r.event.id, r.attempts) for r in rows] == [(e2.id, 2), (e3.id, 0)]
    assert await state.outbox_depth() == {"s": 2}

    # A refusal takes the row out of the queue for good, keeping why.
    await state.rejected(second.seq, "HTTP 400: bad event")
    assert [r.event.id for r in await state.pending("s")] == [e3.id]
    await state.delivered(third.seq)
    assert await state.pending("s") == []
    assert await state.outbox_depth() == {}

    rows_on_disk = await outbox_rows(backend)
    assert [(s, i, a, r) for s, i, a, r, _ in rows_on_disk] == [
        ("s", e1.id, 0, 0),
        ("s", e2.id, 3, 1),
        ("s", e3.id, 0, 0),
    ]
    assert all(delivered_at is not None for *_, delivered_at in rows_on_disk)
    errors = [r[0] for r in await backend.sql("SELECT last_error FROM outbox ORDER BY seq")]
    assert errors == [None, "HTTP 400: bad event", None]


async def test_outbox_depth_counts_per_sink(state: Store) -> None:
    state.route("a", EventFilter())
    state.route("b", EventFilter.of(types=["job.phase_changed"]))
    await state.add_jobs(["j"], {}, None)
    assert await state.outbox_depth() == {}
    await state.record("j", None, [event("j", "Running"), event("j", "Running", kind=EventType.SUBJOB_PHASE_CHANGED)])
    assert await state.outbox_depth() == {"a": 2, "b": 1}
    (row,) = await state.pending("b")
    await state.delivered(row.seq)
    assert await state.outbox_depth() == {"a": 2}


# ---------------------------------------------------------------------------------------------- prune


async def test_prune_forgets_old_finished_jobs_and_delivered_rows(state: Store, backend: Backend) -> None:
    state.route("s", EventFilter())
    await state.add_jobs(["old", "busy"], {}, None)
    e_old = event("old", "Success", "Running")
    e_busy = event("busy", "Running")
    await state.record("old", snapshot("old", "Success"), [e_old], outcome="Success")
    await state.record("busy", snapshot("busy", "Running"), [e_busy])
    (row_old, row_busy) = await state.pending("s")
    await state.delivered(row_old.seq)

    # A long retention keeps everything.
    assert await state.prune(3600) == 0
    assert {j.job_id for j in await state.jobs()} == {"old", "busy"}

    await asyncio.sleep(0.01)
    assert await state.prune(0.001) == 1
    assert await state.get("old") is None
    assert await state.history("old") == []
    busy = await state.get("busy")
    assert busy is not None and busy.outcome is None
    assert [e.id for e in await state.history("busy")] == [e_busy.id]
    # The delivered row is gone; the undelivered one is kept, however old.
    assert [i for _, i, *_ in await outbox_rows(backend)] == [e_busy.id]
    assert [r.seq for r in await state.pending("s")] == [row_busy.seq]


# --------------------------------------------------------------------------------------------- reopen


async def test_close_and_reopen_keeps_everything(backend: Backend) -> None:
    st = await backend.open()
    st.route("s", EventFilter())
    await st.add_jobs(["a", "b"], {"team": "a"}, "r1")
    snap = snapshot("a", "Running")
    events = [event("a", "Initializing"), event("a", "Running", "Initializing")]
    await st.record("a", snap, events)
    await st.record("b", snapshot("b", "Failed"), [event("b", "Failed")], outcome="Failed")
    (first, *_rest) = await st.pending("s")
    await st.delivered(first.seq)
    await st.attempt_failed(_rest[0].seq, "down")
    await st.close()

    st = await backend.open()
    try:
        a = await st.get("a")
        assert a is not None
        assert (a.labels, a.rollout, a.phase, a.outcome) == ({"team": "a"}, "r1", "Running", None)
        assert a.snapshot == snap
        assert a.snapshot is not None and job_to_json(a.snapshot) == job_to_json(snap)
        assert a.snapshot.sub_jobs[0].sub_jobs[0].phase.value == "Abnormal"
        assert a.snapshot.updated.raw == "2020-02-02 09:12:41.672772389 +0100 CET"
        assert job_from_json(job_to_json(snap)) == snap
        assert [j.job_id for j in await st.unfinished()] == ["a"]
        assert await st.history("a") == events
        # The outbox survives too (routes are per process: pending() is by sink name).
        assert [(r.event.id, r.attempts) for r in await st.pending("s")] == [(events[1].id, 1), (_rest[1].event.id, 0)]
        assert await st.outbox_depth() == {"s": 2}
        assert await st.add_jobs(["a", "c"], {}, None) == ["c"]
    finally:
        await st.close()


async def test_committed_rows_survive_a_process_that_never_closed(backend: Backend) -> None:
    """Each method commits: another connection sees the rows at once (what a kill -9 leaves behind)."""
    st = await backend.open()
    try:
        st.route("s", EventFilter())
        await st.add_jobs(["a"], {}, None)
        await st.record("a", snapshot("a"), [event("a", "Running")])
        assert await backend.sql("SELECT job_id, phase FROM jobs") == [("a", "Running")]
        assert await backend.sql("SELECT COUNT(*) FROM history") == [(1,)]
        assert await backend.sql("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL") == [(1,)]
    finally:
        await st.close()
