"""``cce-monitor`` as a user runs it: a real process against the simulator on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from monitor.sim import Simulator
from tests.conftest import BotReceiver, SimFactory

EXE = [sys.executable, "-m", "monitor.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CCE_", "HUAWEICLOUD_"))}
    env.update(extra)
    return env


async def run_cli(
    *args: str, env: dict[str, str], stdin: bytes | None = None, limit: float = 40
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *EXE,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), limit)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def sim_env(sim: Simulator) -> dict[str, str]:
    assert sim.endpoint is not None
    return clean_env(CCE_ENDPOINT=sim.endpoint, CCE_PROJECT_ID=sim.config.project_id, CCE_AUTH_TOKEN=sim.config.token)


FAST = ["--interval", "0.2", "--rate", "100"]


async def test_watch_all_success_exits_0_with_log_lines_and_file(sim: Simulator, tmp_path: Path) -> None:
    jobs = [sim.add_job(duration=0.6) for _ in range(3)]
    out_file = tmp_path / "events.jsonl"
    code, out, err = await run_cli("watch", *FAST, "--sink", f"file:{out_file}", *jobs, env=sim_env(sim))
    assert code == 0, err
    lines = out.splitlines()
    assert any("job.phase_changed" in line and "-> Success" in line for line in lines)
    events = [orjson.loads(line) for line in out_file.read_bytes().splitlines()]
    finals = {e["job_id"] for e in events if e["type"] == "job.phase_changed" and e["phase"] == "Success"}
    assert finals == set(jobs)
    assert all(e["schema"] == "cce-monitor/v1" for e in events)
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600


async def test_watch_exits_1_when_a_job_fails(sim: Simulator) -> None:
    ok = sim.add_job(duration=0.4)
    bad = sim.add_job(duration=0.4, fail=True)
    code, out, err = await run_cli("watch", *FAST, ok, bad, env=sim_env(sim))
    assert code == 1, err
    assert "-> Failed" in out


async def test_watch_exits_1_when_a_job_is_not_found(sim: Simulator, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "endpoint: http://unused\nproject_id: x\n"
        "polling:\n  not_found_grace: 0.2\n  interval: 0.1\n  min_interval: 0.05\n"
    )
    code, out, _ = await run_cli(
        "watch", "--config", str(config), "--project-id", sim.config.project_id, "--endpoint", str(sim.endpoint),
        "deadbeef-0000", env=sim_env(sim),
    )  # fmt: skip
    assert code == 1
    assert "job.not_found" in out


async def test_watch_a_path_with_no_api_exits_2_with_one_line_naming_the_endpoint(
    sim: Simulator, tmp_path: Path
) -> None:
    """The simulator's gateway answers 404 APIGW.0101 to a path it has no API for (here a mistyped prefix):
    that is the configuration, not a missing job — one request, exit 2 and one line naming the endpoint, not a
    minute of 404s before job.not_found (whose grace is 60 s)."""
    config = tmp_path / "c.yaml"
    config.write_text("api_prefix: /api/v2\n")  # a file's default log level (info): still the one line
    job = sim.add_job(duration=60)
    code, out, err = await run_cli("watch", *FAST, "--no-live", "--config", str(config), job, env=sim_env(sim))
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("cce-monitor: error: endpoint "), err
    assert f"endpoint {sim.endpoint} has no such API" in err and "APIGW.0101" in err, err
    assert sim.stats.by_status == {404: 1}, "polling stopped at the first answer"


async def test_ids_from_stdin(sim: Simulator) -> None:
    jobs = [sim.add_job(duration=0.3) for _ in range(2)]
    stdin = f"# rollout 42\n{jobs[0]}\n\n{jobs[1]}  # second\n".encode()
    code, out, err = await run_cli("watch", *FAST, "-", env=sim_env(sim), stdin=stdin)
    assert code == 0, err
    assert all(job in out for job in jobs)


@pytest.mark.parametrize(
    ("args", "env_extra", "message"),
    [
        (["watch", "../../etc/passwd"], {}, "invalid job id"),
        (["watch", "a%2Fb"], {}, "invalid job id"),
        (["watch", "--sink", "nosuch", "job-1"], {}, "unknown sink 'nosuch'"),
        (["watch", "--sink", "file:/nonexistent/dir/x.jsonl", "job-1"], {}, "does not exist"),
        (["watch", "--label", "novalue", "job-1"], {}, "KEY=VALUE"),
        (["watch", "job-1"], {"CCE_ENDPOINT": ""}, "--endpoint"),
        (["watch", "job-1"], {"CCE_AUTH_TOKEN": ""}, "no credentials"),
        (["watch", "job-1"], {"HUAWEICLOUD_SDK_AK": "ak-only", "CCE_AUTH_TOKEN": ""}, "AK/SK"),
        (["get", "a b"], {}, "invalid job id"),
    ],
)
async def test_usage_errors_exit_2_with_one_line(
    sim: Simulator, args: list[str], env_extra: dict[str, str], message: str
) -> None:
    env = {**sim_env(sim), **env_extra}
    env = {k: v for k, v in env.items() if v}
    code, out, err = await run_cli(*args, env=env)
    assert code == 2, (out, err)
    assert err.count("\n") == 1, err
    assert message in err


async def test_config_errors_exit_2_naming_the_key(sim: Simulator, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("endpoint: http://127.0.0.1:1\nproject_id: abc\npolling:\n  rate: -1\n")
    code, _, err = await run_cli("watch", "--config", str(config), "job-1", env=sim_env(sim))
    assert code == 2
    assert "polling.rate" in err and err.count("\n") == 1


async def test_sigint_flushes_sinks_and_exits_130(sim: Simulator, tmp_path: Path) -> None:
    jobs = [sim.add_job(duration=60) for _ in range(3)]
    out_file = tmp_path / "events.jsonl"
    proc = await asyncio.create_subprocess_exec(
        *EXE, "watch", *FAST, "--sink", f"file:{out_file}", *jobs,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=sim_env(sim),
    )  # fmt: skip
    for _ in range(100):  # every job read once (requests are paced, so not all at the same moment)
        await asyncio.sleep(0.1)
        if sim.stats.job_requests >= 3:
            break
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 130, err.decode()
    # What was read before the signal (a poll in flight finishes) is in the file: the sinks were flushed.
    events = [orjson.loads(line) for line in out_file.read_bytes().splitlines()]
    assert {e["job_id"] for e in events if e["type"] == "job.phase_changed"} == set(jobs)


async def test_sigterm_also_exits_130(sim: Simulator) -> None:
    job = sim.add_job(duration=60)
    proc = await asyncio.create_subprocess_exec(
        *EXE, "watch", *FAST, job, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=sim_env(sim)
    )
    assert proc.stdout is not None
    await asyncio.wait_for(proc.stdout.readline(), 20)  # the first observation was logged
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 130


async def test_get_prints_the_job(sim: Simulator) -> None:
    job = sim.add_job(duration=30)
    code, out, err = await run_cli("get", job, env=sim_env(sim))
    assert code == 0, err
    data = orjson.loads(out)
    assert data["id"] == job and data["type"] == "CreateNode"
    assert data["phase"] in ("Initializing", "Running")


async def test_get_api_error_exits_1_with_one_line(sim: Simulator) -> None:
    env = {**sim_env(sim), "CCE_AUTH_TOKEN": "wrong"}
    code, _, err = await run_cli("get", "some-job", env=env)
    assert code == 1
    assert "HTTP 401" in err and err.count("\n") == 1


async def test_watch_with_aksk_from_the_environment(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(ak="AKEXAMPLE", sk="sk-example-secret")
    job = sim.add_job(duration=0.3)
    env = clean_env(
        CCE_ENDPOINT=endpoint,
        HUAWEICLOUD_SDK_PROJECT_ID=sim.config.project_id,
        HUAWEICLOUD_SDK_AK="AKEXAMPLE",
        HUAWEICLOUD_SDK_SK="sk-example-secret",
    )
    code, out, err = await run_cli("watch", *FAST, job, env=env)
    assert code == 0, err
    assert "sk-example-secret" not in out + err


async def test_simulate_prints_handshake_first(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *EXE, "simulate", "--jobs", "3", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    info = orjson.loads(line)
    assert info["endpoint"].startswith("http://127.0.0.1:")
    assert len(info["job_ids"]) == 3 and info["token"] and info["project_id"]
    env = clean_env(CCE_ENDPOINT=info["endpoint"], CCE_PROJECT_ID=info["project_id"], CCE_AUTH_TOKEN=info["token"])
    code, _, err = await run_cli("get", info["job_ids"][0], env=env)
    assert code == 0, err
    proc.send_signal(signal.SIGTERM)
    await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, "a server stopped by a signal ends normally"


@pytest.mark.slow
async def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out_file = tmp_path / "demo.jsonl"
    code, out, err = await run_cli(
        "demo", "--nodes", "6", "--scaleup", "4", "--no-live", "--out", str(out_file), env=clean_env(), limit=58
    )
    assert code == 0, err
    events = [orjson.loads(line) for line in out_file.read_bytes().splitlines()]
    finals = {e["job_id"] for e in events if e["type"] == "job.phase_changed" and e["phase"] in ("Success", "Failed")}
    assert f"demo: {len(finals)} jobs" in err + out  # the ScaleupCluster and each pool node's own job
    assert [e["phase"] for e in events if e["type"] == "nodepool.settled"] == ["SoldOut"], "short of its target"
    [finished] = [e for e in events if e["type"] == "rollout.finished"]
    summary = finished["summary"]
    assert summary["unit"] == "nodes" and summary["counts"].get("Active", 0) >= 5
    assert summary["total"] == 4 + 5, "the scale-up's nodes and the pool's that fit"
    active = {e["node_id"] for e in events if e["type"] == "node.active"}
    assert len(active) == summary["counts"]["Active"]


async def test_sigint_while_waiting_for_the_chat_budget_says_what_was_not_sent(
    sim: Simulator, bot: BotReceiver, tmp_path: Path
) -> None:
    """A signal during the final wait: exit 130 and one stderr line per sink with what it could not send."""
    jobs = [sim.add_job(duration=0.5, fail=i == 0) for i in range(3)]
    config = tmp_path / "config.yaml"
    config.write_text(
        f"endpoint: {sim.endpoint}\nproject_id: {sim.config.project_id}\nshutdown_deadline: 2\n"
        "sinks:\n"
        f"  - {{type: wecom, url: '{bot.url}', rate_per_minute: 1, coalesce: 0, final_wait: 120}}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        *EXE, "watch", "--config", str(config), *FAST, "--no-live", *jobs,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=sim_env(sim),
    )  # fmt: skip
    assert proc.stderr is not None
    waited = ""
    while "waiting" not in waited:  # the budget (one a minute) went to the first digest: it says it waits
        waited = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
        assert waited, "watch ended without waiting for the budget"
    assert "for the rate budget to send the final message" in waited
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 130, err.decode()
    [line] = [ln for ln in err.decode().splitlines() if "not sent to" in ln]
    assert line.startswith("cce-monitor: not sent to wecom:") and "1 rollout.finished" in line
    assert "botKEY123456" not in err.decode()
    assert len(bot.bodies) == 1


async def test_a_sinks_only_file_is_completed_by_flags(sim: Simulator, tmp_path: Path) -> None:
    job = sim.add_job(duration=0.3)
    out_file = tmp_path / "events.jsonl"
    config = tmp_path / "sinks.yaml"
    config.write_text(f"sinks:\n  - type: file\n    path: {out_file}\n")
    code, _, err = await run_cli(
        "watch", "--config", str(config), "--endpoint", str(sim.endpoint), "--project-id", sim.config.project_id,
        *FAST, job, env=clean_env(CCE_AUTH_TOKEN=sim.config.token),
    )  # fmt: skip
    assert code == 0, err
    assert job in out_file.read_text()


async def test_interval_flag_within_the_files_max_interval(sim: Simulator, tmp_path: Path) -> None:
    job = sim.add_job(duration=0.3)
    config = tmp_path / "c.yaml"
    config.write_text("polling: {max_interval: 3}\n")
    code, out, err = await run_cli(
        "watch", "--config", str(config), "--interval", "1", "--rate", "100", job, env=sim_env(sim)
    )
    assert code == 0, err
    assert "-> Success" in out


_UNREACHABLE = {"CCE_ENDPOINT": "http://127.0.0.1:1", "CCE_PROJECT_ID": "p1", "CCE_AUTH_TOKEN": "tok-never-shown"}


@pytest.mark.parametrize(
    ("file_text", "args", "env_extra", "message"),
    [
        ("polling: {max_interval: 3}\n", ["--interval", "5"], {}, "--interval 5 is above polling.max_interval 3 (from"),
        ("polling: {min_interval: 2}\n", ["--interval", "1"], {}, "--interval 1 is below polling.min_interval 2 (from"),
        (None, ["--project-id", "a/b"], {}, "--project-id 'a/b': invalid project id"),
        (None, [], {"CCE_PROJECT_ID": "a/b"}, "CCE_PROJECT_ID: invalid project id"),
        (None, ["--endpoint", "ftp://x"], {}, "--endpoint: endpoint 'ftp://x' must be an http(s) URL"),
        ("sinks: []\npolling: {rate: -1}\n", [], {}, "c.yaml: polling.rate: Input should be greater than 0"),
        (None, [], {"CCE_ENDPOINT": ""}, "endpoint is required: --endpoint, CCE_ENDPOINT, or endpoint: in the config"),
        (
            "sinks: []\n",
            [],
            {"CCE_PROJECT_ID": ""},
            "project_id is required: --project-id, CCE_PROJECT_ID, HUAWEICLOUD_SDK_PROJECT_ID, or project_id:",
        ),
    ],
)
async def test_settings_problems_name_where_the_value_came_from(
    tmp_path: Path, file_text: str | None, args: list[str], env_extra: dict[str, str], message: str
) -> None:
    config_args: list[str] = []
    if file_text is not None:
        config = tmp_path / "c.yaml"
        config.write_text(file_text)
        config_args = ["--config", str(config)]
    env = {k: v for k, v in clean_env(**{**_UNREACHABLE, **env_extra}).items() if v}
    code, out, err = await run_cli("watch", *config_args, *args, "--timeout", "1", "job-1", env=env, limit=20)
    assert code == 2, (out, err)
    assert err.count("\n") == 1, err
    assert message in err
    if "(from" in message:  # a contradiction names the file as well as the flag
        assert f"(from {tmp_path / 'c.yaml'})" in err
    assert "tok-never-shown" not in err


async def test_status_shows_failure_reasons_readably() -> None:
    """``status`` against an API answering like the daemon's: JSON error objects in reasons are made readable."""
    raw = 'Create node vm failed: {"error":{"code":"Ecs.0319","message":"The ECS quota is insufficient."}}'
    summary = {
        "rollout": "pool-a", "total": 2, "finished": 2, "counts": {"Success": 1, "Failed": 1}, "failed_count": 1,
        "failed": [{"job_id": "job-1", "resource_name": "node-1", "reason": raw, "outcome": "Failed"}],
    }  # fmt: skip

    async def rollout(request: web.Request) -> web.Response:
        return web.json_response({"rollout": summary})

    app = web.Application()
    app.router.add_get("/v1/rollouts/pool-a", rollout)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        code, out, err = await run_cli("status", "pool-a", "--api", str(server.make_url("")), env=clean_env())
    finally:
        await server.close()
    assert code == 0, err
    assert "  Failed: node-1 (job-1): Create node vm failed: Ecs.0319: The ECS quota is insufficient.\n" in out, out


async def test_watch_a_node_pool_to_its_target(sim_factory: SimFactory, tmp_path: Path) -> None:
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, name="workers", node_duration=1.0)
    sim.scale_nodepool(cluster, pool, 3)
    out_file = tmp_path / "events.jsonl"
    args = ["watch", *FAST, "--cluster", cluster, "--nodepool", pool, "--target", "3", "--sink", f"file:{out_file}"]
    code, _, err = await run_cli(*args, env=sim_env(sim))
    assert code == 0, err
    events = [orjson.loads(line) for line in out_file.read_bytes().splitlines()]
    types = [e["type"] for e in events]
    assert types.count("node.active") == 3 and types.count("nodepool.settled") == 1
    [finished] = [e for e in events if e["type"] == "rollout.finished"]
    assert finished["rollout"] == pool and finished["summary"]["counts"] == {"Active": 3}


async def test_watch_a_sold_out_pool_exits_1(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    pool = sim.add_nodepool(cluster, capacity=1, node_duration=1.0)
    sim.scale_nodepool(cluster, pool, 3)
    code, out, err = await run_cli("watch", *FAST, "--cluster", cluster, "--nodepool", pool, env=sim_env(sim))
    assert code == 1, err
    assert "SoldOut" in out


async def test_watch_holds_a_pool_to_the_target_given(sim_factory: SimFactory, tmp_path: Path) -> None:
    """``--target 4`` on a pool the API scaled to 3: settled at 3 is not done; the pool times out (exit 1)."""
    sim, _ = await sim_factory(time_scale=0.05)
    cluster = sim.add_cluster()
    # Nodes slower than the CLI's start: a node already Active at the first read was there before the scale.
    pool = sim.add_nodepool(cluster, node_duration=2.0)
    sim.scale_nodepool(cluster, pool, 3)
    out_file = tmp_path / "events.jsonl"
    args = ["--cluster", cluster, "--nodepool", pool, "--target", "4", "--timeout", "5", "--sink", f"file:{out_file}"]
    code, _, err = await run_cli("watch", *FAST, *args, env=sim_env(sim))
    assert code == 1, err
    events = [orjson.loads(line) for line in out_file.read_bytes().splitlines()]
    assert [e["type"] for e in events].count("node.active") == 3
    [settled] = [e for e in events if e["type"] == "nodepool.settled"]
    assert settled["phase"] == "timed_out", settled


async def test_watch_without_the_node_check_ends_with_the_jobs(sim_factory: SimFactory, tmp_path: Path) -> None:
    """``--no-node-check``: a node that goes Abnormal after its job succeeded is not looked at (exit 0); with the
    check, the same pool exits 1."""
    codes = {}
    for flag in ("--no-node-check", "--node-check"):
        sim, _ = await sim_factory(time_scale=0.05, seed=3)
        cluster = sim.add_cluster()
        pool = sim.add_nodepool(cluster, abnormal=1, node_duration=2.0)  # slower than the CLI's start
        sim.scale_nodepool(cluster, pool, 2)
        out_file = tmp_path / f"events{flag}.jsonl"
        args = ["--cluster", cluster, "--nodepool", pool, flag, "--sink", f"file:{out_file}"]
        codes[flag], _, _ = await run_cli("watch", *FAST, *args, env=sim_env(sim))
        types = [orjson.loads(line)["type"] for line in out_file.read_bytes().splitlines()]
        if flag == "--no-node-check":
            assert not {"node.active", "node.failed"} & set(types), types
    assert codes == {"--no-node-check": 0, "--node-check": 1}, codes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodepool", "p1"], "--nodepool needs --cluster"),
        (["--cluster", "c1"], "--cluster is for --nodepool"),
        (["--cluster", "c1", "--nodepool", "a", "--nodepool", "b", "--target", "3"], "--target needs exactly one"),
        (["--cluster", "c/1", "--nodepool", "p1"], "invalid cluster id"),
        ([], "no job ids given"),
    ],
)
async def test_node_pool_usage_errors_exit_2(sim: Simulator, args: list[str], message: str) -> None:
    code, out, err = await run_cli("watch", *args, env=sim_env(sim))
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodepool", "p1"], "--cluster and --nodepool go together"),
        (["--cluster", "c1", "--nodepool", "p1", "job-1"], "not both"),
        (["--target", "3", "job-1"], "--target needs --nodepool"),
        (["--cluster", "c1", "--nodepool", "p/1"], "invalid node pool id"),
    ],
)
async def test_add_node_pool_usage_errors_exit_2(args: list[str], message: str) -> None:
    code, out, err = await run_cli("add", "--api", "http://127.0.0.1:9", *args, env=clean_env())
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and message in err, err
