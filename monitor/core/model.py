"""Typed snapshots of CCE jobs, parsed from ``GET /api/v3/projects/{project_id}/jobs/{job_id}``.

The parser is lenient where the real API is messy and strict where a mistake would mislead:

* unknown fields anywhere are ignored; optional objects (``spec``, ``status``, ``metadata``, ``subJobs``)
  may be missing or null;
* a phase outside the documented four is carried through unchanged (``Phase("Abnormal")``);
* Go timestamps (``2020-02-02 08:12:40.672772389 +0000 UTC``, 0-9 fraction digits, any offset) become aware
  datetimes; an unparseable one keeps its raw text and never fails the poll;
* trailing commas, as in the API document's own example, are repaired when strict JSON parsing fails;
* a body that is not a JSON object with a job's shape raises :class:`MalformedResponseError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

import orjson

from monitor.core.errors import InvalidIdError, MalformedResponseError
from monitor.core.text import has_control

__all__ = [
    "ID_PATTERN",
    "Job",
    "ParseMemo",
    "Phase",
    "Timestamp",
    "decode_body",
    "job_from_json",
    "job_to_json",
    "json_object",
    "json_text",
    "parse_go_time",
    "parse_job",
    "parse_job_object",
    "parse_job_reusing",
    "validate_id",
    "validate_label",
]

_MAX_UNKNOWN_PHASES = 64
_MAX_DEPTH = 16


class Phase(StrEnum):
    """A job phase: the four documented values, and any other value the API sends, kept as it came."""

    INITIALIZING = "Initializing"
    RUNNING = "Running"
    FAILED = "Failed"
    SUCCESS = "Success"

    @classmethod
    def _missing_(cls, value: object) -> Phase | None:
        if not isinstance(value, str):
            return None
        # An undocumented phase ("Abnormal", "Synchronized", ...) becomes a pseudo-member, cached so that
        # identity comparisons hold; the cache is bounded against a server sending garbage.
        member = str.__new__(cls, value)
        member._name_ = value.upper()
        member._value_ = value
        if len(cls._value2member_map_) < len(cls.__members__) + _MAX_UNKNOWN_PHASES:
            cls._value2member_map_[value] = member
        return member

    @property
    def is_terminal(self) -> bool:
        """``Success`` and ``Failed`` end a job; nothing else does."""
        return self in (Phase.SUCCESS, Phase.FAILED)

    @property
    def is_known(self) -> bool:
        """Whether this is one of the four documented phases."""
        return self.value in _KNOWN_PHASES


_KNOWN_PHASES = frozenset(p.value for p in Phase)
_PHASES: dict[object, Phase] = Phase._value2member_map_  # type: ignore[assignment]

_GO_TIME_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"\s*(?:([+-])(\d{2}):?(\d{2})|Z)?(?:\s+[A-Za-z+-][A-Za-z0-9+-]*)?$"
)


def parse_go_time(text: str) -> datetime | None:
    """Parse Go's default time format (and RFC 3339) into an aware datetime; ``None`` if it is not one.

    Nanoseconds are truncated to microseconds; the raw text keeps them. A missing offset means UTC.
    """
    match = _GO_TIME_RE.match(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    tz: timezone = UTC
    if sign:
        delta = timedelta(hours=int(off_h), minutes=int(off_m))
        if delta >= timedelta(hours=24):
            return None
        tz = timezone(-delta if sign == "-" else delta)
    try:
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz)
    except ValueError:
        return None


_UNPARSED: Any = object()


class Timestamp:
    """A timestamp as the API sent it (``raw``) and, read on first use, as an aware datetime (``at``).

    Parsing is lazy because the monitor itself only compares raw texts (to see whether a job moved): a poll
    should not pay for six regex matches and datetimes it never looks at, nor keep them in memory for every
    tracked job. Equality and hashing use ``raw``. Immutable.
    """

    __slots__ = ("_at", "raw")
    raw: str
    _at: datetime | None

    def __init__(self, raw: str) -> None:
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "_at", _UNPARSED)

    @classmethod
    def parse(cls, raw: str) -> Timestamp:
        return cls(raw)

    @property
    def at(self) -> datetime | None:
        """The aware datetime, or ``None`` if the text is not a timestamp we can read."""
        if self._at is _UNPARSED:
            object.__setattr__(self, "_at", parse_go_time(self.raw))
        return self._at

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Timestamp is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Timestamp) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"Timestamp({self.raw!r})"


_EMPTY_TIME = Timestamp("")


@dataclass(frozen=True, slots=True)
class Job:
    """One snapshot of a job (or sub-job: they have the same shape and may nest)."""

    id: str
    type: str
    phase: Phase
    reason: str = ""
    cluster_id: str = ""
    resource_id: str = ""
    resource_name: str = ""
    extend_params: dict[str, Any] | None = None
    created: Timestamp = _EMPTY_TIME
    updated: Timestamp = _EMPTY_TIME
    sub_jobs: tuple[Job, ...] = ()
    message: str = ""
    """``status.message``: what CCE adds to the phase (the golangsdk's JobStatus has it; the docs list only reason)."""
    owner_job: str = ""
    """``spec.ownerJob``: the job this one is a sub-job of, when it is read by its own id."""

    @property
    def is_terminal(self) -> bool:
        return self.phase.is_terminal

    @property
    def order_id(self) -> str:
        """``extendParam.orderID``: a yearly/monthly job waits on this billing order until it is paid."""
        value = (self.extend_params or {}).get("orderID")
        return value if isinstance(value, str) else ""

    def walk(self) -> list[Job]:
        """Every sub-job below this job, depth first (not the job itself)."""
        out: list[Job] = []
        for sub in self.sub_jobs:
            out.append(sub)
            out.extend(sub.walk())
        return out


def _encode(obj: object) -> object:
    if isinstance(obj, Timestamp):
        return obj.raw
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def job_to_json(job: Job, *, indent: bool = False) -> bytes:
    """Our own serialization of a snapshot (timestamps as their raw text), read back by :func:`job_from_json`."""
    return orjson.dumps(job, default=_encode, option=orjson.OPT_INDENT_2 if indent else 0)


def job_from_json(data: bytes | str) -> Job:
    """Rebuild a snapshot written by :func:`job_to_json`."""
    return _job_from_dict(orjson.loads(data))


def _job_from_dict(d: dict[str, Any]) -> Job:
    return Job(
        id=d["id"],
        type=d["type"],
        phase=Phase(d["phase"]),
        reason=d.get("reason", ""),
        cluster_id=d.get("cluster_id", ""),
        resource_id=d.get("resource_id", ""),
        resource_name=d.get("resource_name", ""),
        extend_params=d.get("extend_params"),
        created=Timestamp(d.get("created") or ""),
        updated=Timestamp(d.get("updated") or ""),
        sub_jobs=tuple(_job_from_dict(s) for s in d.get("sub_jobs", ())),
        message=d.get("message", ""),
        owner_job=d.get("owner_job", ""),
    )


def json_object(value: object, where: str) -> dict[str, Any]:
    """A JSON object field (``None`` when absent is an empty one); anything else is a malformed body."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedResponseError(f"{where} is {type(value).__name__}, expected an object")
    return value


def json_text(value: object) -> str:
    """A JSON string field as text: absent is ``""``, a number its digits, anything else ``""``."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    return ""


def parse_job_object(
    data: object,
    *,
    _depth: int = 0,
    _memo: dict[str, str] | None = None,
    _reuse: list[Job | None] | None = None,
) -> Job:
    """Build a :class:`Job` from decoded JSON (a dict); raises :class:`MalformedResponseError`.

    ``_reuse`` (from :func:`parse_job_reusing`) holds, per top-level sub-job, an already parsed snapshot of it.
    """
    if _depth > _MAX_DEPTH:
        raise MalformedResponseError(f"sub-jobs nested deeper than {_MAX_DEPTH} levels")
    job = json_object(data, "job" if _depth == 0 else "sub-job")
    if not job:
        raise MalformedResponseError("job body is empty")
    metadata = json_object(job.get("metadata"), "metadata")
    spec = json_object(job.get("spec"), "spec")
    status = json_object(job.get("status"), "status")
    if not metadata and not spec and not status:
        raise MalformedResponseError("body has none of metadata, spec, status: not a job")
    raw_phase = status.get("phase")
    if raw_phase is not None and not isinstance(raw_phase, str):
        raise MalformedResponseError(f"status.phase is {type(raw_phase).__name__}, expected a string")
    if not raw_phase and _depth == 0 and job.get("status") is not None:
        # A job's status without its phase is not "Initializing": the answer is broken (retry), not news. A
        # sub-job CCE has not started may show an empty status: that one is Initializing.
        raise MalformedResponseError("status has no phase")
    # The enum's own lookup first: ``Phase(value)`` goes through EnumMeta.__call__, a poll's worth of time.
    phase = (_PHASES.get(raw_phase) or Phase(raw_phase)) if raw_phase else Phase.INITIALIZING
    raw_subs = spec.get("subJobs")
    if raw_subs is not None and not isinstance(raw_subs, list):
        raise MalformedResponseError("spec.subJobs is not a list")
    extend = spec.get("extendParam")
    # Sub-jobs repeat their parent's cluster id, resource id and times: keep one copy of each equal string
    # (a daemon holds a snapshot of every tracked job).
    memo = {} if _memo is None else _memo

    def text(value: object) -> str:
        s = value if value.__class__ is str else json_text(value)
        return memo.setdefault(s, s)

    subs: list[Job] = []
    for i, sub in enumerate(raw_subs or ()):
        reused = _reuse[i] if _reuse is not None else None
        subs.append(reused or parse_job_object(sub, _depth=_depth + 1, _memo=memo))

    return Job(
        id=text(metadata.get("uid")),
        type=text(spec.get("type")),
        phase=phase,
        reason=text(status.get("reason")),
        cluster_id=text(spec.get("clusterUID")),
        resource_id=text(spec.get("resourceID")),
        resource_name=text(spec.get("resourceName")),
        extend_params=_extend_params(extend, text),
        created=Timestamp(text(metadata.get("creationTimestamp"))),
        updated=Timestamp(text(metadata.get("updateTimestamp"))),
        sub_jobs=tuple(subs),
        message=text(message) if (message := status.get("message")) else "",
        owner_job=text(owner) if (owner := spec.get("ownerJob")) else "",
    )


_MAX_EXTEND_DEPTH = 8


def _nesting(value: object, limit: int) -> int:
    """Nesting depth of a JSON value, counting no further than ``limit + 1``."""
    depth, level = 0, [value]
    while level and depth <= limit:
        depth += 1
        nxt: list[object] = []
        for v in level:
            if isinstance(v, dict):
                nxt.extend(v.values())
            elif isinstance(v, list):
                nxt.extend(v)
        level = nxt
    return depth


def _extend_params(extend: object, text: Callable[[object], str]) -> dict[str, Any] | None:
    """``spec.extendParam`` (a map of strings in the API document); values nested absurdly deep are dropped,
    so that every snapshot can be stored and serialized again."""
    if not isinstance(extend, dict) or not extend:
        return None
    out: dict[str, Any] = {}
    for key, value in extend.items():
        if isinstance(value, str):
            out[text(key)] = text(value)
        elif _nesting(value, _MAX_EXTEND_DEPTH) <= _MAX_EXTEND_DEPTH:
            out[text(key)] = value
    return out or None


def _strip_trailing_commas(text: str) -> str:
    """Drop commas that directly precede ``}`` or ``]``, outside strings."""
    out: list[str] = []
    in_string = escaped = False
    pending_comma: int | None = None
    for ch in text:
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch in "}]" and pending_comma is not None:
            del out[pending_comma]
        if not ch.isspace():
            pending_comma = None
        if ch == ",":
            pending_comma = len(out)
        elif ch == '"':
            in_string = True
        out.append(ch)
    return "".join(out)


def parse_job(body: bytes | str) -> Job:
    """Parse a job response body; raises :class:`MalformedResponseError` with a one-line reason."""
    return parse_job_object(decode_body(body))


# Most polls of a running job change only its ``updateTimestamp``, and its sub-jobs change one at a time (a
# ``ScaleupCluster`` job has a sub-job per node, each with three of its own): parsing the whole body again at
# every poll would be most of the poll's cost. So a parse keeps digests of what it read, re-serialized by
# orjson (in C): one of the body without the job's ``updateTimestamp`` and one per top-level sub-job. If the
# first matches, the snapshot is the previous one with the new time; otherwise a sub-job whose digest matches
# is the previous snapshot's very object, which also lets change detection skip it by identity. A digest is
# Python's 64-bit hash of the bytes, as for the whole-body comparison in the scheduler: a collision (2**-64 a
# comparison) would show a change a poll late, and we accept that over keeping every body's bytes.
Digests = tuple[int, ...]
_NO_STAMP: Any = object()


def parse_job_reusing(body: bytes | str, previous: Job | None, digests: Digests) -> tuple[Job, Digests]:
    """Parse ``body`` like :func:`parse_job`, reusing what is unchanged from ``previous``.

    ``digests`` are the ones returned with ``previous`` (``()`` at first); returns the snapshot and its digests:
    ``(the body without the job's updateTimestamp, each top-level sub-job)``.
    """
    data = decode_body(body)
    job = json_object(data, "job")
    try:
        return _parse_reusing(job, previous, digests)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (255) though it reads (1024): no reuse
        return parse_job_object(job), ()


def _parse_reusing(job: dict[str, Any], previous: Job | None, digests: Digests) -> tuple[Job, Digests]:
    metadata = job.get("metadata")
    stamp = metadata.pop("updateTimestamp", _NO_STAMP) if isinstance(metadata, dict) else _NO_STAMP
    try:
        body_key = hash(orjson.dumps(job)) if stamp is not _NO_STAMP else 0
    finally:
        if stamp is not _NO_STAMP:
            metadata["updateTimestamp"] = stamp  # type: ignore[index]
    if stamp is not _NO_STAMP and previous is not None and digests and body_key == digests[0]:
        updated = json_text(stamp)
        if updated == previous.updated.raw:
            return previous, digests
        return _restamped(previous, updated), digests
    spec = job.get("spec")
    raw_subs = spec.get("subJobs") if isinstance(spec, dict) else None
    if not isinstance(raw_subs, list) or not raw_subs:
        return parse_job_object(job), (body_key,)
    known = dict(zip(digests[1:], previous.sub_jobs, strict=False)) if previous is not None else {}
    keys = [hash(orjson.dumps(raw)) for raw in raw_subs]
    return parse_job_object(job, _reuse=[known.get(key) for key in keys]), (body_key, *keys)


class ParseMemo:
    """What parsing one job's answers keeps from poll to poll: the last snapshot, the hash of the body it came
    from (a byte-identical answer is that snapshot, not even decoded) and its digests (see above)."""

    __slots__ = ("body", "digests", "job")

    def __init__(self, job: Job | None = None) -> None:
        self.job = job
        self.body = 0
        self.digests: Digests = ()

    def parse(self, body: bytes | str) -> Job:
        """The snapshot ``body`` gives, reusing what is unchanged; raises :class:`MalformedResponseError`."""
        digest = hash(body)
        if self.job is not None and digest == self.body:
            return self.job
        self.job, self.digests = parse_job_reusing(body, self.job, self.digests)
        self.body = digest
        return self.job


def _restamped(job: Job, updated: str) -> Job:
    """``job`` with another ``updateTimestamp`` (everything else, sub-jobs included, is the same objects)."""
    return Job(
        id=job.id,
        type=job.type,
        phase=job.phase,
        reason=job.reason,
        cluster_id=job.cluster_id,
        resource_id=job.resource_id,
        resource_name=job.resource_name,
        extend_params=job.extend_params,
        created=job.created,
        updated=Timestamp(updated),
        sub_jobs=job.sub_jobs,
        message=job.message,
        owner_job=job.owner_job,
    )


def decode_body(body: bytes | str) -> object:
    """JSON from a CCE body, trailing commas repaired; raises :class:`MalformedResponseError`."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            text = body.decode("utf-8") if isinstance(body, bytes) else body
            data = orjson.loads(_strip_trailing_commas(text))
        except (UnicodeDecodeError, orjson.JSONDecodeError):
            raise MalformedResponseError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedResponseError("body is nested too deeply") from None
    return data


_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
ID_PATTERN = _ID_RE  # what validate_id accepts (fullmatch), for callers that skip instead of raising
_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,63}")
MAX_LABEL_VALUE = 256


def validate_label(key: object, value: object) -> tuple[str, str]:
    """Check one label (keys: 1-63 letters, digits, ``_ . -``; values: a string of at most 256 characters
    without control characters); raises :class:`InvalidIdError` with one line naming the problem."""
    if not isinstance(key, str) or not _LABEL_KEY_RE.fullmatch(key):
        shown = repr(key) if len(repr(key)) <= 60 else repr(key)[:57] + "..."
        raise InvalidIdError(f"invalid label key {shown}: use 1-63 letters, digits, '_', '.' or '-'")
    if not isinstance(value, str):
        raise InvalidIdError(f"label {key}: value must be a string")
    if len(value) > MAX_LABEL_VALUE:
        raise InvalidIdError(f"label {key}: value is longer than {MAX_LABEL_VALUE} characters")
    if has_control(value):
        raise InvalidIdError(f"label {key}: value contains a control character")
    return key, value


def validate_id(value: object, what: str = "job id") -> str:
    """Return ``value`` if it is a safe id for a URL path segment, else raise :class:`InvalidIdError`.

    CCE ids are UUID-like (``354331b2c-229a-11e8-9c75-0255ac100ceb``) and project ids 32 hex digits; we
    accept letters, digits, ``-`` and ``_`` (1-128, starting alphanumeric) so that ``/``, ``..``, ``?``,
    ``%``, ``#``, whitespace and control characters can never reach the URL.
    """
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        shown = repr(value)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise InvalidIdError(
            f"invalid {what} {shown}: use 1-128 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return value
