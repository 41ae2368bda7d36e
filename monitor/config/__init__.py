"""The YAML configuration file, validated once at the edge into typed settings.

Everything inside cce-monitor takes the typed objects built here (:class:`ClientSettings`,
:class:`SchedulerSettings`, sink specs), never raw dicts. The ``http:`` and ``polling:`` sections *are* the
settings dataclasses of the layers that use them (:class:`HttpSettings`, :class:`SchedulerSettings`): pydantic
validates the file against their fields and bounds, and their own cross-field checks run as they are built.
``config.example.yaml`` documents every key.

Secrets (token, SK, password, webhook secrets) may only be given as ``${ENV_VAR}`` references, which are
expanded at load time; a literal secret in the file is refused, so config files can be committed and shared.
Any problem — a YAML syntax error, an unknown key, a wrong type, a missing value, an unset variable — raises one
:class:`ConfigError` whose message names the key path, e.g. ``polling.rate: Input should be greater than 0``.

``watch`` and ``get`` complete the file (or an empty one) with environment variables and flags before the one
validation (:func:`complete_config`): flags win over the environment, the environment over the file, the file
over the defaults. A problem is then reported against where the value came from: ``--project-id 'a/b': ...``,
``CCE_PROJECT_ID: ...``, ``sinks.yaml: polling.rate: ...``.

A ``region`` stands in for unset endpoints (:mod:`monitor.cce.regions`) and, for ``watch`` and ``get``, the
project id (:func:`complete_project`). An ``OS_CLOUD`` / ``OS_*`` cloud (:mod:`monitor.cce.clouds`) comes after
all of ours, for values and for credentials (:meth:`Config.credentials`).
"""

from monitor.config.loading import (
    ENV_VARS,
    Flag,
    complete_config,
    complete_project,
    config_from,
    load_config,
    parse_config,
)
from monitor.config.model import (
    ApiConfig,
    AuthConfig,
    Config,
    DeliveryConfig,
    FilterConfig,
    LoggingConfig,
    PasswordConfig,
    RolloutsConfig,
    SinkConfig,
    StateConfig,
)

__all__ = [
    "ENV_VARS",
    "ApiConfig",
    "AuthConfig",
    "Config",
    "DeliveryConfig",
    "FilterConfig",
    "Flag",
    "LoggingConfig",
    "PasswordConfig",
    "RolloutsConfig",
    "SinkConfig",
    "StateConfig",
    "complete_config",
    "complete_project",
    "config_from",
    "load_config",
    "parse_config",
]
