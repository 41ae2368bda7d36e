"""The ``slack`` sink: rollout digests to a Slack channel through an incoming webhook.

Spec ``slack:https://hooks.slack.com/services/T…/B…/…`` (the path is the credential: names and logs show
``https://hooks.slack.com/services/***``). Options are those of every chat sink (:mod:`monitor.sinks.chat`);
defaults here: ``rate_per_second`` 1 and ``rate_per_minute`` 60. Slack documents "1 per second, short bursts
allowed" for incoming webhooks and posting messages; the minute limit is ours, to keep a channel readable.

The body is ``{"text": <headline>, "blocks": [<section>, …]}``: ``text`` is what notifications show, each block a
``section`` with ``mrkdwn`` text of at most 3,000 characters (Slack's limit per text object), at most 50 blocks
and 40,000 characters in all, counted in UTF-16 units as Slack counts them. ``&``, ``<`` and ``>`` are escaped as
Slack asks; links are ``<url|label>``. Example::

    {"text": "cce-monitor: 3 jobs failed · pool-a 255/300 finished",
     "blocks": [
       {"type": "section",
        "text": {"type": "mrkdwn", "text": "*cce-monitor: 3 jobs failed · pool-a 255/300 finished*"}},
       {"type": "section",
        "text": {"type": "mrkdwn",
                 "text": "*Rollouts (1)*\\n• *pool-a*: 255/300 finished, 250 Success, 3 Failed, 40 Running, ETA 7m"}},
       {"type": "section",
        "text": {"type": "mrkdwn",
                 "text": "*Failed jobs (3)*\\n• <https://console/jobs/0c1f…|node-7> (job 0c1f…): Install node failed
                          \\n• … and 2 more"}}]}

Success is HTTP 200 with the body ``ok``. 429 (with ``Retry-After``) and 5xx are retried; other answers
(``invalid_payload``, ``no_service``, ``channel_is_archived``, …) are final.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monitor.sinks import register
from monitor.sinks.chat import (
    OK,
    ChatSink,
    Line,
    Message,
    Platform,
    Verdict,
    answer_snippet,
    more_text,
    parse_options,
    status_verdict,
    utf16_len,
)

__all__ = ["PLATFORM", "SlackSink", "make_slack_sink"]

PLATFORM = Platform(
    kind="slack",
    rate_per_minute=60,
    rate_per_second=1,
    path_masked_after="services",
    throttle_pause=1.0,
)

MAX_BLOCK_TEXT = 3000
MAX_BLOCKS = 50
MAX_TOTAL = 40_000


def escape(text: str) -> str:
    """``text`` for Slack mrkdwn: the three characters Slack reserves, escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _line(line: Line) -> str:
    label = escape(line.label)
    if line.link and line.label:
        label = f"<{line.link}|{label}>"
    elif line.label and line.text.startswith(":"):  # a rollout: name in bold
        label = f"*{label}*"
    return f"• {label}{escape(line.text)}"


def _cut(line: str, limit: int) -> str:
    """``line`` cut to at most ``limit`` UTF-16 units, with an ellipsis when cut."""
    if utf16_len(line) <= limit:
        return line
    kept, used = [], 0
    for char in line:
        size = 2 if ord(char) > 0xFFFF else 1
        if used + size > limit - 1:
            break
        kept.append(char)
        used += size
    return "".join(kept) + "…"


def _chunks(lines: list[str], limit: int) -> list[str]:
    """Lines joined by newlines into texts of at most ``limit`` UTF-16 units (a longer line is cut)."""
    chunks: list[str] = []
    current = ""
    for line in lines:
        line = _cut(line, limit)  # noqa: PLW2901
        candidate = f"{current}\n{line}" if current else line
        if utf16_len(candidate) > limit:
            chunks.append(current)
            candidate = line
        current = candidate
    if current:
        chunks.append(current)
    return chunks


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


class SlackSink(ChatSink):
    """Posts digests to one Slack incoming webhook."""

    platform = PLATFORM
    __slots__ = ()

    def _render(self, message: Message) -> dict[str, Any]:
        blocks = [_section(f"*{escape(message.title)}*")]
        for section in message.sections:
            lines = [f"*{escape(section.heading)}*"] + [_line(line) for line in section.lines]
            if section.more:
                lines.append("• " + more_text(section.more))
            blocks += [_section(chunk) for chunk in _chunks(lines, MAX_BLOCK_TEXT)]
        return {"text": escape(message.title), "blocks": blocks}

    def _fits(self, body: dict[str, Any]) -> bool:
        texts = [body["text"]] + [block["text"]["text"] for block in body["blocks"]]
        sizes = [utf16_len(text) for text in texts]
        return len(body["blocks"]) <= MAX_BLOCKS and max(sizes) <= MAX_BLOCK_TEXT and sum(sizes) <= MAX_TOTAL

    def _verdict(self, status: int, headers: Mapping[str, str], raw: bytes) -> Verdict:
        if status == 200 and raw.strip() == b"ok":
            return OK
        if status == 200:
            return Verdict(False, f"HTTP 200 with an unexpected answer: {answer_snippet(raw)}")
        return status_verdict(status, headers, answer_snippet(raw))


@register("slack")
def make_slack_sink(target: str | None, options: Mapping[str, object]) -> SlackSink:
    """Factory for ``slack:WEBHOOK_URL``."""
    return SlackSink(parse_options(PLATFORM, target, options))
