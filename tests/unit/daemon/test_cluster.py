"""Replicas sharing the jobs on one PostgreSQL database (monitor.daemon.pgcluster): claims, fencing, handover."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from monitor.core.errors import NotOwnerError
from monitor.daemon.pgcluster import Cluster, ClusterHooks
from monitor.daemon.pgstore import PgState
from monitor.daemon.service import Daemon
from monitor.sim import Simulator
from monitor.testing import Receiver, Reply, make_event
from tests.conftest import SimFactory
from tests.unit.daemon.test_daemon import UP, Running, all_finished, make_config, running, until

pytestmark = pytest.mark.usefixtures("postgres")


@pytest.fixture
async def receiver() -> Receiver:
    async with Receiver() as r:
        yield r


def _replica_config(sim: Simulator, tmp_path: Path, name: str, url: str, dsn: str, **overrides: Any) -> Any:
    (tmp_path / name).mkdir()
    polling = {"rate": 100, "interval": 0.1, "min_interval": 0.05, "max_interval": 0.2, "job_timeout": 60}
    return make_config(
        sim,
        tmp_path / name,
        url,
        postgres=dsn,
        polling=polling,
        rollouts={"interval": 0.2},
        **overrides,
    )


def _owned(api: Running) -> int:
    cluster = api.daemon.cluster()
    assert cluster is not None
    return int(cluster["owned_jobs"])


def _claimed(api: Running) -> int:
    cluster = api.daemon.cluster()
    assert cluster is not None
    return int(cluster["claimed"])


async def _owners(dsn: str) -> Counter[str | None]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT owner FROM jobs WHERE finished_at IS NULL")
        return Counter(r[0] for r in await cur.fetchall())


async def test_two_replicas_split_the_jobs_and_record_each_transition_once(
    sim: Simulator, receiver: Receiver, tmp_path: Path, pg_dsn: str
) -> None:
    """Jobs added through one replica are claimed by both (a fair share each, at once: LISTEN/NOTIFY), every job
    finishes, each transition reaches the webhook under one id, and the rollout finishes exactly once."""
    configs = [_replica_config(sim, tmp_path, n, receiver.url, pg_dsn) for n in ("a", "b")]
    async with running(configs[0]) as first, running(configs[1]) as second:
        await until(lambda: _members(first, 2), 10, "both replicas to be members")
        # Planned now, not before the replicas started: under load their start takes seconds, and jobs over by then
        # would be released before both had been seen to claim a share.
        jobs = sim.start_rollout(40, fail_ratio=0.1, duration=4.0)
        code, _ = await first.call("POST", "/v1/jobs", {"job_ids": jobs, "rollout": "r1"})
        assert code == 202
        await until(lambda: _both_own(first, second, total=40), 5, "both replicas to claim a share")
        assert abs(_claimed(first) - _claimed(second)) <= 2, (_claimed(first), _claimed(second))
        await until(lambda: all_finished(second, jobs), 30, "every job to finish")
        await until(lambda: _finished_digests(receiver, 1), 10, "the rollout to finish")
        code, body = await second.call("GET", "/readyz")
        assert code == 200 and body["checks"]["cluster"] is True
        assert body["cluster"]["members"] == 2
        await asyncio.sleep(1.0)  # a second replica announcing it too would have by now
        _, metrics = await first.call("GET", "/metrics")
        assert "cce_monitor_cluster_members 2.0" in metrics
    ids = Counter(r.webhook_id for r in receiver.delivered)
    bodies = {r.webhook_id: r.json for r in receiver.delivered}
    finished = [i for i, b in bodies.items() if b["type"] == "rollout.finished"]
    assert len(finished) == 1, "rollout.finished once cluster-wide"
    assert bodies[finished[0]]["summary"]["total"] == len(jobs), "over every job, whoever polled it"
    phases = Counter((b["job_id"], b["phase"]) for b in bodies.values() if b["type"] == "job.phase_changed")
    assert phases and max(phases.values()) == 1, "a transition is one event id, whichever replica saw it"
    assert {b["job_id"] for b in bodies.values() if b["type"] == "job.phase_changed"} == set(jobs)
    assert all(n >= 1 for n in ids.values())


async def _members(api: Running, n: int) -> bool:
    cluster = api.daemon.cluster()
    return cluster is not None and cluster["members"] == n


async def _both_own(first: Running, second: Running, total: int) -> bool:
    return _claimed(first) > 0 and _claimed(second) > 0 and _claimed(first) + _claimed(second) >= total


async def _finished_digests(receiver: Receiver, n: int) -> bool:
    return sum(1 for r in receiver.delivered if r.json["type"] == "rollout.finished") >= n


async def test_a_clean_stop_hands_every_job_over_at_once(
    sim: Simulator, receiver: Receiver, tmp_path: Path, pg_dsn: str
) -> None:
    """A replica that stops cleanly hands its jobs back: the survivor owns all of them within 2 s (not after the
    membership TTL), and polls them to the end."""
    configs = [_replica_config(sim, tmp_path, n, receiver.url, pg_dsn) for n in ("a", "b")]
    jobs = [sim.add_job("Custom", duration=6) for _ in range(20)]
    async with running(configs[0]) as survivor:
        async with running(configs[1]) as leaving:
            await until(lambda: _members(survivor, 2), 10, "both replicas to be members")
            await survivor.call("POST", "/v1/jobs", {"job_ids": jobs})
            await until(lambda: _both_own(survivor, leaving, total=20), 5, "both to own jobs")
            leaving.stop.set()
            await leaving.task
            stopped = asyncio.get_running_loop().time()
        await until(lambda: _owns_all(survivor, 20), 2.0, "the survivor to own every job")
        assert asyncio.get_running_loop().time() - stopped < 2.0
        assert (await _owners(pg_dsn)).keys() <= {survivor.daemon._replica}
        await until(lambda: all_finished(survivor, jobs), 20, "every job to finish")


async def _owns_all(api: Running, n: int) -> bool:
    return _owned(api) == n


async def test_writes_of_a_replica_that_lost_a_job_are_refused(pg_dsn: str) -> None:
    """Fencing: once another replica has claimed a job (after the first one's membership expired), the first
    one's write for it — snapshot, history, outbox — is refused as a whole, and the new owner's goes through."""
    states = [await PgState.open(pg_dsn) for _ in range(2)]
    dropped: list[list[str]] = [[], []]
    clusters = [
        Cluster(state, f"replica-{i}", _hooks(dropped[i]), heartbeat=0.2, ttl=0.6) for i, state in enumerate(states)
    ]
    try:
        states[0].route("webhook:x", _all())
        await states[0].add_jobs(["job-1"], {}, None)
        await clusters[0]._round()
        assert states[0].epochs == {"job-1": 1}
        await asyncio.sleep(0.8)  # replica-0 stops renewing: its membership expires
        await clusters[1]._round()
        assert states[1].epochs == {"job-1": 2}, "claimed from the expired replica, at a new epoch"
        stale = make_event(id="a" * 32, job_id="job-1")
        with pytest.raises(NotOwnerError, match="no longer owned"):
            await states[0].record("job-1", None, [stale])
        assert "job-1" not in states[0].epochs
        fresh = make_event(id="b" * 32, job_id="job-1")
        await states[1].record("job-1", None, [fresh])
        assert [e.id for e in await states[1].history("job-1")] == [fresh.id], "nothing of the stale write"
        assert await states[0].outbox_depth() == {}, "no outbox row for the stale write (no sink routed on 1)"
        with pytest.raises(NotOwnerError, match="not owned"):
            await states[0].record("job-2", None, [])  # never claimed at all
    finally:
        for cluster in clusters:
            await cluster.close()
        for state in states:
            await state.close()


def _all() -> Any:
    from monitor.engine.bus import EventFilter  # noqa: PLC0415

    return EventFilter()


def _hooks(dropped: list[str]) -> ClusterHooks:
    return ClusterHooks(
        adopt=lambda jobs: None,
        drop=dropped.extend,
        adopt_pool=lambda pool, nodes: None,
        adopt_awaited=lambda awaited: None,
        rollout_view=lambda view: None,
        coordinating=lambda: None,
        open_rollouts=list,
        outbox=lambda: None,
        rewind=lambda sink: None,
    )


async def test_a_replica_that_cannot_renew_stops_polling_before_its_ttl_ends(pg_dsn: str) -> None:
    """A replica whose heartbeat fails gives up its jobs (``drop``) once two renewals have failed — before its
    row expires and another replica may claim them; it claims afresh once the database answers."""
    state = await PgState.open(pg_dsn)
    dropped: list[str] = []
    cluster = Cluster(state, "replica-x", _hooks(dropped), heartbeat=0.2, ttl=0.6)
    try:
        await state.add_jobs(["job-1", "job-2"], {}, None)
        await cluster._round()
        assert cluster.owned == 2 and cluster.member
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute("ALTER TABLE members RENAME TO members_gone")  # every round fails from now on
            from monitor.core.errors import StateError  # noqa: PLC0415

            for _ in range(20):
                with pytest.raises(StateError):
                    await cluster._round()
                cluster._check_lapse()
                if not cluster.member:
                    break
                await asyncio.sleep(0.1)
            assert not cluster.member and sorted(dropped) == ["job-1", "job-2"] and cluster.owned == 0
            await conn.execute("ALTER TABLE members_gone RENAME TO members")
        await cluster._round()
        assert cluster.member and cluster.owned == 2, "back: it claims again"
    finally:
        await cluster.close()
        await state.close()


async def test_jobs_removed_through_another_replica_stop_being_polled_by_their_owner(
    sim: Simulator, receiver: Receiver, tmp_path: Path, pg_dsn: str
) -> None:
    configs = [_replica_config(sim, tmp_path, n, receiver.url, pg_dsn) for n in ("a", "b")]
    jobs = [sim.add_job("Custom", duration=30) for _ in range(6)]
    async with running(configs[0]) as first, running(configs[1]) as second:
        await until(lambda: _members(first, 2), 10, "both replicas to be members")
        await first.call("POST", "/v1/jobs", {"job_ids": jobs})
        await until(lambda: _both_own(first, second, total=6), 5, "both to own jobs")
        theirs = [j for j in jobs if second.daemon._scheduler and j in second.daemon._scheduler]
        for job_id in theirs:
            code, _ = await first.call("DELETE", f"/v1/jobs/{job_id}")
            assert code in (200, 204)
        await until(lambda: _owns_all(second, 0), 3, "the owner to stop polling what was removed")
        assert second.daemon._scheduler is not None
        assert not any(j in second.daemon._scheduler for j in theirs)


async def test_a_pool_followed_by_a_replica_that_dies_is_followed_to_its_end_by_another(
    sim_factory: SimFactory, receiver: Receiver, tmp_path: Path, pg_dsn: str
) -> None:
    """The pool, its nodes' jobs and the nodes awaited Active belong to the replica that followed them; when it
    dies (no clean stop: its membership expires) another replica claims all three and finishes the rollout,
    every node confirmed."""
    sim, _ = await sim_factory(time_scale=0.2)
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, node_duration=3.0)
    sim.scale_nodepool(cluster, pool, 6)
    state = {"backend": "postgres", "dsn": "${CCE_MONITOR_DSN}", "replica_ttl": 1.5}
    configs = [_replica_config(sim, tmp_path, n, receiver.url, pg_dsn, state=state) for n in ("a", "b")]
    doomed = Daemon(configs[0], env={})
    task = asyncio.create_task(doomed.run(asyncio.Event()))
    await asyncio.wait_for(doomed.started.wait(), 15)
    async with running(configs[1]) as survivor:
        await until(lambda: _members(survivor, 2), 10, "both replicas to be members")
        assert doomed.endpoint is not None
        dying = Running(doomed, asyncio.Event(), task, survivor.session, doomed.endpoint)
        code, _ = await dying.call("POST", "/v1/nodepools", {"cluster_id": cluster, "nodepool_id": pool})
        assert code == 202  # followed by the replica that was asked
        await until(lambda: _pool_jobs(survivor, pool, 2), 20, "some of the pool's node jobs found")
        assert doomed._scheduler is not None and doomed._scheduler.fleet.pool(cluster, pool) is not None
        task.cancel()  # gone mid-rollout, without handing anything back
        await asyncio.gather(task, return_exceptions=True)
        await until(lambda: _rollout_ended(survivor, pool), 40, "the survivor to finish the rollout")
        _, body = await survivor.call("GET", f"/v1/rollouts/{pool}")
        assert body["rollout"]["counts"] == {"Active": 6}, body
        _, listed = await survivor.call("GET", "/v1/nodepools")
        assert [row["outcome"] for row in listed["nodepools"]] == ["Success"]
    active = {r.json["node_id"] for r in receiver.delivered if r.json["type"] == "node.active"}
    assert active == {t.node_id for t in sim.node_truth(cluster) if t.phase == "Active"}


async def _pool_jobs(api: Running, rollout: str, n: int) -> bool:
    _, body = await api.call("GET", f"/v1/jobs?rollout={rollout}")
    return len(body["jobs"]) >= n


async def _rollout_ended(api: Running, rollout: str) -> bool:
    code, body = await api.call("GET", f"/v1/rollouts/{rollout}")
    return code == 200 and bool(body["rollout"]["ended"])


async def test_a_replica_that_disagrees_with_the_database_about_what_it_owns_reconciles(pg_dsn: str) -> None:
    """If this replica's view and the database part (a claim or a write raced a lapse), the next round stops
    polling what the database does not give it at its epoch, and hands back what it does not poll."""
    state = await PgState.open(pg_dsn)
    dropped: list[str] = []
    cluster = Cluster(state, "replica-r", _hooks(dropped), heartbeat=0.2, ttl=0.6)
    try:
        await state.add_jobs(["job-1", "job-2", "job-3"], {}, None)
        await cluster._round()
        assert sorted(state.epochs) == ["job-1", "job-2", "job-3"]
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute("UPDATE jobs SET epoch = epoch + 1 WHERE job_id = 'job-1'")  # claimed meanwhile
        del state.epochs["job-2"]  # forgotten here, still ours in the database
        await cluster._round()
        assert dropped == ["job-1"], "not polled at a stale epoch"
        assert state.epochs.get("job-3") == 1
        assert set(state.epochs) <= {"job-1", "job-2", "job-3"} and "job-2" in state.epochs, "claimed anew"
        assert state.epochs["job-2"] == 2 and state.epochs.get("job-1") == 3, "each at a new epoch"
    finally:
        await cluster.close()
        await state.close()


async def test_dead_letters_replayed_through_any_replica_are_sent_by_the_one_delivering_the_sink(
    sim: Simulator, tmp_path: Path, pg_dsn: str
) -> None:
    """Replay is an API write like any other: whichever replica takes it, the replica holding the sink's lease
    reads its outbox again and sends the replayed events, with their ids."""
    async with Receiver(Reply(422, "schema mismatch")) as recv:
        configs = [_replica_config(sim, tmp_path, n, recv.url, pg_dsn) for n in ("a", "b")]
        async with running(configs[0]) as first, running(configs[1]) as second:
            await until(lambda: _members(first, 2), 10, "both replicas to be members")
            # Created now and lasting long enough to be seen Running and then Success: two events at least (one
            # made before the replicas started could be over by its first read, a single event).
            job = sim.add_job("Custom", duration=2.0)
            await first.call("POST", "/v1/jobs", {"job_ids": [job]})
            await until(lambda: all_finished(first, [job]), 15, "the job to finish")

            async def rejected() -> set[str]:
                _, body = await second.call("GET", "/v1/deliveries")
                return {r["event"]["id"] for r in body["deliveries"] if r["sink"].startswith("webhook")}

            async def some_rejected() -> bool:
                return len(await rejected()) >= 2

            await until(some_rejected, 10, "the job's events to be rejected")
            ids = await rejected()
            holder = next(d for d in (first, second) if any(x.delivering for x in d.daemon._deliverers))
            other = second if holder is first else first
            recv.reply = UP
            code, body = await other.call("POST", "/v1/deliveries/replay", {"sink": f"webhook:{recv.url}"})
            assert code == 200, body

            async def resent() -> bool:
                return ids <= {r.webhook_id for r in recv.delivered}

            await until(resent, 10, "the replayed events, sent by the replica holding the lease")


async def test_a_replica_that_has_left_stays_gone_while_it_drains(pg_dsn: str) -> None:
    """After leave() (a clean stop) the replica makes no more rounds: its membership row stays deleted while it
    drains its sinks, so the others count it out at once instead of after its TTL."""
    state = await PgState.open(pg_dsn)
    cluster = Cluster(state, "replica-l", _hooks([]), heartbeat=0.1, ttl=0.3)
    task = asyncio.create_task(cluster.run())
    try:
        await state.add_jobs(["job-1"], {}, None)
        await until(lambda: _async(cluster.owned == 1), 5, "the job to be claimed")
        await cluster.leave()
        await asyncio.sleep(0.5)  # five heartbeats
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            cur = await conn.execute("SELECT count(*) FROM members")
            assert (await cur.fetchone()) == (0,)
            cur = await conn.execute("SELECT owner FROM jobs")
            assert (await cur.fetchone()) == (None,)
        assert task.done() and cluster.owned == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await state.close()


async def _async(value: bool) -> bool:
    return value


async def test_a_row_that_commits_after_later_rows_were_read_is_still_delivered(pg_dsn: str) -> None:
    """Outbox seqs are drawn before commit: with writers at once (replicas, pool connections) a row can commit
    after the deliverer read past it. Its sweep (rows since the older mark, every 5 s) sends it all the same."""
    from monitor.daemon.delivery import Deliverer  # noqa: PLC0415
    from monitor.engine.bus import EventFilter  # noqa: PLC0415
    from monitor.sinks import create_sink  # noqa: PLC0415

    state = await PgState.open(pg_dsn)
    async with Receiver() as recv:
        sink = create_sink(f"webhook:{recv.url}")
        state.route(sink.name, EventFilter())
        deliverer = Deliverer(sink, state, holder="replica-d", concurrency=4)
        task = asyncio.create_task(deliverer.run())
        late, early = make_event(id="1" * 32, job_id="job-1"), make_event(id="2" * 32, job_id="job-2")
        try:
            async with await psycopg.AsyncConnection.connect(pg_dsn) as slow, slow.transaction():
                await slow.execute(  # draws its seq first, commits last
                    "INSERT INTO outbox (sink, event_id, event) VALUES (%s, %s, %s)",
                    (sink.name, late.id, late.to_json()),
                )
                await state.record("job-2", None, [early])
                deliverer.notify()
                await until(lambda: _async(len(recv.delivered) == 1), 5, "the later row delivered")
            deliverer.notify()  # (a replica's NOTIFY would say as much; the read still starts past it)
            await until(lambda: _async(len(recv.delivered) == 2), 12, "the late row delivered by the sweep")
            assert [r.webhook_id for r in recv.delivered] == [early.id, late.id]
            assert await state.outbox_depth() == {}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await sink.aclose()
            await state.close()
