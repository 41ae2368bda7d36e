"""The PostgreSQL schema of the daemon's state (:mod:`monitor.daemon.pgstore`) and how it is brought up to date.

Versions, each applied once, in order, at start-up (:func:`migrate`), under an advisory lock:

1. the tables of the SQLite engine (jobs, history, outbox, digests, node pools and their nodes);
2. ``leases``: one holder at a time for a named duty (a sink's delivery, the rollout digests);
3. replicas sharing the jobs (:mod:`monitor.daemon.pgcluster`): ``members`` (a heartbeat row per replica, on
   the database's clock; ``live_members`` those not expired), each job's ``owner`` and ``epoch`` (bumped by
   every claim), ``changed`` (from the ``changes`` sequence on every write, so that replicas read only what
   moved), in ``history`` the event ``type`` and who wrote it (replica, epoch, database time), ``claims`` (every
   claim of a job: epoch, owner, time — the audit that shows no write came from a stale owner), owners of node
   pools and awaited nodes, the shared rate limit's ``UNLOGGED`` table (:mod:`monitor.daemon.pglimiter`), and
   ``cce_monitor_fence``: the guard every write for a job runs first — it fails (SQLSTATE ``CM001``) unless the
   writer still owns the job at the epoch it claimed, and it locks the row until the write commits, so a claim
   never interleaves with a write.
"""

from __future__ import annotations

import logging
from typing import Any

from psycopg import AsyncConnection

from monitor.core.errors import ConfigError

__all__ = ["FENCED", "SCHEMA_VERSION", "migrate"]

logger = logging.getLogger("monitor.daemon.pgstore")

FENCED = "CM001"
"""The SQLSTATE of a write refused by ``cce_monitor_fence``."""

_LOCK = 0x63636D6F  # "ccmo": the advisory lock that serialises migrations across replicas

# Each migration once, in order; every statement idempotent, so a half-applied one (not possible within its
# transaction, but cheap to promise) applies again cleanly.
_MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
CREATE TABLE IF NOT EXISTS jobs (
    job_id      text PRIMARY KEY,
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    labels      bytea NOT NULL,
    rollout     text,
    added_at    double precision NOT NULL,
    phase       text,
    snapshot    bytea,
    outcome     text,
    finished_at double precision,
    updated_at  double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (added_at, seq) WHERE finished_at IS NULL;
CREATE TABLE IF NOT EXISTS history (
    seq      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id   text NOT NULL,
    event_id text NOT NULL,
    event    bytea NOT NULL,
    UNIQUE (job_id, event_id)
);
CREATE TABLE IF NOT EXISTS outbox (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sink         text NOT NULL,
    event_id     text NOT NULL,
    event        bytea NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    delivered_at double precision,
    rejected     boolean NOT NULL DEFAULT false,
    UNIQUE (sink, event_id)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sink, seq) WHERE delivered_at IS NULL;
CREATE TABLE IF NOT EXISTS digests (
    event_id text PRIMARY KEY,
    at       double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS nodepools (
    cluster_id  text NOT NULL,
    nodepool_id text NOT NULL,
    target      integer,
    labels      bytea NOT NULL,
    rollout     text,
    added_at    double precision NOT NULL,
    outcome     text,
    finished_at double precision,
    PRIMARY KEY (cluster_id, nodepool_id)
);
CREATE TABLE IF NOT EXISTS pool_nodes (
    job_id      text PRIMARY KEY,
    cluster_id  text NOT NULL,
    nodepool_id text NOT NULL,
    node        bytea NOT NULL,
    labels      bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS awaited_nodes (
    cluster_id text NOT NULL,
    node_id    text NOT NULL,
    awaited    bytea NOT NULL,
    PRIMARY KEY (cluster_id, node_id)
);
""",
    ),
    (
        2,
        """
CREATE TABLE IF NOT EXISTS leases (
    name       text PRIMARY KEY,
    holder     text NOT NULL,
    epoch      bigint NOT NULL DEFAULT 1,
    expires_at double precision NOT NULL
);
""",
    ),
    (
        3,
        """
CREATE TABLE IF NOT EXISTS members (
    replica    text PRIMARY KEY,
    started_at double precision NOT NULL,
    expires_at double precision NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS changes;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS owner text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS epoch bigint NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS changed bigint NOT NULL DEFAULT nextval('changes');
CREATE INDEX IF NOT EXISTS jobs_changed ON jobs (changed) WHERE rollout IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner) WHERE finished_at IS NULL;
ALTER TABLE history ADD COLUMN IF NOT EXISTS type text;
ALTER TABLE history ADD COLUMN IF NOT EXISTS writer text;
ALTER TABLE history ADD COLUMN IF NOT EXISTS epoch bigint;
ALTER TABLE history ADD COLUMN IF NOT EXISTS written_at double precision;
CREATE TABLE IF NOT EXISTS claims (
    job_id text NOT NULL,
    epoch  bigint NOT NULL,
    owner  text NOT NULL,
    at     double precision NOT NULL,
    PRIMARY KEY (job_id, epoch)
);
ALTER TABLE nodepools ADD COLUMN IF NOT EXISTS owner text;
ALTER TABLE awaited_nodes ADD COLUMN IF NOT EXISTS owner text;
CREATE UNLOGGED TABLE IF NOT EXISTS rate_limits (
    name        text PRIMARY KEY,
    configured  double precision NOT NULL,
    rate        double precision NOT NULL,
    ceiling     double precision NOT NULL,
    tat         double precision NOT NULL DEFAULT 0,
    hold_until  double precision NOT NULL DEFAULT 0,
    last_change double precision NOT NULL DEFAULT 0
);
ALTER TABLE rate_limits ADD COLUMN IF NOT EXISTS ceiling_until double precision NOT NULL DEFAULT 0;
CREATE OR REPLACE VIEW live_members AS
    SELECT replica FROM members WHERE expires_at > extract(epoch from clock_timestamp());
CREATE OR REPLACE FUNCTION cce_monitor_fence(job text, replica text, held bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM jobs WHERE job_id = job AND owner = replica AND epoch = held FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % is no longer owned by this replica', job USING ERRCODE = 'CM001';
    END IF;
END
$$;
""",
    ),
    (
        4,
        # PgState.record in one statement: what took five (fence, job, history, outbox, notify) and a BEGIN and a
        # COMMIT around them for each poll that changed something; the job's update doubles as its fence.
        # Arguments: the job, the writer (NULL: no replicas) and its epoch (NULL: not fenced), the new snapshot
        # and phase and the outcome (each NULL: unchanged), the time, the history's event ids, bodies and types,
        # the outbox's sinks, event ids and bodies (in order), and the channel to tell of new outbox rows (NULL:
        # none). And the learned step durations (monitor.engine.durations: ETAs, the adaptive strategy).
        """
CREATE TABLE IF NOT EXISTS durations (
    step    text PRIMARY KEY,
    samples bytea NOT NULL
);
CREATE OR REPLACE FUNCTION cce_monitor_record(
    job text, writer text, held bigint, body bytea, new_phase text, result text, at double precision,
    ids text[], bodies bytea[], types text[], q_sinks text[], q_ids text[], q_bodies bytea[], channel text
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF body IS NOT NULL OR result IS NOT NULL THEN  -- the update is the fence: it locks the row, if still ours
        UPDATE jobs SET snapshot = coalesce(body, snapshot), phase = coalesce(new_phase, phase),
            outcome = coalesce(result, outcome), finished_at = CASE WHEN result IS NULL THEN finished_at ELSE at END,
            updated_at = at, changed = nextval('changes')
        WHERE job_id = job AND (held IS NULL OR (owner = writer AND epoch = held));
        IF NOT FOUND AND held IS NOT NULL THEN
            RAISE EXCEPTION 'job % is no longer owned by this replica', job USING ERRCODE = 'CM001';
        END IF;
    ELSIF held IS NOT NULL THEN
        PERFORM cce_monitor_fence(job, writer, held);
    END IF;
    IF cardinality(ids) > 0 THEN
        INSERT INTO history (job_id, event_id, event, type, writer, epoch, written_at)
        SELECT job, e, d, t, writer, held, extract(epoch from clock_timestamp())
        FROM unnest(ids, bodies, types) WITH ORDINALITY AS x(e, d, t, n) ORDER BY n
        ON CONFLICT (job_id, event_id) DO NOTHING;
    END IF;
    IF cardinality(q_ids) > 0 THEN
        INSERT INTO outbox (sink, event_id, event)
        SELECT s, e, d FROM unnest(q_sinks, q_ids, q_bodies) WITH ORDINALITY AS x(s, e, d, n) ORDER BY n
        ON CONFLICT (sink, event_id) DO NOTHING;
        IF channel IS NOT NULL THEN
            PERFORM pg_notify(channel, 'outbox');
        END IF;
    END IF;
END
$$;
""",
    ),
)
SCHEMA_VERSION = _MIGRATIONS[-1][0]


async def migrate(conn: AsyncConnection[Any], where: str) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`: each migration once, under an advisory lock held for the
    transaction, so that replicas starting together wait for each other instead of applying twice."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
        row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise ConfigError(
                f"state.dsn: the database at {where} has schema version {current}, newer than this cce-monitor "
                f"knows ({SCHEMA_VERSION}); upgrade cce-monitor"
            )
        for version, sql in _MIGRATIONS:
            if version > current:
                await conn.execute(sql.encode())
                await conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                logger.info("state: schema migrated to version %d at %s", version, where)
