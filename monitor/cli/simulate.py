"""``simulate``: the embedded CCE simulator as a server, for tests, benchmarks and demos.

A signal is how a server is told to stop: its normal end, exit 0.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from monitor.cli.options import log_option
from monitor.cli.runtime import fail, run_with_signals, setup_logging
from monitor.sim import SimulatorConfig, run_forever

__all__ = ["simulate"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=0, show_default=True, help="0 picks a free port")
@click.option("--jobs", default=20, show_default=True, help="Jobs in the initial bulk rollout")
@click.option("--job-type", default="CreateNode", show_default=True)
@click.option("--fail-ratio", default=0.1, show_default=True, type=click.FloatRange(0, 1))
@click.option("--duration", type=float, default=None, help="Seconds each job runs (default: per type, ~20-60 s)")
@click.option("--seed", default=0, show_default=True)
@click.option("--rate", type=float, default=None, help="Server-side rate limit, requests/s (429 APIGW.0308 above)")
@click.option("--p-500", default=0.0, type=click.FloatRange(0, 1), help="Probability of a 500")
@click.option("--p-503", default=0.0, type=click.FloatRange(0, 1), help="Probability of a 503 HTML page")
@click.option("--p-malformed", default=0.0, type=click.FloatRange(0, 1), help="Probability of a truncated body")
@click.option("--p-slow", default=0.0, type=click.FloatRange(0, 1), help="Probability of a slow answer")
@click.option("--slow-seconds", default=2.0, show_default=True)
@click.option("--p-drop", default=0.0, type=click.FloatRange(0, 1), help="Probability of a dropped connection")
@click.option("--token-ttl", default=86400.0, show_default=True, help="Lifetime of issued tokens, seconds")
@click.option("--live-timestamps", is_flag=True, help="Running jobs report the request time as updateTimestamp")
@click.option("--ak", envvar="SIM_AK", default=None, help="Accept requests signed with this AK [env SIM_AK]")
@click.option("--sk", envvar="SIM_SK", default=None, help="... and this SK [env SIM_SK]")
@log_option
def simulate(**opts: Any) -> None:
    """Run the embedded CCE simulator (for tests, benchmarks and demos; loopback by default).

    Prints one JSON line {"endpoint", "project_id", "token", "job_ids"} on stdout, then serves until stopped.
    """
    setup_logging(opts["log_level"] or "warning")
    try:
        config = SimulatorConfig(
            seed=opts["seed"],
            rate_limit=opts["rate"],
            p_500=opts["p_500"],
            p_503_html=opts["p_503"],
            p_malformed=opts["p_malformed"],
            p_slow=opts["p_slow"],
            slow_seconds=opts["slow_seconds"],
            p_drop=opts["p_drop"],
            token_ttl=opts["token_ttl"],
            live_timestamps=opts["live_timestamps"],
            ak=opts["ak"],
            sk=opts["sk"],
        )
    except ValueError as exc:
        fail(str(exc))

    async def main(stop: asyncio.Event) -> None:
        server = asyncio.create_task(
            run_forever(
                config,
                host=opts["host"],
                port=opts["port"],
                jobs=opts["jobs"],
                job_type=opts["job_type"],
                fail_ratio=opts["fail_ratio"],
                duration=opts["duration"],
                out=sys.stdout,
            )
        )
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({server, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (server, stopper):
            task.cancel()
        await asyncio.wait({server, stopper})
        if not server.cancelled() and server.exception() is not None:
            raise server.exception()  # type: ignore[misc]

    try:
        run_with_signals(main)  # a signal is how a server is told to stop: exit 0
    except OSError as exc:
        fail(f"cannot serve on {opts['host']}:{opts['port']}: {exc.strerror}", 1)
