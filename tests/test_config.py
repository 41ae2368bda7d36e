"""The config file: the example is valid and complete; each kind of mistake is one clear line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor import config as c
from monitor.auth import AKSKAuth, PasswordAuth, TokenAuth
from monitor.config import Config, load_config, parse_config
from monitor.errors import ConfigError
from monitor.events import EventType
from monitor.sinks import create_sink

EXAMPLE = Path(__file__).parent.parent / "config.example.yaml"
ENV = {
    "CCE_AUTH_TOKEN": "tok-123",
    "WEBHOOK_SECRET": "whsec_aGVsbG8=",
    "CCE_IAM_PASSWORD": "pw",
    "CCE_MONITOR_API_TOKEN": "api-token",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/xyz",
    "TEAMS_WEBHOOK_URL": "https://prod-00.westeurope.logic.azure.com/workflows/abc/triggers/manual/paths/invoke",
    "FEISHU_WEBHOOK_URL": "https://open.feishu.cn/open-apis/bot/v2/hook/abc",
    "FEISHU_SECRET": "feishu-secret",
    "DINGTALK_WEBHOOK_URL": "https://oapi.dingtalk.com/robot/send?access_token=abc",
    "DINGTALK_SECRET": "SECabc",
    "WECOM_WEBHOOK_URL": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc",
}
MINIMAL = "endpoint: https://cce.example.com\nproject_id: 0123456789abcdef0123456789abcdef\n"


def test_example_is_valid_and_builds_everything(tmp_path: Path) -> None:
    text = EXAMPLE.read_text().replace("/var/lib/cce-monitor", str(tmp_path))
    cfg = parse_config(text, env=ENV)
    assert cfg.polling.rate == 10 and cfg.polling.interval == 10
    assert isinstance(cfg.make_auth(), TokenAuth)
    assert cfg.client_settings().endpoint == "https://cce.example.com".replace("example", "eu-de.otc.t-systems")
    assert cfg.scheduler_settings().drain == cfg.shutdown_deadline / 2
    specs = [s.spec for s in cfg.sinks]
    assert specs[:3] == ["log", f"file:{tmp_path}/events.jsonl", "webhook:https://hooks.example.com/cce"]
    assert [s.type for s in cfg.sinks[3:]] == ["slack", "teams", "feishu", "dingtalk", "wecom"]
    for entry in cfg.sinks:  # every option in the example is accepted by its sink
        create_sink(entry.spec, entry.options)
    assert EventType.JOB_TIMED_OUT in cfg.sinks[2].filter.types


def test_example_documents_every_key() -> None:
    """Every field of the model appears in the example (commented-out alternatives count)."""
    text = EXAMPLE.read_text()

    def keys(model: type) -> set[str]:
        return set(model.model_fields)  # type: ignore[attr-defined]

    models = (
        c.Config, c.HttpConfig, c.PollingConfig, c.AuthConfig, c.PasswordConfig, c.LoggingConfig, c.StateConfig,
        c.ApiConfig, c.FilterConfig, c.RolloutsConfig, c.DeliveryConfig,
    )  # fmt: skip
    for model in models:
        for key in keys(model):
            assert f"{key}:" in text, f"{model.__name__}.{key} is not documented in config.example.yaml"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "pollling: {}\n", "pollling: unknown key"),
        (MINIMAL + "polling:\n  rate: -1\n", "polling.rate: Input should be greater than 0"),
        (MINIMAL + "polling:\n  rate: fast\n", "polling.rate: Input should be a valid number"),
        ("endpoint: https://x\n", "project_id: required key is missing"),
        (
            MINIMAL + "auth:\n  token: ${NOT_SET_ANYWHERE}\n",
            "auth.token: environment variable NOT_SET_ANYWHERE is not set",
        ),
        (MINIMAL + "auth:\n  token: literal-token\n", "auth.token: secrets must be given as ${ENV_VAR}"),
        (MINIMAL + "sinks:\n  - type: webhook\n    secret: abc\n", "sinks.0.secret: secrets must be given"),
        (MINIMAL + "auth:\n  ak: ${CCE_AUTH_TOKEN}\n", "ak and sk go together"),
        (MINIMAL + "auth: {}\n", "give exactly one of token"),
        ("endpoint: [unclosed\n", "not valid YAML at line"),
        (MINIMAL + "api: {listen: '0.0.0.0:8787'}\n", "api: Value error, a token is required to listen"),
        (MINIMAL + "api: {listen: 'nowhere'}\n", "api: Value error, listen must be HOST:PORT"),
        ("- a\n- b\n", "top level must be a mapping"),
        (MINIMAL.replace("0123456789abcdef0123456789abcdef", "../x"), "project_id: Value error, invalid project id"),
        (MINIMAL + "sinks:\n  - type: log\n    filter: {types: [job.exploded]}\n", "sinks.0.filter.types.0"),
    ],
)
def test_each_mistake_is_one_line_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env=ENV, source="c.yaml")
    text_of_error = str(info.value)
    assert "\n" not in text_of_error
    assert text_of_error.startswith("c.yaml: ")
    assert message in text_of_error


def test_literal_secret_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + "auth:\n  token: super-secret-literal\n", env={})
    assert "super-secret-literal" not in str(info.value)


def test_auth_kinds() -> None:
    env = {"AK": "AKX", "SK": "sk-x", "PW": "pw"}
    aksk = parse_config(MINIMAL + "auth: {ak: '${AK}', sk: '${SK}'}\n", env=env).make_auth()
    assert isinstance(aksk, AKSKAuth) and aksk.ak == "AKX"
    with pytest.raises(ConfigError, match="iam_endpoint"):
        parse_config(MINIMAL + "auth: {password: {user: u, password: '${PW}', domain: d}}\n", env=env).make_auth()
    pw = parse_config(
        MINIMAL + "iam_endpoint: https://iam.example.com\nauth: {password: {user: u, password: '${PW}', domain: d}}\n",
        env=env,
    ).make_auth()
    assert isinstance(pw, PasswordAuth) and pw.username == "u"
    assert parse_config(MINIMAL, env={}).make_auth() is None


def test_cross_field_polling_error_is_named() -> None:
    cfg = parse_config(MINIMAL + "polling: {interval: 0.5}\n", env={})
    with pytest.raises(ConfigError, match=r"polling\.min_interval"):
        cfg.scheduler_settings()


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


_yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["endpoint", "project_id", "polling", "sinks", "auth", "http", "x"]), _yaml_values)
)
def test_arbitrary_documents_give_config_or_config_error(doc: dict[str, object]) -> None:
    try:
        result = parse_config(yaml.safe_dump(doc), env={})
    except ConfigError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(result, Config)
