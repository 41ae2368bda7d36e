"""The ``file`` sink: events appended to a JSON Lines file, one ``event.to_json()`` per line.

Spec ``file:PATH`` (``~`` is expanded); option ``fsync`` (bool, default false) forces the lines to disk: the
events sent while one write is in flight are written (one ``write``) and fsync'd together next. Option
``shared`` (bool) says that every daemon on one PostgreSQL state writes this very path; required there (see
:class:`FileSinkSettings`).
The file is opened by the factory, so a missing directory or a file that cannot be written fails at
start-up as a :class:`ConfigError`. A new file is created with mode 0600 (events name jobs and clusters);
an existing file keeps its permissions and is appended to. A line goes to the page cache from the event
loop (microseconds); with ``fsync`` the write and the wait for the disk run in a worker thread, so that they
do not stall polling. A failed write raises a retryable :class:`SinkError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from monitor.core.errors import ConfigError, SinkError
from monitor.core.events import Event
from monitor.sinks import register

__all__ = ["FileSink", "FileSinkSettings", "make_file_sink"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True, slots=True)
class FileSinkSettings:
    """Parsed options of the ``file`` sink."""

    path: Path
    fsync: bool = False
    shared: bool = False
    """Daemons sharing one PostgreSQL state write this same file (a path they all see): they take turns
    delivering it (one lease holder at a time), so a file of each one's own would hold only part of the events."""


class FileSink:
    """Appends one JSON line per event to a file opened at construction; ``aclose`` closes it."""

    durable: ClassVar[bool] = True  # fed from the daemon's outbox

    __slots__ = ("_fd", "_next", "_pending", "_queue", "_writing", "name", "settings")

    def __init__(self, settings: FileSinkSettings) -> None:
        """Open (or create, mode 0600) the file for appending; raises :class:`ConfigError` if impossible."""
        self.settings = settings
        self.name = f"file:{settings.path}"
        path = settings.path
        if not path.parent.is_dir():
            raise ConfigError(f"file sink: directory {path.parent} does not exist")
        if path.is_dir():
            raise ConfigError(f"file sink: {path} is a directory")
        try:
            self._fd: int | None = os.open(path, _FLAGS, 0o600)
        except OSError as exc:
            raise ConfigError(f"file sink: cannot open {path}: {exc.strerror or exc}") from exc
        # The write in flight in the worker thread; aclose waits for it so the descriptor is not closed
        # (and possibly reused) under it, even when the sending task was cancelled.
        self._pending: asyncio.Future[None] | None = None
        self._writing = asyncio.Lock()  # one fsync'd write at a time: the outbox may send several events at once
        self._queue: list[bytes] = []  # lines of the next fsync'd batch
        self._next: asyncio.Future[None] | None = None  # ... and how its write ends

    def __repr__(self) -> str:
        return f"FileSink(path={str(self.settings.path)!r}, fsync={self.settings.fsync})"

    def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if self.settings.fsync:
            os.fsync(fd)

    async def send(self, event: Event) -> None:
        """Append one line (and fsync it if configured)."""
        data = event.to_json() + b"\n"
        if not self.settings.fsync:
            await self._settle()
            fd = self._fd  # read after settling: an aclose meanwhile must not leave us a closed descriptor
            if fd is None:
                raise SinkError(f"{self.name}: sink is closed", retryable=False)
            # A write to the page cache takes microseconds: done in the loop, like the log sink's. A thread hop
            # per event cost more than the write (9,000 first-sight events took seconds to land while the loop
            # was busy polling). Waiting for the disk (fsync) must not stall polling: that goes to a thread.
            try:
                self._write(fd, data)
            except OSError as exc:
                raise SinkError(f"{self.name}: write failed: {exc.strerror or exc}", retryable=True) from exc
            return
        # fsync: group commit. Lines sent while a write is in flight join the next batch, written and fsync'd
        # once for all of them: the outbox sends up to delivery.concurrency events at once.
        loop = asyncio.get_running_loop()
        batch = self._next
        if batch is None:
            batch = self._next = loop.create_future()
            batch.add_done_callback(_retrieved)
        self._queue.append(data)
        async with self._writing:
            if batch is self._next:  # not written yet: this send writes the whole batch
                lines, self._queue, self._next = self._queue, [], None
                await self._settle()
                fd = self._fd
                if fd is None:
                    batch.set_exception(SinkError(f"{self.name}: sink is closed", retryable=False))
                else:
                    future = loop.run_in_executor(None, self._write, fd, b"".join(lines))
                    self._pending = future
                    future.add_done_callback(lambda done: self._finished(done, batch))
                    with contextlib.suppress(OSError):
                        await asyncio.shield(future)  # (cancelled: the batch still ends, for the other senders)
        await asyncio.shield(batch)

    def _finished(self, write: asyncio.Future[None], batch: asyncio.Future[None]) -> None:
        """A batch's write ended: every send in it hears how."""
        if self._pending is write:
            self._pending = None
        if batch.done():
            return
        exc = None if write.cancelled() else write.exception()
        if exc is None and not write.cancelled():
            batch.set_result(None)
        else:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc or "cancelled"
            batch.set_exception(SinkError(f"{self.name}: write failed: {reason}", retryable=True))

    async def _settle(self) -> None:
        """Wait for a write left running by a cancelled ``send``; its outcome was already given up on."""
        pending, self._pending = self._pending, None
        if pending is not None:
            with contextlib.suppress(OSError):
                await asyncio.shield(pending)

    async def aclose(self) -> None:
        """Wait for a write still in flight, then close the file."""
        await self._settle()
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _retrieved(batch: asyncio.Future[None]) -> None:
    """A batch's failure is raised to its senders; if they were all cancelled, nobody is left to be told."""
    if not batch.cancelled():
        batch.exception()


def _parse(target: str | None, options: Mapping[str, object]) -> FileSinkSettings:
    if not target or not target.strip():
        raise ConfigError("file sink: a path is required, e.g. file:/var/log/cce-monitor.jsonl")
    unknown = sorted(set(options) - {"fsync", "shared"})
    if unknown:
        raise ConfigError(f"file sink: unknown option {unknown[0]!r} (known: fsync, shared)")
    for key in ("fsync", "shared"):
        if not isinstance(options.get(key, False), bool):
            raise ConfigError(f"file sink: option {key!r} must be true or false, got {options[key]!r}")
    return FileSinkSettings(
        path=Path(target).expanduser(), fsync=bool(options.get("fsync", False)), shared=bool(options.get("shared"))
    )


@register("file")
def make_file_sink(target: str | None, options: Mapping[str, object]) -> FileSink:
    """Factory for ``file:PATH``: parses the options and opens the file."""
    return FileSink(_parse(target, options))
