"""Credentials the OpenStack way: a cloud from ``clouds.yaml`` (``OS_CLOUD``) or ``OS_*`` variables.

Open Telekom Cloud users configure openstacksdk, python-otcextensions and the OTC Terraform provider like this,
so cce-monitor reads the same places, after its own (the config file's ``auth:``, then its variables):

* ``OS_CLOUD`` names a cloud of ``clouds.yaml``, the first of ``OS_CLIENT_CONFIG_FILE``, ``./clouds.yaml``,
  ``~/.config/openstack/clouds.yaml``, ``/etc/openstack/clouds.yaml`` that exists (openstacksdk's
  ``openstack/config/loader.py``: ``CONFIG_FILES``; python-otcextensions' configuration page). Its ``auth:``
  holds ``auth_url``, ``username``, ``password``, ``user_domain_name`` (or ``domain_name``), ``project_name`` /
  ``project_id``, or OTC's ``ak`` / ``sk`` (python-otcextensions: "AK/SK ... in the auth section"); the cloud's
  ``region_name`` is its region.
* Without ``OS_CLOUD``: ``OS_AUTH_URL``, ``OS_USERNAME``, ``OS_PASSWORD``, ``OS_USER_DOMAIN_NAME`` (or
  ``OS_DOMAIN_NAME``), ``OS_PROJECT_NAME`` / ``OS_PROJECT_ID``, ``OS_REGION_NAME`` (openstacksdk's ``envvars``
  cloud).

A password goes through :class:`~monitor.cce.auth.PasswordAuth` (an IAM token), an AK/SK through
:class:`~monitor.cce.auth.AKSKAuth`. ``clouds.yaml`` holds its secrets in clear (that is its convention); they
are wrapped in :class:`~monitor.core.secret.Secret` as soon as they are read and no message quotes the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from monitor.cce import auth as cce_auth
from monitor.cce.auth import AKSKAuth, Auth, PasswordAuth, auth_from_env
from monitor.core.errors import ConfigError
from monitor.core.secret import Secret

__all__ = ["CloudProfile", "choose_auth", "cloud_profile", "clouds_files"]

_OUR_VARIABLES = (
    cce_auth.ENV_TOKEN,
    cce_auth.ENV_AK,
    cce_auth.ENV_SK,
    cce_auth.ENV_IAM_USER,
    cce_auth.ENV_IAM_PASSWORD,
    cce_auth.ENV_IAM_DOMAIN,
)


def clouds_files(env: Mapping[str, str], *, cwd: Path | None = None, home: Path | None = None) -> list[Path]:
    """Where ``clouds.yaml`` is looked for, in openstacksdk's order."""
    files = [Path(env["OS_CLIENT_CONFIG_FILE"])] if env.get("OS_CLIENT_CONFIG_FILE", "").strip() else []
    return [
        *files,
        (cwd or Path.cwd()) / "clouds.yaml",
        (home or Path.home()) / ".config" / "openstack" / "clouds.yaml",
        Path("/etc/openstack/clouds.yaml"),
    ]


@dataclass(frozen=True, slots=True, repr=False)
class CloudProfile:
    """One OpenStack-style cloud: where its values came from, what it says, and its credentials (secret)."""

    origin: str  # "OS_CLOUD 'otc' (/home/u/.config/openstack/clouds.yaml)" or "OS_* variables"
    auth_url: str | None
    region: str | None
    project_id: str | None
    project_name: str | None
    username: str | None
    password: Secret | None
    domain: str | None
    ak: str | None
    sk: Secret | None

    def __repr__(self) -> str:
        return f"CloudProfile(origin={self.origin!r}, region={self.region!r}, username={self.username!r})"

    def values(self) -> dict[str, str]:
        """What this cloud says about where: ``region``, ``project_id``, ``iam_endpoint`` (its ``auth_url``)."""
        found = {"region": self.region, "project_id": self.project_id, "iam_endpoint": self.auth_url}
        return {key: value for key, value in found.items() if value is not None}

    @property
    def has_credentials(self) -> bool:
        return bool(self.ak or self.sk or self.username or self.password)

    def make_auth(self, *, project_id: str | None, iam_endpoint: str | None) -> Auth:
        """The provider for these credentials; ``iam_endpoint`` (ours, if given) wins over ``auth_url``.

        Raises :class:`ConfigError` naming what is missing (never a value).
        """
        if self.ak or self.sk:
            if not self.ak or not self.sk:
                raise ConfigError(f"{self.origin}: ak and sk go together")
            return AKSKAuth(self.ak, self.sk, project_id or self.project_id)
        endpoint = iam_endpoint or self.auth_url
        missing = [
            name
            for name, value in (
                ("username", self.username),
                ("password", self.password),
                ("user_domain_name", self.domain),
                ("auth_url", endpoint),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"{self.origin}: password auth needs {', '.join(missing)}")
        assert endpoint is not None and self.username is not None and self.password is not None
        pid = project_id or self.project_id
        return PasswordAuth(
            iam_endpoint=endpoint,
            username=self.username,
            password=self.password,
            domain=self.domain or "",
            project_id=pid,
            # IAM scopes a token by project id or name; OTC names its projects after the region (eu-de, or
            # eu-de_team for a sub-project).
            project_name=None if pid else (self.project_name or self.region),
        )


def _text(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None if value is None else str(value)


def _read_cloud(name: str, files: list[Path]) -> tuple[Mapping[str, object], str]:
    for path in files:
        if not path.is_file():
            continue
        origin = f"OS_CLOUD {name!r} ({path})"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, ValueError):
            # Raised outside: a YAML error quotes the document, which holds passwords.
            data = None
        clouds = data.get("clouds") if isinstance(data, dict) else None
        if not isinstance(clouds, dict):
            raise ConfigError(f"{origin}: not a readable clouds.yaml (a mapping with clouds:)")
        cloud = clouds.get(name)
        if not isinstance(cloud, dict):
            raise ConfigError(f"{origin}: no cloud named {name!r} in it")
        return cloud, origin
    raise ConfigError(f"OS_CLOUD {name!r}: no clouds.yaml found ({', '.join(map(str, files))})")


def cloud_profile(env: Mapping[str, str], *, cwd: Path | None = None, home: Path | None = None) -> CloudProfile | None:
    """The cloud ``OS_CLOUD`` selects, else the one ``OS_*`` variables describe, else ``None``."""
    name = env.get("OS_CLOUD", "").strip()
    if name:
        cloud, origin = _read_cloud(name, clouds_files(env, cwd=cwd, home=home))
        auth = cloud.get("auth")
        a: Mapping[str, object] = auth if isinstance(auth, dict) else {}
        password, sk = _text(a.get("password")), _text(a.get("sk"))
        return CloudProfile(
            origin=origin,
            auth_url=_text(a.get("auth_url")),
            region=_text(cloud.get("region_name")),
            project_id=_text(a.get("project_id")),
            project_name=_text(a.get("project_name")),
            username=_text(a.get("username")),
            password=Secret(password) if password else None,
            domain=_text(a.get("user_domain_name")) or _text(a.get("domain_name")),
            ak=_text(a.get("ak")),
            sk=Secret(sk) if sk else None,
        )
    names = ("OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD", "OS_PROJECT_ID", "OS_PROJECT_NAME", "OS_REGION_NAME")
    if not any(env.get(n, "").strip() for n in names):
        return None
    password = env.get("OS_PASSWORD", "")
    return CloudProfile(
        origin="OS_* variables",
        auth_url=_text(env.get("OS_AUTH_URL")),
        region=_text(env.get("OS_REGION_NAME")),
        project_id=_text(env.get("OS_PROJECT_ID")),
        project_name=_text(env.get("OS_PROJECT_NAME")),
        username=_text(env.get("OS_USERNAME")),
        password=Secret(password) if password else None,
        domain=_text(env.get("OS_USER_DOMAIN_NAME")) or _text(env.get("OS_DOMAIN_NAME")),
        ak=None,
        sk=None,
    )


def choose_auth(
    env: Mapping[str, str],
    profile: CloudProfile | None,
    *,
    project_id: str | None,
    iam_endpoint: str | None,
    region: str | None = None,
) -> Auth:
    """Credentials from our variables (:func:`~monitor.cce.auth.auth_from_env`) if any is set, else from the
    OpenStack-style ``profile``; ``iam_endpoint`` is the caller's, which already holds ``CCE_IAM_ENDPOINT``.

    Raises :class:`ConfigError` naming what is missing.
    """
    ours = {k: v for k, v in env.items() if k != cce_auth.ENV_IAM_ENDPOINT}
    if any(ours.get(name, "").strip() for name in _OUR_VARIABLES) or profile is None or not profile.has_credentials:
        try:
            return auth_from_env(ours, project_id=project_id, iam_endpoint=iam_endpoint, project_name=region)
        except ConfigError as exc:
            if profile is not None and profile.has_credentials:
                raise
            raise ConfigError(f"{exc.message}, or OS_CLOUD (clouds.yaml) or OS_* variables") from None
    return profile.make_auth(project_id=project_id, iam_endpoint=iam_endpoint)
