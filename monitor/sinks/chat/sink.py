"""The :class:`ChatSink` base class: intake, the flusher, delivery within the budget, drain and close (see the
package docstring, :mod:`monitor.sinks.chat`). The platform modules subclass it.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar, Literal

import aiohttp
import orjson
from yarl import URL

from monitor.cce.tls import ssl_context
from monitor.core.backoff import backoff_ceiling
from monitor.core.errors import SinkError
from monitor.core.events import Event
from monitor.core.version import USER_AGENT
from monitor.sinks.chat.answers import Verdict
from monitor.sinks.chat.budget import Budget, Timing, budget_windows
from monitor.sinks.chat.digest import Pending, build_digest, build_final
from monitor.sinks.chat.options import ChatSettings, Platform
from monitor.sinks.chat.render import Message, fit, plural

__all__ = ["ChatSink"]

logger = logging.getLogger(__package__)  # the package's logger: log lines are named monitor.sinks.chat

_MIN_NAP = 0.001  # never park for less: a float rounding must not make the flusher spin
_MAX_ANSWER = 64 * 1024  # bytes of a bot's answer that are read
_STRIKES = 3  # final non-retryable failures in a row before listed job events are reduced to counts
_QUERY_IN_TEXT = re.compile(r"(https?://[^\s?#\"'<>]+)\?[^\s\"'<>]*")


class ChatSink(abc.ABC):
    """A chat bot sink; see the package docstring (:mod:`monitor.sinks.chat`). Subclasses set :attr:`platform`
    and say how a message is rendered (:meth:`_render`, :meth:`_fits`), how a request is made (:meth:`_request`,
    for signing) and how an answer reads (:meth:`_verdict`)."""

    platform: ClassVar[Platform]

    durable: ClassVar[bool] = True  # the daemon feeds it from an outbox; rows are marked when acknowledged
    acknowledges: ClassVar[bool] = True

    __slots__ = (
        "_budget",
        "_closed",
        "_deadline",
        "_drained",
        "_in_flight",
        "_last_progress",
        "_notify",
        "_parked",
        "_pending",
        "_resume_at",
        "_scrub",
        "_seq",
        "_session",
        "_ssl",
        "_strikes",
        "_task",
        "_timing",
        "_wake",
        "failed_messages",
        "name",
        "on_delivered",
        "sent_messages",
        "settings",
    )

    def __init__(self, settings: ChatSettings, *, timing: Timing | None = None) -> None:
        self.settings = settings
        self.name = f"{self.platform.kind}:{settings.shown_url}"
        # Built now, so that a bad bundle is a ConfigError here and not a dropped message at the first send.
        self._ssl = ssl_context(settings.ca_bundle, what=f"{self.platform.kind} sink: option 'ca_bundle'")
        self._timing = timing or Timing()
        self._budget = Budget(budget_windows(settings.rate_per_minute, settings.rate_per_second))
        self._pending = Pending(settings.max_pending)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._parked: Literal["wait", "nap"] | None = None
        self._closed = False
        self._deadline: float | None = None  # set by drain(): send everything now, give up at this time
        self._drained = asyncio.Event()
        self._notify: Callable[[str], None] | None = None
        self.on_delivered: Callable[[Sequence[str]], Awaitable[None]] | None = None
        self._seq = 0
        self._in_flight = 0
        self._strikes = 0
        self._resume_at = -math.inf
        self._last_progress = -math.inf
        self.sent_messages = 0
        self.failed_messages = 0
        url = settings.url
        spellings = {str(url), url.human_repr()}
        parts = {url.raw_query_string, url.query_string, url.password or "", url.raw_password or ""}
        parts |= {v for v in url.query.values() if len(v) >= 4}
        parts |= {s for s in url.raw_path.split("/") if len(s) >= 4 and s not in settings.shown_url}
        if settings.secret is not None:
            parts.add(settings.secret.reveal())
        self._scrub = tuple(sorted(spellings, key=len, reverse=True)) + tuple(
            sorted((p for p in parts if p), key=len, reverse=True)
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, backlog={self.backlog}, settings={self.settings!r})"

    # ---- what a platform says

    @abc.abstractmethod
    def _render(self, message: Message) -> dict[str, Any]:
        """The request body for ``message`` (before signing)."""

    @abc.abstractmethod
    def _fits(self, body: dict[str, Any]) -> bool:
        """Whether ``body`` is within the platform's size limits."""

    @abc.abstractmethod
    def _verdict(self, status: int, headers: Mapping[str, str], raw: bytes) -> Verdict:
        """How to read the bot's answer."""

    def _request(self, body: dict[str, Any]) -> tuple[URL, bytes]:
        """URL and bytes of one attempt (signing platforms add their signature here, fresh per attempt)."""
        return self.settings.url, orjson.dumps(body)

    # ---- state, for metrics and tests

    @property
    def budget(self) -> Budget:
        """The destination's request budget."""
        return self._budget

    @property
    def backlog(self) -> int:
        """Events accepted and not yet delivered (pending or in a message being sent)."""
        return self._pending.count + self._in_flight

    @property
    def dropped_events(self) -> int:
        """Job events counted rather than kept because ``max_pending`` were already waiting."""
        return self._pending.dropped

    @property
    def idle(self) -> bool:
        """Whether the flusher is parked with nothing to do at once (no flusher counts as idle)."""
        task = self._task
        if task is None or task.done():
            return True
        if self._parked is None:
            return False
        return not (self._parked == "wait" and self._wake.is_set())

    def render(self, message: Message) -> dict[str, Any]:
        """``message`` as this platform's body, cut to its size limit."""
        return fit(message, self._render, self._fits, self.settings.max_items)

    # ---- intake

    def wants(self, event: Event) -> bool:
        """Whether this sink takes ``event`` (option ``events``); the daemon queues only those for it."""
        return self.settings.events(event)

    async def send(self, event: Event) -> None:
        """Take ``event`` into the pending digest if the sink wants it; never waits for the network."""
        if self._closed:
            raise SinkError(f"{self.name}: sink is closed", retryable=False)
        if not self.settings.events(event):
            await self._acknowledge([event.id])
            return
        self._seq += 1
        self._pending.add(event, self._seq, self._timing.clock())
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._guarded(), name=f"chat flusher {self.name}")
        self._wake.set()

    async def _acknowledge(self, ids: Sequence[str]) -> None:
        """Tell the owner (the daemon's outbox) that these events are delivered, or need no delivery."""
        if self.on_delivered is not None and ids:
            try:
                await self.on_delivered(ids)
            except Exception:
                logger.exception("%s: could not record %s as delivered", self.name, plural(len(ids), "event"))

    # ---- the flusher

    async def _guarded(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception(
                "%s: flusher crashed with %d events pending; restarting at the next event",
                self.name,
                self._pending.count,
            )
            self._drained.set()
        else:  # pragma: no cover - _run never returns
            logger.error("%s: flusher finished unexpectedly", self.name)

    def _choose(self, now: float) -> tuple[Literal["digest", "finished", "final"] | None, float | None]:
        """What to send next and after how long; ``(None, None)`` when nothing is pending."""
        pending = self._pending
        common = max(self._budget.delay(now), self._resume_at - now)
        if self._deadline is not None:  # draining: everything in one message as soon as the budget allows
            return ("final", max(0.0, common)) if pending.count else (None, None)
        candidates: list[tuple[int, Literal["digest", "finished"], float]] = []
        finished = pending.finished_seq()
        if finished is not None:
            candidates.append((finished, "finished", 0.0))
        if pending.has_digest:
            gate = pending.first_at + self.settings.coalesce - now
            if pending.progress_only:
                gate = max(gate, self._last_progress + self.settings.progress_every - now)
            candidates.append((pending.digest_seq(), "digest", gate))
        if not candidates:
            return None, None
        ready = [c for c in candidates if c[2] <= 0]
        if ready:
            # A summary takes everything pending with it (older digests too): when one is ready it goes first,
            # or an older digest would spend the budget and the summary wait a window behind it.
            kind = "finished" if any(c[1] == "finished" for c in ready) else min(ready)[1]
            return kind, max(0.0, common)
        return None, max(min(c[2] for c in candidates), common)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self._timing.clock()
            kind, wait = self._choose(now)
            if self._deadline is not None and (wait is None or now + wait > self._deadline):
                self._drained.set()  # all sent, or the rest cannot be sent in time: drain() reports it
                await self._park(None)
                continue
            if wait is None:
                await self._park(None)
                continue
            if kind is None or wait > 0:
                if kind == "final" and self._notify is not None and wait >= 1:
                    self._notify(
                        f"{self.name}: waiting {wait:.0f}s for the rate budget to send the final message "
                        f"({plural(self._pending.count, 'event')})"
                    )
                await self._park(max(wait, _MIN_NAP))
                continue
            if kind in ("final", "finished"):  # a summary takes everything pending with it: nothing trails it
                batch = self._pending.take_all()
                message = build_final(batch, self.settings)
            else:
                batch = self._pending.take_digest()
                message = build_digest(batch, self.settings)
            self._in_flight = batch.events
            try:
                verdict = await self._deliver(message)
            except asyncio.CancelledError:
                self._pending.restore(batch)
                raise
            except Exception:  # a bug: drop this message rather than fail on it forever
                logger.exception("%s: dropped a message carrying %s", self.name, plural(batch.events, "event"))
                await self._acknowledge(batch.ids())
                continue
            finally:
                self._in_flight = 0
            now = self._timing.clock()
            if verdict.ok:
                self._strikes = 0
                if batch.rollouts:
                    self._last_progress = now
                await self._acknowledge(batch.ids())
                continue
            self._strikes = 0 if verdict.retryable else self._strikes + 1
            demote = self._strikes >= _STRIKES
            if demote:
                self._strikes = 0
                logger.warning(
                    "%s: the bot refused %d messages in a row; listing their jobs as counts only", self.name, _STRIKES
                )
            self._pending.restore(batch, demote=demote)
            self._resume_at = now + self.settings.backoff_max

    async def _park(self, delay: float | None) -> None:
        """Wait for a new event, at most ``delay`` seconds (None: no limit)."""
        self._parked = "wait"
        try:
            if delay is None:
                await self._wake.wait()
                return
            waiter = asyncio.ensure_future(self._wake.wait())
            sleeper = asyncio.ensure_future(self._timing.sleep(delay))
            try:
                await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (waiter, sleeper):
                    task.cancel()
                await asyncio.gather(waiter, sleeper, return_exceptions=True)
        finally:
            self._parked = None

    async def _nap(self, delay: float) -> None:
        """Sleep ``delay`` seconds whatever arrives (backoff, or waiting for the budget in a retry)."""
        self._parked = "nap"
        try:
            await self._timing.sleep(max(delay, _MIN_NAP))
        finally:
            self._parked = None

    # ---- delivery

    def _backoff(self, attempt: int) -> float:
        return self._timing.jitter(
            0.0, backoff_ceiling(attempt, self.settings.backoff_initial, self.settings.backoff_max)
        )

    async def _deliver(self, message: Message, *, final: bool = False) -> Verdict:
        """Send ``message`` within the budget, retrying as the package docstring says; the last verdict."""
        body = self.render(message)
        attempts = 1 if final else self.settings.max_attempts
        verdict = Verdict(False, "no attempt made", retryable=True)
        attempt = 0
        while attempt < attempts:
            now = self._timing.clock()
            wait = self._budget.delay(now)
            if wait > 0:
                if final:
                    verdict = Verdict(False, "the rate budget is spent", retryable=True)
                    break
                if self._deadline is not None and now + wait > self._deadline:
                    verdict = Verdict(False, "the rate budget is spent until after the deadline", retryable=True)
                    break
                await self._nap(wait)
                continue
            attempt += 1
            verdict = await self._post(*self._request(body))
            if verdict.ok:
                self.sent_messages += 1
                return verdict
            if verdict.throttled:
                pause = verdict.retry_after if verdict.retry_after is not None else self.platform.throttle_pause
                self._budget.hold(self._timing.clock() + pause)
            if not verdict.retryable or attempt >= attempts:
                break
            delay = max(verdict.retry_after or 0.0, self._backoff(attempt - 1))
            if self._deadline is not None and self._timing.clock() + delay > self._deadline:
                break
            logger.debug(
                "%s: attempt %d/%d failed: %s; retrying in %.2fs", self.name, attempt, attempts, verdict.detail, delay
            )
            await self._nap(delay)
        self.failed_messages += 1
        logger.warning(
            "%s: a message carrying %s was not delivered after %s: %s%s",
            self.name,
            plural(message.events, "event"),
            plural(attempt, "attempt"),
            verdict.detail,
            "" if final else "; its events stay pending for the next digest",
        )
        return verdict

    def _session_for_send(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def _post(self, url: URL, data: bytes) -> Verdict:
        session = self._session_for_send()
        try:
            async with session.post(
                url,
                data=data,
                headers={"Content-Type": "application/json; charset=utf-8"},
                allow_redirects=False,
            ) as response:
                raw = b""
                while len(raw) < _MAX_ANSWER:
                    chunk = await response.content.read(_MAX_ANSWER - len(raw))
                    if not chunk:
                        break
                    raw += chunk
                verdict = self._verdict(response.status, response.headers, raw)
        except (aiohttp.ClientError, TimeoutError) as exc:
            verdict = Verdict(False, self._describe(exc), retryable=True)
        finally:
            self._budget.record(self._timing.clock())
        return replace(verdict, detail=self._clean(verdict.detail)) if not verdict.ok else verdict

    def _clean(self, text: str) -> str:
        for secret in self._scrub:
            text = text.replace(secret, self.settings.shown_url if "://" in secret else "***")
        return _QUERY_IN_TEXT.sub(r"\1?***", text)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError):
            return f"timed out after {self.settings.timeout:g}s"
        text = str(exc)
        return type(exc).__name__ + (f": {self._clean(text)}" if text else "")

    # ---- close

    def unsent(self) -> dict[str, int]:
        """Events accepted and not delivered, by kind (``rollout.finished``, ``job.phase_changed:Failed``, …)."""
        return dict(sorted(self._pending.kinds().items()))

    async def drain(
        self, within: float | None = None, *, notify: Callable[[str], None] | None = None
    ) -> dict[str, int]:
        """Send everything pending as one final message — a finished rollout's complete summary with whatever
        else waits — as soon as the budget allows, waiting at most ``within`` seconds (default: option
        ``final_wait``); return what could not be
        sent (see :meth:`unsent`). ``notify`` hears what the sink is waiting for. Calling it again (a signal
        during a long wait) can only bring the deadline forward."""
        if self._closed:
            return self.unsent()
        deadline = self._timing.clock() + max(0.0, self.settings.final_wait if within is None else within)
        self._deadline = deadline if self._deadline is None else min(self._deadline, deadline)
        self._notify = notify or self._notify
        if not self._pending.count and self._in_flight == 0:
            return {}
        self._drained.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._guarded(), name=f"chat flusher {self.name}")
        self._wake.set()
        await self._drained.wait()
        return self.unsent()

    async def aclose(self) -> None:
        """Stop the flusher, send one final message if the budget allows it now, close the session.

        Without a :meth:`drain` before, that is one attempt and only if the budget allows it at once; after a
        drain, what it could not send is logged (the daemon's outbox keeps it for the next start)."""
        if self._closed:
            return
        self._closed = True
        try:
            task, self._task = self._task, None
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait((task,))
            now = self._timing.clock()
            if (
                self._pending.count
                and self._deadline is None
                and max(self._resume_at - now, self._budget.delay(now)) <= 0
            ):
                batch = self._pending.take_all()
                verdict = await self._deliver(build_final(batch, self.settings), final=True)  # logs a failure
                if verdict.ok:
                    await self._acknowledge(batch.ids())
                else:
                    self._pending.restore(batch)
            count = self._pending.count
            if count:
                kinds = ", ".join(f"{n} {kind}" for kind, n in self.unsent().items())
                logger.warning(
                    "%s: closing with %s not sent: the rate budget is spent (%s)",
                    self.name,
                    plural(count, "event"),
                    kinds,
                )
        finally:
            session, self._session = self._session, None
            if session is not None:
                await session.close()
