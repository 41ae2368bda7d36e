"""The process around a command: logging, signals, running the command's coroutine, exit codes and error lines.

The only place in cce-monitor that configures logging or touches signals.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import click
import orjson

__all__ = ["EXIT_INTERRUPTED", "EXIT_USAGE", "fail", "run_with_signals", "setup_logging"]

logger = logging.getLogger("monitor.cli")

T = TypeVar("T")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """One line naming the problem on stderr, then exit with ``code`` (usage or configuration error by default)."""
    click.echo(f"cce-monitor: error: {message}", err=True)
    sys.exit(code)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Log records at ``level`` and above to stderr, as text lines or (``fmt="json"``) one JSON object each."""
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


def run_with_signals(main: Callable[[asyncio.Event], Awaitable[T]]) -> tuple[T, bool]:
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
