"""Shared machinery of the chat sinks: ``slack``, ``teams``, ``feishu``, ``dingtalk`` and ``wecom``.

A chat sink tells a group chat what matters during a bulk rollout without flooding it. Each platform module
only says how a message looks on the wire, how a request is signed and how the bot's answer reads; everything
else is in this package:

* **Filter.** By default a chat sink takes ``rollout.progress``, ``rollout.finished``, ``job.phase_changed`` to
  ``Failed``, ``job.timed_out``, ``job.not_found``, ``job.stalled`` and ``monitor.auth_failed`` — not one message
  per job that succeeded. Option ``events`` replaces the list; an entry is ``TYPE`` or ``TYPE:PHASE``.
* **Digest.** ``send`` never touches the network: it adds the event to the sink's pending digest and returns.
  A flusher task (started on the first ``send`` in the running loop, owned and closed by the sink) sends when
  the destination's budget allows. Whatever arrives in between is merged into the next message: job events are
  listed by kind ("Failed jobs (12)": the first ``max_items`` and "… and 7 more"); the latest ``rollout.progress``
  of a rollout replaces older ones; a ``rollout.finished`` goes out as soon as the budget allows, as the
  rollout's complete summary carrying everything else pending (so nothing about the rollout trails it). At most
  ``max_pending`` job events wait; more are counted, not kept, and the count shows up as "and N more", so a
  digest's totals are always complete.
* **Budget.** Chat bots punish excess hard (DingTalk mutes a robot for ten minutes after its 21st message in a
  minute), so limits here are never exceeded, not merely enforced on average. :class:`Budget` keeps sliding
  windows — per second, per minute, and a ten-second window holding a sixth of the minute's budget, so a burst
  cannot spend a whole minute at once — and answers "may I send now, else in how long?" without waiting. The
  flusher uses that answer to keep merging events into the next message instead of queueing messages;
  :class:`monitor.cce.throttle.RateLimiter` could not serve: its ``acquire`` waits, it has one window, and it adapts
  its rate on the fly, where these limits are fixed. A request counts from the moment its answer arrives (or it
  fails), because the server saw it somewhere in between: that way no window at the server holds more than
  the limit, whatever the latency. Every attempt — retries too — takes a slot.
* **Messages.** A digest names the rollouts with their latest state ("pool-a: 255/300 finished, 250 Success,
  3 Failed, …, ETA 7m") and lists what failed and why (resource name, job id, reason), with a link where option
  ``link`` gives a template. Lists are cut to fit the platform's size limit (measured the way the platform
  measures: UTF-8 bytes, or UTF-16 units for Slack) with "… and N more": job lists first, rollout lines only
  when that is not enough, counts never.
* **Retries.** Like the webhook sink: exponential backoff with full jitter, ``Retry-After`` honoured, 429, 5xx,
  transport errors and the platform's rate-limit codes retried (a rate-limit code also pauses the whole
  budget); other errors are final. The bot's answer body is checked as well as the status. A message that
  still fails is logged with the number of events it carried, and those events go back into the pending
  digest (within ``max_pending``); the sink then pauses ``backoff_max`` seconds. After three final failures in a
  row that a retry cannot fix (a payload the bot refuses), the listed job events are reduced to counts so one
  bad line cannot block the chat forever.
* **Secrets.** Webhook URLs carry credentials (Slack and Feishu in the path, the others in the query) and
  signing secrets are credentials: names, reprs, log lines and errors show the URL without query and with
  the token part of the path masked, and scrub every token spelling from answers and exceptions.
* **Drain and close.** :meth:`ChatSink.drain` (``watch`` at its end, the daemon at shutdown) sends everything
  pending as one final message as soon as the budget allows, within ``final_wait`` seconds or a shorter deadline
  (a signal), and returns what it could not send by event kind. ``aclose`` stops the flusher, makes one attempt
  if nothing was drained and the budget allows it at once, logs what is left, and closes the session.
* **Acknowledgements.** ``on_delivered`` (set by the daemon's outbox deliverer) hears the ids of the events a
  delivered message carried, and of events the sink does not want, so the outbox marks rows only when their
  message arrived; what is pending at a stop is sent after the restart.

Options (all optional; the webhook URL is the spec's target, e.g. ``dingtalk:https://…?access_token=…``):

``events``
    Event types to send, ``TYPE`` or ``TYPE:PHASE`` (default: the list above, ``job.phase_changed:Failed``).
``title``
    Prefix of every message, one line (default ``cce-monitor``); also meets a bot's "keyword" security setting.
``link``
    URL template with ``{rollout}`` and/or ``{job_id}`` (values URL-encoded). A template with ``{job_id}`` links
    job lines, one with only ``{rollout}`` links rollout lines.
``rate_per_minute``, ``rate_per_second``
    Integers; the platform's defaults (see each module). ``rate_per_second: null`` drops the per-second window.
``coalesce``
    Seconds to gather events after the first of a quiet spell before a digest goes out (default 5).
``progress_every``
    Seconds between digests that carry nothing but rollout progress (default 60); digests with job events, and
    finished summaries, do not wait for it.
``max_items``
    Job lines listed per section before "… and N more" (default 10).
``max_pending``
    Job events kept while waiting (default 1000); more are counted only.
``final_wait``
    Seconds :meth:`ChatSink.drain` waits for the budget by default (75: DingTalk's 20 a minute).
``max_attempts``, ``backoff_initial``, ``backoff_max``, ``timeout``
    Tries per message (default 5); seconds: before retry *n* the sink sleeps ``uniform(0, min(backoff_max,
    backoff_initial * 2**n))`` or the ``Retry-After`` if longer (defaults 1 and 60); one request (default 10).
    After a message finally fails, the next waits ``backoff_max``.
``ca_bundle``
    Extra CA file (PEM) trusted for the bot's endpoint, as for the webhook sink (:mod:`monitor.cce.tls`: one
    TLS policy for every outgoing connection; verification is always on). A missing or unreadable bundle is a
    :class:`ConfigError` when the sink is built.
``secret`` (feishu, dingtalk), ``format`` (feishu, dingtalk, wecom)
    See those modules.

Time is injectable (:class:`Timing`: a monotonic clock, a sleep, a wall clock for signatures and the jitter
source), so tests run a whole rollout on a fake clock.

Modules: :mod:`~monitor.sinks.chat.options` (:class:`Platform`, :class:`EventSelector`, :class:`ChatSettings`,
:func:`parse_options`), :mod:`~monitor.sinks.chat.budget` (:class:`Budget`, :class:`Timing`),
:mod:`~monitor.sinks.chat.render` (:class:`Message` and its text, :func:`fit`),
:mod:`~monitor.sinks.chat.digest` (:class:`Pending`, :class:`Batch`, the message builders),
:mod:`~monitor.sinks.chat.answers` (:class:`Verdict` and answer helpers), :mod:`~monitor.sinks.chat.sink`
(:class:`ChatSink`), and one module per platform. Everything a platform module or a test needs is
re-exported here.
"""

from __future__ import annotations

from monitor.sinks.chat.answers import (
    OK,
    Verdict,
    answer_code,
    answer_snippet,
    code_verdict,
    errcode_verdict,
    json_answer,
    status_verdict,
)
from monitor.sinks.chat.budget import Budget, Timing, budget_windows
from monitor.sinks.chat.digest import (
    Batch,
    Carried,
    Category,
    Note,
    Pending,
    RolloutEntry,
    build_digest,
    build_final,
    build_finished,
    event_kind,
    rollout_name,
)
from monitor.sinks.chat.options import DEFAULT_EVENTS, ChatSettings, EventSelector, Platform, parse_options, public_url
from monitor.sinks.chat.render import (
    Line,
    Message,
    Section,
    duration,
    fit,
    markdown_text,
    md_label,
    more_text,
    plain_text,
    rollout_state,
    utf16_len,
)
from monitor.sinks.chat.sink import ChatSink

__all__ = [
    "DEFAULT_EVENTS",
    "OK",
    "Batch",
    "Budget",
    "Carried",
    "Category",
    "ChatSettings",
    "ChatSink",
    "EventSelector",
    "Line",
    "Message",
    "Note",
    "Pending",
    "Platform",
    "RolloutEntry",
    "Section",
    "Timing",
    "Verdict",
    "answer_code",
    "answer_snippet",
    "budget_windows",
    "build_digest",
    "build_final",
    "build_finished",
    "code_verdict",
    "duration",
    "errcode_verdict",
    "event_kind",
    "fit",
    "json_answer",
    "markdown_text",
    "md_label",
    "more_text",
    "parse_options",
    "plain_text",
    "public_url",
    "rollout_name",
    "rollout_state",
    "status_verdict",
    "utf16_len",
]
