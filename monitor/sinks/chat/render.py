"""Platform-neutral chat messages and their text: :class:`Message` (sections of :class:`Line`), plain text and
Markdown renderings, fitting a message into a platform's size limit, and the wording of values (durations,
a rollout's state) that every message uses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from monitor.core.text import format_duration

__all__ = [
    "Line",
    "Message",
    "Section",
    "clip",
    "duration",
    "fit",
    "json_int",
    "markdown_text",
    "md_label",
    "more_text",
    "plain_text",
    "plural",
    "rollout_state",
    "summary_counts",
    "utf16_len",
]

T = TypeVar("T")

_SPACE_RE = re.compile(r"[\s\x00-\x1f\x7f\x85\u2028\u2029]+")
_TERMINAL_COUNTS = ("Active", "Success", "Failed", "Abnormal", "Error", "not_active", "timed_out", "not_found")
# How a node can end badly (besides a job's Failed, timed_out, not_found): engine.rollout's node states.
NODE_FAILURES = ("Abnormal", "Error", "not_active")


def done_state(summary: Mapping[str, Any]) -> tuple[str, str]:
    """(count key, wording) of what "done well" means in a rollout summary: jobs ``Success``; nodes ``Active``
    (or, without the node check, ``Success``: created, nobody confirmed them Active)."""
    if summary.get("unit") != "nodes":
        return "Success", "succeeded"
    return ("Active", "nodes Active") if summary.get("node_check") else ("Success", "nodes created")


def plural(count: int, word: str) -> str:
    """``1 event``, ``3 events``."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def clip(text: str, limit: int) -> str:
    """``text`` on one line, whitespace collapsed, at most ``limit`` characters."""
    text = _SPACE_RE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class Line:
    """One listed thing: ``label`` (a rollout or job name, the part a link goes on) then ``text``.

    ``text`` carries its own leading punctuation (``": 255/300 finished"``, ``" (job …): reason"``).
    """

    label: str
    text: str = ""
    link: str | None = None


@dataclass(frozen=True, slots=True)
class Section:
    """A heading and its lines; ``more`` counts the lines not listed. ``rollouts`` marks the rollout list."""

    heading: str
    lines: tuple[Line, ...] = ()
    more: int = 0
    rollouts: bool = False


@dataclass(frozen=True, slots=True)
class Message:
    """A platform-neutral chat message; ``events`` is how many events it carries (for logs)."""

    title: str
    sections: tuple[Section, ...] = ()
    events: int = 0

    def limited(self, items: int, rollouts: int) -> Message:
        """At most ``items`` lines per job section and ``rollouts`` rollout lines; the rest become "more"."""
        sections = []
        for section in self.sections:
            cap = rollouts if section.rollouts else items
            if len(section.lines) > cap:
                cut = len(section.lines) - cap
                section = replace(section, lines=section.lines[:cap], more=section.more + cut)  # noqa: PLW2901
            sections.append(section)
        return replace(self, sections=tuple(sections))

    def longest(self, *, rollouts: bool) -> int:
        """The most lines in a job section (``rollouts=False``) or the rollout section."""
        return max((len(s.lines) for s in self.sections if s.rollouts == rollouts), default=0)


def more_text(count: int) -> str:
    """The line that stands for ``count`` unlisted lines."""
    return f"… and {count} more"


def plain_text(message: Message, *, bullet: str = "• ") -> str:
    """``message`` as plain text: title, then each section's heading and lines; links as bare URLs."""
    out = [message.title]
    for section in message.sections:
        out.append("")
        out.append(section.heading)
        for line in section.lines:
            out.append(bullet + line.label + line.text + (f" {line.link}" if line.link else ""))
        if section.more:
            out.append(bullet + more_text(section.more))
    return "\n".join(out)


def md_label(text: str) -> str:
    """``text`` safe inside a Markdown link's brackets."""
    return text.replace("[", "(").replace("]", ")")


def markdown_text(
    message: Message, *, title: str, heading: str, bullet: str, gap: str = "\n\n", after_heading: str = "\n"
) -> str:
    """``message`` as Markdown. ``title``/``heading`` are format strings with ``{}``; links are ``[label](url)``."""
    parts = [title.format(message.title)]
    for section in message.sections:
        lines = [heading.format(section.heading) + after_heading.removesuffix("\n")]
        for line in section.lines:
            label = f"[{md_label(line.label)}]({line.link})" if line.link and line.label else line.label
            lines.append(bullet + label + line.text)
        if section.more:
            lines.append(bullet + more_text(section.more))
        parts.append("\n".join(lines))
    return gap.join(parts)


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units (what Slack's character limits count)."""
    return len(text.encode("utf-16-le")) // 2


def _largest(lo: int, hi: int, attempt: Callable[[int], T | None]) -> T | None:
    """The result of ``attempt`` for the largest n in [lo, hi] where it is not None (attempt is monotone)."""
    best: T | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        result = attempt(mid)
        if result is None:
            hi = mid - 1
        else:
            best, lo = result, mid + 1
    return best


def fit(message: Message, render: Callable[[Message], T], fits: Callable[[T], bool], max_items: int) -> T:
    """Render ``message`` with as many listed lines as fit: job lists first cut to ``max_items``, then shorter,
    then the rollout list; a message that still does not fit becomes its title and the number of events."""

    def attempt(items: int, rollouts: int) -> T | None:
        body = render(message.limited(items, rollouts))
        return body if fits(body) else None

    items = min(max_items, message.longest(rollouts=False))
    rollouts = message.longest(rollouts=True)
    body = attempt(items, rollouts)
    if body is None:
        body = _largest(0, items - 1, lambda n: attempt(n, rollouts))
    if body is None:
        body = _largest(0, rollouts - 1, lambda n: attempt(0, n))
    if body is None:
        body = render(Message(clip(message.title, 80), (Section(f"{message.events} events, too many to show"),)))
    return body


def json_int(value: object) -> int | None:
    """An integer from a JSON value (``3`` or ``3.0``; not a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _seconds(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


duration = format_duration  # the one duration format (monitor.core.text)


def summary_counts(summary: Mapping[str, Any]) -> dict[str, int]:
    """A rollout summary's ``counts``, terminal outcomes first."""
    raw = summary.get("counts")
    if not isinstance(raw, Mapping):
        return {}
    counts = {str(k): n for k, v in raw.items() if (n := json_int(v)) is not None}
    ordered = {k: counts[k] for k in _TERMINAL_COUNTS if k in counts}
    ordered.update((k, v) for k, v in counts.items() if k not in ordered)
    return ordered


def rollout_state(summary: Mapping[str, Any] | None, *, finished: bool) -> str:
    """``255/300 finished, 250 Success, 3 Failed, 40 Running, subjobs 500/600, ETA 7m`` (zero counts left out)."""
    if not isinstance(summary, Mapping):
        return "finished" if finished else "in progress"
    parts: list[str] = []
    total, done = json_int(summary.get("total")), json_int(summary.get("finished"))
    nodes = summary.get("unit") == "nodes"
    head, word = done_state(summary)
    counts = summary_counts(summary)
    if nodes and total is not None:
        parts.append(f"{counts.get(head, 0)}/{total} {word}")
    elif total is not None and done is not None:
        parts.append(f"{done}/{total} finished")
    elif finished:
        parts.append("finished")
    took = _seconds(summary.get("duration_s"))
    if finished and took is not None and parts:
        parts[0] += f" in {duration(took)}"
    shown = {k: n for k, n in counts.items() if n and not (nodes and k == head)}
    parts += [f"{n} {clip(key.replace('_', ' '), 40)}" for key, n in shown.items()]
    if not finished:
        sub_done, sub_total = json_int(summary.get("subjobs_done")), json_int(summary.get("subjobs_total"))
        if sub_done is not None and sub_total:
            parts.append(f"subjobs {sub_done}/{sub_total}")
        eta = _seconds(summary.get("eta_s"))
        if eta is not None:
            p90 = _seconds(summary.get("eta_p90_s"))  # learned ETAs carry their 90th percentile
            parts.append(f"ETA {duration(eta)}" + (f" (p90 {duration(p90)})" if p90 is not None else ""))
    return ", ".join(parts) or "in progress"
