"""The connections kept for a send's accept: reused, bounded, replaced when dead, never shared
across a fork, and a send still succeeds when they are lost."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import psycopg
import pytest
import sqlalchemy as sa

import fairlane
from fairlane.app import App
from fairlane.ledger.database import create_ledger_engine
from fairlane.ledger.schema import DISPATCHED, PENDING
from fairlane.ledger.statement_connections import StatementConnections
from fairlane.settings import Settings


@pytest.fixture
def engine(postgres_url: str) -> Iterator[sa.Engine]:
    engine = create_ledger_engine(Settings(database_url=postgres_url))
    yield engine
    engine.dispose()


def _backend(connection: psycopg.Connection) -> int:
    return int(connection.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]


def _terminate(postgres_url: str, pid: int) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_connection_is_reused_in_autocommit(engine: sa.Engine) -> None:
    kept = StatementConnections(engine, size=2, recycle=1800)
    with kept.connection() as first:
        pid = _backend(first)
        assert first.autocommit
    with kept.connection() as second:
        assert second is first and _backend(second) == pid
    kept.close()
    assert first.closed


def test_no_more_than_size_are_in_use_and_the_rest_get_none(engine: sa.Engine) -> None:
    kept = StatementConnections(engine, size=2, recycle=1800)
    with kept.connection() as one, kept.connection() as two, kept.connection() as three:
        assert one is not None and two is not None and one is not two
        assert three is None  # the caller takes the pool's way
    with kept.connection() as again:
        assert again in (one, two)
    kept.close()


def test_a_connection_broken_in_use_is_closed_with_the_idle_ones(
    engine: sa.Engine, postgres_url: str
) -> None:
    kept = StatementConnections(engine, size=2, recycle=1800)
    with kept.connection() as taken_next, kept.connection() as other:
        pass  # given back last, ``taken_next`` is the next one used
    _terminate(postgres_url, _backend(taken_next))
    with pytest.raises(psycopg.OperationalError), kept.connection() as connection:
        assert connection is taken_next
        connection.execute("SELECT 1")
    assert taken_next.closed and other.closed  # a server restart breaks them all
    with kept.connection() as fresh:
        assert fresh is not taken_next and fresh.execute("SELECT 1").fetchone() == (1,)
    kept.close()


def test_a_connection_that_died_idle_is_replaced_when_planned_again(
    engine: sa.Engine, postgres_url: str
) -> None:
    kept = StatementConnections(engine, size=1, recycle=1800)
    with kept.connection() as first:
        pid = _backend(first)
    _terminate(postgres_url, pid)
    kept._idle[0].planned_at = 0.0  # its plans are due to be made again
    with kept.connection() as connection:
        assert connection is not first and _backend(connection) != pid
    kept.close()


def test_an_old_connection_is_recycled(engine: sa.Engine) -> None:
    kept = StatementConnections(engine, size=1, recycle=0.0)
    with kept.connection() as first:
        pass
    with kept.connection() as second:
        assert second is not first
    assert first.closed
    kept.close()


def test_a_forked_child_opens_its_own(engine: sa.Engine) -> None:
    kept = StatementConnections(engine, size=1, recycle=1800)
    with kept.connection() as parents:
        parent_pid = _backend(parents)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report the backend its connection talks to, then leave at once
        status = 1
        try:
            with kept.connection() as mine:
                os.write(write, str(_backend(mine) if mine is not parents else parent_pid).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    reported = os.read(read, 64).decode()
    os.close(read)
    _, status = os.waitpid(child, 0)
    assert os.WEXITSTATUS(status) == 0
    assert reported and int(reported) != parent_pid
    with kept.connection() as still:  # the parent's own is untouched
        assert still is parents and _backend(still) == parent_pid
    kept.close()


def test_a_send_succeeds_when_the_kept_connections_were_lost(
    make_app: Callable[..., App], postgres_url: str, queue: str
) -> None:
    # Given a send whose accept left its connection kept
    make_app(database_url=postgres_url)

    @fairlane.actor(queue_name=queue)
    def task() -> None:
        pass

    task.send()
    kept = fairlane.get_app().admission._statement_connections
    backends = [_backend(idle.connection) for idle in kept._idle]
    assert backends

    # When PostgreSQL drops them (as a restart does), and the next job is sent
    for pid in backends:
        _terminate(postgres_url, pid)
    job_id = task.send().message_id

    # Then that send succeeds (its write is tried again on a new connection) and the job is stored
    assert fairlane.jobs.get(job_id).state in (DISPATCHED, PENDING)
    assert all(_backend(idle.connection) not in backends for idle in kept._idle)
