"""The ``cce-monitor`` command line. The only place that configures logging or touches signals.

Exit codes: 0 success; 1 a job Failed, timed out or was not found (``watch``), or an API error (``get``);
2 usage or configuration error, with one line naming the problem; 130 ``watch``/``demo`` interrupted
(SIGINT/SIGTERM), after the sinks were flushed. ``simulate`` is a server: a signal is its normal end (0).

Credentials are never taken from flags (they would show in ``ps`` and shell history): only from the
environment (``CCE_AUTH_TOKEN``; ``HUAWEICLOUD_SDK_AK`` + ``HUAWEICLOUD_SDK_SK``; ``CCE_IAM_USER`` +
``CCE_IAM_PASSWORD`` + ``CCE_IAM_DOMAIN``) or the config file's ``${ENV}`` references.

``watch`` and ``get`` take their settings from one place, :func:`monitor.config.complete_config`: the file (or
none), then the environment, then the flags, validated once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import orjson

from monitor.cce.auth import ENV_IAM_ENDPOINT, Auth, TokenAuth, auth_from_env
from monitor.cce.client import CCEClient, ClientSettings
from monitor.cce.throttle import RateLimiter
from monitor.config import Config, Flag, complete_config, load_config
from monitor.core.errors import ConfigError, MonitorError
from monitor.core.model import job_to_json, validate_id, validate_label
from monitor.core.reason import readable_reason
from monitor.core.secret import Secret
from monitor.core.text import printable
from monitor.core.version import __version__
from monitor.engine.bus import EventFilter
from monitor.engine.pipeline import SinkBinding, WatchResult, watch
from monitor.engine.rollout import describe
from monitor.engine.scheduler import SchedulerSettings
from monitor.sim import Simulator, SimulatorConfig, run_forever
from monitor.sinks import Sink, create_sink

__all__ = ["main"]

logger = logging.getLogger("monitor.cli")

T = TypeVar("T")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"cce-monitor: error: {message}", err=True)
    sys.exit(code)


def _setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is noise for a client.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data).decode()


def _run(main: Callable[[asyncio.Event], Awaitable[T]]) -> tuple[T, bool]:
    """Run ``main(stop)``; the first SIGINT/SIGTERM sets ``stop``, a second one cancels outright."""

    async def runner() -> tuple[T, bool]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        task = asyncio.current_task()
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                logger.info("signal received: stopping (again to abort)")
                stop.set()
            elif task is not None:
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await main(stop), signals > 0
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(runner())
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit(EXIT_INTERRUPTED)


def _read_ids(args: Sequence[str]) -> list[str]:
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


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--label {pair!r}: expected KEY=VALUE")
        validate_label(key, value)
        out[key] = value
    return out


def _where_flags(endpoint: str | None, project_id: str | None, iam_endpoint: str | None) -> list[Flag]:
    """The flags that say where CCE is; with the environment and the file they go through complete_config."""
    return [
        Flag("endpoint", "--endpoint", endpoint),
        Flag("project_id", "--project-id", project_id),
        Flag("iam_endpoint", "--iam-endpoint", iam_endpoint),
    ]


def _auth(cfg: Config) -> Auth:
    """The file's ``auth:`` if it has one, else credentials from the environment."""
    # cfg.iam_endpoint already holds --iam-endpoint, else CCE_IAM_ENDPOINT, else the file's: hide the variable
    # so that auth_from_env does not put it back in front of the flag.
    env = {k: v for k, v in os.environ.items() if k != ENV_IAM_ENDPOINT}
    return cfg.make_auth() or auth_from_env(env, project_id=cfg.project_id, iam_endpoint=cfg.iam_endpoint)


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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="cce-monitor")
def cli() -> None:
    """Watch Huawei Cloud / Open Telekom Cloud CCE jobs and report their progress."""


# The environment variables behind these flags are read by complete_config, which knows where each value came from.
_endpoint_option = click.option(
    "--endpoint", help="CCE endpoint, e.g. https://cce.eu-de.otc.t-systems.com [env CCE_ENDPOINT]"
)
_project_option = click.option("--project-id", help="Project id [env CCE_PROJECT_ID or HUAWEICLOUD_SDK_PROJECT_ID]")
_iam_option = click.option("--iam-endpoint", help="IAM endpoint for password auth [env CCE_IAM_ENDPOINT]")
_log_option = click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None, help="Default: warning"
)


@cli.command()
@click.argument("job_id")
@_endpoint_option
@_project_option
@_iam_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file")
@_log_option
def get(
    job_id: str,
    endpoint: str | None,
    project_id: str | None,
    iam_endpoint: str | None,
    config_path: str | None,
    log_level: str | None,
) -> None:
    """Print one job's progress as JSON."""
    _setup_logging(log_level or "warning")
    try:
        validate_id(job_id, "job id")
        cfg = complete_config(config_path, _where_flags(endpoint, project_id, iam_endpoint))
        settings = cfg.client_settings()
        auth = _auth(cfg)
    except MonitorError as exc:
        _fail(str(exc))

    async def main(stop: asyncio.Event) -> bytes:
        async with CCEClient(settings, auth) as client:
            job = await client.get_job(job_id)
        return job_to_json(job, indent=True)

    try:
        out, _ = _run(main)
    except MonitorError as exc:
        _fail(str(exc), 1)
    click.echo(out.decode())


@cli.command("watch")
@click.argument("job_ids", nargs=-1, required=True)
@_endpoint_option
@_project_option
@_iam_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Requests per second to CCE [10]")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), help="Seconds between polls of a job [10]")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Give up on a job after this [3600]")
@click.option("--sink", "sink_specs", multiple=True, help="log | file:PATH | webhook:URL (repeatable)")
@click.option("--label", "label_pairs", multiple=True, help="KEY=VALUE added to every event (repeatable)")
@click.option("--rollout", default="watch", show_default=True, help="Name of the rollout these jobs form")
@click.option("--live/--no-live", default=None, help="Live view (default: when stdout is a terminal)")
@_log_option
def watch_cmd(
    job_ids: tuple[str, ...],
    endpoint: str | None,
    project_id: str | None,
    iam_endpoint: str | None,
    config_path: str | None,
    rate: float | None,
    interval: float | None,
    timeout: float | None,
    sink_specs: tuple[str, ...],
    label_pairs: tuple[str, ...],
    rollout: str,
    live: bool | None,
    log_level: str | None,
) -> None:
    """Watch JOB_ID... until each one finishes ('-' reads ids from stdin).

    Exit 0 when all succeed, 1 when any failed, timed out or was not found, 2 on usage or config errors,
    130 when interrupted.
    """
    live = sys.stdout.isatty() if live is None else live
    try:
        flags = [
            *_where_flags(endpoint, project_id, iam_endpoint),
            Flag("polling.rate", "--rate", rate),
            Flag("polling.interval", "--interval", interval),
            Flag("polling.job_timeout", "--timeout", timeout),
        ]
        cfg = complete_config(config_path, flags)
        # Without a file, the CLI's own default level (warning), not the file's (info).
        _setup_logging(log_level or (cfg.logging.level if config_path else "warning"), cfg.logging.format)
        ids = _read_ids(job_ids)
        settings = cfg.client_settings()
        sched = cfg.scheduler_settings()
        auth = _auth(cfg)
        labels = {**cfg.labels, **_labels(label_pairs)}
        validate_id(rollout, "rollout name")
        sinks = _sinks(cfg, sink_specs, plain_log=not live)
    except MonitorError as exc:
        _fail(str(exc))
    result, _ = _run(lambda stop: _watch(ids, settings, auth, sched, sinks, labels, live, stop, rollout=rollout))
    _report_unsent(result)
    sys.exit(result.exit_code)


def _report_unsent(result: WatchResult) -> None:
    """One line on stderr per sink that closed with events it could not send in time."""
    for name, kinds in result.unsent.items():
        what = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
        click.echo(printable(f"cce-monitor: not sent to {name}: {what}"), err=True)


async def _watch(
    ids: list[str],
    settings: ClientSettings,
    auth: Auth,
    sched: SchedulerSettings,
    sinks: list[SinkBinding],
    labels: dict[str, str],
    live: bool,
    stop: asyncio.Event,
    title: str = "cce-monitor",
    *,
    rollout: str,
    rollout_interval: float = 30.0,
) -> WatchResult:
    limiter = RateLimiter(sched.rate, burst=sched.burst)
    common: dict[str, Any] = {
        "client": None, "settings": sched, "sinks": sinks, "labels": labels, "stop": stop, "rollout": rollout,
        "rollout_interval": rollout_interval,
    }  # fmt: skip
    async with CCEClient(settings, auth, limiter=limiter) as client:
        common["client"] = client
        if not live:
            return await watch(
                ids, notify=lambda text: click.echo(printable(f"cce-monitor: {text}"), err=True), **common
            )
        from monitor.cli.view import LiveView  # noqa: PLC0415 - rich's live machinery only when drawing

        async with LiveView(ids, title=title) as view:
            return await watch(ids, observers=[view.on_event], notify=view.note, **common)


@cli.command()
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
@_log_option
def simulate(**opts: Any) -> None:
    """Run the embedded CCE simulator (for tests, benchmarks and demos; loopback by default).

    Prints one JSON line {"endpoint", "project_id", "token", "job_ids"} on stdout, then serves until stopped.
    """
    _setup_logging(opts["log_level"] or "warning")
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
        _fail(str(exc))

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
        _run(main)  # a signal is how a server is told to stop: exit 0
    except OSError as exc:
        _fail(f"cannot serve on {opts['host']}:{opts['port']}: {exc.strerror}", 1)


@cli.command()
@click.option("--jobs", default=50, show_default=True, help="Jobs in the simulated rollout")
@click.option("--out", "out_path", default="cce-monitor-demo.jsonl", show_default=True, help="File sink path")
@click.option("--seed", default=7, show_default=True)
@click.option("--live/--no-live", default=None, help="Live view (default: when stdout is a terminal)")
@_log_option
def demo(jobs: int, out_path: str, seed: int, live: bool | None, log_level: str | None) -> None:
    """Watch a simulated bulk node rollout end to end (no cloud account needed; under a minute)."""
    _setup_logging(log_level or "error")
    live = sys.stdout.isatty() if live is None else live
    path = Path(out_path).expanduser().resolve()
    try:
        path.unlink(missing_ok=True)
        file_sink: Sink = create_sink(f"file:{path}")
    except (MonitorError, OSError) as exc:
        _fail(str(exc))
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
            ids = sim.start_rollout(jobs, fail_ratio=0.08, not_found_for=1.0)
            settings = ClientSettings(endpoint=endpoint, project_id=sim.config.project_id, total_timeout=5.0)
            sched = SchedulerSettings(
                rate=20.0,
                interval=2.0,
                min_interval=0.5,
                max_interval=4.0,
                error_backoff=0.5,
                error_backoff_max=4.0,
                not_found_grace=5.0,
                job_timeout=120.0,
                stall_after=60.0,
                drain=5.0,
            )
            auth = TokenAuth(Secret(sim.config.token))
            title = "cce-monitor demo"
            return await _watch(
                ids, settings, auth, sched, sinks, {}, live, stop, title, rollout="demo", rollout_interval=3.0
            )
        finally:
            await sim.close()

    result, _ = _run(main)
    _report_unsent(result)
    counts: dict[str, int] = {}
    for outcome in result.outcomes.values():
        counts[outcome.value] = counts.get(outcome.value, 0) + 1
    summary = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    click.echo(f"demo: {len(result.outcomes)} jobs watched: {summary}; events in {path}", err=live)
    if result.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    # The rollout fails a few jobs on purpose: the demo succeeded if every job reached an end.
    sys.exit(0 if all(o.value in ("Success", "Failed") for o in result.outcomes.values()) else 1)


@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="YAML config file")
@_log_option
def run(config_path: str, log_level: str | None) -> None:
    """Run the daemon: track jobs added through the API, survive restarts, deliver to every sink.

    SIGTERM/SIGINT stop it cleanly (exit 0) after draining the sinks within `shutdown_deadline`.
    """
    try:
        cfg = load_config(config_path)
        _setup_logging(log_level or cfg.logging.level, cfg.logging.format)
        from monitor.daemon.service import Daemon  # noqa: PLC0415 - the daemon's imports only for this command

        daemon = Daemon(cfg)
        cfg.scheduler_settings()  # cross-field checks now, not after start-up
    except MonitorError as exc:
        _fail(str(exc))

    async def main(stop: asyncio.Event) -> None:
        await daemon.run(stop)

    try:
        _run(main)  # a signal is how a daemon is told to stop: exit 0
    except MonitorError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen on {cfg.api.listen}: {exc.strerror}", 1)


@cli.command("check-config")
@click.argument("config_path", type=click.Path(dir_okay=False))
def check_config(config_path: str) -> None:
    """Validate a config file (keys, types, ${ENV} references, sinks); exit 0 if it is usable, else 2."""
    try:
        cfg = load_config(config_path)
        cfg.scheduler_settings()
        cfg.client_settings()
        if cfg.auth is None:
            auth_from_env(os.environ, project_id=cfg.project_id, iam_endpoint=cfg.iam_endpoint)
        else:
            cfg.make_auth()
        state_dir = Path(cfg.state.path).expanduser().resolve().parent
        if not state_dir.is_dir():
            raise ConfigError(f"state.path: directory {state_dir} does not exist")
        for entry in cfg.sinks:
            sink = create_sink(entry.spec, entry.options)
            asyncio.run(sink.aclose())
    except MonitorError as exc:
        _fail(str(exc))
    click.echo(f"{config_path}: ok")


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
        (status, data), _ = _run(call)
    except aiohttp.ClientError as exc:
        _fail(f"cannot reach the daemon at {url}: {exc}", 1)
    if status >= 400:
        message = data.get("error") if isinstance(data, dict) else None
        _fail(f"API answered {status}: {message or data}", 2 if status in (400, 413) else 1)
    return data


@cli.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--label", "label_pairs", multiple=True, help="KEY=VALUE (repeatable)")
@click.option("--rollout", default=None, help="Name of the rollout these jobs belong to")
@_api_option
def add(job_ids: tuple[str, ...], label_pairs: tuple[str, ...], rollout: str | None, api_url: str) -> None:
    """Hand JOB_ID... to a running daemon ('-' reads ids from stdin)."""
    try:
        ids = _read_ids(job_ids)
        labels = _labels(label_pairs)
    except MonitorError as exc:
        _fail(str(exc))
    body: dict[str, object] = {"job_ids": ids, "labels": labels}
    if rollout:
        body["rollout"] = rollout
    data = _api_call("POST", f"{api_url.rstrip('/')}/v1/jobs", body)
    click.echo(f"accepted {len(data.get('accepted', []))}, already known {len(data.get('known', []))}")


@cli.command("ls")
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


@cli.command()
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
            _fail(str(exc))
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
            who = failure.get("resource_name") or failure.get("job_id")
            reason = failure.get("reason")
            reason = readable_reason(reason) if isinstance(reason, str) else ""
            line = f"  {failure.get('outcome')}: {who} ({failure.get('job_id')}): {reason}"
            click.echo(printable(line))
        hidden = summary.get("failed_count", 0) - len(summary.get("failed", []))
        if hidden > 0:
            click.echo(f"  ... and {hidden} more failures")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="cce-monitor")
