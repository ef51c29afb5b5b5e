"""The ledger writer: one thread per worker process that flushes job starts and finishes in batches.

Worker threads hand their starts and finishes to the writer. The writer flushes whatever has
accumulated as one statement (on PostgreSQL, ``UPDATE … FROM unnest(…)`` for the finishes and
the starts together, on its own autocommit connection; on SQLite, one transaction), then
starts over at once: *natural batching*, no timer. An idle worker pays one round trip per
start and per finish; a busy one pays one per batch of jobs.

A start through :meth:`LedgerWriter.start` blocks its thread until flushed: whether the job may
run (not cancelled, not already running or finished) is decided there. A start through
:meth:`LedgerWriter.started` does not block: the job already runs (its worker knew it may, see
:mod:`fairlane.middleware.tracking`), and the start is recorded at the next flush, or together
with the job's finish when the job ended before that flush (one write for the whole attempt).
If the ledger refuses such a start (the job was cancelled or started elsewhere meanwhile),
``on_refused`` is told, so the worker interrupts the job, and its finish is dropped: a refused
attempt leaves no trace in the ledger. A finish does not block: the thread moves on and
Dramatiq acks the message while the finish waits for the next flush.

**Crashes (at-least-once).** A job is running in the ledger from its start's flush on, so a
worker killed at any instant leaves each of its jobs in one of these states:

* started, message unacked (running, or finished but not yet acked): RabbitMQ redelivers the
  message and the job runs again once the reaper has given up on the dead worker;
* acked, finish not yet flushed: the row still says running under the dead worker, and the
  reaper returns the job to the backlog once the worker's heartbeat stops: it runs again;
  if its start was not flushed either, the row still says dispatched, and the reaper
  publishes its message again after ``dispatch_timeout``: it runs again;
* finish flushed: done; a redelivered copy finds the job finished and is skipped.

A clean stop (SIGTERM) flushes every pending finish before the process exits.

A flush that fails on a lost connection is retried (with a growing pause) until it succeeds or
the writer stops; one that fails on a bad row is split, so only that job sees the error (a
start raises in its thread; a finish is logged and the job is marked dead with the reason).
A flush whose connection was lost after its COMMIT (only the reply lost) already started its
jobs: its retry finds them running under this worker, started after the latest start this
writer had seen recorded, and runs them (without it, the retry would skip them as running
elsewhere, leaving them running for good).

Every time a flush writes is the ledger's clock (:mod:`fairlane.ledger.clock`): a retry's
backoff travels as a delay, counted from the flush that records it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from fairlane.ledger.database import as_utc, dedicated_connection, replan_if_stale
from fairlane.ledger.jobs import JobError, Start, StartDecision, error_columns
from fairlane.ledger.pg_arrays import bool_array, float_array, text_array
from fairlane.ledger.schema import DEAD, RETRYING, RUNNING, SUCCEEDED, jobs
from fairlane.ledger.transitions import FINISH_ONE, FINISHES, FLUSH_PG, RESTART_ONE, START_ONE

logger = logging.getLogger("fairlane.ledger")

#: Error type recorded on a job whose finish the ledger refused.
_REFUSED = "LedgerWriteRefused"
#: Longest pause between two tries of a flush that failed on a lost connection.
MAX_RETRY_PAUSE = 2.0
#: How many refused starts are remembered until their finish comes (and is dropped).
MAX_REFUSED = 10_000


@dataclasses.dataclass(frozen=True)
class Finish:
    """How a job's attempt ended, to be flushed: its new state and what goes with it."""

    job_id: str
    state: str
    #: A success's inline result, and the same encoded as JSON.
    result: Any = None
    result_json: str | None = None
    result_path: str | None = None
    error: JobError | None = None
    #: A retry's backoff: seconds from the flush that records it until the retry may run.
    delay: float | None = None
    #: The job's actor queue: a retry's queue is told when the retry is due (see ``on_retrying``).
    queue: str = ""
    #: A retry's message as its next attempt receives it (None keeps the stored one).
    message: str | None = None

    def __post_init__(self) -> None:
        if self.state not in FINISHES:
            raise ValueError(f"a finish ends in one of {sorted(FINISHES)}, not {self.state!r}")


@dataclasses.dataclass(slots=True)
class _Request:
    """One job's start or finish, and its waiting thread's outcome."""

    job_id: str
    restart: bool = False
    finish: Finish | None = None
    queue: str = ""
    #: A start that nobody waits for: its job already runs.
    running: bool = False
    #: A finish that also records its job's start (the start was not flushed yet).
    starting: bool = False
    #: Set when resolved, for a thread that waits (most requests have none: see ``_submit``).
    done: threading.Event | None = None
    start: Start | None = None
    error: BaseException | None = None

    def resolve(self, start: Start | None = None, error: BaseException | None = None) -> None:
        self.start, self.error = start, error
        if self.done is not None:
            self.done.set()


class LedgerWriter:
    """Batches a worker process's job starts and finishes into few statements."""

    def __init__(
        self,
        engine: sa.Engine,
        worker_id: str,
        on_started: Callable[[Counter[str]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.worker_id = worker_id
        #: Called after each flush with how many jobs it started per queue (their slots are free).
        self.on_started = on_started
        #: Called after each flush that scheduled retries: per queue, in how many seconds its
        #: first one is due.
        self.on_retrying: Callable[[Mapping[str, float]], None] | None = None
        #: Called with the id of a job that runs already and whose start the ledger refused.
        self.on_refused: Callable[[str], object] | None = None
        #: Jobs whose start was refused, until their finish comes and is dropped (oldest first).
        self._refused_starts: dict[str, None] = {}
        #: The latest ``started_at`` a flush of this writer recorded (the ledger's clock): a start
        #: found after it under this worker was recorded by a flush whose reply was lost.
        self._latest_start: datetime | None = None
        self._postgresql = engine.dialect.name == "postgresql"
        self._starts: list[_Request] = []
        self._finishes: list[_Request] = []
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._raw: Any = None  # the writer's own DBAPI connection (PostgreSQL)
        self._planned_at: float | None = None  # when its prepared flush was planned
        dbapi = engine.dialect.loaded_dbapi
        #: Errors after which the flush is retried on a new connection (the database went away).
        self._connection_errors: tuple[type[BaseException], ...] = (
            sa.exc.OperationalError,
            sa.exc.InterfaceError,
            dbapi.OperationalError,
            dbapi.InterfaceError,
        )

    # -- the worker threads' side --------------------------------------------------------------------

    def start(self, job_id: str, queue: str, *, redelivered: bool = False) -> Start:
        """Mark a received job running (counting the attempt), unless it must not run.

        Blocks until flushed. See :meth:`fairlane.ledger.jobs.JobStore.start` for the decision.
        """
        request = self._submit(_Request(job_id, restart=redelivered, queue=queue))
        assert request.start is not None
        return request.start

    def started(self, job_id: str, queue: str) -> None:
        """Record, at the next flush, the start of a job that already runs (this does not wait).

        For a job whose worker knows it may start (see :mod:`fairlane.middleware.tracking`).
        Should the ledger refuse the start after all, ``on_refused`` is called with the id and
        the job's finish is dropped.
        """
        self._submit(_Request(job_id, queue=queue, running=True), wait=False)

    def finish(self, finish: Finish) -> None:
        """Record how a running job's attempt ended, at the next flush (this does not wait)."""
        self._submit(_Request(finish.job_id, finish=finish), wait=False)

    def _submit(self, request: _Request, *, wait: bool = True) -> _Request:
        done = request.done = threading.Event() if wait else None
        with self._lock:
            if self._thread is None or self._stopping or not self._thread.is_alive():
                self._begin()
            # The lists are swapped by each flush: pick this one under the lock.
            (self._starts if request.finish is None else self._finishes).append(request)
            self._lock.notify()
        if done is None:
            return request
        done.wait()
        if request.error is not None:
            raise request.error
        return request

    # -- lifecycle -----------------------------------------------------------------------------------

    def _begin(self) -> None:
        self._stopping = False
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="fairlane-ledger-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Flush what is pending, then end the writer's thread (a later request restarts it)."""
        with self._lock:
            thread = self._thread
            self._stopping = True
            self._lock.notify()
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            if self._thread is thread and (thread is None or not thread.is_alive()):
                self._thread = None
                self._close_raw()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not (self._starts or self._finishes or self._stopping):
                    self._lock.wait()
                finishes = [request for request in self._finishes if not self._drop_refused(request)]
                self._finishes = []
                finishing = {request.job_id for request in finishes}
                # The start of a job that already ran goes with its finish, as one write.
                unflushed = {request.job_id: request.queue for request in self._starts if request.running}
                for request in finishes:
                    if request.job_id in unflushed:
                        request.starting, request.queue = True, unflushed[request.job_id]
                merged = finishing & unflushed.keys()
                starts = [request for request in self._starts if request.job_id not in finishing]
                # Otherwise a job is never finished and started in one flush: its start waits for the next.
                self._starts = [
                    request
                    for request in self._starts
                    if request.job_id in finishing and request.job_id not in merged
                ]
                if not (starts or finishes):
                    return  # stopping, and nothing left to flush
            self._flush_until_done(finishes, starts)

    def _drop_refused(self, request: _Request) -> bool:
        """Whether ``request`` is the finish of a job whose start was refused (then it is forgotten)."""
        if request.job_id not in self._refused_starts:
            return False
        del self._refused_starts[request.job_id]
        logger.info("event=job_outcome_dropped job=%s reason='its start was refused'", request.job_id)
        return True

    def _flush_until_done(self, finishes: list[_Request], starts: list[_Request]) -> None:
        pause = 0.05
        replies_lost = False  # whether a try lost its connection (its COMMIT may have happened)
        while True:
            try:
                self._flush(finishes, starts, replies_lost)
                return
            except self._connection_errors as error:
                replies_lost = True
                self._close_raw()
                error_text = str(error).splitlines()[0][:200]
                if self._stopping and pause >= MAX_RETRY_PAUSE:
                    for request in (*finishes, *starts):
                        request.resolve(error=error)
                    return
                logger.warning(
                    "event=ledger_flush_failed jobs=%d error=%r action='retrying in %.2fs'",
                    len(finishes) + len(starts),
                    error_text,
                    pause,
                )
                time.sleep(pause)
                pause = min(pause * 2, MAX_RETRY_PAUSE)
            except Exception as error:
                if len(finishes) + len(starts) == 1:
                    if finishes:
                        self._refused(finishes[0], error)
                    (finishes or starts)[0].resolve(error=error)
                    return
                # A bad row fails the whole statement: flush the jobs one by one.
                for request in finishes:
                    self._flush_until_done([request], [])
                for request in starts:
                    self._flush_until_done([], [request])
                return

    def _refused(self, request: _Request, error: Exception) -> None:
        """The ledger refused a job's finish (a value it can't store): dead-letter it with the reason."""
        finish = request.finish
        if finish is None:
            return
        logger.error(
            "event=ledger_finish_refused job=%s state=%s error=%s", finish.job_id, finish.state, error
        )
        if finish.error is not None and finish.error.type == _REFUSED:
            return  # even the plain dead-letter record was refused: the reaper's turn
        reason = JobError(_REFUSED, f"the ledger refused its {finish.state} record: {type(error).__name__}")
        dead = Finish(finish.job_id, DEAD, error=reason)
        self._flush_until_done([_Request(finish.job_id, finish=dead, starting=request.starting)], [])

    def _flush(self, finishes: list[_Request], starts: list[_Request], replies_lost: bool) -> None:
        """Flush one batch; ``replies_lost`` when an earlier try of it lost its connection (its
        starts may have committed)."""
        latest_start = self._latest_start
        if self._postgresql:
            started, known, ran = self._flush_pg(finishes, starts)
        else:
            started, known, ran = self._flush_sqlite(finishes, starts)
        if replies_lost:
            unstarted = [request.job_id for request in starts if request.job_id in known - started.keys()]
            unfinished = [
                request.job_id for request in finishes if request.starting and request.job_id not in ran
            ]
            recorded = self._recorded_by_lost_flush([*unstarted, *unfinished], latest_start)
            started.update(
                (job_id, (row.attempts, row.next_run_at))
                for job_id, row in recorded.items()
                if job_id in unstarted and row.state == RUNNING
            )
            ran |= recorded.keys() & set(unfinished)
        for request in finishes:
            if request.starting and request.job_id not in ran:
                logger.info("event=job_outcome_dropped job=%s reason='its start was refused'", request.job_id)
            request.resolve()
        self._report_retries(finishes)
        claimed: set[str] = set()
        refused: list[str] = []
        for request in starts:
            row = started.get(request.job_id)
            if row is not None and request.job_id not in claimed:
                claimed.add(request.job_id)  # a second copy in the same batch does not run too
                request.resolve(Start(StartDecision.RUN, row[0], as_utc(row[1])))
                continue
            if request.running:
                refused.append(request.job_id)
            if request.job_id in known or row is not None:
                request.resolve(Start(StartDecision.SKIP))
            else:
                request.resolve(Start(StartDecision.UNKNOWN))
        self._refuse_starts(refused)
        freed = Counter(request.queue for request in starts if request.job_id in claimed)
        freed.update(request.queue for request in finishes if request.job_id in ran)
        if freed and self.on_started is not None:
            try:
                self.on_started(freed)
            except Exception:
                logger.exception("event=admission_request_failed")

    def _refuse_starts(self, job_ids: list[str]) -> None:
        """Jobs that run already had their start refused: drop their finishes, interrupt them."""
        if not job_ids:
            return
        with self._lock:
            for job_id in job_ids:
                self._refused_starts[job_id] = None
            while len(self._refused_starts) > MAX_REFUSED:
                del self._refused_starts[next(iter(self._refused_starts))]
        for job_id in job_ids:
            logger.info("event=job_start_refused job=%s reason='cancelled or started elsewhere'", job_id)
            if self.on_refused is not None:
                try:
                    self.on_refused(job_id)
                except Exception:
                    logger.exception("event=interrupt_failed job=%s", job_id)

    def _recorded_by_lost_flush(
        self, job_ids: Sequence[str], latest_start: datetime | None
    ) -> dict[str, Any]:
        """Those of ``job_ids`` whose start a flush of this writer recorded before its reply was
        lost: started under this worker (a retry clears the worker) after ``latest_start``, the
        latest start an earlier flush of this writer recorded. Their state, attempts and next run."""
        if not job_ids:
            return {}
        query = sa.select(jobs.c.id, jobs.c.state, jobs.c.attempts, jobs.c.next_run_at).where(
            jobs.c.id.in_(list(job_ids)),
            sa.or_(
                jobs.c.worker_id == self.worker_id,
                sa.and_(jobs.c.worker_id.is_(None), jobs.c.state == RETRYING),
            ),
        )
        if latest_start is not None:
            query = query.where(jobs.c.started_at > latest_start)
        with self.engine.connect() as connection:
            return {row.id: row for row in connection.execute(query)}

    def _note_starts(self, started_at: Sequence[datetime | None]) -> None:
        """Remember the latest ``started_at`` this writer's flushes recorded."""
        for moment in started_at:
            moment = as_utc(moment)
            if moment is not None and (self._latest_start is None or moment > self._latest_start):
                self._latest_start = moment

    def _report_retries(self, finishes: Sequence[_Request]) -> None:
        due: dict[str, float] = {}
        for request in finishes:
            item = request.finish
            if item is not None and item.state == RETRYING and item.queue and item.delay is not None:
                due[item.queue] = min(due.get(item.queue, item.delay), item.delay)
        if due and self.on_retrying is not None:
            try:
                self.on_retrying(due)
            except Exception:
                logger.exception("event=admission_request_failed")

    # -- PostgreSQL ----------------------------------------------------------------------------------

    def _flush_pg(
        self, finishes: Sequence[_Request], starts: Sequence[_Request]
    ) -> tuple[dict[str, Any], set[str], set[str]]:
        """The whole flush as one statement: one round trip and one commit."""
        items = [request.finish for request in finishes if request.finish is not None]
        errors = [error_columns(item.error) for item in items]
        parameters = {  # arrays as literals: see fairlane.ledger.pg_arrays
            "worker": self.worker_id,
            "finish_ids": text_array([item.job_id for item in items]),
            "states": text_array([item.state for item in items]),
            "results": text_array([item.result_json for item in items]),
            "result_paths": text_array([item.result_path for item in items]),
            "error_types": text_array([error[0] for error in errors]),
            "error_messages": text_array([error[1] for error in errors]),
            "error_tracebacks": text_array([error[2] for error in errors]),
            "delays": float_array([item.delay for item in items]),
            "messages": text_array([item.message for item in items]),
            "starting": bool_array([request.starting for request in finishes if request.finish is not None]),
            "start_ids": text_array([request.job_id for request in starts]),
            "restart": bool_array([request.restart for request in starts]),
        }
        rows = self._raw_connection().execute(FLUSH_PG, parameters, prepare=True).fetchall()
        self._note_starts([row[4] for row in rows])
        started = {row[0]: (row[1], row[2]) for row in rows if not row[3] and row[1] is not None}
        known = {row[0] for row in rows if not row[3]}
        return started, known, {row[0] for row in rows if row[3]}

    def _raw_connection(self) -> Any:
        """The writer's own psycopg connection (kept out of the pool for the writer's life), its
        prepared flush planned again every second (see :func:`replan_if_stale`)."""
        if self._raw is None:
            self._raw = dedicated_connection(self.engine, by_index=True)
            self._planned_at = None
        self._planned_at = replan_if_stale(self._raw, self._planned_at)
        return self._raw

    def _close_raw(self) -> None:
        raw, self._raw = self._raw, None
        if raw is None:
            return
        try:
            raw.close()
        except Exception:  # already broken: nothing to give back
            logger.debug("event=ledger_writer_connection_dropped")

    # -- SQLite --------------------------------------------------------------------------------------

    def _flush_sqlite(
        self, finishes: Sequence[_Request], starts: Sequence[_Request]
    ) -> tuple[dict[str, Any], set[str], set[str]]:
        started: dict[str, Any] = {}
        known: set[str] = set()
        ran: set[str] = set()
        started_at: list[datetime | None] = []
        with self.engine.begin() as connection:
            for request in finishes:
                item = request.finish
                assert item is not None
                if request.starting:
                    parameters = {"p_id": item.job_id, "p_worker": self.worker_id}
                    row = connection.execute(START_ONE, parameters).first()
                    if row is None:
                        continue  # refused: the attempt leaves no trace
                    started_at.append(row.started_at)
                    ran.add(item.job_id)
                connection.execute(FINISH_ONE[item.state], _finish_parameters(item))
            for request in starts:
                if request.job_id in started:
                    continue  # a second copy in the same batch: one start, counted once
                statement = RESTART_ONE if request.restart else START_ONE
                parameters = {"p_id": request.job_id, "p_worker": self.worker_id}
                row = connection.execute(statement, parameters).first()
                if row is not None:
                    started[request.job_id] = (row.attempts, row.next_run_at)
                    started_at.append(row.started_at)
            missing = [request.job_id for request in starts if request.job_id not in started]
            if missing:
                known = set(connection.scalars(sa.select(jobs.c.id).where(jobs.c.id.in_(missing))))
        self._note_starts(started_at)
        return started, known, ran


def _finish_parameters(item: Finish) -> dict[str, Any]:
    error_type, error_message, error_traceback = error_columns(item.error)
    parameters: dict[str, Any] = {"p_id": item.job_id}
    if item.state == SUCCEEDED:
        parameters["p_result"] = item.result
        parameters["p_result_path"] = item.result_path
    elif item.state in (RETRYING, DEAD):
        parameters.update(
            p_error_type=error_type, p_error_message=error_message, p_error_traceback=error_traceback
        )
        if item.state == RETRYING:
            parameters["p_delay"] = item.delay
            parameters["p_message"] = item.message
    return parameters


__all__ = ["Finish", "LedgerWriter"]
