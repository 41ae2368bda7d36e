"""A local stand-in for the CCE "Reading Job Progress" API, its nodes and node pools, faithful enough to test against.

``GET /api/v3/projects/{project_id}/jobs/{job_id}`` answers with the documented ``Job`` object, sub-jobs and
all, while each job walks a pre-planned timeline (Initializing → Running → Success | Failed). Around it sit
the things a real region does to a poller: IAM tokens that expire, AK/SK signatures, an API-gateway
throttle, and faults (500, an HTML 503 from the load balancer, truncated JSON, slow answers, dropped
connections).

Design:

* **Planned, not simulated.** ``add_job`` draws the whole timeline of a job and its sub-jobs up front and
  records it as ground truth (:meth:`Simulator.truth`). A request only looks up which steps are at or before
  "now", so serving is cheap and any number of pollers see one consistent history.
* **One injectable clock.** ``clock()`` (default :func:`time.monotonic`) drives job timelines, token
  expiry, the rate limiter and the per-second statistics; a wall-clock anchor taken at construction maps
  clock readings to real UTC timestamps. Tests move a fake clock instead of sleeping; only ``slow_seconds``
  sleeps for real.
* **Timestamps as Go prints them.** ``2020-02-02 08:12:40.672772389 +0000 UTC`` with trailing zeros
  trimmed, so 0-9 fraction digits. Each transition is snapped *up* to a randomly chosen precision and the
  phase becomes visible exactly at the snapped instant, so the served timestamp, the truth and the moment a
  poller can first see the change agree to the nanosecond.
* **Deterministic under the seed.** Separate ``random.Random`` streams (seeded from ``config.seed``) for
  jobs, faults, tokens and request ids: the same calls give the same job ids and timelines, and the same
  request order gives the same fault decisions, whatever else happens in between. Every request to the job
  API draws the same number of fault numbers, whatever the probabilities.
* **Order of checks on the job API**, outermost first, as the layers of a real region sit:
  slow (sleep) → drop (load balancer) → HTML 503 (load balancer) → 429 (API gateway throttle) →
  401 (API gateway auth) → 404 (CCE: project, unknown or not-yet-visible job) → 500 (CCE) →
  truncated 200 (malformed) → 200.
* **Nodes and node pools.** ``create_nodes`` plans one ScaleupCluster job whose CreateNode sub-jobs each
  create a node; ``add_nodepool``/``scale_nodepool`` (or ``PUT .../nodepools/{id}``) scale a pool node by
  node, each with its own CreateNode or DeleteNode job, to ``SoldOut`` past the pool's capacity. Node phases
  are planned with the jobs (:meth:`Simulator.node_truth`); the node routes take the job API's path and
  order of checks, and the statistics count requests per route kind.
* **Control endpoints** under ``/_sim/`` (no auth, not counted in statistics) let a benchmark in another
  process add jobs, read truth and statistics, and change faults at run time.

Secrets (token, SK, IAM password) never appear in a repr or a log line.

Modules, one concept each (this package only re-exports the public names):

* :mod:`~monitor.sim.config`: :class:`SimulatorConfig` and :class:`FaultSettings`, and their validation.
* :mod:`~monitor.sim.shapes`: job types (:data:`JOB_TYPES`), their sub-job trees and failure reasons, and
  the resources a job's spec names.
* :mod:`~monitor.sim.timeline`: planned timelines (:class:`Transition`, the truth), the job JSON rendered
  from them at a given instant, and :func:`format_go_timestamp`.
* :mod:`~monitor.sim.faults`: the per-request fault draw and the throttle's token bucket.
* :mod:`~monitor.sim.stats`: request counters and :class:`SimulatorStats`.
* :mod:`~monitor.sim.nodes`: :class:`~monitor.sim.nodes.Fleet`, nodes and node pools planned up front
  (bulk creation as one ScaleupCluster job of CreateNode sub-jobs, node phases, pool scaling to SoldOut and
  back down with DeleteNode jobs) and :class:`NodeTransition`, the node truth; its module docstring lists
  the decisions taken where the public record is silent.
* :mod:`~monitor.sim.node_api`: the node and node pool routes (``.../clusters/{id}/nodes``,
  ``.../nodepools/{id}``) and their ``/_sim/`` control endpoints.
* :mod:`~monitor.sim.server`: :class:`Simulator`, the aiohttp application (job API, the one path every CCE
  route takes, IAM tokens, AK/SK verification, faults, ``/_sim/`` control endpoints, statistics).
* :mod:`~monitor.sim.run`: :func:`run_forever`, a simulator served for a benchmark in another process.
"""

from monitor.sim.config import FaultSettings, SimulatorConfig
from monitor.sim.nodes import NodeTransition
from monitor.sim.run import run_forever
from monitor.sim.server import Simulator
from monitor.sim.shapes import JOB_TYPES
from monitor.sim.stats import SimulatorStats
from monitor.sim.timeline import Transition, format_go_timestamp

__all__ = [
    "JOB_TYPES",
    "FaultSettings",
    "NodeTransition",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "Transition",
    "format_go_timestamp",
    "run_forever",
]
