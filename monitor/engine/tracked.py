"""One tracked job, as the scheduler keeps it: small and slotted, for a daemon may track 100,000 of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from monitor.core.model import Job, ParseMemo
from monitor.engine.diff import JobContext

if TYPE_CHECKING:
    from monitor.engine.fleet import Probe
    from monitor.engine.freshness import Steps

__all__ = ["Tracked"]


class Tracked:
    """One tracked job (or node list or node pool: ``probe``). Slotted and small: a daemon may track 100,000."""

    __slots__ = (
        "_context",
        "deadline",
        "delay",
        "dropped",
        "expanded",
        "failures",
        "first_not_found",
        "job_id",
        "labels",
        "last",
        "last_progress",
        "memo",
        "not_found",
        "probe",
        "refused_alone",
        "removed",
        "stalled",
        "steps",
    )

    def __init__(self, job_id: str, labels: Mapping[str, str], now: float, timeout: float, delay: float):
        self.job_id = job_id
        self.labels = labels
        self.deadline = now + timeout
        self.delay = delay
        self.last: Job | None = None
        self.memo: ParseMemo | None = None  # what parsing this job's answers keeps (model.ParseMemo)
        self.last_progress = now
        self.failures = 0
        self.not_found = 0
        self.first_not_found = 0.0
        self.stalled = False
        self.removed = False
        self.dropped = False  # removed by the user: nothing more about it is stored or published
        self._context: JobContext | None = None
        self.expanded: dict[str, Job] | None = None  # node sub-jobs read by id (engine.probing.with_sub_jobs)
        self.probe: Probe | None = None  # a node list or a node pool (engine.fleet) instead of a job
        self.refused_alone = False  # a 403 on it was followed by another job's good read (engine.episodes)
        self.steps: Steps | None = None  # the adaptive strategy's view of it (engine.freshness)

    def context(self, project_id: str) -> JobContext:
        """What every event about this job carries (built once: labels do not change)."""
        if self._context is None:
            self._context = JobContext(project_id, self.job_id, self.labels)
        return self._context
