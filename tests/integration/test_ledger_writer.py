"""The ledger writer: starts and finishes of many threads in few flushes, start decisions, and a
finish the database refuses, on the embedded SQLite ledger and on PostgreSQL.

To make batches deterministic without timing, a test can *hold* the writer inside a flush
(a finish of a gate job whose flush waits for a release) while requests pile up behind it;
the count of queued requests is read from the writer itself.

Each test runs on a fresh SQLite file and on this test run's PostgreSQL database (the
``postgres_url`` fixture): the batched ``UPDATE … FROM unnest(…)`` flush exists only there.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fairlane.ledger.database import create_ledger_engine, migrate, utcnow
from fairlane.ledger.jobs import JobError, Start, StartDecision
from fairlane.ledger.schema import (
    CANCELLED,
    DEAD,
    DISPATCHED,
    RETRYING,
    RUNNING,
    STATES,
    SUCCEEDED,
    jobs,
)
from fairlane.ledger.transitions import FINISHES, RESTART, START
from fairlane.ledger.writer import Finish, LedgerWriter
from fairlane.settings import Settings

WORKER = "test-host:1"
THREADS = 32


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """A migrated ledger: a fresh SQLite file, or this run's PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    config = Settings(database_url=url)
    built = create_ledger_engine(config)
    migrate(built, config)
    yield built
    built.dispose()


class CountingWriter(LedgerWriter):
    """A ledger writer that counts its flushes and can be held inside the flush of a gate job."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine, WORKER)
        self.flushes = 0
        self._gate: str | None = None
        self._held = threading.Event()
        self._release = threading.Event()

    def _flush(self, finishes: list[Any], starts: list[Any], *when: Any) -> None:
        self.flushes += 1
        if self._gate is not None and any(request.job_id == self._gate for request in finishes):
            self._held.set()
            assert self._release.wait(timeout=30), "the test never released the writer"
        super()._flush(finishes, starts, *when)

    def queued(self) -> int:
        """Requests waiting for the next flush."""
        with self._lock:
            return len(self._starts) + len(self._finishes)

    @contextmanager
    def held(self, gate_job: str) -> Iterator[None]:
        """Keep the writer busy in the flush of ``gate_job``'s finish (a running job) until the block ends."""
        self._gate = gate_job
        self._held.clear()
        self._release.clear()
        self.finish(Finish(gate_job, SUCCEEDED))
        assert self._held.wait(timeout=30), "the gate job's flush never began"
        try:
            yield
        finally:
            self._release.set()
            self._gate = None


@pytest.fixture
def writer(engine: sa.Engine) -> Iterator[CountingWriter]:
    built = CountingWriter(engine)
    yield built
    built._release.set()
    built.stop()


def _insert(engine: sa.Engine, state: str, count: int = 1) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    then = utcnow() - timedelta(minutes=1)
    rows = [
        {
            "id": job_id,
            "actor": "task",
            "queue": "q",
            "tenant": "t",
            "lane": "normal",
            "lane_rank": 2,
            "state": state,
            "stride_pass": 0.0,
            "attempts": _attempts_before(state),
            "message": "{}",
            "enqueued_at": then,
            "next_run_at": then,
            "updated_at": then,
        }
        for job_id in ids
    ]
    with engine.begin() as connection:
        connection.execute(jobs.insert(), rows)
    return ids


def _attempts_before(state: str) -> int:
    """Attempts a job inserted by ``_insert`` in ``state`` has used."""
    return 1 if state in (RUNNING, RETRYING, SUCCEEDED, DEAD) else 0


def _rows(engine: sa.Engine, ids: list[str]) -> dict[str, Any]:
    with engine.connect() as connection:
        return {row.id: row for row in connection.execute(sa.select(jobs).where(jobs.c.id.in_(ids)))}


def _until(condition: Callable[[], bool], message: str, timeout: float = 30.0) -> None:
    """Wait for a condition the test itself brings about (no timing is asserted)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} did not happen within {timeout} s")
        time.sleep(0.005)


def _in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(target()), daemon=True)
    thread.start()
    return thread, out


# -- batching ----------------------------------------------------------------------------------------


def test_many_threads_start_and_finish_through_few_flushes(engine: sa.Engine, writer: CountingWriter) -> None:
    # Given THREADS dispatched jobs, two running gate jobs, and one worker thread per job
    ids = _insert(engine, DISPATCHED, THREADS)
    gate_starts, gate_finishes = _insert(engine, RUNNING, 2)
    starts: dict[str, Start] = {}
    finish_now = threading.Event()
    everyone_started = threading.Barrier(THREADS + 1)

    def work(index: int, job_id: str) -> None:
        starts[job_id] = writer.start(job_id, "q")
        everyone_started.wait(timeout=30)
        assert finish_now.wait(timeout=30)
        writer.finish(Finish(job_id, SUCCEEDED, result=index, result_json=json.dumps(index)))

    # When every thread starts its job while the writer is busy with another flush
    threads = [threading.Thread(target=work, args=(i, job_id), daemon=True) for i, job_id in enumerate(ids)]
    with writer.held(gate_starts):
        for thread in threads:
            thread.start()
        _until(lambda: writer.queued() == THREADS, "all starts queued")
    everyone_started.wait(timeout=30)

    # And then every thread finishes its job while the writer is busy again
    with writer.held(gate_finishes):
        finish_now.set()
        for thread in threads:
            thread.join(timeout=30)  # a finish does not wait for its flush
        assert writer.queued() == THREADS
    writer.stop()

    # Then every job ran once and succeeded with its result
    assert {start.decision for start in starts.values()} == {StartDecision.RUN}
    assert {start.attempt for start in starts.values()} == {1}
    rows = _rows(engine, ids)
    assert {(row.state, row.attempts, row.worker_id) for row in rows.values()} == {(SUCCEEDED, 1, WORKER)}
    assert [rows[job_id].result for job_id in ids] == list(range(THREADS))

    # And it took far fewer flushes than one per start and one per finish
    assert writer.flushes < THREADS


# -- start decisions ----------------------------------------------------------------------------------


def test_start_runs_a_dispatched_job_and_skips_cancelled_finished_or_unknown_ones(
    engine: sa.Engine, writer: CountingWriter
) -> None:
    # Given a dispatched, a cancelled and a succeeded job, and an id the ledger never saw
    dispatched, cancelled, succeeded = (
        _insert(engine, state)[0] for state in (DISPATCHED, CANCELLED, SUCCEEDED)
    )
    unknown = str(uuid.uuid4())

    # When a worker starts each
    decisions = {job_id: writer.start(job_id, "q") for job_id in (dispatched, cancelled, succeeded, unknown)}

    # Then only the dispatched job runs (attempt 1); the others are skipped or unknown
    assert decisions[dispatched].decision is StartDecision.RUN
    assert decisions[dispatched].attempt == 1
    assert decisions[cancelled] == Start(StartDecision.SKIP)
    assert decisions[succeeded] == Start(StartDecision.SKIP)
    assert decisions[unknown] == Start(StartDecision.UNKNOWN)
    rows = _rows(engine, [dispatched, cancelled, succeeded])
    assert [rows[job_id].state for job_id in (dispatched, cancelled, succeeded)] == [
        RUNNING,
        CANCELLED,
        SUCCEEDED,
    ]


@pytest.mark.parametrize("redelivered", [False, True], ids=["copy", "redelivered-copy"])
def test_two_starts_of_one_job_in_one_batch_run_it_once(
    engine: sa.Engine, writer: CountingWriter, redelivered: bool
) -> None:
    # Given a dispatched job, and the writer busy with another flush
    [job_id] = _insert(engine, DISPATCHED)
    [gate] = _insert(engine, RUNNING)
    with writer.held(gate):
        # When two copies of its message are started, the second perhaps redelivered by RabbitMQ
        first, first_out = _in_thread(lambda: writer.start(job_id, "q"))
        _until(lambda: writer.queued() == 1, "first start queued")
        second, second_out = _in_thread(lambda: writer.start(job_id, "q", redelivered=redelivered))
        _until(lambda: writer.queued() == 2, "second start queued")
    first.join(timeout=30)
    second.join(timeout=30)

    # Then exactly one copy runs, as attempt 1, and the ledger counted one attempt
    decisions = [first_out[0].decision, second_out[0].decision]
    assert sorted(decision.value for decision in decisions) == ["run", "skip"]
    runs = [start for start in (*first_out, *second_out) if start.decision is StartDecision.RUN]
    assert [start.attempt for start in runs] == [1]
    row = _rows(engine, [job_id])[job_id]
    assert (row.state, row.attempts) == (RUNNING, 1)


@pytest.mark.parametrize("state", STATES)
def test_batched_starts_and_finishes_move_a_row_only_from_their_sources(
    engine: sa.Engine, writer: CountingWriter, state: str
) -> None:
    # Given, for each kind of start and each finish, a job in ``state``
    start_job, restart_job = _insert(engine, state, 2)
    finish_jobs = dict(zip(FINISHES, _insert(engine, state, len(FINISHES)), strict=True))

    # When the writer starts and finishes them
    started = writer.start(start_job, "q")
    restarted = writer.start(restart_job, "q", redelivered=True)
    error = JobError("ValueError", "boom")
    for target, job_id in finish_jobs.items():
        delay = 0.0 if target == RETRYING else None
        writer.finish(Finish(job_id, target, error=None if target == SUCCEEDED else error, delay=delay))
    writer.stop()  # flushes every pending finish

    # Then a start runs the job exactly when its state is a source of the transition
    rows = _rows(engine, [start_job, restart_job, *finish_jobs.values()])
    for start, job_id, transition in ((started, start_job, START), (restarted, restart_job, RESTART)):
        if state in transition.sources:
            assert start.decision is StartDecision.RUN
            assert (rows[job_id].state, rows[job_id].attempts) == (RUNNING, start.attempt)
        else:
            assert start.decision is StartDecision.SKIP
            assert rows[job_id].state == state

    # And a finish moves only a running job, to its own target
    for target, job_id in finish_jobs.items():
        expected = target if state in FINISHES[target].sources else state
        assert rows[job_id].state == expected, f"finish to {target} from {state}"


# -- refused rows ------------------------------------------------------------------------------------


def test_a_finish_the_ledger_refuses_does_not_hold_back_the_rest_of_its_batch(
    engine: sa.Engine, writer: CountingWriter
) -> None:
    # Given running jobs, a dispatched one, and the writer busy with another flush
    good = _insert(engine, RUNNING, 5)
    [bad, gate] = _insert(engine, RUNNING, 2)
    [waiting] = _insert(engine, DISPATCHED)
    with writer.held(gate):
        # When their finishes and a start are queued into one batch, one finish with a result the
        # database can't store (neither JSON for PostgreSQL's cast nor serialisable for SQLite's)
        for index, job_id in enumerate(good[:3]):
            writer.finish(Finish(job_id, SUCCEEDED, result=index, result_json=json.dumps(index)))
        writer.finish(Finish(bad, SUCCEEDED, result=object(), result_json="{not json"))
        writer.finish(Finish(good[3], RETRYING, error=JobError("E", "again"), delay=0.0))
        writer.finish(Finish(good[4], DEAD, error=JobError("E", "gave up")))
        start, start_out = _in_thread(lambda: writer.start(waiting, "q"))
        _until(lambda: writer.queued() == 7, "whole batch queued")
    start.join(timeout=30)
    writer.stop()

    # Then every other finish is stored, and the start runs
    rows = _rows(engine, [*good, bad, waiting])
    assert [(rows[job_id].state, rows[job_id].result) for job_id in good[:3]] == [
        (SUCCEEDED, 0),
        (SUCCEEDED, 1),
        (SUCCEEDED, 2),
    ]
    assert [rows[job_id].state for job_id in good[3:]] == [RETRYING, DEAD]
    assert start_out[0].decision is StartDecision.RUN
    assert rows[waiting].state == RUNNING

    # And the refused job is dead-lettered with the reason, not left running
    assert (rows[bad].state, rows[bad].error_type) == (DEAD, "LedgerWriteRefused")


def test_nul_characters_in_an_error_are_stored_escaped_not_refused(
    engine: sa.Engine, writer: CountingWriter
) -> None:
    # Given two running jobs whose errors contain NUL characters (PostgreSQL's text refuses them)
    retried, dead = _insert(engine, RUNNING, 2)
    error = JobError("Bad\x00Type", "line\x00one", "Traceback\x00…")

    # When their finishes are flushed
    writer.finish(Finish(retried, RETRYING, error=error, delay=0.0))
    writer.finish(Finish(dead, DEAD, error=error))
    writer.stop()

    # Then both are stored, with the NUL characters escaped (dropped from the type)
    rows = _rows(engine, [retried, dead])
    assert [rows[job_id].state for job_id in (retried, dead)] == [RETRYING, DEAD]
    for job_id in (retried, dead):
        row = rows[job_id]
        assert (row.error_type, row.error_message, row.error_traceback) == (
            "BadType",
            "line\\x00one",
            "Traceback\\x00…",
        )


# -- jobs that run before their start is flushed -------------------------------------------------------


@pytest.mark.parametrize("state", STATES)
def test_a_job_that_finished_before_its_start_was_flushed_is_recorded_in_one_write(
    engine: sa.Engine, writer: CountingWriter, state: str
) -> None:
    # Given, for each finish, a job in ``state`` whose worker ran it without waiting for its start
    finish_jobs = dict(zip(FINISHES, _insert(engine, state, len(FINISHES)), strict=True))
    [gate] = _insert(engine, RUNNING)
    freed: list[dict[str, int]] = []
    refused: list[str] = []
    writer.on_started = lambda counts: freed.append(dict(counts))
    writer.on_refused = refused.append

    # When each job's start and finish reach the writer while it is busy with another flush
    error = JobError("ValueError", "boom")
    with writer.held(gate):
        for target, job_id in finish_jobs.items():
            writer.started(job_id, "q")
            delay = 0.0 if target == RETRYING else None
            writer.finish(Finish(job_id, target, error=None if target == SUCCEEDED else error, delay=delay))
        flushes = writer.flushes
    writer.stop()

    # Then all of them went in one flush
    assert writer.flushes == flushes + 1
    rows = _rows(engine, list(finish_jobs.values()))
    if state in START.sources:
        # And each attempt was counted and ended at its own target, by this worker
        for target, job_id in finish_jobs.items():
            row = rows[job_id]
            expected = (target, _attempts_before(state) + 1)
            assert (row.state, row.attempts) == expected, f"start and finish to {target} from {state}"
            assert row.started_at is not None
            assert row.worker_id == (None if target == RETRYING else WORKER)
        assert sum(counts.get("q", 0) for counts in freed) == len(FINISHES)
    else:
        # And a job that could not start left no trace (its attempt is dropped, nothing to interrupt)
        for job_id in finish_jobs.values():
            assert rows[job_id].state == state
            assert rows[job_id].attempts == _attempts_before(state)
    assert refused == []


def test_a_refused_start_interrupts_the_running_job_and_drops_its_finish(
    engine: sa.Engine, writer: CountingWriter
) -> None:
    # Given a job cancelled after its worker began running it, and a dispatched one that may start
    cancelled, dispatched = _insert(engine, CANCELLED)[0], _insert(engine, DISPATCHED)[0]
    refused: list[str] = []
    writer.on_refused = refused.append

    # When the worker records both starts
    writer.started(cancelled, "q")
    writer.started(dispatched, "q")

    # Then the ledger refuses the cancelled job's start and the worker is told to interrupt it
    _until(lambda: refused == [cancelled], "the refusal")

    # And when both jobs finish, only the one that was allowed to start is recorded
    writer.finish(Finish(cancelled, SUCCEEDED, result_json=json.dumps(1)))
    writer.finish(Finish(dispatched, SUCCEEDED, result_json=json.dumps(2)))
    writer.stop()
    rows = _rows(engine, [cancelled, dispatched])
    assert (rows[cancelled].state, rows[cancelled].attempts, rows[cancelled].result) == (CANCELLED, 0, None)
    assert (rows[dispatched].state, rows[dispatched].attempts) == (SUCCEEDED, 1)
