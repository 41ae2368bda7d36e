"""The ``cce-monitor`` click group: every command, the version option and the console entry point."""

from __future__ import annotations

import click

from monitor.cli.daemon import add, check_config, deliveries, ls_cmd, run, status
from monitor.cli.report import report
from monitor.cli.simulate import simulate
from monitor.cli.watch import demo, get, watch_cmd
from monitor.core.version import __version__

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="cce-monitor")
def cli() -> None:
    """Watch Huawei Cloud / Open Telekom Cloud CCE jobs and report their progress."""


for _command in (get, watch_cmd, simulate, demo, run, check_config, add, ls_cmd, status, deliveries, report):
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="cce-monitor")
