"""Prepared statements follow the ledger's size: a plan made on an empty table is made again,
and the hot path's connections plan by index whatever the statistics say.

A worker that boots on an empty ledger prepares its hot statements there, where the planner's
best plan is a sequential scan. Until an ``ANALYZE`` of the table (never, where autovacuum is
off), PostgreSQL keeps that plan, so once a flood arrives every flush reads the whole table.
:func:`~fairlane.ledger.database.replan_if_stale` prepares them again every few seconds: on the
writer's own connection before a flush, on pooled connections at checkout. These tests run on a
private database, so the table's size is theirs alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from fairlane.ledger import database
from fairlane.ledger.admission import ROUND_SETTINGS
from fairlane.ledger.database import (
    PLAN_LIFETIME,
    create_ledger_engine,
    dedicated_connection,
    migrate,
    replan_if_stale,
)
from fairlane.settings import Settings
from tests.deployment import private_database

#: A statement shaped like the hot path's: jobs looked up by a list of ids.
LOOKUP = "SELECT id, state FROM fairlane_jobs WHERE id = ANY(%(ids)s::text[])"


@pytest.fixture
def ledger(postgres_server_url: str) -> Iterator[tuple[str, sa.Engine]]:
    """A migrated PostgreSQL ledger of its own, without statistics (never analyzed)."""
    with private_database(postgres_server_url, f"fairlane_plans_{uuid.uuid4().hex[:8]}") as url:
        settings = Settings(database_url=url)
        engine = create_ledger_engine(settings)
        migrate(engine, settings)
        try:
            yield url, engine
        finally:
            engine.dispose()


def _load(url: str, count: int) -> list[str]:
    """``count`` finished jobs, as a flood leaves them; returns their ids."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    now = datetime.now(UTC)
    columns = (
        "id, actor, queue, tenant, lane, lane_rank, state, stride_pass, cost, message, "
        "enqueued_at, next_run_at, updated_at"
    )
    with (
        psycopg.connect(url) as connection,
        connection.cursor() as cursor,
        cursor.copy(f"COPY fairlane_jobs ({columns}) FROM STDIN") as copy,
    ):
        for index, job_id in enumerate(ids):
            copy.write_row(
                (job_id, "a", "q", "t", "normal", 2, "succeeded", float(index), 1.0, "{}", now, now, now)
            )
    return ids


def _prepared_plan(connection: Any, ids: list[str]) -> str:
    """Run LOOKUP as the hot path runs its statements (prepared), and return the plan it keeps."""
    connection.execute(LOOKUP, {"ids": ids}, prepare=True).fetchall()
    (name,) = connection.execute(
        "SELECT name FROM pg_prepared_statements WHERE statement LIKE 'SELECT id, state FROM fairlane_jobs%'"
    ).fetchone()
    literal = "ARRAY[" + ", ".join(f"'{job_id}'" for job_id in ids) + "]::text[]"
    rows = connection.execute(f"EXPLAIN (COSTS OFF) EXECUTE {name}({literal})").fetchall()
    return "\n".join(row[0] for row in rows)


def test_a_plan_made_on_an_empty_ledger_is_made_again_once_stale(ledger: tuple[str, sa.Engine]) -> None:
    url, engine = ledger
    connection = dedicated_connection(engine)
    try:
        planned_at = replan_if_stale(connection, None)
        assert "Seq Scan" in _prepared_plan(connection, [str(uuid.uuid4())])

        ids = _load(url, 20_000)[:8]
        # PostgreSQL keeps the plan made on the empty table: a scan of all 20,000 rows per lookup.
        assert "Seq Scan" in _prepared_plan(connection, ids)
        assert replan_if_stale(connection, planned_at) == planned_at  # fresh plans are kept

        replan_if_stale(connection, planned_at - PLAN_LIFETIME - 1)
        plan = _prepared_plan(connection, ids)
        assert "Seq Scan" not in plan
        assert "fairlane_jobs_pkey" in plan
    finally:
        connection.close()


def test_statements_prepared_after_a_refresh_that_found_none_are_dropped_by_the_next(
    ledger: tuple[str, sa.Engine],
) -> None:
    _url, engine = ledger
    connection = dedicated_connection(engine)
    stale = -PLAN_LIFETIME - 1.0
    try:
        replan_if_stale(connection, stale)  # nothing prepared yet
        connection.execute(LOOKUP, {"ids": ["x"]}, prepare=True)
        replan_if_stale(connection, stale)
        assert connection.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        # psycopg agrees: it prepares the statement again instead of running one the server dropped.
        assert connection.execute(LOOKUP, {"ids": ["x"]}, prepare=True).fetchall() == []
        replan_if_stale(connection, stale)
        assert connection.execute(LOOKUP, {"ids": ["x"]}, prepare=True).fetchall() == []
        assert connection.autocommit  # left as it was
    finally:
        connection.close()


def test_pooled_connections_drop_stale_plans_at_checkout(
    ledger: tuple[str, sa.Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    _url, engine = ledger
    engine.dispose()  # one pooled connection only (the pool hands out its oldest first)
    # In autocommit, as the hot path runs (a rollback at the pool's reset would drop them anyway).
    engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    def prepared(connection: sa.Connection) -> int:
        return int(connection.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar_one())

    with engine.connect() as connection:
        connection.connection.driver_connection.execute(LOOKUP, {"ids": ["x"]}, prepare=True)  # type: ignore[union-attr]
        assert prepared(connection) == 1
    with engine.connect() as connection:  # the same pooled connection, its plan still fresh
        assert prepared(connection) == 1
    monkeypatch.setattr(database, "PLAN_LIFETIME", 0.0)
    with engine.connect() as connection:
        assert prepared(connection) == 0
        # psycopg forgot its own record of the statement too: it prepares it again.
        connection.connection.driver_connection.execute(LOOKUP, {"ids": ["x"]}, prepare=True)  # type: ignore[union-attr]
        assert prepared(connection) == 1


def test_a_pooled_connection_that_died_is_replaced_when_its_plans_are_refreshed(
    ledger: tuple[str, sa.Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, engine = ledger
    engine.dispose()
    with engine.connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    with psycopg.connect(url, autocommit=True) as admin:  # as a server restart ends it
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    monkeypatch.setattr(database, "PLAN_LIFETIME", 0.0)

    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() != pid


def test_hot_path_connections_plan_by_index_whatever_the_statistics_say(
    ledger: tuple[str, sa.Engine],
) -> None:
    # Given a small ledger whose statistics were taken while it was small (40 jobs, analyzed)
    url, engine = ledger
    _load(url, 40)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("ANALYZE fairlane_jobs")
    plain, writer = dedicated_connection(engine), dedicated_connection(engine, by_index=True)
    try:
        # When a connection plans as the writer's and the accepts' do (by index)
        ids = [str(uuid.uuid4())]
        assert "Seq Scan" in _prepared_plan(plain, ids)  # what the statistics alone choose
        assert "fairlane_jobs_pkey" in _prepared_plan(writer, ids)

        # Then its plan, kept through a flood of 20,000 jobs, still finds jobs by primary key
        ids = _load(url, 20_000)[:8]
        plan = _prepared_plan(writer, ids)
        assert "Seq Scan" not in plan
        assert "fairlane_jobs_pkey" in plan
    finally:
        plain.close()
        writer.close()


@pytest.mark.parametrize(("timeout", "expected_timeout"), [(None, "0"), ("100ms", "100ms")])
def test_a_rounds_settings_hold_for_its_transaction_only(
    ledger: tuple[str, sa.Engine], timeout: str | None, expected_timeout: str
) -> None:
    url, _engine = ledger
    names = ("enable_seqscan", "enable_sort", "lock_timeout")

    def current(connection: Any) -> tuple[str, ...]:
        return tuple(connection.execute(f"SELECT current_setting('{name}')").fetchone()[0] for name in names)

    with psycopg.connect(url) as connection:
        # When a round's transaction starts with its settings
        connection.execute(ROUND_SETTINGS, {"timeout": timeout})
        # Then it plans by index, with its turn's lock timeout (or the server's, without one)
        assert current(connection) == ("off", "off", expected_timeout)
        connection.rollback()
        # And the connection, back in the pool, plans as any other
        assert current(connection) == ("on", "on", "0")
