"""The config file: the example is valid and complete; each kind of mistake is one clear line naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor import config as c
from monitor.cce.auth import AKSKAuth, PasswordAuth, TokenAuth
from monitor.cce.client import HttpSettings
from monitor.config import Config, load_config, parse_config
from monitor.core.errors import ConfigError
from monitor.core.events import EventType
from monitor.engine.settings import SchedulerSettings
from monitor.sinks import create_sink

EXAMPLE = Path(__file__).parents[2] / "config.example.yaml"
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
    assert cfg.polling == SchedulerSettings(rate=10, interval=10)  # the file's section is the engine's settings
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
        if dataclasses.is_dataclass(model):
            return {f.name for f in dataclasses.fields(model)}
        return set(model.model_fields)  # type: ignore[attr-defined]

    models = (
        c.Config, HttpSettings, SchedulerSettings, c.AuthConfig, c.PasswordConfig, c.LoggingConfig, c.StateConfig,
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
    with pytest.raises(ConfigError, match=r"^config: polling\.min_interval = 1\.0 must be <= interval \(0\.5\)$"):
        parse_config(MINIMAL + "polling: {interval: 0.5}\n", env={})


_SECTIONS = {"polling": SchedulerSettings, "http": HttpSettings}
_NUMERIC = [  # the fields that are numbers, with bounds
    (section, f.name)
    for section, cls in _SECTIONS.items()
    for f in dataclasses.fields(cls)
    if f.name != "ca_bundle" and not isinstance(f.default, bool)
]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(_NUMERIC),
    st.integers(-5, 5000) | st.floats(-5, 5000) | st.sampled_from([float("inf"), float("-inf"), float("nan")]),
)
def test_a_bound_means_the_same_in_the_file_and_in_code(key: tuple[str, str], value: float) -> None:
    """Each settings field has one declaration of its bounds; the config file (pydantic) and direct construction
    (``check_bounds``) must accept and refuse the same values, naming the same key."""
    section, name = key
    cls = _SECTIONS[section]
    try:
        built = cls(**{name: value})
    except ConfigError as exc:
        in_code: str | None = exc.message
    else:
        in_code = None
    try:
        cfg = parse_config(
            MINIMAL + f"{section}: {{{name}: {value!r}}}\n".replace("nan", ".nan").replace("inf", ".inf")
        )
    except ConfigError as exc:
        assert in_code is not None, f"the file refuses {section}.{name} = {value!r}, code accepts it: {exc}"
        named = in_code.split(" = ")[0]  # the field itself, or the other end of a cross-field check
        assert named.startswith(f"{section}.") and f"{named}" in exc.message
        assert exc.message.startswith("config: ") and "\n" not in exc.message
    else:
        assert in_code is None, f"code refuses {section}.{name} = {value!r}, the file accepts it: {in_code}"
        assert getattr(cfg, section) == built


def test_drain_is_not_a_polling_key() -> None:
    # The time polls in flight get at shutdown is half of shutdown_deadline, not a setting of its own.
    with pytest.raises(ConfigError, match=r"^config: polling\.drain: unknown key$"):
        parse_config(MINIMAL + "polling: {drain: 3}\n", env={})


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


PID = "0123456789abcdef0123456789abcdef"


def where_flags(endpoint: str | None = None, project_id: str | None = None, **polling: float) -> list[c.Flag]:
    flags = [c.Flag("endpoint", "--endpoint", endpoint), c.Flag("project_id", "--project-id", project_id)]
    names = {"rate": "--rate", "interval": "--interval", "job_timeout": "--timeout"}
    return flags + [c.Flag(f"polling.{key}", names[key], value) for key, value in polling.items()]


def test_flags_win_over_environment_over_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("endpoint: https://file.example.com\nproject_id: fromfile\niam_endpoint: https://iam.file\n")
    env = {"CCE_ENDPOINT": "https://env.example.com", "HUAWEICLOUD_SDK_PROJECT_ID": "fromsdkenv"}
    cfg = c.complete_config(path, where_flags(), env=env)
    assert (cfg.endpoint, cfg.project_id, cfg.iam_endpoint) == (
        "https://env.example.com",
        "fromsdkenv",
        "https://iam.file",
    )
    cfg = c.complete_config(path, where_flags(project_id="fromflag"), env={**env, "CCE_PROJECT_ID": "fromenv"})
    assert (cfg.endpoint, cfg.project_id) == ("https://env.example.com", "fromflag")
    cfg = c.complete_config(path, where_flags("https://flag.example.com"), env={"CCE_ENDPOINT": ""})
    assert (cfg.endpoint, cfg.project_id) == ("https://flag.example.com", "fromfile")


def test_a_file_with_only_sinks_is_completed(tmp_path: Path) -> None:
    path = tmp_path / "sinks.yaml"
    path.write_text("sinks:\n  - type: log\n")
    cfg = c.complete_config(path, where_flags("https://cce.example.com", PID, rate=5, job_timeout=60), env={})
    assert cfg.client_settings().project_id == PID
    assert [s.spec for s in cfg.sinks] == ["log"]
    sched = cfg.polling
    assert (sched.rate, sched.job_timeout, sched.interval) == (5, 60, 10)


@pytest.mark.parametrize(
    ("polling", "interval", "expected"),
    [
        ("{max_interval: 3}", 1, (1, 1, 3)),  # the case: the file's ceiling, the default floor
        ("{}", 0.5, (0.5, 0.5, 30)),  # below the default floor: the floor follows
        ("{}", 60, (60, 1, 60)),  # above the default ceiling: the ceiling follows
        ("{min_interval: 0.2, max_interval: 5}", 2, (2, 0.2, 5)),
    ],
)
def test_interval_flag_widens_only_the_defaults(
    tmp_path: Path, polling: str, interval: float, expected: tuple[float, float, float]
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"polling: {polling}\n")
    cfg = c.complete_config(path, where_flags("https://cce.example.com", PID, interval=interval), env={})
    sched = cfg.polling
    assert (sched.interval, sched.min_interval, sched.max_interval) == expected


@pytest.mark.parametrize(
    ("text", "flags", "env", "message"),
    [
        (
            "polling: {max_interval: 3}\n",
            where_flags(interval=5),
            {},
            "--interval 5 is above polling.max_interval 3 (from c.yaml)",
        ),
        (
            "polling: {min_interval: 2}\n",
            where_flags(interval=0.5),
            {},
            "--interval 0.5 is below polling.min_interval 2 (from c.yaml)",
        ),
        (None, where_flags(project_id="a/b"), {}, "--project-id 'a/b': invalid project id 'a/b'"),
        (None, where_flags(rate=float("inf")), {}, "--rate inf: Input should be a finite number"),
        (None, where_flags(), {"CCE_PROJECT_ID": "a b"}, "CCE_PROJECT_ID: invalid project id"),
        (None, where_flags("https://user:pw@cce.example.com"), {}, "--endpoint: endpoint must not carry credentials"),
        ("polling: {rate: 0}\n", where_flags(), {}, "c.yaml: polling.rate: Input should be greater than 0"),
        ("polling: {interval: 50}\n", where_flags(), {}, "c.yaml: polling.max_interval = 30.0 must be >= interval"),
        (
            "endpoint: ftp://x\n",
            where_flags(),
            {"CCE_ENDPOINT": ""},
            "c.yaml: endpoint 'ftp://x' must be an http(s) URL",
        ),
        ("auth: {token: '${NOPE}'}\n", where_flags(), {}, "c.yaml: auth.token: environment variable NOPE is not set"),
        (None, [], {"CCE_ENDPOINT": " "}, "endpoint is required: CCE_ENDPOINT, or endpoint: in the config file"),
        (
            "sinks: []\n",
            where_flags(),
            {"CCE_ENDPOINT": "", "CCE_PROJECT_ID": ""},
            "endpoint is required: --endpoint, CCE_ENDPOINT, or endpoint: in the config file (and 1 more problems)",
        ),
    ],
)
def test_problems_name_where_the_value_came_from(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    text: str | None,
    flags: list[c.Flag],
    env: dict[str, str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    if text is not None:
        Path("c.yaml").write_text(text)
    base = {"CCE_ENDPOINT": "https://cce.example.com", "CCE_PROJECT_ID": PID}
    with pytest.raises(ConfigError) as info:
        c.complete_config("c.yaml" if text is not None else None, flags, env={**base, **env})
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value) and "pw" not in str(info.value)
