"""The commands that poll CCE themselves, without a daemon: ``get`` (one job, once), ``watch`` (jobs until they
end) and ``demo`` (``watch`` against the embedded simulator).

``watch`` and ``get`` take their settings from one place, :func:`monitor.config.complete_config`: the file (or
none), then the environment, then the flags, validated once. ``demo`` fixes its own, through
:func:`monitor.config.config_from`: the same validation and the same builders.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from monitor.cce.auth import Auth, TokenAuth
from monitor.cce.client import CCEClient
from monitor.cli.options import log_option, parse_labels, read_ids
from monitor.cli.runtime import EXIT_INTERRUPTED, fail, run_with_signals, setup_logging
from monitor.config import Config, Flag, complete_config, complete_project, config_from
from monitor.core.errors import ConfigError, MonitorError
from monitor.core.events import Outcome
from monitor.core.model import job_to_json, validate_id
from monitor.core.secret import Secret
from monitor.core.text import printable
from monitor.engine.bus import EventFilter
from monitor.engine.pipeline import NodePoolTarget, SinkBinding, WatchResult, watch
from monitor.sim import Simulator, SimulatorConfig
from monitor.sim.demo import plan_demo
from monitor.sinks import Sink, create_sink

__all__ = ["demo", "get", "watch_cmd"]


def _where_flags(
    endpoint: str | None,
    project_id: str | None,
    iam_endpoint: str | None,
    region: str | None = None,
    cloud: str | None = None,
) -> list[Flag]:
    """The flags that say where CCE is; with the environment and the file they go through complete_config."""
    return [
        Flag("endpoint", "--endpoint", endpoint),
        Flag("project_id", "--project-id", project_id),
        Flag("iam_endpoint", "--iam-endpoint", iam_endpoint),
        Flag("region", "--region", region),
        Flag("cloud", "--cloud", cloud),
    ]


def _auth(cfg: Config) -> Auth:
    """The file's ``auth:``, else our variables, else ``OS_CLOUD``/``OS_*`` (:meth:`Config.credentials`)."""
    return cfg.credentials(os.environ)


def _sinks(cfg: Config, specs: Sequence[str], *, plain_log: bool) -> list[SinkBinding]:
    bindings: list[SinkBinding] = []
    for entry in cfg.sinks:
        f = entry.filter
        bindings.append(
            SinkBinding(create_sink(entry.spec, entry.options), EventFilter.of(f.types, f.phases, f.labels))
        )
    bindings.extend(SinkBinding(create_sink(spec)) for spec in specs)
    if plain_log and not any(b.sink.name.startswith("log") for b in bindings):
        bindings.insert(0, SinkBinding(create_sink("log")))
    return bindings


# The environment variables behind these flags are read by complete_config, which knows where each value came from.
_endpoint_option = click.option(
    "--endpoint", help="CCE endpoint, e.g. https://cce.eu-de.otc.t-systems.com [env CCE_ENDPOINT]"
)
_project_option = click.option("--project-id", help="Project id [env CCE_PROJECT_ID or HUAWEICLOUD_SDK_PROJECT_ID]")
_iam_option = click.option("--iam-endpoint", help="IAM endpoint for password auth [env CCE_IAM_ENDPOINT]")
_region_option = click.option(
    "--region", help="Region, e.g. eu-de: sets unset endpoints, finds the project id [env HUAWEICLOUD_SDK_REGION]"
)
_cloud_option = click.option(
    "--cloud", type=click.Choice(["huawei", "otc"]), help="Whose region [otc for eu-de, eu-nl, eu-ch2; else huawei]"
)


@click.command()
@click.argument("job_id")
@_endpoint_option
@_project_option
@_iam_option
@_region_option
@_cloud_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file")
@log_option
def get(
    job_id: str,
    endpoint: str | None,
    project_id: str | None,
    iam_endpoint: str | None,
    region: str | None,
    cloud: str | None,
    config_path: str | None,
    log_level: str | None,
) -> None:
    """Print one job's progress as JSON."""
    setup_logging(log_level or "warning")
    try:
        validate_id(job_id, "job id")
        cfg = complete_config(config_path, _where_flags(endpoint, project_id, iam_endpoint, region, cloud))
        auth = _auth(cfg)
    except MonitorError as exc:
        fail(str(exc))

    async def main(stop: asyncio.Event) -> bytes:
        settings = (await complete_project(cfg, auth)).client_settings()
        async with CCEClient(settings, auth) as client:
            job = await client.fetch(job_id)
        return job_to_json(job, indent=True)

    try:
        out, _ = run_with_signals(main)
    except MonitorError as exc:
        fail(str(exc), 2 if isinstance(exc, ConfigError) else 1)
    click.echo(out.decode())


@click.command("watch")
@click.argument("job_ids", nargs=-1)
@_endpoint_option
@_project_option
@_iam_option
@_region_option
@_cloud_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Requests per second to CCE [10]")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), help="Seconds between polls of a job [10]")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Give up on a job after this [3600]")
@click.option("--sink", "sink_specs", multiple=True, help="log | file:PATH | webhook:URL (repeatable)")
@click.option("--label", "label_pairs", multiple=True, help="KEY=VALUE added to every event (repeatable)")
@click.option("--rollout", default=None, help="Name of the rollout these jobs form [the node pool's id, else watch]")
@click.option("--cluster", "cluster_id", default=None, help="Cluster of --nodepool")
@click.option("--nodepool", "nodepool_ids", multiple=True, help="Follow this node pool until it settles (repeatable)")
@click.option("--target", type=click.IntRange(min=0), default=None, help="Node count the pool must reach")
@click.option("--node-check/--no-node-check", default=None, help="Wait for new nodes to be Active [on]")
@click.option("--live/--no-live", default=None, help="Live view (default: when stdout is a terminal)")
@log_option
def watch_cmd(
    job_ids: tuple[str, ...],
    endpoint: str | None,
    project_id: str | None,
    iam_endpoint: str | None,
    region: str | None,
    cloud: str | None,
    config_path: str | None,
    rate: float | None,
    interval: float | None,
    timeout: float | None,
    sink_specs: tuple[str, ...],
    label_pairs: tuple[str, ...],
    rollout: str | None,
    cluster_id: str | None,
    nodepool_ids: tuple[str, ...],
    target: int | None,
    node_check: bool | None,
    live: bool | None,
    log_level: str | None,
) -> None:
    """Watch JOB_ID... until each one finishes ('-' reads ids from stdin), and/or follow a node pool
    (--cluster C --nodepool P [--target N]) until it settles and every node it creates is Active.

    Exit 0 when all succeed (every new node Active, every pool settled at its target), 1 when any job or
    node failed, timed out or was not found, or a pool ended SoldOut or Error; 2 on usage or config errors;
    130 when interrupted.
    """
    live = sys.stdout.isatty() if live is None else live
    try:
        flags = [
            *_where_flags(endpoint, project_id, iam_endpoint, region, cloud),
            Flag("polling.rate", "--rate", rate),
            Flag("polling.interval", "--interval", interval),
            Flag("polling.job_timeout", "--timeout", timeout),
            Flag("polling.node_check", "--node-check", node_check),
        ]
        pools = _nodepools(cluster_id, nodepool_ids, target)
        rollout = rollout or (nodepool_ids[0] if len(nodepool_ids) == 1 else "watch")
        cfg = complete_config(config_path, flags)
        # Without a file, the CLI's own default level (warning), not the file's (info).
        setup_logging(log_level or (cfg.logging.level if config_path else "warning"), cfg.logging.format)
        ids = read_ids(job_ids) if job_ids or not pools else []
        auth = _auth(cfg)
        labels = {**cfg.labels, **parse_labels(label_pairs)}
        validate_id(rollout, "rollout name")
        sinks = _sinks(cfg, sink_specs, plain_log=not live)
    except MonitorError as exc:
        fail(str(exc))
    try:
        result, _ = run_with_signals(
            lambda stop: _watch(ids, cfg, auth, sinks, labels, live, stop, rollout=rollout, nodepools=pools)
        )
    except MonitorError as exc:  # before polling: the project id lookup (config problems exit 2)
        fail(str(exc), 2 if isinstance(exc, ConfigError) else 1)
    _report_unsent(result)
    if result.config_error is not None:
        fail(result.config_error)
    sys.exit(result.exit_code)


def _nodepools(cluster_id: str | None, nodepool_ids: Sequence[str], target: int | None) -> list[NodePoolTarget]:
    """``--cluster``/``--nodepool``/``--target`` as pools to follow; raises ConfigError on a bad combination."""
    if nodepool_ids and cluster_id is None:
        raise ConfigError("--nodepool needs --cluster (the cluster the pool belongs to)")
    if target is not None and len(nodepool_ids) != 1:
        raise ConfigError("--target needs exactly one --nodepool")
    if cluster_id is not None and not nodepool_ids:
        raise ConfigError("--cluster is for --nodepool: give the pool to follow")
    if cluster_id is None:
        return []
    validate_id(cluster_id, "cluster id")
    return [NodePoolTarget(cluster_id, validate_id(p, "node pool id"), target) for p in dict.fromkeys(nodepool_ids)]


def _report_unsent(result: WatchResult) -> None:
    """One line on stderr per sink that closed with events it could not send in time."""
    for name, kinds in result.unsent.items():
        what = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
        click.echo(printable(f"cce-monitor: not sent to {name}: {what}"), err=True)


async def _watch(
    ids: list[str],
    cfg: Config,
    auth: Auth,
    sinks: list[SinkBinding],
    labels: dict[str, str],
    live: bool,
    stop: asyncio.Event,
    title: str = "cce-monitor",
    *,
    rollout: str,
    rollout_interval: float = 30.0,
    nodepools: Sequence[NodePoolTarget] = (),
) -> WatchResult:
    common: dict[str, Any] = {
        "client": None, "settings": cfg.polling, "sinks": sinks, "labels": labels, "stop": stop,
        "rollout": rollout, "rollout_interval": rollout_interval, "deadline": cfg.shutdown_deadline,
        "nodepools": nodepools,
    }  # fmt: skip
    cfg = await complete_project(cfg, auth)  # once, before polling starts
    async with CCEClient(cfg.client_settings(), auth) as client:
        common["client"] = client
        if not live:
            return await watch(
                ids, notify=lambda text: click.echo(printable(f"cce-monitor: {text}"), err=True), **common
            )
        from monitor.cli.view import LiveView  # noqa: PLC0415 - rich's live machinery only when drawing

        async with LiveView(ids, title=title) as view:
            return await watch(ids, observers=[view.on_event], notify=view.note, **common)


@click.command()
@click.option("--nodes", default=60, show_default=True, help="Target of the simulated node pool's scale (from 0)")
@click.option("--scaleup", default=20, show_default=True, help="Nodes of the simulated ScaleupCluster job")
@click.option("--out", "out_path", default="cce-monitor-demo.jsonl", show_default=True, help="File sink path")
@click.option("--seed", default=7, show_default=True)
@click.option("--live/--no-live", default=None, help="Live view (default: when stdout is a terminal)")
@log_option
def demo(nodes: int, scaleup: int, out_path: str, seed: int, live: bool | None, log_level: str | None) -> None:
    """Watch a simulated bulk node rollout end to end (no cloud account needed; about a minute): a node pool
    scaled from 0 to --nodes that sells out a few nodes short, and a ScaleupCluster job of --scaleup nodes; a
    few nodes fail, as real ones do, and every other node is confirmed Active."""
    setup_logging(log_level or "error")
    live = sys.stdout.isatty() if live is None else live
    path = Path(out_path).expanduser().resolve()
    if nodes < 0 or scaleup < 0 or not nodes + scaleup:
        fail("demo: give --nodes and --scaleup as whole numbers >= 0, not both 0")
    try:
        path.unlink(missing_ok=True)
        file_sink: Sink = create_sink(f"file:{path}")
    except (MonitorError, OSError) as exc:
        fail(str(exc))
    sinks = [SinkBinding(file_sink)]
    if not live:
        sinks.insert(0, SinkBinding(create_sink("log")))

    async def main(stop: asyncio.Event) -> WatchResult:
        sim = Simulator(
            SimulatorConfig(
                seed=seed,
                rate_limit=40.0,
                p_500=0.02,
                p_503_html=0.01,
                p_malformed=0.01,
                p_slow=0.01,
                slow_seconds=1.0,
                job_duration=12.0,
            )
        )
        endpoint = await sim.start()
        try:
            planned = plan_demo(sim, scaleup=scaleup, nodes=nodes)
            ids = planned.job_ids
            pools = [NodePoolTarget(cluster, pool, target) for cluster, pool, target in planned.pools]
            cfg = config_from(
                {
                    "endpoint": endpoint,
                    "project_id": sim.config.project_id,
                    "http": {"total_timeout": 5.0},
                    "polling": {
                        "rate": 30.0,
                        "interval": 3.0,
                        "min_interval": 0.5,
                        "max_interval": 4.0,
                        "error_backoff": 0.5,
                        "error_backoff_max": 4.0,
                        "not_found_grace": 5.0,
                        "job_timeout": 150.0,
                        "stall_after": 60.0,
                        "node_timeout": 60.0,
                    },
                    "shutdown_deadline": 10.0,  # half of it, 5 s, for the polls in flight at the end
                },
                source="demo",
            )
            auth = TokenAuth(Secret(sim.config.token))
            title = "cce-monitor demo"
            return await _watch(
                ids, cfg, auth, sinks, {}, live, stop, title, rollout="demo", rollout_interval=3.0, nodepools=pools
            )
        finally:
            await sim.close()

    result, _ = run_with_signals(main)
    _report_unsent(result)
    jobs = [o for key, o in result.outcomes.items() if "/" not in key]
    awaited = [o for key, o in result.outcomes.items() if key.startswith("node/")]
    pools = [o for key, o in result.outcomes.items() if key.startswith("nodepool/")]
    line = f"demo: {len(jobs)} jobs ({sum(o is Outcome.FAILED for o in jobs)} Failed)"
    line += f", {sum(o is Outcome.SUCCESS for o in awaited)}/{len(awaited)} nodes confirmed Active"
    ends = ", ".join("settled" if o is Outcome.SUCCESS else "sold out or failed" for o in pools)
    line += f", {len(pools)} node pool ({ends})" if pools else ""
    click.echo(f"{line}; events in {path}", err=live)
    if result.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    # The rollout fails a few nodes (and sells out) on purpose: the demo succeeded if everything reached an end.
    sys.exit(0 if all(o is not Outcome.UNFINISHED for o in result.outcomes.values()) else 1)
