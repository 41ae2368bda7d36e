"""The configuration's typed model: one pydantic class per section of the file, :class:`Config` for the whole.

How a file becomes one (YAML, ``${ENV}`` references, flags, the environment) is :mod:`monitor.config.loading`;
what the settings mean is in ``config.example.yaml`` and the package docstring (:mod:`monitor.config`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from monitor.cce import regions
from monitor.cce.auth import AKSKAuth, Auth, PasswordAuth, TokenAuth
from monitor.cce.client import ClientSettings, HttpSettings
from monitor.cce.clouds import CloudProfile, choose_auth
from monitor.core.errors import ConfigError, InvalidIdError
from monitor.core.events import EventType
from monitor.core.model import validate_id, validate_label
from monitor.core.secret import Secret
from monitor.engine.settings import SchedulerSettings

__all__ = [
    "ApiConfig",
    "AuthConfig",
    "Config",
    "DeliveryConfig",
    "FilterConfig",
    "LoggingConfig",
    "PasswordConfig",
    "RolloutsConfig",
    "SinkConfig",
    "StateConfig",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PasswordConfig(_Model):
    """IAM user name, password and domain; the token is scoped to ``project_id``."""

    user: str
    password: SecretStr
    domain: str


class AuthConfig(_Model):
    """Exactly one of: ``token``; ``ak`` + ``sk`` (+ ``security_token`` for a temporary pair); ``password``."""

    token: SecretStr | None = None
    ak: str | None = None
    sk: SecretStr | None = None
    security_token: SecretStr | None = None
    password: PasswordConfig | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> AuthConfig:
        kinds = [self.token is not None, self.ak is not None or self.sk is not None, self.password is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of token, ak+sk, password")
        if (self.ak is None) != (self.sk is None):
            raise ValueError("ak and sk go together")
        if self.security_token is not None and self.ak is None:
            raise ValueError("security_token goes with ak and sk")
        return self


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
    """Where ``cce-monitor run`` keeps its state: an SQLite file (``backend: sqlite``, embedded, the default) or a
    PostgreSQL database (``backend: postgres``, ``dsn``), which several replicas can share."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: str = "cce-monitor-state.db"
    dsn: SecretStr | None = None  # libpq URL or key=value string; may hold a password: ${CCE_MONITOR_DSN}
    pool_size: Annotated[int, Field(ge=1, le=64)] = 4  # PostgreSQL connections per daemon
    # Replicas (postgres): a replica not heard from for this long loses its jobs and sink leases to the others;
    # it renews every third of it, and stops polling on its own once two renewals have failed.
    replica_ttl: Annotated[float, Field(ge=1.5, le=300)] = 15.0
    retention: Annotated[float, Field(gt=0)] = 7 * 24 * 3600.0

    @model_validator(mode="after")
    def _dsn_goes_with_postgres(self) -> StateConfig:
        if self.backend == "postgres" and not (self.dsn and self.dsn.get_secret_value().strip()):
            raise ValueError("state.dsn is required with backend: postgres, e.g. dsn: ${CCE_MONITOR_DSN}")
        if self.backend == "sqlite" and self.dsn is not None:
            raise ValueError("state.dsn is for backend: postgres; the SQLite backend takes state.path")
        return self


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
    """How a durable sink's outbox sends: per-job order, parallel, and its retries (see monitor.daemon.delivery)."""

    retry_initial: Annotated[float, Field(gt=0)] = 1.0
    retry_max: Annotated[float, Field(gt=0)] = 30.0
    concurrency: Annotated[int, Field(ge=1, le=64)] = 8  # per durable sink; never two events of one job at once
    ordering: Literal["job", "sink"] = "job"  # sink: one event at a time, in the order recorded
    behind_after: Annotated[float, Field(gt=0)] = 60.0  # /readyz names a sink whose oldest event waits longer


class RolloutsConfig(_Model):
    """Rollout digests (``rollout.progress`` at most once per ``interval`` per rollout)."""

    interval: Annotated[float, Field(gt=0)] = 30.0


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Config(_Model):
    """The whole file."""

    endpoint: str
    # Required as a key, but None when a region is given without it: watch and get then ask IAM for it.
    project_id: str | None
    iam_endpoint: str | None = None
    api_prefix: str = "/api/v3"  # CCE Autopilot serves its jobs under /autopilot/v3
    region: str | None = None
    cloud: regions.Cloud | None = None
    auth: AuthConfig | None = None
    http: HttpSettings = HttpSettings()
    polling: SchedulerSettings = SchedulerSettings()
    sinks: list[SinkConfig] = []
    labels: Labels = {}
    shutdown_deadline: Annotated[float, Field(gt=0)] = 10.0
    logging: LoggingConfig = LoggingConfig()
    state: StateConfig = StateConfig()
    rollouts: RolloutsConfig = RolloutsConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    api: ApiConfig = ApiConfig()

    # The OpenStack-style cloud complete_config found (OS_CLOUD / OS_*), for its credentials.
    _profile: CloudProfile | None = PrivateAttr(default=None)

    @field_validator("project_id")
    @classmethod
    def _project_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate_id(value, "project id")
        except InvalidIdError as exc:
            raise ValueError(exc.message) from None

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        try:
            return None if value is None else regions.validate_region(value)
        except ConfigError as exc:
            raise ValueError(exc.message) from None

    @model_validator(mode="after")
    def _project_or_region(self) -> Config:
        if self.project_id is None and self.region is None:
            raise ValueError("project_id: give a project id, or a region to look it up")
        return self

    @model_validator(mode="after")
    def _file_sinks_shared_by_replicas(self) -> Config:
        # Daemons on one PostgreSQL state take turns delivering each sink (a lease): a file of each daemon's own
        # would hold only the events delivered while that daemon held it. Say so rather than split the stream.
        if self.state.backend == "postgres":
            for i, sink in enumerate(self.sinks):
                if sink.type == "file" and (sink.model_extra or {}).get("shared") is not True:
                    raise ValueError(
                        f"sinks.{i}: a file sink with state.backend: postgres must be a path every daemon on the "
                        "database writes (shared storage) and say so with shared: true; replicas take turns "
                        "delivering it — or use a webhook sink"
                    )
        return self

    def client_settings(self) -> ClientSettings:
        """Where CCE is and how to talk to it; checks the endpoint (raises :class:`ConfigError`)."""
        if self.project_id is None:
            raise ConfigError(
                f"project_id is not set: only watch and get look it up from the region ({self.region}); "
                "give project_id in the config file"
            )
        http = asdict(self.http)
        return ClientSettings(endpoint=self.endpoint, project_id=self.project_id, api_prefix=self.api_prefix, **http)

    def credentials(self, env: Mapping[str, str] | None = None) -> Auth:
        """The provider for ``watch`` and ``get``: the file's ``auth:``, else our variables, else the
        OpenStack-style cloud (:func:`monitor.cce.clouds.choose_auth`); raises :class:`ConfigError`."""
        made = self.make_auth()
        env = os.environ if env is None else env
        where = {"project_id": self.project_id, "iam_endpoint": self.iam_endpoint, "region": self.region}
        return made or choose_auth(env, self._profile, **where)

    def make_auth(self) -> Auth | None:
        """The provider the file configures, or ``None`` to take credentials from the environment."""
        a = self.auth
        if a is None:
            return None
        if a.token is not None:
            return TokenAuth(Secret(a.token.get_secret_value()))
        if a.ak is not None and a.sk is not None:
            token = None if a.security_token is None else Secret(a.security_token.get_secret_value())
            return AKSKAuth(a.ak, Secret(a.sk.get_secret_value()), self.project_id, security_token=token)
        assert a.password is not None
        if not self.iam_endpoint:
            raise ConfigError("iam_endpoint: required for password auth (or give a region)")
        return PasswordAuth(
            iam_endpoint=self.iam_endpoint,
            username=a.password.user,
            password=Secret(a.password.password.get_secret_value()),
            domain=a.password.domain,
            project_id=self.project_id,
            # Without a project id the token is scoped by name: a region's main project is named after it.
            project_name=None if self.project_id else self.region,
        )
