"""The daemon's commands: ``run`` (the daemon itself), ``check-config`` (is its file usable) and the API clients
``add``, ``ls``, ``status`` and ``deliveries ls|replay`` (dead letters), which talk to a running daemon.

A signal is how a daemon is told to stop: ``run`` then exits 0, after draining the sinks.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path
from typing import Any

import click
import orjson

from monitor.cce.auth import auth_from_env
from monitor.cli.options import log_option, parse_labels, read_ids
from monitor.cli.runtime import fail, run_with_signals, setup_logging
from monitor.config import Config, load_config
from monitor.core.errors import ConfigError, MonitorError
from monitor.core.model import validate_id
from monitor.core.reason import readable_reason
from monitor.core.text import printable
from monitor.daemon.storage import open_store
from monitor.engine.rollout import describe
from monitor.sinks import create_sink

__all__ = ["add", "check_config", "deliveries", "ls_cmd", "run", "status"]


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML config file")
@log_option
def run(config_path: str, log_level: str | None) -> None:
    """Run the daemon: track jobs added through the API, survive restarts, deliver to every sink.

    SIGTERM/SIGINT stop it cleanly (exit 0) after draining the sinks within `shutdown_deadline`.
    """
    try:
        cfg = load_config(config_path)
        setup_logging(log_level or cfg.logging.level, cfg.logging.format)
        from monitor.daemon.service import Daemon  # noqa: PLC0415 - the daemon's imports only for this command

        daemon = Daemon(cfg)
    except MonitorError as exc:
        fail(str(exc))

    async def main(stop: asyncio.Event) -> None:
        await daemon.run(stop)

    try:
        run_with_signals(main)  # a signal is how a daemon is told to stop: exit 0
    except MonitorError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot listen on {cfg.api.listen}: {exc.strerror}", 1)


@click.command("check-config")
@click.argument("config_path", type=click.Path(dir_okay=False))
def check_config(config_path: str) -> None:
    """Validate a config file (keys, types, ${ENV} references, sinks); exit 0 if it is usable, else 2."""
    try:
        cfg = load_config(config_path)
        cfg.client_settings()
        if cfg.auth is None:
            auth_from_env(os.environ, project_id=cfg.project_id, iam_endpoint=cfg.iam_endpoint)
        else:
            cfg.make_auth()
        if cfg.state.backend == "sqlite":
            state_dir = Path(cfg.state.path).expanduser().resolve().parent
            if not state_dir.is_dir():
                raise ConfigError(f"state.path: directory {state_dir} does not exist")
        else:  # reach the server and bring its schema up to date, as `run` would
            asyncio.run(_check_store(cfg))
        for entry in cfg.sinks:
            sink = create_sink(entry.spec, entry.options)
            asyncio.run(sink.aclose())
    except MonitorError as exc:
        fail(str(exc))
    click.echo(f"{config_path}: ok")


async def _check_store(cfg: Config) -> None:
    store = await open_store(cfg.state)
    await store.close()


_api_option = click.option(
    "--api", "api_url", envvar="CCE_MONITOR_API", default="http://127.0.0.1:8787", show_default=True,
    help="The daemon's API [env CCE_MONITOR_API]; token from env CCE_MONITOR_API_TOKEN",
)  # fmt: skip


def _api_call(method: str, url: str, body: object | None = None) -> Any:
    """One request to the daemon's API; errors become one line and exit 1 (2 for refused input)."""
    import aiohttp  # noqa: PLC0415

    token = os.environ.get("CCE_MONITOR_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/json"

    async def call(stop: asyncio.Event) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.request(
                method, url, data=orjson.dumps(body) if body is not None else None, headers=headers
            ) as resp,
        ):
            raw = await resp.read()
            try:
                return resp.status, orjson.loads(raw)
            except orjson.JSONDecodeError:
                return resp.status, {"error": raw.decode("utf-8", "replace")[:200]}

    try:
        (status, data), _ = run_with_signals(call)
    except aiohttp.ClientError as exc:
        fail(f"cannot reach the daemon at {url}: {exc}", 1)
    if status >= 400:
        message = data.get("error") if isinstance(data, dict) else None
        fail(f"API answered {status}: {message or data}", 2 if status in (400, 413) else 1)
    return data


@click.command()
@click.argument("job_ids", nargs=-1)
@click.option("--label", "label_pairs", multiple=True, help="KEY=VALUE (repeatable)")
@click.option("--rollout", default=None, help="Name of the rollout these jobs belong to [the node pool's id]")
@click.option("--cluster", "cluster_id", default=None, help="Cluster of --nodepool")
@click.option("--nodepool", "nodepool_id", default=None, help="Follow this node pool until it settles")
@click.option("--target", type=click.IntRange(min=0), default=None, help="Node count the pool must reach")
@_api_option
def add(
    job_ids: tuple[str, ...],
    label_pairs: tuple[str, ...],
    rollout: str | None,
    cluster_id: str | None,
    nodepool_id: str | None,
    target: int | None,
    api_url: str,
) -> None:
    """Hand JOB_ID... ('-' reads ids from stdin), or a node pool (--cluster C --nodepool P), to a running
    daemon."""
    try:
        labels = parse_labels(label_pairs)
        if (cluster_id is None) != (nodepool_id is None):
            raise ConfigError("--cluster and --nodepool go together")
        if target is not None and nodepool_id is None:
            raise ConfigError("--target needs --nodepool")
        if nodepool_id is not None and job_ids:
            raise ConfigError("give job ids or a node pool, not both")
        ids = read_ids(job_ids) if nodepool_id is None else []
        for value, what in ((cluster_id, "cluster id"), (nodepool_id, "node pool id"), (rollout, "rollout name")):
            if value is not None:
                validate_id(value, what)
    except MonitorError as exc:
        fail(str(exc))
    base = api_url.rstrip("/")
    if cluster_id is not None and nodepool_id is not None:
        pool: dict[str, object] = {"cluster_id": cluster_id, "nodepool_id": nodepool_id, "labels": labels}
        if target is not None:
            pool["target"] = target
        if rollout:
            pool["rollout"] = rollout
        data = _api_call("POST", f"{base}/v1/nodepools", pool)
        state = "following" if data.get("followed") else "already following"
        click.echo(printable(f"{state} node pool {nodepool_id} (rollout {data.get('rollout')})"))
        return
    body: dict[str, object] = {"job_ids": ids, "labels": labels}
    if rollout:
        body["rollout"] = rollout
    data = _api_call("POST", f"{base}/v1/jobs", body)
    click.echo(f"accepted {len(data.get('accepted', []))}, already known {len(data.get('known', []))}")


@click.command("ls")
@click.option("--phase", default=None, help="Only jobs in this phase (or outcome: timed_out, not_found)")
@click.option("--rollout", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON")
@_api_option
def ls_cmd(phase: str | None, rollout: str | None, as_json: bool, api_url: str) -> None:
    """List the jobs a running daemon knows."""
    from urllib.parse import urlencode  # noqa: PLC0415

    query = urlencode({k: v for k, v in {"phase": phase, "rollout": rollout}.items() if v})
    data = _api_call("GET", f"{api_url.rstrip('/')}/v1/jobs" + (f"?{query}" if query else ""))
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    for job in data.get("jobs", []):
        state = job.get("outcome") or job.get("phase") or "waiting"
        line = f"{job['job_id']}  {state:<12} {job.get('rollout') or '-':<16} {job.get('added_at', '')}"
        click.echo(printable(line))


@click.command()
@click.argument("rollout", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON")
@_api_option
def status(rollout: str | None, as_json: bool, api_url: str) -> None:
    """Show rollouts of a running daemon: progress, ETA and failures (one ROLLOUT, or all)."""
    base = api_url.rstrip("/")
    if rollout is not None:
        try:
            validate_id(rollout, "rollout name")
        except MonitorError as exc:
            fail(str(exc))
        summaries = [_api_call("GET", f"{base}/v1/rollouts/{rollout}")["rollout"]]
    else:
        summaries = _api_call("GET", f"{base}/v1/rollouts").get("rollouts", [])
    if as_json:
        click.echo(orjson.dumps(summaries, option=orjson.OPT_INDENT_2).decode())
        return
    if not summaries:
        click.echo("no rollouts")
    for summary in summaries:  # text that CCE sent goes through printable(): no escape sequences
        click.echo(printable(describe(summary)))
        for failure in summary.get("failed", []):
            who = failure.get("resource_name") or failure.get("node_id") or failure.get("job_id")
            reason = failure.get("reason")
            reason = readable_reason(reason) if isinstance(reason, str) else ""
            line = f"  {failure.get('outcome')}: {who} ({failure.get('job_id')}): {reason}"
            click.echo(printable(line))
        hidden = summary.get("failed_count", 0) - len(summary.get("failed", []))
        if hidden > 0:
            click.echo(f"  ... and {hidden} more failures")


@click.group()
def deliveries() -> None:
    """Events a receiver refused for good (dead letters) or that still wait: list them, send them again."""


@deliveries.command("ls")
@click.option("--state", type=click.Choice(["rejected", "pending"]), default="rejected", show_default=True)
@click.option("--sink", default=None, help="Only this sink's rows (its name, e.g. webhook:https://host/path)")
@click.option("--job", "job_id", default=None, help="Only this job's events")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON")
@_api_option
def deliveries_ls(state: str, sink: str | None, job_id: str | None, limit: int, as_json: bool, api_url: str) -> None:
    """List dead letters (or, with --state pending, events not yet delivered), oldest first."""
    from urllib.parse import urlencode  # noqa: PLC0415

    _check_job(job_id)
    params = {"state": state, "sink": sink, "job_id": job_id, "limit": str(limit)}
    query = urlencode({k: v for k, v in params.items() if v is not None})  # sink names hold ':' and '/'
    data = _api_call("GET", f"{api_url.rstrip('/')}/v1/deliveries?{query}")
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    rows = data.get("deliveries", [])
    if not rows:
        click.echo(f"no {state} deliveries")
    for row in rows:  # errors quote what receivers answered: printable() keeps escape sequences out
        event = row.get("event") or {}
        line = (
            f"{row.get('seq'):>6}  {row.get('sink')}  {event.get('type', '-'):<22} {event.get('job_id') or '-'}  "
            f"{row.get('attempts')}  {row.get('last_error') or '-'}"
        )
        click.echo(printable(line))


@deliveries.command("replay")
@click.argument("event_ids", nargs=-1)
@click.option("--sink", default=None, help="Only this sink's dead letters (without it: every durable sink)")
@click.option("--job", "job_id", default=None, help="Only this job's dead letters")
@_api_option
def deliveries_replay(event_ids: tuple[str, ...], sink: str | None, job_id: str | None, api_url: str) -> None:
    """Send dead letters again, with their event ids: EVENT_ID..., or those of --sink and/or --job."""
    _check_job(job_id)
    if not event_ids and sink is None and job_id is None:
        fail("give EVENT_ID..., --sink or --job; to replay every dead letter of a sink, name it with --sink")
    body: dict[str, object] = {"ids": list(event_ids)} if event_ids else {}
    body.update({k: v for k, v in {"sink": sink, "job_id": job_id}.items() if v is not None})
    data = _api_call("POST", f"{api_url.rstrip('/')}/v1/deliveries/replay", body)
    per_sink = Counter(str(r.get("sink")) for r in data.get("replayed", []))
    if not per_sink:
        click.echo("nothing to replay")
    for name, count in per_sink.items():
        click.echo(printable(f"replayed {count} to {name}"))


def _check_job(job_id: str | None) -> None:
    if job_id is not None:
        try:
            validate_id(job_id, "job id")
        except MonitorError as exc:
            fail(str(exc))
