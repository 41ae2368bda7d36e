"""The ``cce-monitor`` command line: the group and entry point in :mod:`monitor.cli.app`, the process runtime
(logging, signals, exit codes) in :mod:`monitor.cli.runtime`, the commands in :mod:`monitor.cli.watch`
(``get``, ``watch``, ``demo``), :mod:`monitor.cli.daemon` (``run``, ``check-config``, ``add``, ``ls``,
``status``) and :mod:`monitor.cli.simulate`, the live view in :mod:`monitor.cli.view`.

Exit codes: 0 success; 1 a job Failed, timed out or was not found (``watch``), or an API error (``get``);
2 usage or configuration error, with one line naming the problem; 130 ``watch``/``demo`` interrupted
(SIGINT/SIGTERM), after the sinks were flushed. ``simulate`` is a server: a signal is its normal end (0).

Credentials are never taken from flags (they would show in ``ps`` and shell history): only from the
environment (``CCE_AUTH_TOKEN``; ``HUAWEICLOUD_SDK_AK`` + ``HUAWEICLOUD_SDK_SK``; ``CCE_IAM_USER`` +
``CCE_IAM_PASSWORD`` + ``CCE_IAM_DOMAIN``) or the config file's ``${ENV}`` references.

``watch`` and ``get`` take their settings from one place, :func:`monitor.config.complete_config`: the file (or
none), then the environment, then the flags, validated once.
"""

from monitor.cli.app import cli, main

__all__ = ["cli", "main"]
