"""Helpers that tests and sink authors use: a fake clock, an event factory, a simulator starter, a receiver.

Nothing here imports pytest, so a sink written outside this repository can use the same pieces in its own
tests::

    from monitor.testing import Receiver, Reply, make_event

    async with Receiver(Reply(204)) as receiver:
        await my_sink.send(make_event())
    assert receiver.requests[0].json["type"] == "job.phase_changed"

* :class:`FakeClock`: a monotonic clock (``clock()`` → seconds) that moves only when told to.
* :func:`create_node_body`: a CCE ``CreateNode`` job body (one node of a rollout), failed the way CCE fails one.
* :func:`make_event`: a valid :class:`~monitor.core.events.Event` (a failed ``CreateNode`` job by default) with
  any field overridden; its id is derived from what it describes, as the monitor derives ids.
* :class:`Simulators`: starts :class:`monitor.sim.Simulator` instances on 127.0.0.1 and closes them all;
  :func:`sim_arrivals` reads when each request reached one, :func:`busiest_window` counts them as a gateway does.
* :class:`Receiver`: an HTTP server on 127.0.0.1 that records every request and answers from a script of
  :class:`Reply` objects, a fixed reply or a function; it can check Standard Webhooks signatures.
* :func:`running_daemon`: a :class:`~monitor.daemon.service.Daemon` run in process until the block ends.
* :class:`PostgresServer`: a throwaway PostgreSQL server on 127.0.0.1 (the distribution's binaries).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import inspect
import os
import pwd
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import orjson
from aiohttp import web

from monitor.config import Config
from monitor.core.events import Event, EventType, event_id
from monitor.daemon.service import Daemon
from monitor.sim import Simulator, SimulatorConfig

__all__ = [
    "EVENT_TIME",
    "JOB_ID",
    "PROJECT_ID",
    "FakeClock",
    "PostgresServer",
    "PostgresUnavailable",
    "Received",
    "Receiver",
    "Reply",
    "Responder",
    "RunningDaemon",
    "Simulators",
    "busiest_window",
    "create_node_body",
    "make_event",
    "postgres_bindir",
    "running_daemon",
    "sim_arrivals",
    "webhook_signature",
]

# ------------------------------------------------------------------------------------------------ clock


class FakeClock:
    """A monotonic clock the test moves by hand: ``clock()`` reads it, :meth:`advance` or ``clock.now = t`` moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ------------------------------------------------------------------------------------------------ events

PROJECT_ID = "0b0f5d1d9c8a4bfa9d0c6c1b0f3d2e1a"
JOB_ID = "354331b2c-229a-11e8-9c75-0255ac100ceb"
EVENT_TIME = datetime(2026, 11, 28, 6, 41, 0, tzinfo=UTC)


def make_event(**overrides: Any) -> Event:
    """An event: by default ``CreateNode`` job :data:`JOB_ID` went Running → Failed at :data:`EVENT_TIME`.

    Any field can be overridden (``type`` also as its string value). Unless ``id`` is given it is derived from
    the project, job, sub-job, type, phases and reason, so events that describe different things have different
    ids and the same overrides always give the same id.
    """
    fields: dict[str, Any] = {
        "type": EventType.JOB_PHASE_CHANGED,
        "time": EVENT_TIME,
        "project_id": PROJECT_ID,
        "job_id": JOB_ID,
        "job_type": "CreateNode",
        "phase": "Failed",
        "previous_phase": "Running",
        "reason": "Install node failed: timeout",
        **overrides,
    }
    fields["type"] = EventType(fields["type"])  # "job.not_found" will do
    if "id" not in fields:
        fields["id"] = event_id(
            fields["project_id"],
            fields["job_id"],
            fields.get("subjob_id"),
            fields["type"].value,
            fields["previous_phase"],
            fields["phase"],
            fields["reason"],
        )
    return Event(**fields)


def create_node_body(
    uid: str, phase: str = "Success", *, name: str = "", node_id: str = "", reason: str = ""
) -> dict[str, Any]:
    """A ``CreateNode`` job as CCE writes it (a sub-job of a ``ScaleupCluster``, or a pool node's own job): its
    ``CreateNodeVM`` step names the node id. Failed with ``reason``, the step says it and the job says only the
    generic "recycle resource", as CCE does; ``parse_job`` reads it (nest it in a parent's ``subJobs``)."""
    vm = {
        "metadata": {"uid": f"{uid}-vm"},
        "spec": {"type": "CreateNodeVM", "resourceID": node_id},
        "status": {"phase": phase, "reason": reason},
    }
    return {
        "metadata": {"uid": uid},
        "spec": {"type": "CreateNode", "resourceName": name, "subJobs": [vm]},
        "status": {"phase": phase, "reason": "recycle resource" if reason else ""},
    }


# ------------------------------------------------------------------------------------------- simulators


class Simulators:
    """Starts simulators on 127.0.0.1 and closes every one it started.

    ``sim, endpoint = await simulators.start(p_500=0.1)`` (or call the object itself): keyword arguments are
    :class:`~monitor.sim.SimulatorConfig` fields, applied over ``config`` when one is given. ``clock`` (default:
    the one given to the constructor, else real monotonic time) and ``epoch_ns`` go to the simulator.
    """

    def __init__(self, *, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock
        self.started: list[Simulator] = []

    async def start(
        self,
        config: SimulatorConfig | None = None,
        /,
        *,
        clock: Callable[[], float] | None = None,
        epoch_ns: int | None = None,
        **fields: Any,
    ) -> tuple[Simulator, str]:
        if fields:
            config = dataclasses.replace(config, **fields) if config is not None else SimulatorConfig(**fields)
        sim = Simulator(config, clock=clock or self.clock, epoch_ns=epoch_ns)
        self.started.append(sim)
        return sim, await sim.start()

    __call__ = start

    async def close(self) -> None:
        started, self.started = self.started, []
        for sim in started:
            await sim.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def sim_arrivals(endpoint: str) -> list[float]:
    """When each CCE API request reached the simulator at ``endpoint`` (seconds of its clock), read from its
    ``/_sim/arrivals`` page by page (the simulator may run in another process)."""
    arrivals: list[float] = []
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{endpoint}/_sim/arrivals", params={"after": str(len(arrivals))}) as resp:
                resp.raise_for_status()
                page = orjson.loads(await resp.read())["arrivals"]
            if not page:
                return arrivals
            arrivals.extend(page)


def busiest_window(times: Iterable[float], width: float = 1.0) -> int:
    """The most of ``times`` in any half-open window ``[t, t + width)``: what a gateway counting arrivals
    in sliding windows of ``width`` seconds sees at worst."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - width:
            start += 1
        best = max(best, end - start + 1)
    return best


# --------------------------------------------------------------------------------------------- receiver


def webhook_signature(secret: str | bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` value (``v1,<base64>``) for ``secret``.

    A ``whsec_`` secret's key is the base64 after the prefix; any other string is its UTF-8 bytes.
    """
    if isinstance(secret, str):
        key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    else:
        key = secret
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


@dataclass(frozen=True, slots=True)
class Reply:
    """What the receiver answers. ``delay``: held back that long first (or until ``Receiver.release`` is set)."""

    status: int = 200
    body: str | bytes = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0

    @classmethod
    def json(cls, data: object, status: int = 200, **headers: str) -> Reply:
        return cls(status, orjson.dumps(data), {"Content-Type": "application/json", **headers})


@dataclass(slots=True)
class Received:
    """One request as the receiver saw it.

    ``status`` is the answer chosen for it (0 until chosen); ``answered`` turns true once that answer has been
    sent back, after any :attr:`Reply.delay`.
    """

    at: float
    method: str
    path: str
    raw_query: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    signed: bool | None = None  # None: the receiver checks no signatures
    status: int = 0
    answered: bool = False

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def path_qs(self) -> str:
        """The request target: path and query as sent."""
        return f"{self.path}?{self.raw_query}" if self.raw_query else self.path

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def delivered(self) -> bool:
        """Whether its answer is (or will be, once held back) a 2xx."""
        return 200 <= self.status < 300


Responder = Callable[[Received], Reply | Awaitable[Reply]]
_OK = Reply()


class Receiver:
    """An HTTP receiver on 127.0.0.1 (any method, any path) that records every request in :attr:`requests`.

    Each request is answered by the first :class:`Reply` in :attr:`script` (consumed), else by ``reply``: a
    :class:`Reply`, or a function of the :class:`Received` request that returns one (possibly awaitable).
    ``reply`` may be reassigned at any time. With ``secret``, Standard Webhooks signatures are checked
    (``Received.signed``) and a request without a valid one is answered 400.

    ``async with Receiver() as r:`` starts and closes it; :meth:`stop` then :meth:`start` takes it down and
    brings it back on the same port. ``clock`` stamps ``Received.at``; ``ssl`` serves HTTPS.
    """

    def __init__(
        self,
        reply: Reply | Responder = _OK,
        *,
        path: str = "/hook",
        secret: str | bytes | None = None,
        clock: Callable[[], float] = time.monotonic,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        client_max_size: int = 1 << 20,
    ) -> None:
        self.reply = reply
        self.path = path
        self.secret = secret
        self.clock = clock
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.script: list[Reply] = []
        self.requests: list[Received] = []
        self.release = asyncio.Event()
        self._client_max_size = client_max_size
        self._runner: web.AppRunner | None = None

    # --- what it saw

    @property
    def base(self) -> str:
        """``http(s)://127.0.0.1:PORT``, once started."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return self.base + self.path

    @property
    def delivered(self) -> list[Received]:
        """The requests answered (or being answered) 2xx, in arrival order."""
        return [r for r in self.requests if r.delivered]

    @property
    def bad_signatures(self) -> int:
        return sum(1 for r in self.requests if r.signed is False)

    # --- serving

    def _signed(self, headers: Mapping[str, str], body: bytes) -> bool | None:
        if self.secret is None:
            return None
        expected = webhook_signature(
            self.secret, headers.get("webhook-id", ""), headers.get("webhook-timestamp", ""), body
        )
        given = headers.get("webhook-signature", "").split()
        return any(hmac.compare_digest(expected, g) for g in given)

    async def _answer(self, received: Received) -> Reply:
        if received.signed is False:
            return Reply(400, "bad signature")
        if self.script:
            return self.script.pop(0)
        if isinstance(self.reply, Reply):
            return self.reply
        reply = self.reply(received)
        return await reply if inspect.isawaitable(reply) else reply

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        received = Received(
            at=self.clock(),
            method=request.method,
            path=request.path,
            raw_query=request.rel_url.raw_query_string,
            query=dict(request.query),
            headers=dict(request.headers),
            body=body,
            signed=self._signed(request.headers, body),
        )
        self.requests.append(received)
        reply = await self._answer(received)
        received.status = reply.status
        if reply.delay and not self.release.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), reply.delay)
        received.answered = True
        text, data = (reply.body, None) if isinstance(reply.body, str) else (None, reply.body)
        return web.Response(status=reply.status, headers=dict(reply.headers), text=text, body=data)

    def app(self) -> web.Application:
        """The receiver as an aiohttp application (any method, any path), to serve it some other way."""
        app = web.Application(client_max_size=self._client_max_size)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def start(self) -> str:
        """Listen (on the same port as before after a :meth:`stop`); returns :attr:`url`."""
        if self._runner is None:
            runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5)
            await runner.setup()
            await web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context).start()
            self._runner = runner
            self.port = runner.addresses[0][1]
        return self.url

    async def stop(self) -> None:
        """Stop listening (connections are refused); :meth:`start` brings it back on the same port."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def close(self) -> None:
        """Release held answers and stop."""
        self.release.set()
        await self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


# ----------------------------------------------------------------------------------------------- daemon


@dataclass(frozen=True, slots=True)
class RunningDaemon:
    """A daemon started by :func:`running_daemon`: set ``stop`` to end it early; ``base`` is its API."""

    daemon: Daemon
    stop: asyncio.Event
    task: asyncio.Task[None]
    base: str


@contextlib.asynccontextmanager
async def running_daemon(
    config: Config,
    *,
    env: Mapping[str, str] | None = None,
    start_timeout: float = 15.0,
    stop_timeout: float = 30.0,
) -> AsyncIterator[RunningDaemon]:
    """Run a new :class:`Daemon` (``env`` for its ``${VAR}`` references, default none) until the block ends.

    It is ready (its API serving) when the block starts; if it ends or does not start within ``start_timeout``,
    what made it end is raised, else ``AssertionError``. At the end ``stop`` is set and its exit awaited.
    """
    daemon = Daemon(config, env={} if env is None else env)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop), name="daemon")
    ready = asyncio.create_task(daemon.started.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=start_timeout, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        if task in done:
            task.result()  # raises what made it end
        task.cancel()
        raise AssertionError(f"the daemon did not start within {start_timeout:g} s")
    assert daemon.endpoint is not None
    try:
        yield RunningDaemon(daemon, stop, task, daemon.endpoint)
    finally:
        stop.set()
        await asyncio.wait_for(task, stop_timeout)


# ------------------------------------------------------------------------------ a throwaway PostgreSQL


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine (``.ci/run`` installs them)."""


def postgres_bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` are: ``$PG_BINDIR``, else the newest ``/usr/lib/postgresql/*/bin``, else
    the ``PATH``; raises :class:`PostgresUnavailable` when there are none."""
    given = os.environ.get("PG_BINDIR")
    candidates = [Path(given)] if given else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version(p.parent.name), reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql")


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


class PostgresServer:
    """A PostgreSQL server of its own on 127.0.0.1, for tests and benchmarks: ``initdb`` into a temporary
    directory (as the unprivileged user ``nobody`` when run as root: initdb refuses root), ``pg_ctl start`` on a
    free port with durability off (``fsync``, ``synchronous_commit``: nothing here must survive a power cut), and
    password (SCRAM) authentication, so that the DSN carries a secret as a real one does.

    ``with PostgresServer() as pg:`` starts it (a few seconds) and removes it all at the end;
    :meth:`create_database` gives each test its own database.
    """

    user = "cce"

    def __init__(self, *, password: str | None = None, run_as: str = "nobody", options: str = "") -> None:
        """``options``: more server settings, as ``-c name=value`` flags (e.g. ``shared_preload_libraries``)."""
        self.password = password or "pg-" + secrets.token_urlsafe(18)
        self._options = options
        self.bindir = postgres_bindir()
        self.port = 0
        self._run_as = run_as if os.geteuid() == 0 else None
        self._root: Path | None = None

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (``postmaster.pid`` in it names the server process)."""
        if self._root is None:
            raise RuntimeError("the server is not running")
        return self._root / "data"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        result = subprocess.run(  # noqa: S603 (our own arguments)
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=self._run_as,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {(result.stderr or result.stdout)[-2000:]}")

    def start(self) -> None:
        root = self._root = Path(tempfile.mkdtemp(prefix="cce-pg-"))
        (root / "pwfile").write_text(self.password + "\n")
        if self._run_as is not None:
            owner = pwd.getpwnam(self._run_as)
            os.chown(root, owner.pw_uid, owner.pw_gid)
            os.chown(root / "pwfile", owner.pw_uid, owner.pw_gid)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._run(
            "initdb", "-D", str(root / "data"), "-U", self.user, "--pwfile", str(root / "pwfile"),
            "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions",
        )  # fmt: skip
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 " + self._options
        )
        self._run("pg_ctl", "-D", str(root / "data"), "-o", options, "-l", str(root / "log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        root, self._root = self._root, None
        if root is None:
            return
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(root / "data"), "-m", "immediate", "-w", "stop", timeout=30)
        shutil.rmtree(root, ignore_errors=True)

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; returns its DSN."""
        import psycopg  # noqa: PLC0415 (only tests and benchmarks that use PostgreSQL need the driver)

        name = name or "t_" + secrets.token_hex(6)
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.dsn(name)
