"""Events: the stable contract between the monitor and its sinks (schema ``cce-monitor/v1``).

An event is a frozen, slotted dataclass that orjson serializes as it is (``event.to_json()``), one flat JSON
object. Its ``id`` is derived from what happened, not when it was seen: the same transition of the same job
always gets the same id, so a redelivery after a restart can be recognised by receivers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson

__all__ = ["SCHEMA", "Event", "EventType", "Outcome", "event_id"]

SCHEMA = "cce-monitor/v1"


class EventType(StrEnum):
    """Every kind of event the monitor emits."""

    JOB_PHASE_CHANGED = "job.phase_changed"
    SUBJOB_PHASE_CHANGED = "subjob.phase_changed"
    JOB_TIMED_OUT = "job.timed_out"
    JOB_STALLED = "job.stalled"
    JOB_NOT_FOUND = "job.not_found"
    JOB_POLL_FAILED = "job.poll_failed"
    JOB_RECOVERED = "job.recovered"
    MONITOR_AUTH_FAILED = "monitor.auth_failed"
    MONITOR_CONFIG_ERROR = "monitor.config_error"
    NODE_ACTIVE = "node.active"
    NODE_FAILED = "node.failed"
    NODEPOOL_PHASE_CHANGED = "nodepool.phase_changed"
    NODEPOOL_SETTLED = "nodepool.settled"
    ROLLOUT_PROGRESS = "rollout.progress"
    ROLLOUT_FINISHED = "rollout.finished"

    @property
    def is_final(self) -> bool:
        """Events after which the job is no longer polled (besides a terminal phase change)."""
        return self in (EventType.JOB_TIMED_OUT, EventType.JOB_NOT_FOUND)


class Outcome(StrEnum):
    """How following one job ended: its final phase, or why the monitor stopped following it."""

    SUCCESS = "Success"
    FAILED = "Failed"
    TIMED_OUT = "timed_out"
    NOT_FOUND = "not_found"
    UNFINISHED = "unfinished"


def event_id(*parts: str | None) -> str:
    """A stable 32-hex-digit id from the parts that identify an occurrence."""
    key = "\x1f".join("" if p is None else p for p in (SCHEMA, *parts))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One thing the monitor noticed. Job-level events have ``subjob_id``/``subjob_type`` ``None``.

    ``detail`` is a one-line human explanation where the type alone does not say enough (the error of a
    failed poll, how long a job has stalled); it never contains a credential. ``rollout`` names the rollout the
    job belongs to (its ``rollout`` label). Rollout events (``rollout.*``) have ``job_id`` ``None`` and carry the
    rollout's aggregate in ``summary``.
    """

    schema: str = SCHEMA
    id: str
    type: EventType
    time: datetime = field(default_factory=_now)
    project_id: str
    job_id: str | None
    job_type: str | None = None
    phase: str | None = None
    previous_phase: str | None = None
    reason: str | None = None
    subjob_id: str | None = None
    subjob_type: str | None = None
    resource_name: str | None = None
    cluster_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    detail: str | None = None
    rollout: str | None = None
    summary: Mapping[str, Any] | None = None
    # Added within v1 (node rollouts): at the end, so that the order of the fields above never changes.
    node_id: str | None = None
    nodepool_id: str | None = None

    def __post_init__(self) -> None:
        # Always UTC, so that ``to_json`` writes RFC 3339 with "Z" whatever clock made the time; a naive
        # time is taken to be UTC already (as datetime.utcnow() gives), not local time.
        if self.time.tzinfo is None:
            object.__setattr__(self, "time", self.time.replace(tzinfo=UTC))
        elif self.time.utcoffset() != timedelta(0):
            object.__setattr__(self, "time", self.time.astimezone(UTC))

    @classmethod
    def from_json(cls, data: bytes | str) -> Event:
        """Rebuild an event from :meth:`to_json` output (the state database keeps events this way)."""
        d = orjson.loads(data)
        d["type"] = EventType(d["type"])
        d["time"] = datetime.fromisoformat(d["time"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The event as plain JSON types (what ``to_json`` writes)."""
        result: dict[str, Any] = orjson.loads(self.to_json())
        return result

    def to_json(self) -> bytes:
        """One JSON object, UTF-8, no trailing newline; ``time`` in RFC 3339 UTC with ``Z``."""
        return orjson.dumps(self, option=orjson.OPT_UTC_Z, default=_default)

    @property
    def is_final(self) -> bool:
        """Whether this event ends the polling of its job."""
        if self.type is EventType.JOB_PHASE_CHANGED:
            return self.phase in ("Success", "Failed")
        return self.type.is_final


def _default(obj: object) -> object:
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__}")
