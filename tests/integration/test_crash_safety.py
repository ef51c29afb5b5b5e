"""At-least-once at every instant: a worker killed mid-flight loses no job, a stopped one leaves
no finished job unrecorded, and a send either raised and stored nothing or returned with its
row committed.

The worker-process tests run ``fairlane worker --processes 1 --threads 8`` on
``tests.integration.process_actors`` with the PostgreSQL ledger, as production does; the
test process sends, runs the reaper and reads the ledger. Every attempt of a job leaves
``<job id>.<attempt>.started`` and ``.done`` marker files holding the worker's pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pika.exceptions
import pytest
import sqlalchemy as sa
from pika.adapters.blocking_connection import BlockingChannel

import fairlane
from fairlane.app import App
from fairlane.ledger.schema import DISPATCHED, PENDING, RUNNING, SUCCEEDED, jobs, metadata
from fairlane.scheduling.reaper import run_reaper
from fairlane.worker import running_worker

from .process_actors import RELEASE
from .support import eventually, lane_depth
from .worker_processes import SHUTDOWN_TIMEOUT, STARTUP, WorkerProcesses, spawned_workers

THREADS = 8
JOB_SECONDS = 0.02


class Pool(WorkerProcesses):
    """Worker processes of one test on a queue of its own, and what their jobs left behind."""

    def send_short(self, count: int) -> list[str]:
        """``count`` jobs of JOB_SECONDS each, in one bulk send, from two tenants."""
        half = count // 2
        sent = self.slow_step.send_many([(str(self.markers), JOB_SECONDS)] * half, tenant="acme")
        sent += self.slow_step.send_many([(str(self.markers), JOB_SECONDS)] * (count - half), tenant="globex")
        return [message.message_id for message in sent]

    def states(self) -> Counter[str]:
        """This test's jobs by ledger state."""
        with self.app.engine.connect() as connection:
            rows = connection.execute(
                sa.select(jobs.c.state, sa.func.count())
                .where(jobs.c.queue == self.queue)
                .group_by(jobs.c.state)
            )
            return Counter({state: int(count) for state, count in rows})

    def send_held(self, count: int) -> list[str]:
        """Jobs that run until :meth:`release`."""
        return [self.held_step.send(str(self.markers)).message_id for _ in range(count)]

    def release(self) -> None:
        """Let held jobs finish."""
        (self.markers / RELEASE).touch()

    def unacked(self, lane: str = "normal") -> int:
        """Messages of a lane queue delivered to a worker and not yet acked (from ``rabbitmqctl``)."""
        vhost = unquote(urlsplit(self.app.settings.broker_url).path[1:])
        listing = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages_unacknowledged"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        name = self.app.broker.lane_queue_name(self.queue, lane)
        counts = dict(line.split("\t") for line in listing.splitlines() if line.startswith(name + "\t"))
        return int(counts[name])

    def rows(self, job_ids: list[str]) -> dict[str, Any]:
        with self.app.engine.connect() as connection:
            query = sa.select(jobs.c.id, jobs.c.state, jobs.c.attempts, jobs.c.worker_id).where(
                jobs.c.queue == self.queue
            )
            found = {row.id: row for row in connection.execute(query)}
        assert set(found) == set(job_ids)
        return found

    def marks(self, stage: str) -> Counter[str]:
        """How many attempts of each job reached ``stage`` (``started`` or ``done``)."""
        return Counter(path.name.split(".", 1)[0] for path in self.markers.glob(f"*.*.{stage}"))


@pytest.fixture
def pool(broker_url: str, postgres_url: str, tmp_path: Path) -> Iterator[Pool]:
    # The reaper (run here) calls a worker silent for 2 s dead (workers beat every 0.2 s), and
    # publishes again a job dispatched 2 s ago that no worker started.
    with spawned_workers(
        Pool,
        broker_url,
        postgres_url,
        tmp_path,
        "crash",
        {"heartbeat_timeout": 2.0, "dispatch_timeout": 2.0},
        HEARTBEAT_INTERVAL="0.2",
        HEARTBEAT_TIMEOUT="2",
        METRICS_PORT="0",
        HEALTH_PORT="0",
    ) as spawned:
        yield spawned


# -- crashes and stops -------------------------------------------------------------------------------


def test_no_job_is_lost_when_a_busy_worker_is_killed(pool: Pool) -> None:
    # Given a worker with 8 threads working through 1,000 short jobs
    first = pool.spawn(threads=THREADS)
    ids = pool.send_short(1000)
    eventually(lambda: pool.states()[SUCCEEDED] >= 50, STARTUP, "50 jobs succeeded")

    # When it is killed with SIGKILL in the middle of them
    os.killpg(first.pid, signal.SIGKILL)
    assert first.wait(timeout=10) == -signal.SIGKILL
    at_kill = pool.states()
    assert at_kill[SUCCEEDED] < 1000, f"the worker finished everything before the kill: {at_kill}"

    # And a new worker starts, while the reaper runs until every job has succeeded (it returns
    # the jobs of the dead worker to the backlog, and publishes lost dispatches again)
    pool.spawn(threads=THREADS)
    reaped: list[str] = []
    republished: list[str] = []
    deadline = time.monotonic() + 60
    while pool.states()[SUCCEEDED] < 1000:
        assert time.monotonic() < deadline, (
            f"not all jobs succeeded: {pool.states()} (at the kill: {at_kill})"
        )
        report = run_reaper(pool.app)
        reaped += [job.id for job in report.reaped if job.queue == pool.queue]
        republished += [job_id for job_id in report.republished if job_id in ids]
        time.sleep(0.2)

    # Then no job is lost: every one succeeded, having used at least one attempt
    rows = pool.rows(ids)
    assert {row.state for row in rows.values()} == {SUCCEEDED}
    assert min(row.attempts for row in rows.values()) >= 1
    # And every one ran to completion at least once, and was counted for every attempt it began
    done, started = pool.marks("done"), pool.marks("started")
    assert set(done) == set(ids)
    assert all(rows[job_id].attempts >= started[job_id] for job_id in ids)
    twice = sum(count > 1 for count in done.values())
    print(
        f"at the kill: {dict(at_kill)}; reaped: {len(reaped)}; published again: {len(republished)}; "
        f"ran to completion twice: {twice}"
    )


def _blocked_flushes(app: App) -> list[int]:
    """Backends of this ledger waiting for a row lock in a ledger writer's flush."""
    with app.engine.connect() as connection:
        return list(
            connection.scalars(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE '%unnest%'"
                )
            )
        )


def test_finishes_acked_but_not_flushed_when_a_worker_dies_are_reaped_and_run_again(pool: Pool) -> None:
    # Given a worker whose 8 threads each run a held job
    first = pool.spawn(threads=THREADS)
    held = pool.send_held(THREADS)
    eventually(lambda: pool.states()[RUNNING] == THREADS, STARTUP, "all held jobs running")

    # And a transaction holding their rows, so the worker's ledger writer can't flush their finishes
    with pool.app.engine.connect() as locker:
        locker.execute(sa.select(jobs.c.id).where(jobs.c.id.in_(held)).with_for_update()).all()

        # When the jobs finish: their messages are acked while their finishes wait for the flush
        pool.release()
        eventually(lambda: len(pool.marks("done")) == THREADS, message="held jobs done")
        eventually(lambda: _blocked_flushes(pool.app) != [], message="the writer's flush waiting")
        eventually(lambda: pool.unacked() == 0, message="messages acked")

        # And the worker is killed with SIGKILL before the flush gets through (PostgreSQL would run
        # the dead client's statement once the lock is gone: the crash must lose it)
        os.killpg(first.pid, signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        with pool.app.engine.connect() as admin:
            for pid in _blocked_flushes(pool.app):
                admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        locker.rollback()

    # Then the ledger still says the jobs run, on the dead worker, and RabbitMQ has nothing to redeliver
    rows = pool.rows(held)
    assert {(row.state, row.attempts, row.worker_id) for row in rows.values()} == {
        (RUNNING, 1, f"{socket.gethostname()}:{first.pid}")
    }
    assert lane_depth(pool.app, pool.queue) == 0

    # When a new worker starts and the reaper runs until every job has succeeded
    pool.spawn(threads=THREADS)
    reaped: list[str] = []
    deadline = time.monotonic() + 60
    while pool.states()[SUCCEEDED] < THREADS:
        assert time.monotonic() < deadline, f"held jobs not all succeeded: {pool.states()}"
        reaped += [job.id for job in run_reaper(pool.app).reaped if job.queue == pool.queue]
        time.sleep(0.2)

    # Then the reaper returned each job to the backlog once, and each ran again: nothing was lost
    assert sorted(reaped) == sorted(held)
    rows = pool.rows(held)
    assert {(row.state, row.attempts) for row in rows.values()} == {(SUCCEEDED, 2)}
    assert pool.marks("done") == Counter({job_id: 2 for job_id in held})


def test_jobs_acked_before_their_start_was_flushed_are_published_again_when_a_worker_dies(
    pool: Pool,
) -> None:
    # Given short jobs waiting in RabbitMQ, and a transaction holding their rows, so that a
    # worker runs them (it does not wait for their starts) but can't flush their starts and finishes
    ids = pool.send_short(THREADS)
    assert {row.state for row in pool.rows(ids).values()} == {DISPATCHED}
    with pool.app.engine.connect() as locker:
        locker.execute(sa.select(jobs.c.id).where(jobs.c.id.in_(ids)).with_for_update()).all()

        # When a worker runs them all and acks their messages
        first = pool.spawn(threads=THREADS)
        eventually(lambda: len(pool.marks("done")) == THREADS, STARTUP, "jobs done")
        eventually(lambda: _blocked_flushes(pool.app) != [], message="the writer's flush waiting")
        eventually(lambda: pool.unacked() == 0, message="messages acked")

        # And is killed with SIGKILL before the flush gets through
        os.killpg(first.pid, signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        with pool.app.engine.connect() as admin:
            for pid in _blocked_flushes(pool.app):
                admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        locker.rollback()

    # Then the ledger still says the jobs are dispatched, no attempt counted, and RabbitMQ holds none
    assert {(row.state, row.attempts) for row in pool.rows(ids).values()} == {(DISPATCHED, 0)}
    assert lane_depth(pool.app, pool.queue) == 0

    # When a new worker starts and the reaper runs until every job has succeeded
    second = pool.spawn(threads=THREADS)
    republished: list[str] = []
    deadline = time.monotonic() + 60
    while pool.states()[SUCCEEDED] < THREADS:
        assert time.monotonic() < deadline, f"jobs not all succeeded: {pool.states()}"
        republished += [job_id for job_id in run_reaper(pool.app).republished if job_id in ids]
        time.sleep(0.2)

    # Then each was published again once and ran again on the new worker, as attempt 1 (the lost
    # run left no trace in the ledger): nothing was lost
    assert sorted(republished) == sorted(ids)
    assert {(row.state, row.attempts) for row in pool.rows(ids).values()} == {(SUCCEEDED, 1)}
    assert {(pool.markers / f"{job_id}.1.done").read_text() for job_id in ids} == {str(second.pid)}


def test_sigterm_records_every_finished_job_before_the_worker_exits(pool: Pool) -> None:
    # Given a worker with 8 threads working through 400 short jobs
    worker = pool.spawn(threads=THREADS)
    ids = pool.send_short(400)
    eventually(lambda: pool.states()[SUCCEEDED] >= 40, STARTUP, "40 jobs succeeded")

    # When it gets SIGTERM while jobs run
    worker.send_signal(signal.SIGTERM)

    # Then it exits 0
    assert pool.wait_exit(worker, SHUTDOWN_TIMEOUT) == 0

    # And every job that ran to completion is succeeded in the ledger, once; none is left running
    rows = pool.rows(ids)
    done = pool.marks("done")
    assert 0 < len(done) < len(ids), f"SIGTERM came before or after all jobs: {len(done)} done"
    assert {job_id: (rows[job_id].state, rows[job_id].attempts) for job_id in done} == {
        job_id: (SUCCEEDED, 1) for job_id in done
    }
    assert pool.states()[RUNNING] == 0
    # And the others never started: they wait, in RabbitMQ or in the ledger, with no attempt used
    assert pool.marks("started").keys() == done.keys()
    not_run = [rows[job_id] for job_id in ids if job_id not in done]
    assert {row.state for row in not_run} <= {DISPATCHED, PENDING}
    assert {row.attempts for row in not_run} == {0}

    # And a new worker runs each of the rest exactly once
    pool.spawn(threads=THREADS)
    eventually(lambda: pool.states()[SUCCEEDED] == len(ids), 60, "every job succeeded")
    assert {row.attempts for row in pool.rows(ids).values()} == {1}
    assert set(pool.marks("done").values()) == {1}


def _states_of(job_ids: list[str]) -> list[str]:
    return [fairlane.jobs.get(job_id).state for job_id in job_ids]


class _Killed(BaseException):
    """Stands for the process dying at that instant (no ``except Exception`` handler runs)."""


def test_a_round_cut_off_during_its_publish_leaves_its_jobs_in_the_backlog(
    make_app: Any, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a budget of 2, and a process that dies while an admission round publishes (the round
    # of a bulk send): the publish runs before the round's ledger commit
    app = make_app(dispatch_budget=2)

    @fairlane.actor(queue_name=queue)
    def task() -> None:
        pass

    def die(queue: str, admitted: Any) -> None:
        raise _Killed()

    monkeypatch.setattr(app.dispatcher, "publish_batch", die)
    with pytest.raises(_Killed):
        task.send_many([()] * 4)
    monkeypatch.undo()

    # Then nothing was admitted: every job still waits in the backlog, no slot is held
    ids = [job.id for job in fairlane.jobs.list(queue=queue)]
    assert _states_of(ids) == [PENDING] * 4
    assert lane_depth(app, queue) == 0

    # And a worker runs every job once, with no reaper needed
    with running_worker(app, 2, shutdown_timeout=10):
        eventually(lambda: _states_of(ids) == [SUCCEEDED] * 4, timeout=20, message="every job succeeded")
    assert [fairlane.jobs.get(job_id).attempts for job_id in ids] == [1, 1, 1, 1]


# -- sends -------------------------------------------------------------------------------------------


def _table_counts(app: App) -> dict[str, int]:
    with app.engine.connect() as connection:
        return {
            table.name: int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
            for table in metadata.sorted_tables
        }


def _fresh_engine(app: App) -> sa.Engine:
    """An engine of its own: it sees only what other connections committed."""
    return sa.create_engine(app.settings.sqlalchemy_url)


def test_refused_sends_leave_every_ledger_table_as_it_was(app: App, queue: str) -> None:
    # Given an actor and the ledger's row counts
    @fairlane.actor(queue_name=queue)
    def export(store_id: int) -> None:
        pass

    before = _table_counts(app)

    # When sends are refused: a bad argument, a bad option, and a bulk send with one bad job
    with pytest.raises(fairlane.InvalidJob, match="missing a required argument"):
        export.send()
    with pytest.raises(fairlane.InvalidJob, match="unknown priority"):
        export.send_with_options(args=(1,), priority="asap")
    with pytest.raises(fairlane.InvalidJob, match="message 2"):
        export.send_many([(1,), (2,), ("x", "y")], tenant="bulk")

    # Then no table of the ledger changed (no job, queue, tenant pass or lane row) and RabbitMQ got nothing
    assert _table_counts(app) == before
    assert all(lane_depth(app, queue, lane) == 0 for lane in app.settings.lanes)


def test_a_send_that_returned_is_committed_for_every_other_connection(make_app: Any, queue: str) -> None:
    # Given a budget of 1 and no worker
    app = make_app(dispatch_budget=1)

    @fairlane.actor(queue_name=queue)
    def export(store_id: int) -> None:
        pass

    # When one job takes the free slot, one waits, and two more are sent in bulk
    fast = export.send(1).message_id
    waiting = export.send(2).message_id
    bulk = [message.message_id for message in export.send_many([(3,), (4,)])]

    # Then, the moment the sends return, another connection reads every row in its state
    other = _fresh_engine(app)
    try:
        with other.connect() as connection:
            rows = dict(
                connection.execute(sa.select(jobs.c.id, jobs.c.state).where(jobs.c.queue == queue)).all()
            )
    finally:
        other.dispose()
    assert rows == {fast: DISPATCHED, waiting: PENDING, bulk[0]: PENDING, bulk[1]: PENDING}
    assert lane_depth(app, queue) == 1


def test_a_send_whose_publish_fails_returns_and_its_job_waits_in_the_ledger(
    app: App, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an idle queue, and RabbitMQ refusing the sender's publish
    @fairlane.actor(queue_name=queue)
    def export(store_id: int) -> None:
        pass

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise pika.exceptions.AMQPConnectionError("connection reset")

    monkeypatch.setattr(BlockingChannel, "basic_publish", refuse)

    # When a job is sent (its accept took the idle fast path)
    job_id = export.send(1).message_id

    # Then the send still returns, and the job waits in the ledger, committed, not lost
    other = _fresh_engine(app)
    try:
        with other.connect() as connection:
            state = connection.execute(sa.select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one()
    finally:
        other.dispose()
    assert state == PENDING
    assert lane_depth(app, queue) == 0

    # And the next admission round publishes it
    monkeypatch.undo()
    assert app.dispatcher.admit(queue) == 1
    assert fairlane.jobs.get(job_id).state == DISPATCHED
    assert lane_depth(app, queue) == 1


def test_idempotency_key_with_a_nul_character_is_refused_at_the_edge(app: App, queue: str) -> None:
    # Given an actor and the ledger's row counts
    @fairlane.actor(queue_name=queue)
    def export(store_id: int) -> None:
        pass

    before = _table_counts(app)

    # When a send's idempotency key holds a NUL character (PostgreSQL's text type refuses it)
    # Then it is refused with InvalidJob, like any other bad key, and nothing is stored
    try:
        with pytest.raises(fairlane.InvalidJob, match="idempotency_key"):
            export.send_with_options(args=(1,), idempotency_key="order\x0042")
    finally:
        assert _table_counts(app)["fairlane_jobs"] == before["fairlane_jobs"]
