"""How a configuration file becomes a :class:`~monitor.config.model.Config`: YAML without aliases or duplicate keys,
``${ENV}`` references expanded (literal secrets refused), flags and the environment over the file, one
validation, and one :class:`ConfigError` that names the key (see the package docstring, :mod:`monitor.config`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from pydantic import (
    ValidationError,
)

from monitor.cce import regions
from monitor.cce.auth import Auth
from monitor.cce.client import ClientSettings
from monitor.cce.clouds import cloud_profile
from monitor.config.model import Config
from monitor.core.errors import ConfigError, InvalidIdError
from monitor.engine.settings import SchedulerSettings

__all__ = ["ENV_VARS", "Flag", "complete_config", "complete_project", "config_from", "load_config", "parse_config"]

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_SECRET_KEYS = {"token", "sk", "password", "secret", "security_token", "dsn"}


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


ENV_VARS: dict[str, tuple[str, ...]] = {
    "endpoint": ("CCE_ENDPOINT",),
    "project_id": ("CCE_PROJECT_ID", "HUAWEICLOUD_SDK_PROJECT_ID"),
    "iam_endpoint": ("CCE_IAM_ENDPOINT",),
    "region": ("HUAWEICLOUD_SDK_REGION", "OS_REGION_NAME"),
}
"""Keys that :func:`complete_config` takes from the environment over the file; the first variable set wins."""

# Keys whose values may be URLs, which may carry user:password@: messages name the flag, never show the value.
_URL_KEYS = frozenset({"endpoint", "iam_endpoint"})
_DEFAULT_POLLING = SchedulerSettings()
_KEY_AT_START = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
# Placeholder project id for checking the endpoint before the real id is looked up (never sent anywhere).
_UNKNOWN_PROJECT = "0" * 32


@dataclass(frozen=True, slots=True)
class Flag:
    """A command-line option that sets one key of the file; ``key`` is its dotted path, e.g. ``polling.rate``.

    ``value`` is ``None`` when the option was not given: it is still named when its key is missing.
    """

    key: str
    name: str
    value: object = None

    @property
    def label(self) -> str:
        """How a message names it: ``--project-id 'a/b'``, ``--interval 5``; URL-valued flags by name only."""
        return self.name if self.key in _URL_KEYS else f"{self.name} {_show(self.value)}"


def _show(value: object) -> str:
    """A value as a message shows it: numbers plainly (``5``, not ``5.0``), anything else quoted, cut short."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _set(raw: dict[object, object], key: str, value: object) -> None:
    """Set a dotted key in the raw mapping; a non-mapping in the way is the file's mistake, left for validation."""
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return
        node = child
    node[leaf] = value


def _describe(
    error: ValidationError,
    source: str,
    given: Mapping[tuple[str, ...], str] | None = None,
    ways: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The first problem as one line, against where its value came from (``given``: key path -> flag or variable).

    A missing key that ``ways`` lists (other ways to give it: flags, variables) names all of them.
    """
    first = error.errors()[0]
    loc = tuple(_key_text(p) for p in first["loc"])
    where = ".".join(loc) or "(top level)"
    message = first["msg"]
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problems)" if more else ""
    if first["type"] == "missing" and ways and where in ways:
        return f"{where} is required: {', '.join(ways[where])}, or {where}: in the config file{suffix}"
    origin = next((label for key, label in (given or {}).items() if loc[: len(key)] == key), None)
    if origin is not None:
        return f"{origin}: {message.removeprefix('Value error, ')}{suffix}"
    if first["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required key is missing"
    return f"{source}: {where}: {message}{suffix}"


def _parse(text: str, env: Mapping[str, str], source: str) -> dict[object, object]:
    """YAML text to the raw mapping, ``${VAR}`` references expanded; raises :class:`ConfigError` with one line.

    Errors are raised outside the ``except`` blocks on purpose: the YAML exceptions quote the input, which may
    hold a secret, and must not ride along as ``__context__``.
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
        expanded = _expand(raw, "", env)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}") from None
    assert isinstance(expanded, dict)
    return expanded


def _validate(
    raw: Mapping[object, object],
    source: str,
    given: Mapping[tuple[str, ...], str] | None = None,
    ways: Mapping[str, Sequence[str]] | None = None,
) -> Config:
    raw = dict(raw)
    _derive_endpoints(raw, source, given)
    # Raised outside the except block: pydantic's exception quotes the input, which may hold a secret.
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problem = _describe(exc, source, given, ways)
    except ConfigError as exc:  # a section's own cross-field check: "polling.max_interval = 3 must be >= interval"
        problem = _against_origin(exc.message, source, given)
    raise ConfigError(problem)


def _derive_endpoints(raw: dict[object, object], source: str, given: Mapping[tuple[str, ...], str] | None) -> None:
    """A region stands in for what is not given (:func:`monitor.cce.regions.fill_from_region`)."""
    if "project_id" in raw and raw["project_id"] is None and raw.get("region") is None:
        raise ConfigError(f"{source}: project_id: give a project id, or a region to look it up")
    try:
        regions.fill_from_region(raw, (given or {}).get(("region",)) or f"{source}: region")
    except ConfigError as exc:
        raise ConfigError(_against_origin(exc.message, source, given)) from None


def _against_origin(problem: str, source: str, given: Mapping[tuple[str, ...], str] | None) -> str:
    """A settings class's message, which starts with its key ("polling.rate = ...", "endpoint 'x' must be
    ..."), against where that value came from: the flag or variable that gave it, else the file."""
    match = _KEY_AT_START.match(problem)
    origin = (given or {}).get(tuple(match.group().split("."))) if match else None
    return f"{origin or source}: {problem}"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None


def parse_config(text: str, *, env: Mapping[str, str] | None = None, source: str = "config") -> Config:
    """Validate YAML text into a :class:`Config`; raises :class:`ConfigError` with one line."""
    return _validate(_parse(text, os.environ if env is None else env, source), source)


def config_from(values: Mapping[object, object], *, source: str = "config") -> Config:
    """Validate values already in the file's shape (no YAML, no ``${VAR}``) into a :class:`Config`.

    For settings a command fixes itself (``demo``): they go through the same checks and the same builders
    (:meth:`Config.client_settings`) as a file's.
    """
    return _validate(values, source)


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file: the file and its ``${VAR}`` references only (``run``, ``check-config``)."""
    p = Path(path)
    return parse_config(_read(p), env=env, source=str(p))


def complete_config(
    path: str | Path | None, flags: Sequence[Flag] = (), *, env: Mapping[str, str] | None = None
) -> Config:
    """The file at ``path`` (or an empty one), completed by the environment and then by ``flags``, validated once.

    Precedence: flags, then :data:`ENV_VARS`, then the file, then the defaults; ``env`` (default
    ``os.environ``) also serves the file's ``${VAR}`` references. A ``polling.interval`` flag outside the default
    ``min_interval``/``max_interval`` widens them, unless the file sets them: that is a contradiction, named with
    both origins. The endpoint checks of :meth:`Config.client_settings` run here too. Problems raise one
    :class:`ConfigError` naming the flag, the variable, or the file and key.
    """
    env = os.environ if env is None else env
    source = str(Path(path)) if path is not None else "config"
    raw = _parse(_read(Path(path)), env, source) if path is not None else {}
    polling = raw.get("polling")
    in_file = {k for k in polling if isinstance(k, str)} if isinstance(polling, dict) else set()
    given: dict[tuple[str, ...], str] = {}
    ways: dict[str, list[str]] = {}
    for key, names in ENV_VARS.items():
        name = next((n for n in names if env.get(n, "").strip()), None)
        if name is not None:
            _set(raw, key, env[name].strip())
            given[tuple(key.split("."))] = name
    for flag in flags:
        ways.setdefault(flag.key, []).append(flag.name)
        if flag.value is not None:
            _set(raw, flag.key, flag.value)
            given[tuple(flag.key.split("."))] = flag.label
    for key, names in ENV_VARS.items():
        ways.setdefault(key, []).extend(names)
    profile = cloud_profile(env)
    if profile is not None:
        # After all of ours: the cloud's values fill only what flags, variables and the file left unset.
        for key, value in profile.values().items():
            if raw.get(key) is None:
                _set(raw, key, value)
                given[(key,)] = profile.origin
    interval = next((f for f in reversed(flags) if f.key == "polling.interval" and f.value is not None), None)
    section = raw.get("polling")
    if interval is not None and _is_number(interval.value) and isinstance(section, dict):
        # Today's convenience: --interval 0.5 lowers the default floor, --interval 60 raises the default ceiling;
        # a bound the file sets is a contradiction, named with both origins (before the cross-field check would
        # name only one).
        for name, pick, side in (("min_interval", min, "below"), ("max_interval", max, "above")):
            if name not in in_file:
                _set(raw, f"polling.{name}", pick(getattr(_DEFAULT_POLLING, name), interval.value))
                given["polling", name] = interval.label
            elif _is_number(bound := section[name]) and pick(bound, interval.value) != bound:
                raise ConfigError(f"{interval.label} is {side} polling.{name} {_show(bound)} (from {source})")
    cfg = _validate(raw, source, given, ways)
    try:
        project = cfg.project_id or _UNKNOWN_PROJECT
        ClientSettings(endpoint=cfg.endpoint, project_id=project, api_prefix=cfg.api_prefix, **asdict(cfg.http))
    except (ConfigError, InvalidIdError) as exc:
        raise ConfigError(_against_origin(exc.message, source, given)) from None
    cfg._profile = profile
    return cfg


async def complete_project(cfg: Config, auth: Auth) -> Config:
    """``cfg`` with its project id: as given, or asked once from IAM (:func:`monitor.cce.regions.complete_project`;
    raises :class:`MonitorError`)."""
    if cfg.project_id is not None:
        return cfg
    project_id = await regions.lookup_project(
        auth, cfg.iam_endpoint, cfg.region, request_timeout=cfg.http.total_timeout, ca_bundle=cfg.http.ca_bundle
    )
    done = cfg.model_copy(update={"project_id": project_id})
    done._profile = cfg._profile
    return done
