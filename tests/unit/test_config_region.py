"""Regions in the config (``region``, ``cloud``, their flags and variables), the project id lookup before polling,
and credentials from ``OS_CLOUD`` / ``OS_*`` after ours — against the simulator on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor import config as c
from monitor.cce.auth import AKSKAuth, PasswordAuth, TokenAuth
from monitor.cce.client import CCEClient
from monitor.core.errors import ConfigError
from monitor.core.secret import Secret
from monitor.sim import SimulatorConfig
from tests.conftest import SimFactory, write_clouds

PID = "0123456789abcdef0123456789abcdef"
SIM_PROJECT = SimulatorConfig().project_id
DE = ("https://cce.eu-de.otc.t-systems.com", "https://iam.eu-de.otc.t-systems.com")
DUBLIN = ("https://cce.eu-west-101.myhuaweicloud.eu", "https://iam.eu-west-101.myhuaweicloud.eu")
CH2 = ("https://cce.eu-ch2.sc.otc.t-systems.com", "https://iam-pub.eu-ch2.sc.otc.t-systems.com")
BEIJING4 = ("https://cce.cn-north-4.myhuaweicloud.com", "https://iam.cn-north-4.myhuaweicloud.com")
DE_ON_HUAWEI = ("https://cce.eu-de.myhuaweicloud.com", "https://iam.eu-de.myhuaweicloud.com")


def flags(**values: str | None) -> list[c.Flag]:
    names = {"endpoint": "--endpoint", "project_id": "--project-id", "iam_endpoint": "--iam-endpoint"}
    names |= {"region": "--region", "cloud": "--cloud"}
    return [c.Flag(key, name, values.get(key)) for key, name in names.items()]


def complete(text: str | None, tmp_path: Path, env: dict[str, str], **values: str | None) -> c.Config:
    path = None
    if text is not None:
        path = tmp_path / "c.yaml"
        path.write_text(text)
    return c.complete_config(path, flags(**values), env=env)


@pytest.mark.parametrize(
    ("text", "env", "values", "expected"),
    [
        # the region alone: both endpoints, the cloud guessed
        (None, {}, {"region": "eu-de"}, DE),
        (None, {"HUAWEICLOUD_SDK_REGION": "eu-west-101"}, {}, DUBLIN),
        (None, {"OS_REGION_NAME": "eu-ch2"}, {}, CH2),
        ("region: cn-north-4\n", {}, {}, BEIJING4),
        # an explicit cloud
        (None, {}, {"region": "eu-de", "cloud": "huawei"}, DE_ON_HUAWEI),
        # explicit endpoints win, from anywhere
        # ... and a CCE endpoint of one's own says nothing about which IAM goes with it: none is guessed
        ("region: eu-de\nendpoint: https://cce.file\n", {}, {}, ("https://cce.file", None)),
        ("region: eu-de\n", {"CCE_IAM_ENDPOINT": "https://iam.env/v3"}, {}, ("https://cce.eu-de.otc.t-systems.com", "https://iam.env/v3")),
        (None, {"CCE_ENDPOINT": "https://cce.env"}, {"region": "eu-nl"}, ("https://cce.env", None)),
        # flag > env > file for the region itself
        ("region: eu-nl\n", {"HUAWEICLOUD_SDK_REGION": "eu-de"}, {}, DE),
        ("region: eu-nl\n", {"HUAWEICLOUD_SDK_REGION": "eu-de"}, {"region": "eu-ch2"}, CH2),
        ("region: eu-nl\n", {"OS_REGION_NAME": "eu-de", "HUAWEICLOUD_SDK_REGION": "cn-north-4"}, {}, BEIJING4),
    ],
)  # fmt: skip
def test_region_sets_what_is_not_given(
    tmp_path: Path, text: str | None, env: dict[str, str], values: dict[str, str], expected: tuple[str, str]
) -> None:
    cfg = complete(text, tmp_path, env, **values)
    assert (cfg.endpoint, cfg.iam_endpoint) == expected
    assert cfg.project_id is None  # to be looked up


def test_a_project_id_given_is_kept(tmp_path: Path) -> None:
    cfg = complete(None, tmp_path, {"CCE_PROJECT_ID": PID}, region="eu-de")
    assert cfg.project_id == PID and cfg.client_settings().project_id == PID


@pytest.mark.parametrize(
    ("text", "env", "values", "message"),
    [
        (None, {}, {"region": "EU DE"}, "--region 'EU DE': region 'EU DE' is not a region name"),
        (None, {"HUAWEICLOUD_SDK_REGION": "eu-de.evil.com"}, {}, "HUAWEICLOUD_SDK_REGION: region 'eu-de.evil.com'"),
        ("region: 'eu/de'\n", {}, {}, "c.yaml: region 'eu/de' is not a region name"),
        ("region: eu-de\ncloud: azure\n", {}, {}, "c.yaml: cloud: Input should be 'huawei' or 'otc'"),
        (None, {}, {}, "endpoint is required: --endpoint, CCE_ENDPOINT, or endpoint: in the config file"),
        ("endpoint: https://cce.file\n", {}, {}, "project_id is required: --project-id, CCE_PROJECT_ID"),
        ("endpoint: https://x\nproject_id: null\n", {}, {}, "c.yaml: project_id: give a project id, or a region"),
    ],
)
def test_region_problems_name_where_the_value_came_from(
    tmp_path: Path, text: str | None, env: dict[str, str], values: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        complete(text, tmp_path, env, **values)
    assert str(info.value).replace(f"{tmp_path}/", "").startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_the_daemon_path_derives_endpoints_but_needs_the_project_id() -> None:
    cfg = c.parse_config("region: eu-nl\n", env={})
    assert cfg.endpoint == "https://cce.eu-nl.otc.t-systems.com"
    with pytest.raises(ConfigError, match="project_id is not set: only watch and get look it up"):
        cfg.client_settings()
    assert c.parse_config(f"region: eu-nl\nproject_id: {PID}\n", env={}).client_settings().project_id == PID


def test_security_token_in_the_file(tmp_path: Path) -> None:
    text = "auth: {ak: AK1, sk: '${SK}', security_token: '${STS}'}\n"
    cfg = complete(text, tmp_path, {"SK": "s", "STS": "sts-value"}, region="eu-de")
    auth = cfg.make_auth()
    assert isinstance(auth, AKSKAuth) and auth.temporary and "sts-value" not in repr(auth)
    with pytest.raises(ConfigError, match="literally"):
        complete("auth: {ak: A, sk: '${SK}', security_token: plain}\n", tmp_path, {"SK": "s"}, region="eu-de")
    with pytest.raises(ConfigError, match="security_token goes with ak and sk"):
        complete("auth: {token: '${SK}', security_token: '${SK}'}\n", tmp_path, {"SK": "s"}, region="eu-de")


def test_security_token_from_the_environment(tmp_path: Path) -> None:
    env = {"HUAWEICLOUD_SDK_AK": "AK1", "HUAWEICLOUD_SDK_SK": "s", "HUAWEICLOUD_SDK_SECURITY_TOKEN": "sts-v"}
    auth = complete(None, tmp_path, env, region="eu-de").credentials(env)
    assert isinstance(auth, AKSKAuth) and auth.temporary


# --- the lookup before polling, end to end --------------------------------------------------------------------


async def test_watch_settings_look_the_project_up_once(sim_factory: SimFactory, tmp_path: Path) -> None:
    """A region and a password, no project id: IAM's token (scoped by the region's name), one lookup, polls."""
    sim, endpoint = await sim_factory(token_length=16_000)
    job_id = sim.add_job(duration=100)
    env = {"CCE_IAM_USER": "monitor", "CCE_IAM_PASSWORD": "sim-password", "CCE_IAM_DOMAIN": "sim-domain"}
    cfg = complete(None, tmp_path, env, region="eu-de", endpoint=endpoint, iam_endpoint=endpoint + "/v3")
    auth = cfg.credentials(env)
    assert isinstance(auth, PasswordAuth) and auth.project_name == "eu-de"
    done = await c.complete_project(cfg, auth)
    assert done.project_id == SIM_PROJECT and sim.project_lookups == 1
    assert await c.complete_project(done, auth) is done  # known now: no second lookup
    async with CCEClient(done.client_settings(), auth) as client:
        assert (await client.fetch(job_id)).id == job_id
    assert sim.stats.tokens_issued == 1 and sim.project_lookups == 1


async def test_a_failed_lookup_is_one_line(sim_factory: SimFactory, tmp_path: Path) -> None:
    sim, endpoint = await sim_factory()
    cfg = complete(None, tmp_path, {}, region="eu-nl", endpoint=endpoint, iam_endpoint=endpoint)
    with pytest.raises(ConfigError) as info:
        await c.complete_project(cfg, TokenAuth(Secret(sim.config.token)))
    assert str(info.value) == "IAM knows no project named 'eu-nl': give project_id (--project-id) instead"


# --- OS_CLOUD / OS_* after ours ------------------------------------------------------------------------------


CLOUD_PASSWORD = (
    "      auth_url: https://iam.eu-de.otc.t-systems.com/v3\n      username: bot\n      password: cloud-pw-SECRET\n"
    "      user_domain_name: OTC0001\n      project_name: eu-de_team\n"
)


def test_clouds_yaml_fills_what_ours_left_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_clouds(tmp_path, CLOUD_PASSWORD)
    env = {"OS_CLOUD": "otc"}
    cfg = complete(None, tmp_path, env)
    assert cfg.region == "eu-de" and cfg.endpoint == "https://cce.eu-de.otc.t-systems.com"
    assert cfg.iam_endpoint == "https://iam.eu-de.otc.t-systems.com/v3"  # its auth_url, over the region's
    auth = cfg.credentials(env)
    assert isinstance(auth, PasswordAuth)
    assert (auth.iam_endpoint, auth.username, auth.domain, auth.project_name) == (
        "https://iam.eu-de.otc.t-systems.com", "bot", "OTC0001", "eu-de_team",
    )  # fmt: skip
    assert "cloud-pw-SECRET" not in repr(auth)
    # ours win: the flag's region, the variable's IAM endpoint, our credentials
    ours = {**env, "CCE_IAM_ENDPOINT": "https://iam.mine", "CCE_AUTH_TOKEN": "tok"}
    cfg = complete(None, tmp_path, ours, region="eu-nl")
    assert (cfg.region, cfg.iam_endpoint) == ("eu-nl", "https://iam.mine")
    assert isinstance(cfg.credentials(ours), TokenAuth)


def test_clouds_yaml_aksk_and_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work.parent)
    write_clouds(home / ".config" / "openstack", "      ak: AKHOME\n      sk: sk-home-SECRET\n")
    env = {"OS_CLOUD": "otc", "CCE_PROJECT_ID": PID}
    auth = complete(None, tmp_path, env).credentials(env)
    assert isinstance(auth, AKSKAuth) and auth.ak == "AKHOME" and auth.project_id == PID
    write_clouds(work, "      ak: AKHERE\n      sk: sk-here-SECRET\n")
    monkeypatch.chdir(work)  # ./clouds.yaml comes first
    auth = complete(None, tmp_path, env).credentials(env)
    assert isinstance(auth, AKSKAuth) and auth.ak == "AKHERE"


def test_os_variables(tmp_path: Path) -> None:
    env = {
        "OS_AUTH_URL": "https://iam.eu-nl.otc.t-systems.com/v3", "OS_USERNAME": "bot", "OS_PASSWORD": "os-pw",
        "OS_DOMAIN_NAME": "OTC0002", "OS_PROJECT_ID": PID, "OS_REGION_NAME": "eu-nl",
    }  # fmt: skip
    cfg = complete(None, tmp_path, env)
    assert (cfg.region, cfg.project_id, cfg.endpoint) == ("eu-nl", PID, "https://cce.eu-nl.otc.t-systems.com")
    auth = cfg.credentials(env)
    assert isinstance(auth, PasswordAuth) and (auth.domain, auth.project_id) == ("OTC0002", PID)


@pytest.mark.parametrize(
    ("clouds", "env", "message"),
    [
        (None, {"OS_CLOUD": "otc"}, "OS_CLOUD 'otc': no clouds.yaml found"),
        ("      username: bot\n", {"OS_CLOUD": "other"}, "no cloud named 'other' in it"),
        (
            "      username: bot\n      password: p-SECRET\n",
            {"OS_CLOUD": "otc"},
            "password auth needs user_domain_name",
        ),
        ("      ak: A\n", {"OS_CLOUD": "otc"}, "ak and sk go together"),
        (None, {"CCE_ENDPOINT": "https://x", "CCE_PROJECT_ID": PID}, "or OS_CLOUD (clouds.yaml) or OS_* variables"),
    ],
)
def test_cloud_problems_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clouds: str | None, env: dict[str, str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))
    if clouds is not None:
        write_clouds(tmp_path, clouds)
    with pytest.raises(ConfigError) as info:
        complete(None, tmp_path, {"CCE_ENDPOINT": "https://x", **env}).credentials(env)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert "SECRET" not in str(info.value)
