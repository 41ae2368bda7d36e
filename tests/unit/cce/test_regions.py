"""Regions (endpoints from a region name) and the project id lookup, against the simulator's IAM on 127.0.0.1."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from huaweicloudsdkcce.v3.region.cce_region import CceRegion

from monitor.cce import regions
from monitor.cce.auth import AKSKAuth, PasswordAuth, TokenAuth, iam_base
from monitor.cce.client import CCEClient, ClientSettings
from monitor.core.errors import AuthError, ConfigError
from monitor.core.secret import Secret
from monitor.sim import SimulatorConfig
from tests.conftest import SimFactory

PROJECT = SimulatorConfig().project_id
AK, SK = "SIMAKEXAMPLE0000", "sim-secret-key-0123456789"
STS_TOKEN = "sts-temporary-token-" + "x" * 600


@pytest.mark.parametrize(
    ("region", "cloud", "cce", "iam"),
    [
        ("eu-de", "otc", "https://cce.eu-de.otc.t-systems.com", "https://iam.eu-de.otc.t-systems.com"),
        ("eu-nl", "otc", "https://cce.eu-nl.otc.t-systems.com", "https://iam.eu-nl.otc.t-systems.com"),
        ("eu-ch2", "otc", "https://cce.eu-ch2.sc.otc.t-systems.com", "https://iam-pub.eu-ch2.sc.otc.t-systems.com"),
        (
            "cn-north-4",
            "huawei",
            "https://cce.cn-north-4.myhuaweicloud.com",
            "https://iam.cn-north-4.myhuaweicloud.com",
        ),
        (
            "eu-west-101",
            "huawei",
            "https://cce.eu-west-101.myhuaweicloud.eu",
            "https://iam.eu-west-101.myhuaweicloud.eu",
        ),
        ("eu-west-0", "huawei", "https://cce.eu-west-0.myhuaweicloud.com", "https://iam.eu-west-0.myhuaweicloud.com"),
    ],
)
def test_endpoints_of_a_region(region: str, cloud: str, cce: str, iam: str) -> None:
    assert regions.default_cloud(region) == cloud
    assert regions.endpoints(region, regions.cloud_of(region, None)) == {"endpoint": cce, "iam_endpoint": iam}


def test_every_vendor_cce_region_gets_the_vendor_endpoint() -> None:
    """Our pattern and exceptions reproduce huaweicloudsdkcce's CceRegion list, and we know all its names."""
    for region_id, region in CceRegion.static_fields.items():
        assert regions.cce_endpoint(region_id, "huawei") == region.endpoints[0], region_id
        assert regions.is_known(region_id, "huawei"), region_id


def test_an_explicit_cloud_wins_over_the_guess() -> None:
    assert regions.cce_endpoint("eu-de", "huawei") == "https://cce.eu-de.myhuaweicloud.com"
    assert regions.cloud_of("eu-de", "huawei") == "huawei"
    assert not regions.is_known("eu-de", "huawei")


@pytest.mark.parametrize("bad", ["EU-DE", "eu de", "eu-de.evil.com", "eu-de/x", "", "-eu", "e", "eu-", "x" * 60])
def test_a_region_must_look_like_one(bad: str) -> None:
    with pytest.raises(ConfigError, match="is not a region name") as info:
        regions.validate_region(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://iam.eu-de.otc.t-systems.com/v3",
        "https://iam.eu-de.otc.t-systems.com/v3/",
        "https://iam.eu-de.otc.t-systems.com/",
    ],
)
def test_iam_base_drops_v3(endpoint: str) -> None:
    assert iam_base(endpoint) == "https://iam.eu-de.otc.t-systems.com"


# --- IAM /v3 endpoints (Terraform's auth_url) -------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["/v3", "/v3/", "/"])
async def test_password_auth_accepts_an_auth_url_ending_in_v3(sim_factory: SimFactory, suffix: str) -> None:
    sim, endpoint = await sim_factory()
    job_id = sim.add_job(duration=100)
    auth = PasswordAuth(
        iam_endpoint=endpoint + suffix, username="monitor", password=Secret("sim-password"), domain="sim-domain",
        project_id=PROJECT,
    )  # fmt: skip
    assert auth.iam_endpoint == endpoint
    async with CCEClient(ClientSettings(endpoint=endpoint, project_id=PROJECT, total_timeout=5), auth) as c:
        assert (await c.fetch(job_id)).id == job_id
    assert sim.stats.tokens_issued == 1 and 404 not in sim.stats.by_status


# --- the project id lookup ---------------------------------------------------------------------------------


def password(endpoint: str, **kwargs: Any) -> PasswordAuth:
    values: dict[str, Any] = {
        "iam_endpoint": endpoint, "username": "monitor", "password": Secret("sim-password"), "domain": "sim-domain",
        "project_name": "eu-de", **kwargs,
    }  # fmt: skip
    return PasswordAuth(**values)


async def lookup(auth: Any, iam: str | None, region: str | None = "eu-de") -> str:
    return await regions.lookup_project(auth, iam, region, request_timeout=5)


async def test_lookup_with_a_password_token(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory()
    assert await lookup(password(endpoint), endpoint + "/v3") == PROJECT
    assert sim.project_lookups == 1 and sim.stats.tokens_issued == 1


async def test_lookup_with_a_token(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory()
    assert await lookup(TokenAuth(Secret(sim.config.token)), endpoint) == PROJECT


async def test_lookup_signed_with_aksk_teaches_the_provider(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(ak=AK, sk=SK)
    auth = AKSKAuth(AK, Secret(SK))
    assert await lookup(auth, endpoint) == PROJECT
    assert auth.project_id == PROJECT  # and from now on its requests carry X-Project-Id
    job_id = sim.add_job(duration=100)
    async with CCEClient(ClientSettings(endpoint=endpoint, project_id=PROJECT, total_timeout=5), auth) as c:
        assert (await c.fetch(job_id)).id == job_id


async def test_lookup_and_polls_with_a_temporary_aksk(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(ak=AK, sk=SK, security_token=STS_TOKEN)
    auth = AKSKAuth(AK, Secret(SK), security_token=Secret(STS_TOKEN))
    assert await lookup(auth, endpoint) == PROJECT
    job_id = sim.add_job(duration=100)
    async with CCEClient(ClientSettings(endpoint=endpoint, project_id=PROJECT, total_timeout=5), auth) as c:
        assert (await c.fetch(job_id)).id == job_id


@pytest.mark.parametrize(
    ("token", "message"),
    [(None, "the security token is missing"), ("sts-other", "verify security token fail")],
)
async def test_simulator_verifies_the_security_token(sim_factory: SimFactory, token: str | None, message: str) -> None:
    sim, endpoint = await sim_factory(ak=AK, sk=SK, security_token=STS_TOKEN)
    auth = AKSKAuth(AK, Secret(SK), PROJECT, security_token=None if token is None else Secret(token))
    job_id = sim.add_job(duration=100)
    async with CCEClient(ClientSettings(endpoint=endpoint, project_id=PROJECT, total_timeout=5), auth) as c:
        with pytest.raises(AuthError, match=message):
            await c.fetch(job_id)


async def test_simulator_refuses_a_security_token_for_a_permanent_key(sim_factory: SimFactory) -> None:
    _, endpoint = await sim_factory(ak=AK, sk=SK)
    with pytest.raises(AuthError, match="security token given"):
        await lookup(AKSKAuth(AK, Secret(SK), security_token=Secret(STS_TOKEN)), endpoint)


async def test_lookup_needs_valid_credentials(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory()
    with pytest.raises(AuthError):
        await lookup(TokenAuth(Secret("MIIwrong")), endpoint)
    assert sim.project_lookups == 1


@pytest.mark.parametrize(
    ("extra", "region", "message"),
    [
        ((), "eu-nl", "IAM knows no project named 'eu-nl'"),
        ((("1" * 32, "eu-de"),), "eu-de", "IAM has 2 projects named 'eu-de'"),
    ],
)
async def test_none_or_several_projects_is_one_line(
    sim_factory: SimFactory, extra: tuple[tuple[str, str], ...], region: str, message: str
) -> None:
    sim, endpoint = await sim_factory(extra_projects=extra)
    with pytest.raises(ConfigError) as info:
        await lookup(TokenAuth(Secret(sim.config.token)), endpoint, region)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert sim.config.token not in str(info.value)


async def test_lookup_by_the_credentials_project_name(sim_factory: SimFactory) -> None:
    team = "2" * 32
    sim, endpoint = await sim_factory(extra_projects=((team, "eu-de_team"),))
    # The token is scoped by the simulator's own project name; the lookup asks for the name the credentials give.
    auth = TokenAuth(Secret(sim.config.token))
    assert await lookup(auth, endpoint, "eu-de_team") == team


async def test_lookup_without_name_or_iam_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="project_id is required"):
        await lookup(TokenAuth(Secret("MIIx")), None)


async def test_a_16kb_token_serves_the_lookup_and_the_polls(sim_factory: SimFactory) -> None:
    sim, endpoint = await sim_factory(token_length=16_000)
    auth = password(endpoint)
    assert await lookup(auth, endpoint) == PROJECT
    job_id = sim.add_job(duration=100)
    async with CCEClient(ClientSettings(endpoint=endpoint, project_id=PROJECT, total_timeout=5), auth) as c:
        assert (await c.fetch(job_id)).id == job_id
        assert (await c.fetch(job_id)).id == job_id
    assert [len(t) for t in sim.issued_tokens() if t != sim.config.token] == [16_000]
    assert auth.fetches == 1


def test_unknown_region_gets_the_pattern_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    raw: dict[object, object] = {"region": "xx-mars-1"}
    with caplog.at_level(logging.WARNING, logger="monitor.cce.regions"):
        regions.fill_from_region(raw, "--region 'xx-mars-1'")
    assert raw == {
        "region": "xx-mars-1",
        "endpoint": "https://cce.xx-mars-1.myhuaweicloud.com",
        "iam_endpoint": "https://iam.xx-mars-1.myhuaweicloud.com",
        "project_id": None,
    }
    assert "--region 'xx-mars-1': xx-mars-1 is not a huawei region we know" in caplog.text
