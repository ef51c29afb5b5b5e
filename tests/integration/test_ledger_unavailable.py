"""A send whose PostgreSQL ledger is unreachable: a clear fairlane error that says whether the job was stored;
and a worker's ledger writer whose connection drops just after a commit.

The ledger is the test run's real PostgreSQL database, reached through a TCP proxy this test
cuts and restores (the shared server itself is never stopped).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

import fairlane
from fairlane.app import App
from fairlane.ledger.jobs import StartDecision

from .tcp_proxy import TcpProxy


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[TcpProxy]:
    parts = urlsplit(postgres_url)
    tcp_proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield tcp_proxy
    tcp_proxy.close()


@pytest.fixture
def ledger_url(proxy: TcpProxy, postgres_url: str) -> str:
    """This module's ledger: PostgreSQL only, through the proxy."""
    return proxy.url_for(postgres_url)


@pytest.fixture
def export(app: App, queue: str) -> Any:
    @fairlane.actor(queue_name=queue)
    def export(marker: str) -> None:
        pass

    return export


def _stored(app: App, job_id: str) -> bool:
    try:
        app.jobs.get(job_id)
    except fairlane.JobNotFound:
        return False
    return True


def _marker() -> str:
    return f"marker-{uuid.uuid4().hex}"


def test_a_send_while_the_ledger_is_down_raises_and_stores_nothing(
    app: App, proxy: TcpProxy, export: Any
) -> None:
    # Given a process that has sent before, and then loses its ledger
    export.send("warm-up")
    proxy.cut()

    # When it sends
    with pytest.raises(fairlane.LedgerUnavailable) as raised:
        export.send(_marker())

    # Then the error is fairlane's, names the job, and does not claim it was stored
    error = raised.value
    assert isinstance(error, fairlane.FairlaneError)
    (job_id,) = error.not_stored + error.unknown
    assert error.stored == ()
    assert job_id in str(error)
    # And once the ledger is back the job is indeed absent, and the next send works at once
    proxy.restore()
    assert not _stored(app, job_id)
    message = export.send(_marker())
    assert _stored(app, message.message_id)


def test_a_send_with_no_ledger_connection_at_all_says_nothing_was_stored(
    app: App, proxy: TcpProxy, export: Any
) -> None:
    # Given a process with no open ledger connection, and the ledger refusing new ones
    app.engine.dispose()
    proxy.cut()

    # When it sends
    with pytest.raises(fairlane.LedgerUnavailable, match="not stored: sending again is safe") as raised:
        export.send(_marker())

    # Then the error says plainly the job was not stored, and it was not
    (job_id,) = raised.value.not_stored
    proxy.restore()
    assert not _stored(app, job_id)


def test_a_commit_whose_reply_is_lost_is_found_and_the_send_succeeds_once(
    app: App, proxy: TcpProxy, export: Any
) -> None:
    # Given a ledger connection that drops right after PostgreSQL has committed the job's row
    marker = _marker()
    proxy.lose_reply_to(marker.encode())

    # When the job is sent
    message = export.send(marker)

    # Then the send succeeds (it found its committed row), and the job is stored exactly once
    assert _stored(app, message.message_id)
    assert [job.id for job in fairlane.jobs.list(queue=export.queue_name)] == [message.message_id]


def test_a_commit_whose_reply_is_lost_while_the_ledger_stays_down_is_reported_unknown(
    app: App, proxy: TcpProxy, export: Any
) -> None:
    # Given a ledger connection that drops right after PostgreSQL has committed the job's row,
    # and the ledger unreachable from that moment
    marker = _marker()
    proxy.lose_reply_to(marker.encode(), then_cut=True)

    # When the job is sent
    with pytest.raises(fairlane.LedgerUnavailable, match="unknown") as raised:
        export.send(marker)

    # Then the error says it cannot tell, naming the job
    (job_id,) = raised.value.unknown
    assert raised.value.not_stored == raised.value.stored == ()
    assert job_id in str(raised.value)
    # And rightly so: the row was committed, so "not stored" would have been false
    proxy.restore()
    assert _stored(app, job_id)


def test_send_many_while_the_ledger_is_down_raises_and_stores_nothing(
    app: App, proxy: TcpProxy, export: Any
) -> None:
    # Given a process with no open ledger connection, and the ledger refusing new ones
    app.engine.dispose()
    proxy.cut()

    # When it sends a batch
    with pytest.raises(fairlane.LedgerUnavailable) as raised:
        export.send_many([(_marker(),) for _ in range(5)])

    # Then every job of the batch is named as not stored, and none was
    assert len(raised.value.not_stored) == 5
    assert raised.value.stored == raised.value.unknown == ()
    proxy.restore()
    assert not any(_stored(app, job_id) for job_id in raised.value.not_stored)


def test_send_many_that_loses_the_ledger_midway_names_the_jobs_it_stored(
    app: App, proxy: TcpProxy, export: Any
) -> None:
    # Given a batch of 1,500 (two ledger transactions of 1,000 and 500), and a ledger that goes
    # away while the second transaction is being written
    marker = _marker()
    arguments = [(_marker(),) for _ in range(1000)] + [(marker,)] + [(_marker(),) for _ in range(499)]
    proxy.lose_reply_to(marker.encode(), then_cut=True)

    # When the batch is sent
    with pytest.raises(fairlane.LedgerUnavailable, match=r"1000 jobs .* were stored and will run") as raised:
        export.send_many(arguments)

    # Then the error names the first transaction's jobs as stored, and the second's as unknown
    error = raised.value
    assert (len(error.stored), len(error.unknown), error.not_stored) == (1000, 500, ())
    # And it is right about the stored ones: all of them are in the ledger
    proxy.restore()
    stored = {job.id for job in fairlane.jobs.list(queue=export.queue_name, limit=1000)}
    assert stored == set(error.stored)


def test_a_start_whose_commit_reply_is_lost_still_runs_its_job(
    app: App, proxy: TcpProxy, export: Any
) -> None:
    # Given a waiting job, and a ledger connection that drops right after PostgreSQL has
    # committed the worker's start of it
    job_id = export.send(_marker()).message_id
    proxy.lose_reply_to(job_id.encode())

    # When the worker's ledger writer starts it (and retries on a new connection)
    start = app.writer.start(job_id, export.queue_name)

    # Then the job runs as its first attempt, instead of being skipped as running elsewhere
    assert (start.decision, start.attempt) == (StartDecision.RUN, 1)
    job = app.jobs.get(job_id)
    assert (job.state, job.attempts) == ("running", 1)
