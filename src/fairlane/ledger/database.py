"""Engine construction and schema migration for the ledger."""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from fairlane.fairlane_error import FairlaneError
from fairlane.settings import Settings

logger = logging.getLogger("fairlane.ledger")

_MIGRATIONS = Path(__file__).with_name("migrations")
#: Arbitrary constant naming fairlane's migration lock among PostgreSQL advisory locks.
_MIGRATION_LOCK_ID = 0x6661_6972_6C61


class LedgerOutdated(FairlaneError, RuntimeError):
    """The ledger's schema is not the newest and this process may not migrate it
    (``FAIRLANE_AUTO_MIGRATE=false``): run ``fairlane migrate`` first."""


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """Normalise a timestamp read back from the ledger (SQLite drops the zone) to aware UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


#: A prepare threshold no statement reaches: only statements run with ``prepare=True`` are prepared.
_NEVER = 2**62

#: Seconds a connection keeps the plans of its prepared statements (see :func:`replan_if_stale`).
PLAN_LIFETIME = 1.0


#: Connections the pool keeps (PostgreSQL), and the seconds after which a connection is replaced.
POOL_SIZE = 10
POOL_RECYCLE = 1800


def replan_if_stale(connection: Any, planned_at: float | None) -> float:
    """Drop the prepared statements of a psycopg ``connection`` whose plans are older than
    :data:`PLAN_LIFETIME` seconds; returns when the plans it now runs were made.

    A prepared statement keeps the plan made for the table as it was when it was prepared,
    until an ``ANALYZE`` of the table invalidates it. Prepared on a nearly empty ledger (a
    worker that boots before a flood), every plan is a sequential scan, and where autovacuum
    is off or has not analyzed the table yet, a flush then reads the whole table: 41 ms and
    9,800 buffers per flush behind a 100,000-job backlog instead of 0.7 ms and 140. Preparing
    again every second lets the plans follow the table's size within a second of a flood, for
    one planning per statement and connection per second (about 1 ms each: a few ms of
    PostgreSQL's CPU per second per process).

    The statements are dropped by a rollback, which psycopg answers by forgetting its prepared
    statements and deallocating them on the server, so both sides agree. (A ``DEALLOCATE ALL``
    sent by hand is not always noticed by psycopg: its second run on a connection that had no
    prepared statement at the first is not, and the next run of a forgotten statement fails.)
    ``connection`` must be idle, outside a transaction.
    """
    now = time.monotonic()
    if planned_at is None:
        return now
    if now - planned_at < PLAN_LIFETIME:
        return planned_at
    autocommit = connection.autocommit
    connection.autocommit = False
    try:
        connection.execute("SELECT 1")  # opens the transaction the rollback ends
        connection.rollback()
    finally:
        connection.autocommit = autocommit
    return now


def create_ledger_engine(settings: Settings) -> sa.Engine:
    """Build the engine for ``settings.database_url``.

    On SQLite, write transactions start with ``BEGIN IMMEDIATE`` and the database runs in WAL
    mode, so worker threads and processes queue for the write lock instead of failing.
    """
    if not settings.is_sqlite:
        # No pre-ping: it costs a round trip per checkout; stale connections are recycled instead.
        # No automatic server-side prepares (a threshold never reached; psycopg's None would also
        # refuse the explicit ones): a generic plan can't see which partial index fits the admission
        # round's scans. The hot path's own statements (accept, the writer's batches) are prepared
        # explicitly and always run their generic plan: planning them cost about twice running them.
        engine = sa.create_engine(
            settings.sqlalchemy_url,
            pool_size=POOL_SIZE,
            max_overflow=20,
            pool_recycle=POOL_RECYCLE,
            connect_args={"prepare_threshold": _NEVER, "options": "-c plan_cache_mode=force_generic_plan"},
        )

        dbapi = engine.dialect.loaded_dbapi

        @sa.event.listens_for(engine, "checkout")
        def _replan(dbapi_connection: Any, record: Any, _proxy: object) -> None:
            try:
                record.info["planned_at"] = replan_if_stale(dbapi_connection, record.info.get("planned_at"))
            except (dbapi.OperationalError, dbapi.InterfaceError) as error:
                # It died while pooled (e.g. the server restarted): SQLAlchemy replaces it at once.
                raise sa.exc.DisconnectionError(type(error).__name__) from error

        return engine

    path = settings.database_url.removeprefix("sqlite:///")
    if path not in ("", ":memory:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(settings.database_url, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's "begin" hook issue BEGIN
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin_immediate(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


#: Planner settings under which the hot path's statements are planned (see :func:`plan_by_index`).
INDEX_PLANNING = (("enable_seqscan", "off"), ("enable_sort", "off"))


def plan_by_index(connection: Any) -> None:
    """Make a psycopg ``connection`` (in autocommit) plan every statement without sequential scans
    and sorts, for good.

    Each hot-path statement is built around an index that gives its rows in the order needed: a
    round reads the backlog's first jobs in the claim index's order, a flush finds its jobs by
    primary key. PostgreSQL picks those indexes once its statistics say the table is large. A
    plan made before that (a fresh ledger, and the table not analyzed since a flood, e.g. with
    autovacuum off or before its next run) sorted the whole backlog in another index's order, or
    read the whole table: 15-48 ms per round and 38 ms per flush behind 20,000 new jobs, for the
    second or two until the plans were made again, while the jobs of other tenants waited for them.
    With these two settings off, the same indexes are chosen whatever the statistics say.
    Rounds, on the pool's connections, set them for their transaction only (see
    :mod:`fairlane.ledger.admission`).
    """
    for name, value in INDEX_PLANNING:
        connection.execute("SELECT set_config(%s, %s, false)", (name, value))


def dedicated_connection(engine: sa.Engine, *, by_index: bool = False) -> Any:
    """A driver connection of ``engine`` in autocommit, taken out of the pool for good.

    For a thread that keeps one connection for its whole life (the ledger writer, a LISTEN):
    it counts against no pool limit and the caller closes it. With ``by_index``, it plans as
    the hot path's statements must (:func:`plan_by_index`).
    """
    pooled = engine.raw_connection()
    connection = pooled.driver_connection
    pooled.detach()
    connection.autocommit = True  # type: ignore[union-attr]
    if by_index:
        try:
            plan_by_index(connection)
        except BaseException:
            connection.close()  # type: ignore[union-attr]
            raise
    return connection


@contextmanager
def _migration_lock(engine: sa.Engine, settings: Settings) -> Iterator[sa.Connection]:
    """Serialise migrations across processes: an advisory lock on PostgreSQL, a file lock on SQLite."""
    if settings.is_sqlite:
        lock_path = Path(settings.database_url.removeprefix("sqlite:///") + ".migrate.lock")
        with lock_path.open("w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            with engine.connect() as connection:
                yield connection
        return
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
        connection.commit()
        try:
            yield connection
        finally:
            connection.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID})
            connection.commit()


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def schema_revisions(engine: sa.Engine) -> tuple[str | None, str | None]:
    """``(current, newest)``: the ledger's schema revision and the newest this code knows."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current, ScriptDirectory.from_config(_alembic_config()).get_current_head()


def require_current_schema(engine: sa.Engine) -> None:
    """Raise :class:`LedgerOutdated` unless the ledger's schema is the newest revision."""
    current, newest = schema_revisions(engine)
    if current != newest:
        raise LedgerOutdated(
            f"the ledger schema is at revision {current or 'none'}, this code needs {newest}: run "
            "`fairlane migrate` (FAIRLANE_AUTO_MIGRATE=false keeps this process from migrating)"
        )


def migrate(engine: sa.Engine, settings: Settings) -> None:
    """Bring the ledger schema to the newest revision (safe to call from many processes)."""
    config = _alembic_config()
    with _migration_lock(engine, settings) as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        connection.commit()
    logger.debug("event=ledger_migrated url_scheme=%s", engine.url.get_backend_name())
