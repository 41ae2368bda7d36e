"""The YAML configuration file, validated once at the edge into typed settings.

Everything inside cce-monitor takes the typed objects built here (:class:`ClientSettings`,
:class:`SchedulerSettings`, sink specs), never raw dicts. ``config.example.yaml`` documents every key.

Secrets (token, SK, password, webhook secrets) may only be given as ``${ENV_VAR}`` references, which are
expanded at load time; a literal secret in the file is refused, so config files can be committed and shared.
Any problem — a YAML syntax error, an unknown key, a wrong type, a missing value, an unset variable — raises one
:class:`ConfigError` whose message names the key path, e.g. ``polling.rate: Input should be greater than 0``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from monitor.auth import AKSKAuth, Auth, PasswordAuth, TokenAuth
from monitor.client import ClientSettings
from monitor.errors import ConfigError, InvalidIdError
from monitor.events import EventType
from monitor.model import validate_id, validate_label
from monitor.scheduler import SchedulerSettings
from monitor.secret import Secret

__all__ = ["Config", "SinkConfig", "load_config", "parse_config"]

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_SECRET_KEYS = {"token", "sk", "password", "secret"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PasswordConfig(_Model):
    """IAM user name, password and domain; the token is scoped to ``project_id``."""

    user: str
    password: SecretStr
    domain: str


class AuthConfig(_Model):
    """Exactly one of: ``token``; ``ak`` + ``sk``; ``password``."""

    token: SecretStr | None = None
    ak: str | None = None
    sk: SecretStr | None = None
    password: PasswordConfig | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> AuthConfig:
        kinds = [self.token is not None, self.ak is not None or self.sk is not None, self.password is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of token, ak+sk, password")
        if (self.ak is None) != (self.sk is None):
            raise ValueError("ak and sk go together")
        return self


class HttpConfig(_Model):
    connect_timeout: Annotated[float, Field(gt=0)] = 10.0
    total_timeout: Annotated[float, Field(gt=0)] = 30.0
    max_connections: Annotated[int, Field(ge=1)] = 64
    ca_bundle: str | None = None


class PollingConfig(_Model):
    rate: Annotated[float, Field(gt=0)] = 10.0
    burst: Annotated[int, Field(ge=1)] | None = None
    max_in_flight: Annotated[int, Field(ge=1)] = 16
    interval: Annotated[float, Field(gt=0)] = 10.0
    min_interval: Annotated[float, Field(gt=0)] = 1.0
    max_interval: Annotated[float, Field(gt=0)] = 30.0
    backoff: Annotated[float, Field(ge=1)] = 1.5
    jitter: Annotated[float, Field(ge=0, lt=1)] = 0.1
    initial_delay: Annotated[float, Field(ge=0)] = 0.0
    job_timeout: Annotated[float, Field(gt=0)] = 3600.0
    stall_after: Annotated[float, Field(gt=0)] = 1800.0
    not_found_grace: Annotated[float, Field(ge=0)] = 60.0
    not_found_count: Annotated[int, Field(ge=1)] = 3
    failure_threshold: Annotated[int, Field(ge=1)] = 3
    error_backoff: Annotated[float, Field(gt=0)] = 2.0
    error_backoff_max: Annotated[float, Field(gt=0)] = 300.0
    auth_backoff: Annotated[float, Field(gt=0)] = 30.0
    auth_backoff_max: Annotated[float, Field(gt=0)] = 600.0


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        try:
            validate_label(key, value)
        except InvalidIdError as exc:
            raise ValueError(exc.message) from None
    return labels


Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]


class FilterConfig(_Model):
    types: list[EventType] = []
    phases: list[str] = []
    labels: Labels = {}


class SinkConfig(BaseModel):
    """One sink: ``type`` names it, ``target`` (or ``path`` / ``url``) is where, the rest are its options.

    Options are checked by the sink's own factory when the sink is built.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str
    target: str | None = None
    path: str | None = None
    url: str | None = None
    secret: SecretStr | None = None
    filter: FilterConfig = FilterConfig()

    def __repr_args__(self) -> Any:
        # Sink URLs and options may hold credentials (chat bot tokens, header values): show only the kind.
        return [("type", self.type), ("filter", self.filter)]

    @property
    def spec(self) -> str:
        target = self.target or self.path or self.url
        return f"{self.type}:{target}" if target else self.type

    @property
    def options(self) -> dict[str, object]:
        """The sink's own options (everything but type, where and filter), secrets revealed for the factory."""
        options: dict[str, object] = dict(self.model_extra or {})
        if self.secret is not None:
            options["secret"] = self.secret.get_secret_value()
        return options


class StateConfig(_Model):
    """The SQLite state database of ``cce-monitor run``."""

    path: str = "cce-monitor-state.db"
    retention: Annotated[float, Field(gt=0)] = 7 * 24 * 3600.0


class ApiConfig(_Model):
    """The daemon's HTTP control API."""

    listen: str = "127.0.0.1:8787"
    token: SecretStr | None = None
    max_body: Annotated[int, Field(ge=1024)] = 1 << 20

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @model_validator(mode="after")
    def _check(self) -> ApiConfig:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("listen must be HOST:PORT, e.g. 127.0.0.1:8787")
        if self.token is None and self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("a token is required to listen on anything but loopback")
        return self


class DeliveryConfig(_Model):
    """How a durable sink's outbox is retried after the sink itself gave up (receiver down)."""

    retry_initial: Annotated[float, Field(gt=0)] = 2.0
    retry_max: Annotated[float, Field(gt=0)] = 120.0


class RolloutsConfig(_Model):
    """Rollout digests (``rollout.progress`` at most once per ``interval`` per rollout)."""

    interval: Annotated[float, Field(gt=0)] = 30.0


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Config(_Model):
    """The whole file."""

    endpoint: str
    project_id: str
    iam_endpoint: str | None = None
    auth: AuthConfig | None = None
    http: HttpConfig = HttpConfig()
    polling: PollingConfig = PollingConfig()
    sinks: list[SinkConfig] = []
    labels: Labels = {}
    shutdown_deadline: Annotated[float, Field(gt=0)] = 10.0
    logging: LoggingConfig = LoggingConfig()
    state: StateConfig = StateConfig()
    rollouts: RolloutsConfig = RolloutsConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    api: ApiConfig = ApiConfig()

    @field_validator("project_id")
    @classmethod
    def _project_id(cls, value: str) -> str:
        try:
            return validate_id(value, "project id")
        except InvalidIdError as exc:
            raise ValueError(exc.message) from None

    def client_settings(self) -> ClientSettings:
        h = self.http
        return ClientSettings(
            endpoint=self.endpoint,
            project_id=self.project_id,
            connect_timeout=h.connect_timeout,
            total_timeout=h.total_timeout,
            max_connections=h.max_connections,
            ca_bundle=h.ca_bundle,
        )

    def scheduler_settings(self, **overrides: Any) -> SchedulerSettings:
        values = self.polling.model_dump()
        values.update({k: v for k, v in overrides.items() if v is not None})
        # Half the shutdown deadline for polls in flight; the rest for draining sinks and outboxes.
        values["drain"] = self.shutdown_deadline / 2
        return SchedulerSettings(**values)

    def make_auth(self) -> Auth | None:
        """The provider the file configures, or ``None`` to take credentials from the environment."""
        a = self.auth
        if a is None:
            return None
        if a.token is not None:
            return TokenAuth(Secret(a.token.get_secret_value()))
        if a.ak is not None and a.sk is not None:
            return AKSKAuth(a.ak, Secret(a.sk.get_secret_value()), self.project_id)
        assert a.password is not None
        if not self.iam_endpoint:
            raise ConfigError("iam_endpoint: required for password auth")
        return PasswordAuth(
            iam_endpoint=self.iam_endpoint,
            username=a.password.user,
            password=Secret(a.password.password.get_secret_value()),
            domain=a.password.domain,
            project_id=self.project_id,
        )


def _key_text(key: object) -> str:
    """A key as it may appear in a one-line message: non-printable characters escaped."""
    text = str(key)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, minus what has no place in a config file.

    Anchors and aliases are refused: they allow "billion laughs" documents (a 1 KB file expanding to 10^9
    nodes) and self-referencing structures, and a config file does not need them. Duplicate keys are refused:
    PyYAML would silently keep the last one, so a second ``endpoint:`` further down would win unnoticed.
    """

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1 if event.start_mark is not None else "?"
            raise ConfigError(f"line {line}: YAML aliases (*name) are not supported")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {_key_text(key)!r} appears twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expand(node: object, path: str, env: Mapping[str, str]) -> object:
    """Expand ``${VAR}`` references; refuse literal secrets. ``path`` names the key for messages."""
    if isinstance(node, dict):
        return {k: _expand(v, f"{path}.{_key_text(k)}" if path else _key_text(k), env) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, f"{path}.{i}", env) for i, v in enumerate(node)]
    if isinstance(node, str):
        match = _ENV_REF.match(node.strip())
        key = path.rsplit(".", 1)[-1]
        if match:
            name = match.group(1)
            if name not in env:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return env[name]
        if key in _SECRET_KEYS and node:
            raise ConfigError(f"{path}: secrets must be given as ${{ENV_VAR}} references, not literally")
    return node


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(_key_text(p) for p in first["loc"]) or "(top level)"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required key is missing"
    more = len(error.errors()) - 1
    return f"{where}: {message}" + (f" (and {more} more problems)" if more else "")


def parse_config(text: str, *, env: Mapping[str, str] | None = None, source: str = "config") -> Config:
    """Validate YAML text into a :class:`Config`; raises :class:`ConfigError` with one line.

    Errors are raised outside the ``except`` blocks on purpose: the YAML and pydantic exceptions quote the
    input, which may hold a secret, and must not ride along as ``__context__``.
    """
    problem: str | None = None
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except ConfigError as exc:
        problem = exc.message
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = "not valid YAML" + (f" at line {mark.line + 1}" if mark is not None else "")
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        # PyYAML's constructors raise these for values such as 2024-02-30 or "!!int abc".
        problem = f"not valid YAML ({type(exc).__name__} while reading a value)"
    if problem is not None:
        raise ConfigError(f"{source}: {problem}")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    try:
        expanded = _expand(raw, "", os.environ if env is None else env)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}") from None
    try:
        return Config.model_validate(expanded)
    except ValidationError as exc:
        problem = _describe(exc)
    raise ConfigError(f"{source}: {problem}")


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror}") from None
    return parse_config(text, env=env, source=str(p))
