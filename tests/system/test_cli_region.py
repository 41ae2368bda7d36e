"""``get`` and ``watch`` with ``--region`` and no project id: the lookup from IAM before polling, end to end
(the real CLI in a subprocess, against the simulator on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.conftest import SimFactory, write_clouds
from tests.system.test_cli import FAST, clean_env, run_cli

AK, SK, STS = "SIMAKEXAMPLE0000", "sim-secret-key-0123456789", "sts-token-" + "y" * 900


def no_os(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in clean_env().items() if not k.startswith("OS_")}
    return {**env, **extra}


async def test_get_with_a_region_and_a_password_looks_the_project_up(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(token_length=16_000)
    job = sim.add_job(duration=30)
    env = no_os(CCE_IAM_USER="monitor", CCE_IAM_PASSWORD="sim-password", CCE_IAM_DOMAIN="sim-domain")
    args = ["get", job, "--region", "eu-de", "--endpoint", endpoint, "--iam-endpoint", endpoint + "/v3"]
    code, out, err = await run_cli(*args, env=env)
    assert code == 0, err
    assert orjson.loads(out)["id"] == job
    assert sim.project_lookups == 1 and sim.stats.tokens_issued == 1
    assert [len(t) for t in sim.issued_tokens() if t != sim.config.token] == [16_000]


async def test_watch_with_a_region_and_a_temporary_aksk(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(ak=AK, sk=SK, security_token=STS)
    job = sim.add_job(duration=0.5)
    env = no_os(
        HUAWEICLOUD_SDK_AK=AK, HUAWEICLOUD_SDK_SK=SK, HUAWEICLOUD_SDK_SECURITY_TOKEN=STS,
        HUAWEICLOUD_SDK_REGION="eu-de", CCE_ENDPOINT=endpoint, CCE_IAM_ENDPOINT=endpoint,
    )  # fmt: skip
    code, _, err = await run_cli("watch", *FAST, "--no-live", job, env=env)
    assert code == 0, err
    assert sim.project_lookups == 1
    assert STS not in err and SK not in err


async def test_get_with_os_variables_scopes_by_the_project_name(sim_factory: SimFactory, tmp_path: Path) -> None:
    """openstacksdk's variables with ``OS_USER_DOMAIN_NAME`` and ``OS_PROJECT_NAME`` (an OTC sub-project, not the
    region's name): IAM's token is scoped by that name and the project id looked up by it."""
    sim, endpoint = await sim_factory(project_name="eu-de_team")
    job = sim.add_job(duration=30)
    env = no_os(
        OS_AUTH_URL=endpoint + "/v3", OS_USERNAME="monitor", OS_PASSWORD="sim-password",
        OS_USER_DOMAIN_NAME="sim-domain", OS_PROJECT_NAME="eu-de_team", OS_REGION_NAME="eu-de", HOME=str(tmp_path),
    )  # fmt: skip
    code, out, err = await run_cli("get", job, "--endpoint", endpoint, env=env)
    assert code == 0, err
    assert orjson.loads(out)["id"] == job
    assert sim.stats.tokens_issued == 1 and sim.project_lookups == 1


async def test_watch_with_a_password_from_clouds_yaml(sim_factory: SimFactory, tmp_path: Path) -> None:
    """``OS_CLOUD`` names a cloud of the ``clouds.yaml`` that ``OS_CLIENT_CONFIG_FILE`` points at: its password
    reaches IAM, its ``auth_url`` is the IAM endpoint, and ``watch`` follows the job to its end."""
    sim, endpoint = await sim_factory(project_name="eu-de_team")
    job = sim.add_job(duration=0.5)
    auth = (
        f"      auth_url: {endpoint}/v3\n      username: monitor\n      password: sim-password\n"
        "      user_domain_name: sim-domain\n      project_name: eu-de_team\n"
    )
    clouds = write_clouds(tmp_path / "openstack", auth)
    env = no_os(OS_CLOUD="otc", OS_CLIENT_CONFIG_FILE=str(clouds), CCE_ENDPOINT=endpoint, HOME=str(tmp_path))
    code, out, err = await run_cli("watch", *FAST, "--no-live", job, env=env)
    assert code == 0, err
    assert job in out and "-> Success" in out
    assert sim.stats.tokens_issued == 1 and sim.project_lookups == 1
    assert "sim-password" not in out + err


async def test_no_project_for_the_region_is_one_line_exit_2(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory()
    env = no_os(CCE_AUTH_TOKEN=sim.config.token, CCE_ENDPOINT=endpoint, CCE_IAM_ENDPOINT=endpoint)
    for command in (["get", "some-job"], ["watch", *FAST, "--no-live", "some-job"]):
        code, _, err = await run_cli(*command, "--region", "eu-nl", env=env)
        assert code == 2, err
        assert err == "cce-monitor: error: IAM knows no project named 'eu-nl': give project_id (--project-id) instead\n"


async def test_a_bad_region_or_cloud_is_a_usage_error(sim_factory: SimFactory) -> None:
    sim, _ = await sim_factory()
    env = no_os(CCE_AUTH_TOKEN=sim.config.token)
    code, _, err = await run_cli("get", "j", "--region", "eu de", env=env)
    assert code == 2 and "--region 'eu de': region 'eu de' is not a region name" in err
    code, _, err = await run_cli("get", "j", "--region", "eu-de", "--cloud", "aws", env=env)
    assert code == 2 and "--cloud" in err
