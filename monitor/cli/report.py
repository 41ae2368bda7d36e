"""``cce-monitor report EVENTS.jsonl [--rollout NAME] -o report.html``: a rollout timeline for post-mortems.

Reads the file sink's events (``-`` for stdin) and writes one self-contained HTML file (:mod:`monitor.ui.report`).
Exit codes: 0 written; 2 the input cannot be read, holds no event at all, or lacks the rollout asked for, or the
output cannot be written — one line naming the problem. Lines that are not events are skipped and counted (on
stderr and in the report).
"""

from __future__ import annotations

import os
import sys

import click

from monitor.cli.runtime import fail
from monitor.ui.report import parse_events, render_report

__all__ = ["report"]


@click.command()
@click.argument("events_path", metavar="EVENTS.jsonl", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--rollout", default=None, help="Only this rollout [every rollout in the file]")
@click.option(
    "-o",
    "--output",
    "output",
    default="report.html",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where to write the HTML ('-': stdout)",
)
def report(events_path: str, rollout: str | None, output: str) -> None:
    """Write a rollout's summary, timeline and failures as one HTML file, from the file sink's events."""
    try:
        if events_path == "-":
            lines = sys.stdin.buffer.read().splitlines()
        else:
            with open(events_path, "rb") as f:
                lines = f.read().splitlines()
    except OSError as exc:
        fail(f"cannot read {events_path}: {exc.strerror or exc}")
    read = parse_events(lines)
    if read.skipped:
        click.echo(f"cce-monitor: {read.skipped} lines skipped ({'; '.join(read.problems)})", err=True)
    if not read.events:
        fail(f"{events_path} holds no cce-monitor events (expected the file sink's JSON lines)")
    try:
        page = render_report(read, rollout=rollout, source=os.path.basename(events_path))
    except LookupError as exc:
        fail(str(exc))
    if output == "-":
        sys.stdout.write(page)
        return
    tmp = f"{output}.tmp-{os.getpid()}"
    try:  # write then rename: a reader never sees half a report
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, output)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    click.echo(f"wrote {output} ({len(read.events)} events)", err=True)
