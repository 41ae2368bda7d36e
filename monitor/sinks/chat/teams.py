"""The ``teams`` sink: rollout digests to a Microsoft Teams channel through a Workflows (Power Automate) webhook.

Spec ``teams:https://….logic.azure.com/workflows/…/triggers/manual/paths/invoke?api-version=…&sig=…`` (or the
``…environment.api.powerplatform.com/…`` form): the URL made by the "Post to a channel when a webhook request is
received" workflow. Its ``sig`` query parameter is the credential; names and logs show the URL without query.
Options are those of every chat sink (:mod:`monitor.sinks.chat`).

Rate defaults: ``rate_per_second`` 1, ``rate_per_minute`` 30. Microsoft documents for Teams webhooks that more
than four requests in a second get the sender throttled, and Graph allows two channel posts per second; every
post here also starts a flow run that counts against the flow owner's Power Platform request allowance. One a
second stays well clear of the first two; 30 a minute keeps a channel readable and the flow runs modest — a
digest carries everything that waits, so a lower rate only means fuller messages.

The body is a message with one Adaptive Card (version 1.4): a bold title ``TextBlock``, then per section a
bold heading, a ``FactSet`` for the rollouts (name → state) and one ``TextBlock`` per listed job, links as
Markdown. The whole body stays under 27,000 UTF-8 bytes (Teams refuses messages over about 28 KB)::

    {"type": "message",
     "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null,
       "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
         "version": "1.4", "msteams": {"width": "Full"},
         "body": [
           {"type": "TextBlock", "text": "cce-monitor: 3 jobs failed · pool-a 255/300 finished",
            "weight": "Bolder", "size": "Medium", "wrap": true},
           {"type": "TextBlock", "text": "Rollouts (1)", "weight": "Bolder", "wrap": true, "spacing": "Medium"},
           {"type": "FactSet",
            "facts": [{"title": "pool-a", "value": "255/300 finished, 250 Success, 3 Failed, ETA 7m"}]},
           {"type": "TextBlock", "text": "Failed jobs (3)", "weight": "Bolder", "wrap": true, "spacing": "Medium"},
           {"type": "TextBlock", "text": "• node-7 (job 0c1f…): Install node failed", "wrap": true, "spacing": "None"},
           {"type": "TextBlock", "text": "… and 2 more", "wrap": true, "spacing": "None", "isSubtle": true}]}}]}

Success is HTTP 200 or 202 (the workflow accepted the request). 429 (with ``Retry-After``) and 5xx are
retried; other statuses are final.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from monitor.sinks import register
from monitor.sinks.chat import (
    OK,
    ChatSink,
    Line,
    Message,
    Platform,
    Verdict,
    answer_snippet,
    md_label,
    more_text,
    parse_options,
    status_verdict,
)

__all__ = ["PLATFORM", "TeamsSink", "make_teams_sink"]

PLATFORM = Platform(kind="teams", rate_per_minute=30, rate_per_second=1, throttle_pause=5.0)

MAX_BYTES = 27_000
CARD = "application/vnd.microsoft.card.adaptive"
SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"


def _text(text: str, **extra: object) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **extra}


def _label(line: Line) -> str:
    return f"[{md_label(line.label)}]({line.link})" if line.link and line.label else line.label


def _fact(line: Line) -> dict[str, str]:
    value = line.text.removeprefix(": ")
    if line.link:
        value += f" ([open]({line.link}))"
    return {"title": line.label, "value": value}


class TeamsSink(ChatSink):
    """Posts digests as Adaptive Cards to one Teams Workflows webhook."""

    platform = PLATFORM
    __slots__ = ()

    def _render(self, message: Message) -> dict[str, Any]:
        body = [_text(message.title, weight="Bolder", size="Medium")]
        for section in message.sections:
            body.append(_text(section.heading, weight="Bolder", spacing="Medium"))
            if section.rollouts and section.lines:
                body.append({"type": "FactSet", "facts": [_fact(line) for line in section.lines]})
            else:
                body += [_text(f"• {_label(line)}{line.text}", spacing="None") for line in section.lines]
            if section.more:
                body.append(_text(more_text(section.more), spacing="None", isSubtle=True))
        card = {"$schema": SCHEMA, "type": "AdaptiveCard", "version": "1.4", "msteams": {"width": "Full"}, "body": body}
        return {"type": "message", "attachments": [{"contentType": CARD, "contentUrl": None, "content": card}]}

    def _fits(self, body: dict[str, Any]) -> bool:
        return len(orjson.dumps(body)) <= MAX_BYTES

    def _verdict(self, status: int, headers: Mapping[str, str], raw: bytes) -> Verdict:
        if status in (200, 202):
            return OK
        return status_verdict(status, headers, answer_snippet(raw))


@register("teams")
def make_teams_sink(target: str | None, options: Mapping[str, object]) -> TeamsSink:
    """Factory for ``teams:WORKFLOW_URL``."""
    return TeamsSink(parse_options(PLATFORM, target, options))
