"""The ledger's tables, as SQLAlchemy Core metadata.

Alembic migrations under ``migrations/versions`` create and evolve these tables; this
module is what the query code is written against. Keep the two in step.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

#: States a job can be in; the last three are final.
PENDING, DISPATCHED, RUNNING, RETRYING = "pending", "dispatched", "running", "retrying"
SUCCEEDED, DEAD, CANCELLED = "succeeded", "dead", "cancelled"
STATES = (PENDING, DISPATCHED, RUNNING, RETRYING, SUCCEEDED, DEAD, CANCELLED)
FINAL_STATES = frozenset({SUCCEEDED, DEAD, CANCELLED})
#: States whose jobs wait in the ledger backlog for admission.
BACKLOG_STATES = (PENDING, RETRYING)

#: Predicates spelled exactly as the partial indexes' own, so PostgreSQL's planner can always
#: prove a query may use those indexes (bound parameters would hide the states from it).
BACKLOG_PREDICATE = _BACKLOG_WHERE = sa.text("state IN ('pending', 'retrying')")
_FINAL_WHERE = sa.text("state IN ('succeeded', 'dead', 'cancelled')")
LIVE_PREDICATE = _LIVE_WHERE = sa.text("state IN ('dispatched', 'running')")
DISPATCHED_PREDICATE = _DISPATCHED_WHERE = sa.text("state = 'dispatched'")
_HAS_KEY = sa.text("idempotency_key IS NOT NULL")
_HAS_RATE_KEY = sa.text("rate_key IS NOT NULL")


def _ts(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


jobs = sa.Table(
    "fairlane_jobs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("queue", sa.String(255), nullable=False),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("lane", sa.String(32), nullable=False),
    sa.Column("lane_rank", sa.SmallInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("stride_pass", sa.Float, nullable=False),
    sa.Column("cost", sa.Float, nullable=False, server_default="1"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("idempotency_key", sa.String(255)),
    sa.Column("rate_key", sa.String(255)),
    sa.Column("rate_tokens", sa.Float),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("worker_id", sa.String(128)),
    sa.Column("progress", sa.JSON),
    sa.Column("result", sa.JSON),
    sa.Column("result_path", sa.Text),
    sa.Column("error_type", sa.String(255)),
    sa.Column("error_message", sa.Text),
    sa.Column("error_traceback", sa.Text),
    _ts("enqueued_at", nullable=False),
    _ts("next_run_at", nullable=False),
    _ts("dispatched_at"),
    _ts("started_at"),
    _ts("finished_at"),
    _ts("updated_at", nullable=False),
    sa.Index(
        "ix_fairlane_jobs_claim",
        "queue",
        "lane_rank",
        "stride_pass",
        "id",
        postgresql_where=_BACKLOG_WHERE,
        sqlite_where=_BACKLOG_WHERE,
    ),
    sa.Index("ix_fairlane_jobs_tenant", "tenant", "enqueued_at", "id"),
    sa.Index(
        "ix_fairlane_jobs_cleanup",
        "state",
        "finished_at",
        postgresql_where=_FINAL_WHERE,
        sqlite_where=_FINAL_WHERE,
    ),
    sa.Index(
        "ix_fairlane_jobs_live",
        "state",
        "dispatched_at",
        postgresql_where=_LIVE_WHERE,
        sqlite_where=_LIVE_WHERE,
    ),
    sa.Index(
        "ix_fairlane_jobs_dispatched",
        "queue",
        postgresql_where=_DISPATCHED_WHERE,
        sqlite_where=_DISPATCHED_WHERE,
    ),
    sa.Index(
        "ix_fairlane_jobs_tenant_claim",
        "queue",
        "tenant",
        "lane_rank",
        "stride_pass",
        "id",
        postgresql_where=_BACKLOG_WHERE,
        sqlite_where=_BACKLOG_WHERE,
    ),
    sa.Index(
        "ix_fairlane_jobs_rate_usage",
        "rate_key",
        "dispatched_at",
        postgresql_where=_HAS_RATE_KEY,
        sqlite_where=_HAS_RATE_KEY,
    ),
    sa.Index(
        "uq_fairlane_jobs_idempotency",
        "tenant",
        "idempotency_key",
        unique=True,
        postgresql_where=_HAS_KEY,
        sqlite_where=_HAS_KEY,
    ),
)

#: One row per actor queue; admission rounds of a queue take turns by locking its row.
queues = sa.Table(
    "fairlane_queues",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
)

#: Stride scheduling state: the virtual time of each (queue, lane).
lanes = sa.Table(
    "fairlane_lanes",
    metadata,
    sa.Column("queue", sa.String(255), primary_key=True),
    sa.Column("lane", sa.String(32), primary_key=True),
    sa.Column("virtual_time", sa.Float, nullable=False, server_default="0"),
    sa.Column("credit", sa.Float, nullable=False, server_default="0"),
)

#: Stride scheduling state: the last pass handed to a tenant in a (queue, lane).
tenant_passes = sa.Table(
    "fairlane_tenant_passes",
    metadata,
    sa.Column("queue", sa.String(255), primary_key=True),
    sa.Column("lane", sa.String(32), primary_key=True),
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("last_pass", sa.Float, nullable=False),
)

#: Per-tenant scheduling settings: fair-share weight and concurrency cap (None: queue default).
tenants = sa.Table(
    "fairlane_tenants",
    metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("weight", sa.Float, nullable=False, server_default="1"),
    sa.Column("max_running", sa.Integer),
)

#: GCRA state of each shared rate-limit key (epoch seconds).
rate_limits = sa.Table(
    "fairlane_rate_limits",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("requests_tat", sa.Float, nullable=False, server_default="0"),
    sa.Column("tokens_tat", sa.Float, nullable=False, server_default="0"),
    sa.Column("paused_until", sa.Float, nullable=False, server_default="0"),
)

#: Records written by the built-in ``ingest`` actor.
ingested_records = sa.Table(
    "fairlane_ingested_records",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("item_index", sa.Integer, primary_key=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("record_key", sa.String(255)),
    sa.Column("data", sa.JSON, nullable=False),
    _ts("ingested_at", nullable=False),
    sa.Index("ix_fairlane_ingested_records_tenant", "tenant", "record_key"),
)

#: One row per live worker process (``host:pid``), refreshed every ``heartbeat_interval``.
#: The reaper treats a running job whose worker's row is stale (or gone) as abandoned.
workers = sa.Table(
    "fairlane_workers",
    metadata,
    sa.Column("worker_id", sa.String(128), primary_key=True),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("queues", sa.JSON, nullable=False),
    sa.Column("processed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("in_progress", sa.Integer, nullable=False, server_default="0"),
    #: Worker threads of the process: each queue's dispatch budget follows them.
    sa.Column("threads", sa.Integer, nullable=False, server_default="0"),
    _ts("started_at", nullable=False),
    _ts("last_heartbeat_at", nullable=False),
    sa.Index("ix_fairlane_workers_heartbeat", "last_heartbeat_at"),
)

#: The actors workers declare, published at each worker's boot, so that a service that does
#: not declare an actor can still send to it (validated against this row).
actors = sa.Table(
    "fairlane_actors",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("queue", sa.String(255), nullable=False),
    #: ``[[name, kind, has_default], …]``: the function's parameters (``kind`` as in ``inspect``).
    sa.Column("parameters", sa.JSON, nullable=False),
    #: The actor's options that are plain JSON values (callables and classes are left out).
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("declared_by", sa.String(128), nullable=False),
    _ts("declared_at", nullable=False),
)

#: One row per scheduler task (cleanup, reaper, gauges, cron): when it last ran and succeeded,
#: so a new leader exports the same last-success times as the one it replaced.
scheduler_tasks = sa.Table(
    "fairlane_scheduler_tasks",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("runs", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("failures", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("last_leader", sa.String(128)),
    sa.Column("last_error", sa.Text),
    _ts("last_started_at"),
    _ts("last_success_at"),
    _ts("last_failure_at"),
)

#: API keys of ``fairlane api``. Only a SHA-256 digest of each key is stored (the key itself is
#: shown once, when created); ``id`` is the short public part every key starts with
#: (``fl_<id>_<secret>``), so a key can be named in listings and logs without revealing it.
api_keys = sa.Table(
    "fairlane_api_keys",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("name", sa.String(255), nullable=False, server_default=""),
    _ts("created_at", nullable=False),
    _ts("revoked_at"),
)
