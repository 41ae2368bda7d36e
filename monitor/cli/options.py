"""Options and arguments that several commands share: the log level, job ids, labels."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from monitor.core.errors import ConfigError
from monitor.core.model import validate_id, validate_label

__all__ = ["log_option", "parse_labels", "read_ids"]


def read_ids(args: Sequence[str]) -> list[str]:
    """Job ids from arguments; ``-`` reads whitespace-separated ids from stdin (``#`` starts a comment)."""
    ids: list[str] = []
    for arg in args:
        if arg == "-":
            for line in sys.stdin:
                ids.extend(line.split("#", 1)[0].split())
        else:
            ids.append(arg)
    seen: dict[str, None] = {}
    for job_id in ids:
        seen[validate_id(job_id, "job id")] = None
    if not seen:
        raise ConfigError("no job ids given (pass them as arguments, or '-' to read them from stdin)")
    return list(seen)


def parse_labels(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--label {pair!r}: expected KEY=VALUE")
        validate_label(key, value)
        out[key] = value
    return out


log_option = click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None, help="Default: warning"
)
