"""What a chat sink holds back and the messages made of it: :class:`Pending` (job notes, the latest progress per
rollout, finished rollouts; bounded), the :class:`Batch` one message carries, and the builders
:func:`build_digest`, :func:`build_finished` and :func:`build_final`.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

from monitor.core.events import Event, EventType
from monitor.core.reason import readable_reason
from monitor.sinks.chat.options import ChatSettings
from monitor.sinks.chat.render import (
    NODE_FAILURES,
    Line,
    Message,
    Section,
    clip,
    done_state,
    json_int,
    rollout_state,
    summary_counts,
)

__all__ = [
    "Batch",
    "Carried",
    "Category",
    "Note",
    "Pending",
    "RolloutEntry",
    "build_digest",
    "build_final",
    "build_finished",
    "event_kind",
    "rollout_name",
]

_MAX_REASON = 300
_MAX_NAME = 128


Category = Literal["failed", "timed_out", "not_found", "stalled", "auth", "other"]
_CATEGORIES: tuple[Category, ...] = ("failed", "timed_out", "not_found", "stalled", "auth", "other")
_HEADINGS: dict[Category, str] = {
    "failed": "Failed jobs",
    "timed_out": "Timed out",
    "not_found": "Not found",
    "stalled": "Stalled",
    "auth": "Authentication failures",
    "other": "Other updates",
}
_HEADLINE_WORDS: dict[Category, tuple[str, str]] = {
    "failed": ("job failed", "jobs failed"),
    "timed_out": ("timed out", "timed out"),
    "not_found": ("not found", "not found"),
    "stalled": ("stalled", "stalled"),
    "auth": ("authentication failure", "authentication failures"),
    "other": ("other update", "other updates"),
}


@dataclass(frozen=True, slots=True)
class Note:
    """A job-level event, reduced to what a message shows."""

    seq: int
    category: Category
    job_id: str | None
    resource: str | None
    reason: str | None
    rollout: str | None
    label: str | None = None  # what happened, for "other" updates


def _note(event: Event, seq: int) -> Note:
    category: Category
    label = None
    failed_job = event.type is EventType.JOB_PHASE_CHANGED and event.phase == "Failed"
    failed_pool = event.type is EventType.NODEPOOL_SETTLED and event.phase != ""  # SoldOut, Error, not found
    if failed_job or failed_pool or event.type is EventType.NODE_FAILED:
        category = "failed"
    elif event.type is EventType.JOB_TIMED_OUT:
        category = "timed_out"
    elif event.type is EventType.JOB_NOT_FOUND:
        category = "not_found"
    elif event.type is EventType.JOB_STALLED:
        category = "stalled"
    elif event.type is EventType.MONITOR_AUTH_FAILED:
        category = "auth"
    else:
        category = "other"
        label = event.type.value
        if event.subjob_id:
            label += f" subjob {event.subjob_id}"
        if event.phase:
            label += f" {event.previous_phase or '?'} → {event.phase}"
    return Note(
        seq=seq,
        category=category,
        job_id=clip(event.job_id, _MAX_NAME) if event.job_id else None,
        resource=clip(event.resource_name, _MAX_NAME) if event.resource_name else None,
        reason=clip(readable_reason(event.reason) if event.reason else event.detail or "", _MAX_REASON) or None,
        rollout=clip(event.rollout, _MAX_NAME) if event.rollout else None,
        label=clip(label, _MAX_REASON) if label else None,
    )


def rollout_name(event: Event) -> str:
    """The rollout a ``rollout.*`` event is about."""
    name = event.rollout
    if not name and event.summary is not None:
        value = event.summary.get("rollout")
        name = value if isinstance(value, str) else None
    return clip(name or "(unnamed rollout)", _MAX_NAME)


def event_kind(event: Event) -> str:
    """How an event is counted when a sink says what it did not send: its type, and the phase of a job's."""
    if event.type is EventType.JOB_PHASE_CHANGED and event.phase:
        return f"{event.type.value}:{event.phase}"
    return event.type.value


@dataclass(slots=True)
class Carried:
    """The events a part of the pending digest stands for: their ids (acknowledged once a message carrying them
    is delivered) and how many of each kind (said when they could not be sent)."""

    ids: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)

    def add(self, event: Event) -> None:
        self.ids.append(event.id)
        self.kinds[event_kind(event)] += 1

    def merge(self, other: Carried) -> None:
        self.ids.extend(other.ids)
        self.kinds.update(other.kinds)


@dataclass(slots=True)
class RolloutEntry:
    """The latest rollout event of a rollout, and how many events it stands for."""

    seq: int
    event: Event
    events: int = 1
    carried: Carried = field(default_factory=Carried)


@dataclass(slots=True)
class Batch:
    """What one message carries; put back into :class:`Pending` if the message fails."""

    notes: list[Note] = field(default_factory=list)
    overflow: Counter[str] = field(default_factory=Counter)
    rollouts: dict[str, RolloutEntry] = field(default_factory=dict)
    finished: list[RolloutEntry] = field(default_factory=list)
    first_at: float = math.inf
    carried: Carried = field(default_factory=Carried)  # the events of notes and overflow (entries carry their own)

    @property
    def events(self) -> int:
        total = len(self.notes) + sum(self.overflow.values()) + sum(e.events for e in self.rollouts.values())
        return total + sum(entry.events for entry in self.finished)

    def ids(self) -> list[str]:
        """Every event id this batch carries."""
        out = list(self.carried.ids)
        for entry in (*self.rollouts.values(), *self.finished):
            out.extend(entry.carried.ids)
        return out

    def kinds(self) -> Counter[str]:
        """How many events of each kind this batch carries."""
        out = Counter(self.carried.kinds)
        for entry in (*self.rollouts.values(), *self.finished):
            out.update(entry.carried.kinds)
        return out


class Pending:
    """The events waiting to be sent: a digest (job notes, overflow counts, latest progress per rollout) and a
    queue of finished rollouts. Bounded: at most ``limit`` notes; more are only counted."""

    __slots__ = ("_digest", "_finished", "_limit", "dropped")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._digest = Batch()
        self._finished: deque[RolloutEntry] = deque()
        self.dropped = 0  # job events counted instead of kept, over the sink's life

    @property
    def count(self) -> int:
        """Events waiting."""
        return self._digest.events + sum(entry.events for entry in self._finished)

    def kinds(self) -> Counter[str]:
        """Events waiting, by kind (``job.phase_changed:Failed``, ``rollout.finished``, …)."""
        out = self._digest.kinds()
        for entry in self._finished:
            out.update(entry.carried.kinds)
        return out

    @property
    def has_digest(self) -> bool:
        d = self._digest
        return bool(d.notes or d.overflow or d.rollouts)

    @property
    def progress_only(self) -> bool:
        """Whether the digest holds nothing but rollout progress."""
        return not (self._digest.notes or self._digest.overflow)

    @property
    def first_at(self) -> float:
        """When the digest last went from empty to not empty."""
        return self._digest.first_at

    def digest_seq(self) -> int:
        seqs = [n.seq for n in self._digest.notes[:1]] + [e.seq for e in self._digest.rollouts.values()]
        return min(seqs, default=-1)  # overflow only: older than anything listed

    def finished_seq(self) -> int | None:
        return self._finished[0].seq if self._finished else None

    def add(self, event: Event, seq: int, now: float) -> None:
        digest = self._digest
        if event.type in (EventType.ROLLOUT_PROGRESS, EventType.ROLLOUT_FINISHED):
            name = rollout_name(event)
            if event.type is EventType.ROLLOUT_FINISHED:
                entry = RolloutEntry(seq, event)
                superseded = digest.rollouts.pop(name, None)
                if superseded is not None:
                    entry.events += superseded.events
                    entry.carried.merge(superseded.carried)
                entry.carried.add(event)
                self._finished.append(entry)
                return
            for entry in self._finished:
                if rollout_name(entry.event) == name:  # progress after the end: nothing new
                    entry.events += 1
                    entry.carried.add(event)
                    return
            if not self.has_digest:
                digest.first_at = now
            latest = digest.rollouts.get(name)
            if latest is None:
                latest = digest.rollouts[name] = RolloutEntry(seq, event)
            else:
                latest.event, latest.events = event, latest.events + 1
            latest.carried.add(event)
            return
        if not self.has_digest:
            digest.first_at = now
        note = _note(event, seq)
        digest.carried.add(event)
        if len(digest.notes) >= self._limit:
            digest.overflow[note.category] += 1
            self.dropped += 1
        else:
            digest.notes.append(note)

    def take_digest(self) -> Batch:
        batch, self._digest = self._digest, Batch()
        return batch

    def take_finished(self) -> Batch:
        return Batch(finished=[self._finished.popleft()])

    def take_all(self) -> Batch:
        """Everything: the digest and every finished rollout (see :func:`build_final`)."""
        batch = self.take_digest()
        batch.finished.extend(self._finished)
        self._finished.clear()
        return batch

    def restore(self, batch: Batch, *, demote: bool = False) -> None:
        """Put a failed message's events back, older than what arrived since. ``demote`` turns its listed job
        events into counts and a finished summary into a rollout line (a payload the bot keeps refusing)."""
        digest = self._digest
        for entry in reversed(batch.finished):
            if demote:
                batch.rollouts[rollout_name(entry.event)] = entry
                continue
            late = digest.rollouts.pop(rollout_name(entry.event), None)  # progress after the end
            if late is not None:
                entry.events += late.events
                entry.carried.merge(late.carried)
            self._finished.appendleft(entry)
        notes = digest.notes
        if demote:
            for note in batch.notes:
                digest.overflow[note.category] += 1
            self.dropped += len(batch.notes)
        else:
            notes = batch.notes + notes
        digest.overflow.update(batch.overflow)
        digest.carried.merge(batch.carried)
        for note in notes[self._limit :]:
            digest.overflow[note.category] += 1
            self.dropped += 1
        digest.notes = notes[: self._limit]
        newer = digest.rollouts
        finished_names = {rollout_name(entry.event) for entry in self._finished}
        merged: dict[str, RolloutEntry] = {}
        for name, old in batch.rollouts.items():
            if name in finished_names:  # a finished summary arrived since: the old progress rides with it
                target = next(e for e in self._finished if rollout_name(e.event) == name)
                target.events += old.events
                target.carried.merge(old.carried)
            elif name not in newer:
                merged[name] = old
        for name, entry in newer.items():
            earlier = batch.rollouts.get(name)
            if earlier is not None:
                entry.events += earlier.events
                entry.seq = min(entry.seq, earlier.seq)
                entry.carried.merge(earlier.carried)
            merged[name] = entry
        digest.rollouts = merged
        digest.first_at = min(digest.first_at, batch.first_at)


# ------------------------------------------------------------------------------------------------ messages


def _link(settings: ChatSettings, *, rollout: str | None, job_id: str | None) -> str | None:
    template = settings.link
    if template is None:
        return None
    uses_job = "{job_id}" in template
    if (uses_job and not job_id) or (not uses_job and job_id) or ("{rollout}" in template and not rollout):
        return None
    return template.format(rollout=quote(rollout or "", safe=""), job_id=quote(job_id or "", safe=""))


def _job_line(
    settings: ChatSettings,
    *,
    job_id: str | None,
    resource: str | None,
    reason: str | None,
    rollout: str | None,
    extra: str | None = None,
) -> Line:
    label = resource or job_id or ""
    text = f" (job {job_id})" if resource and job_id else ""
    if extra:
        text += f" {extra}"
    if reason:
        text += f": {reason}" if label or extra else reason
    return Line(label, text, _link(settings, rollout=rollout, job_id=job_id) if label else None)


def _prefix(settings: ChatSettings) -> str:
    return f"{settings.title}: " if settings.title else ""


def _rollout_line(settings: ChatSettings, name: str, event: Event) -> Line:
    state = rollout_state(event.summary, finished=event.type is EventType.ROLLOUT_FINISHED)
    return Line(name, f": {state}", _link(settings, rollout=name, job_id=None))


def _short_progress(entry: RolloutEntry) -> str:
    summary = entry.event.summary
    if isinstance(summary, Mapping):
        total, done = json_int(summary.get("total")), json_int(summary.get("finished"))
        if total is not None and done is not None:
            return f"{done}/{total} finished"
    return "finished" if entry.event.type is EventType.ROLLOUT_FINISHED else "in progress"


def build_digest(batch: Batch, settings: ChatSettings) -> Message:
    """The message for a digest batch: rollouts with their latest state, then job events by kind."""
    sections: list[Section] = []
    if batch.rollouts:
        lines = tuple(_rollout_line(settings, name, entry.event) for name, entry in batch.rollouts.items())
        sections.append(Section(f"Rollouts ({len(lines)})", lines, rollouts=True))
    grouped: dict[str, list[Note]] = {}
    for note in batch.notes:
        grouped.setdefault(note.category, []).append(note)
    several = len({n.rollout for n in batch.notes if n.rollout}) > 1
    totals: dict[Category, int] = {}
    for category in _CATEGORIES:
        notes = grouped.get(category, [])
        extra = batch.overflow.get(category, 0)
        if not notes and not extra:
            continue
        totals[category] = len(notes) + extra
        lines = tuple(
            _job_line(
                settings,
                job_id=n.job_id,
                resource=n.resource,
                reason=n.reason,
                rollout=n.rollout,
                extra=" ".join(filter(None, [n.label, f"[{n.rollout}]" if several and n.rollout else None])),
            )
            for n in notes
        )
        sections.append(Section(f"{_HEADINGS[category]} ({totals[category]})", lines, more=extra))
    parts = [f"{n} {_HEADLINE_WORDS[c][n != 1]}" for c, n in totals.items()]
    if len(batch.rollouts) == 1:
        [(name, entry)] = batch.rollouts.items()
        where = f"{name} {_short_progress(entry)}"
    else:
        where = f"{len(batch.rollouts)} rollouts" if batch.rollouts else ""
    headline = ", ".join(parts) + (" · " if parts and where else "") + where
    return Message(_prefix(settings) + (headline or "update"), tuple(sections), batch.events)


def build_finished(entry: RolloutEntry, settings: ChatSettings) -> Message:
    """The summary of a finished rollout: final counts and the jobs that did not succeed."""
    name = rollout_name(entry.event)
    summary = entry.event.summary if isinstance(entry.event.summary, Mapping) else {}
    counts = summary_counts(summary)
    listed = summary.get("failed")
    items = [item for item in listed if isinstance(item, Mapping)] if isinstance(listed, list) else []
    bad = max(
        len(items),
        json_int(summary.get("failed_count")) or 0,  # the list may be cut short by the tracker
        sum(counts.get(k, 0) for k in ("Failed", "timed_out", "not_found", *NODE_FAILURES)),
    )
    total = json_int(summary.get("total"))
    headline = f"Rollout {name} finished"
    head, word = done_state(summary)
    if total is not None:
        headline += f": {counts.get(head, 0)}/{total} {word}"
    if bad:
        headline += f"{',' if total is not None else ':'} {bad} did not"
    sections = [Section("Result", (_rollout_line(settings, name, entry.event),), rollouts=True)]
    if bad:
        lines = []
        for item in items:
            outcome = item.get("outcome")
            job_id, resource, reason = (item.get(k) for k in ("job_id", "resource_name", "reason"))
            lines.append(
                _job_line(
                    settings,
                    job_id=clip(job_id, _MAX_NAME) if isinstance(job_id, str) and job_id else None,
                    resource=clip(resource, _MAX_NAME) if isinstance(resource, str) and resource else None,
                    reason=clip(readable_reason(reason), _MAX_REASON) if isinstance(reason, str) and reason else None,
                    rollout=name,
                    extra=f"[{clip(outcome.replace('_', ' '), 40)}]"
                    if isinstance(outcome, str) and outcome not in ("", "Failed")
                    else None,
                )
            )
        sections.append(Section(f"Not successful ({bad})", tuple(lines), more=bad - len(lines)))
    return Message(_prefix(settings) + headline, tuple(sections), entry.events)


_SUMMARISED: frozenset[Category] = frozenset({"failed", "timed_out", "not_found"})  # a finished summary lists these


def build_final(batch: Batch, settings: ChatSettings) -> Message:
    """One message for everything pending when a sink closes: the complete summary of every finished rollout,
    then what else is pending (job events the summaries do not already list, progress of other rollouts)."""
    if not batch.finished:
        return build_digest(batch, settings)
    names = {rollout_name(entry.event) for entry in batch.finished}
    summaries = [build_finished(entry, settings) for entry in batch.finished]
    # A summary lists its jobs and nodes (each with a job id), not its pools: a pool that sold out stays listed.
    covered = {id(n) for n in batch.notes if n.rollout in names and n.category in _SUMMARISED and n.job_id}
    rest = Batch(
        notes=[n for n in batch.notes if id(n) not in covered],
        # Counted events cannot say their rollout; if every listed one belonged to a summary, so did they.
        overflow=Counter(
            {c: n for c, n in batch.overflow.items() if not (c in _SUMMARISED and len(covered) == len(batch.notes))}
        ),
        rollouts={name: entry for name, entry in batch.rollouts.items() if name not in names},
    )
    sections = [section for message in summaries for section in message.sections]
    if rest.notes or rest.overflow or rest.rollouts:
        sections.extend(build_digest(rest, settings).sections)
    title = summaries[0].title if len(summaries) == 1 else _prefix(settings) + f"{len(summaries)} rollouts finished"
    return Message(title, tuple(sections), batch.events)
