"""The daemon on PostgreSQL (``state.backend: postgres``): a real server on 127.0.0.1 (``pg_dsn``), the simulator
and a webhook receiver. What the engine-neutral store tests (test_store.py) do not cover: the daemon end to end
and across a restart, the schema's migrations, and the DSN's password kept out of every message."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from monitor.config import parse_config
from monitor.core.errors import ConfigError, StateError
from monitor.daemon.pgschema import SCHEMA_VERSION
from monitor.daemon.pgstore import PgState, describe_dsn
from monitor.sim import Simulator
from monitor.testing import PostgresServer, Receiver
from tests.unit.daemon.test_daemon import Running, all_finished, file_events, make_config, running, until

pytestmark = pytest.mark.usefixtures("postgres")


def password_of(dsn: str) -> str:
    password = str(conninfo_to_dict(dsn)["password"])
    assert len(password) >= 12
    return password


@pytest.fixture
async def receiver() -> Receiver:
    async with Receiver() as recv:
        yield recv  # type: ignore[misc]


async def test_the_daemon_keeps_its_state_in_postgres_across_a_restart(
    sim: Simulator, receiver: Receiver, tmp_path: Path, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = make_config(sim, tmp_path, receiver.url, postgres=pg_dsn)
    first = sim.add_job("Custom", duration=0.3)
    later = sim.add_job("Custom", duration=3.0)
    async with running(config) as api:
        assert (await api.call("POST", "/v1/jobs", {"job_ids": [first, later]}))[0] == 202
        await until(lambda: all_finished(api, [first]), 10, "the first job to finish")
    assert not (tmp_path / "state.db").exists(), "nothing kept in SQLite"
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute("SELECT job_id, outcome FROM jobs ORDER BY job_id")
        stored = dict(await cur.fetchall())
    assert stored == {first: "Success", later: None}

    async with running(config) as api:  # a new daemon on the same database: the unfinished job goes on
        await until(lambda: all_finished(api, [first, later]), 15, "the resumed job to finish")
        history = await api.history(later)
    assert history[-1]["phase"] == "Success"
    ids = [e["id"] for e in file_events(tmp_path)]
    assert len(ids) == len(set(ids)) and history[-1]["id"] in ids
    assert {r.webhook_id for r in receiver.delivered} == set(ids)
    password = password_of(pg_dsn)
    assert all(password not in record.getMessage() for record in caplog.records)
    assert any(describe_dsn(pg_dsn) in record.getMessage() for record in caplog.records), "where is said"


async def test_migrations_apply_once_even_when_replicas_start_together(pg_dsn: str) -> None:
    states = await asyncio.gather(*(PgState.open(pg_dsn) for _ in range(4)))
    try:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            cur = await conn.execute("SELECT version FROM schema_migrations ORDER BY version")
            assert [v for (v,) in await cur.fetchall()] == list(range(1, SCHEMA_VERSION + 1))
        await states[0].add_jobs(["j"], {}, None)
        assert [j.job_id for j in await states[3].jobs()] == ["j"], "one database, seen by all"
    finally:
        await asyncio.gather(*(s.close() for s in states))


async def test_a_database_from_a_newer_cce_monitor_is_refused(pg_dsn: str) -> None:
    (await PgState.open(pg_dsn)).closed  # noqa: B018 (create the schema)
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(ConfigError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        await PgState.open(pg_dsn)


async def test_a_wrong_password_or_no_server_is_one_line_without_the_password(
    postgres: PostgresServer, pg_dsn: str
) -> None:
    wrong = pg_dsn.replace(postgres.password, "not-the-password-at-all")
    with pytest.raises(ConfigError) as refused:
        await PgState.open(wrong, wait=3)
    message = str(refused.value)
    assert message.startswith(f"state.dsn: cannot use PostgreSQL at {describe_dsn(pg_dsn)}:"), message
    assert "\n" not in message and "not-the-password-at-all" not in message and postgres.password not in message
    closed_port = f"postgresql://cce:{postgres.password}@127.0.0.1:9/nothing"
    with pytest.raises(ConfigError) as unreachable:
        await PgState.open(closed_port, wait=2)
    assert "127.0.0.1:9" in str(unreachable.value) and postgres.password not in str(unreachable.value)
    with pytest.raises(ConfigError, match="not a PostgreSQL connection string"):
        await PgState.open("host=127.0.0.1 this is = not valid")


async def test_a_failure_after_start_is_a_state_error_without_the_password(
    postgres: PostgresServer, pg_dsn: str
) -> None:
    state = await PgState.open(pg_dsn)
    try:
        assert postgres.password not in repr(state) and postgres.password not in state.where
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute("DROP TABLE jobs")
        with pytest.raises(StateError) as failed:
            await state.add_jobs(["j"], {}, None)
        assert "jobs" in str(failed.value) and postgres.password not in str(failed.value)
    finally:
        await state.close()


def test_the_config_takes_the_dsn_only_from_the_environment_and_never_shows_it(pg_dsn: str) -> None:
    base = {"endpoint": "https://cce.example.com", "project_id": "0" * 32, "auth": {"token": "${TOK}"}}
    env = {"TOK": "a-token", "DSN": pg_dsn}

    def parse(state: dict[str, str]) -> object:
        return parse_config(yaml.safe_dump({**base, "state": state}), env=env)

    with pytest.raises(ConfigError, match=r"state.dsn: secrets must be given as \$\{ENV_VAR\}"):
        parse({"backend": "postgres", "dsn": pg_dsn})
    with pytest.raises(ConfigError, match=r"state\.dsn is required with backend: postgres"):
        parse({"backend": "postgres"})
    with pytest.raises(ConfigError, match=r"state\.dsn is for backend: postgres"):
        parse({"dsn": "${DSN}"})
    config = parse({"backend": "postgres", "dsn": "${DSN}"})
    assert password_of(pg_dsn) not in repr(config) and password_of(pg_dsn) not in str(config)


def test_a_file_sink_on_postgres_must_be_a_path_every_replica_shares() -> None:
    """Replicas take turns delivering a sink: a file of each one's own would hold part of the events."""
    base = {"endpoint": "https://cce.example.com", "project_id": "0" * 32, "auth": {"token": "${TOK}"}}
    env = {"TOK": "a-token", "DSN": "postgresql://cce@db.example.com/cce"}
    state = {"backend": "postgres", "dsn": "${DSN}"}
    file = {"type": "file", "path": "/shared/events.jsonl"}
    with pytest.raises(ConfigError, match=r"sinks\.0: a file sink with state\.backend: postgres .* shared: true"):
        parse_config(yaml.safe_dump({**base, "state": state, "sinks": [file]}), env=env)
    parse_config(yaml.safe_dump({**base, "state": state, "sinks": [{**file, "shared": True}]}), env=env)
    parse_config(yaml.safe_dump({**base, "sinks": [file]}), env=env)  # SQLite: one daemon, its own file


def test_check_config_reaches_postgres_and_says_why_not_in_one_line(
    sim: Simulator, tmp_path: Path, postgres: PostgresServer, pg_dsn: str
) -> None:
    path = tmp_path / "config.yaml"
    assert sim.endpoint is not None
    raw = {
        "endpoint": sim.endpoint,
        "project_id": sim.config.project_id,
        "auth": {"token": "${TOK}"},
        "state": {"backend": "postgres", "dsn": "${CCE_MONITOR_DSN}"},
    }
    path.write_text(yaml.safe_dump(raw))

    def check(dsn: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "TOK": sim.config.token, "CCE_MONITOR_DSN": dsn}
        return subprocess.run(
            [sys.executable, "-m", "monitor.cli", "check-config", str(path)],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip

    good = check(pg_dsn)
    assert good.returncode == 0, good.stderr
    bad = check(pg_dsn.replace(postgres.password, "wrong-password-value"))
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "wrong-password-value" not in bad.stderr and postgres.password not in bad.stderr + bad.stdout


async def test_postgres_down_while_the_daemon_runs_loses_nothing(
    sim: Simulator, receiver: Receiver, tmp_path: Path, pg_dsn: str
) -> None:
    """The database refuses every connection for a while (its sessions cut, new ones refused) while jobs finish:
    their transitions are held back and detected again, then stored and delivered once, with the same ids."""
    dbname = str(conninfo_to_dict(pg_dsn)["dbname"])
    admin = pg_dsn.rsplit("/", 1)[0] + "/postgres"
    config = make_config(sim, tmp_path, receiver.url, postgres=pg_dsn)
    jobs = [sim.add_job("Custom", duration=d) for d in (2.0, 3.0, 4.0)]

    async def outage(down: bool) -> None:
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
            await conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS {"false" if down else "true"}'.encode())
            if down:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,)
                )

    async with running(config) as api:
        assert (await api.call("POST", "/v1/jobs", {"job_ids": jobs}))[0] == 202
        await until(lambda: _seen_running(api, jobs), 10, "the jobs to be seen running")
        await outage(True)
        await asyncio.sleep(4.5)  # every job finishes meanwhile
        status, body = await api.call("GET", "/v1/jobs")
        assert status == 503 and "unavailable" in body["error"], (status, body)
        assert not [r for r in receiver.delivered if r.json.get("phase") == "Success"], "nothing stored, nothing sent"
        await outage(False)

        async def stored_all() -> bool:
            status, body = await api.call("GET", "/v1/jobs")  # 503 until the pool has connected again
            return status == 200 and all(j["outcome"] == "Success" for j in body["jobs"])

        await until(stored_all, 20, "the held-back transitions to be stored")
        histories = {job: await api.history(job) for job in jobs}

        async def delivered_all() -> bool:
            return {r.webhook_id for r in receiver.delivered} >= {e["id"] for h in histories.values() for e in h}

        await until(delivered_all, 15, "every stored event to reach the webhook")
    for job, history in histories.items():
        assert [e["phase"] for e in history if e["type"] == "job.phase_changed"][-1] == "Success", job
    ids = [r.webhook_id for r in receiver.delivered]
    assert len(ids) == len(set(ids)), "each event delivered once"
    lines = [e["id"] for e in file_events(tmp_path)]
    assert sorted(lines) == sorted({e["id"] for h in histories.values() for e in h})


async def _seen_running(api: Running, jobs: list[str]) -> bool:
    listed = await api.jobs()
    return all(listed[j]["phase"] == "Running" for j in jobs)


async def test_two_daemons_on_one_database_share_the_tenants_rate(
    sim: Simulator, receiver: Receiver, tmp_path: Path, pg_dsn: str
) -> None:
    """The quota is the tenant's: two daemons polling the same jobs through one database send at most ``rate``
    requests in any second at CCE between them — not twice that."""
    rate = 10
    polling = {"rate": rate, "interval": 0.1, "min_interval": 0.05, "max_interval": 0.1, "job_timeout": 60}
    configs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        configs.append(make_config(sim, tmp_path / name, receiver.url, postgres=pg_dsn, polling=polling))
    jobs = [sim.add_job("Custom", duration=60) for _ in range(40)]  # always due: demand far above the rate
    async with running(configs[0]) as first:
        assert (await first.call("POST", "/v1/jobs", {"job_ids": jobs}))[0] == 202
        async with running(configs[1]) as second:  # it takes the unfinished jobs from the database
            await until(lambda: _polled_by_both(first, second), 10, "both daemons to poll")
            before = dict(sim.stats.per_second)
            await asyncio.sleep(4.0)
            after = dict(sim.stats.per_second)
    seconds = sorted(k for k in after if k not in before)[1:-1]  # whole seconds inside the window
    counts = [after[k] for k in seconds]
    assert counts and max(counts) <= rate, counts
    assert sum(counts) >= 0.8 * rate * len(counts), f"the shared rate is used: {counts}"


async def _polled_by_both(first: Running, second: Running) -> bool:
    polled = [d.daemon._scheduler.stats.polls if d.daemon._scheduler else 0 for d in (first, second)]
    return all(p >= 3 for p in polled)


async def test_one_daemon_at_a_time_delivers_a_sink_and_another_takes_over(pg_dsn: str, receiver: Receiver) -> None:
    """Daemons on one database deliver each sink from one outbox: the lease holder sends, the other stands by,
    and takes over when the holder stops (at once: a clean stop gives the lease up) — each event sent once."""
    from monitor.daemon.delivery import Deliverer  # noqa: PLC0415
    from monitor.engine.bus import EventFilter  # noqa: PLC0415
    from monitor.sinks import create_sink  # noqa: PLC0415
    from monitor.testing import make_event  # noqa: PLC0415

    states = [await PgState.open(pg_dsn) for _ in range(2)]
    sinks = [create_sink(f"webhook:{receiver.url}") for _ in range(2)]
    try:
        for state, sink in zip(states, sinks, strict=True):
            state.route(sink.name, EventFilter())
        deliverers = [
            Deliverer(st, state, holder=f"replica-{i}", lease_ttl=0.6, concurrency=4)
            for i, (st, state) in enumerate(zip(sinks, states, strict=True))
        ]
        tasks = [asyncio.create_task(d.run()) for d in deliverers]
        first = [make_event(id=f"{n:032x}", job_id=f"job-{n % 3}", reason=str(n)) for n in range(30)]
        for n, event in enumerate(first):  # recorded by either daemon: one outbox
            await states[n % 2].record(event.job_id or "", None, [event])
            for d in deliverers:
                d.notify()
        async with asyncio.timeout(10):
            while len({r.webhook_id for r in receiver.delivered}) < len(first):
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # a standby that delivered too would have by now
        assert sorted(r.webhook_id for r in receiver.delivered) == sorted(e.id for e in first), "each once"
        holder = next(i for i, d in enumerate(deliverers) if d.delivered)
        assert deliverers[1 - holder].delivered == 0, "the other stood by"
        assert deliverers[holder].delivering and not deliverers[1 - holder].delivering

        tasks[holder].cancel()  # a clean stop of the holder
        await asyncio.gather(tasks[holder], return_exceptions=True)
        later = [make_event(id=f"{n:032x}", job_id="job-late", reason=str(n)) for n in range(100, 110)]
        for event in later:
            await states[holder].record(event.job_id or "", None, [event])
        deliverers[1 - holder].notify()
        async with asyncio.timeout(10):
            while len({r.webhook_id for r in receiver.delivered}) < len(first) + len(later):
                await asyncio.sleep(0.05)
        assert deliverers[1 - holder].delivered == len(later), "the standby took over, from where it was"
        ids = [r.webhook_id for r in receiver.delivered]
        assert len(ids) == len(set(ids))
        tasks[1 - holder].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for sink in sinks:
            await sink.aclose()
        for state in states:
            await state.close()
