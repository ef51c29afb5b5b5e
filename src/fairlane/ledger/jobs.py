"""Job rows: reads, and the state transitions a job goes through.

Every transition is a single conditional UPDATE keyed by job id, so repeating one (a
redelivered message, a retried call) is harmless.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from fairlane.fairlane_error import FairlaneError
from fairlane.ledger import transitions
from fairlane.ledger.database import as_utc
from fairlane.ledger.schema import (
    BACKLOG_PREDICATE,
    CANCELLED,
    DEAD,
    DISPATCHED,
    FINAL_STATES,
    PENDING,
    RETRYING,
    RUNNING,
    STATES,
    SUCCEEDED,
    jobs,
)

_List = list


class JobNotFound(FairlaneError, LookupError):
    """Raised when no job has the given id."""


@dataclasses.dataclass(frozen=True)
class JobError:
    """What went wrong in a job's last failed attempt."""

    type: str
    message: str
    traceback: str | None = None


@dataclasses.dataclass(frozen=True)
class Job:
    """A job as the ledger knows it. ``priority`` is the lane name; ``id`` the message id."""

    id: str
    actor: str
    queue: str
    tenant: str
    priority: str
    state: str
    attempts: int
    progress: dict[str, Any] | None
    result: Any
    error: JobError | None
    idempotency_key: str | None
    cancel_requested: bool
    enqueued_at: datetime
    next_run_at: datetime
    dispatched_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    result_path: str | None = dataclasses.field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        """True once the job is succeeded, dead or cancelled."""
        return self.state in FINAL_STATES


@dataclasses.dataclass(frozen=True)
class JobSnapshot:
    """The part of a job that changes while it runs; ``updated_at`` moves with every change."""

    id: str
    state: str
    attempts: int
    progress: dict[str, Any] | None
    cancel_requested: bool
    updated_at: datetime

    @property
    def finished(self) -> bool:
        """True once the job is succeeded, dead or cancelled."""
        return self.state in FINAL_STATES


def list_position(job: Job) -> tuple[datetime, str]:
    """Where ``job`` sits in :meth:`JobStore.list`'s order (its ``before_position`` for the next page)."""
    return job.enqueued_at, job.id


class StartDecision(enum.Enum):
    """What a worker should do with a message it has just received."""

    RUN = "run"
    SKIP = "skip"
    UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True)
class Start:
    """The outcome of :meth:`JobStore.start`: whether to run, which attempt, since when runnable."""

    decision: StartDecision
    attempt: int = 0
    runnable_since: datetime | None = None


#: The PostgreSQL NOTIFY channel on which a cancel names a job that must not start (payload: its id):
#: workers that run jobs before their start is recorded skip it (see fairlane.notifications).
CANCEL_CHANNEL = "fairlane_cancel"
#: How far back a worker that starts listening looks for jobs cancelled before they started.
CANCEL_LOOKBACK_SECONDS = 3600
#: At most this many of them are loaded.
CANCEL_LOOKBACK_LIMIT = 10_000
#: Jobs cancelled before they started within the lookback (PostgreSQL; uses the cleanup index).
CANCELLED_UNSTARTED_PG = f"""
SELECT id FROM fairlane_jobs
WHERE state = '{CANCELLED}' AND finished_at > now() - interval '{CANCEL_LOOKBACK_SECONDS} seconds'
  AND started_at IS NULL AND dispatched_at IS NOT NULL
ORDER BY finished_at DESC
LIMIT {CANCEL_LOOKBACK_LIMIT}
"""


def _job_from_row(row: sa.Row[Any]) -> Job:
    error = None
    if row.error_type is not None:
        error = JobError(row.error_type, row.error_message or "", row.error_traceback)
    return Job(
        id=row.id,
        actor=row.actor,
        queue=row.queue,
        tenant=row.tenant,
        priority=row.lane,
        state=row.state,
        attempts=row.attempts,
        progress=row.progress,
        result=row.result,
        error=error,
        idempotency_key=row.idempotency_key,
        cancel_requested=bool(row.cancel_requested),
        enqueued_at=as_utc(row.enqueued_at),  # type: ignore[arg-type]
        next_run_at=as_utc(row.next_run_at),  # type: ignore[arg-type]
        dispatched_at=as_utc(row.dispatched_at),
        started_at=as_utc(row.started_at),
        finished_at=as_utc(row.finished_at),
        result_path=row.result_path,
    )


_JOB_COLUMNS = [column for column in jobs.c if column.name != "message"]


class JobStore:
    """Reads and transitions of job rows in one ledger database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        # SQLite's write transactions begin explicitly (BEGIN IMMEDIATE), so they keep begin/commit.
        self._single_statement = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else engine
        )

    # -- reads ---------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        """The job with this id; raises :class:`JobNotFound`."""
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(*_JOB_COLUMNS).where(jobs.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return _job_from_row(row)

    def list(
        self,
        *,
        tenant: str | None = None,
        state: str | None = None,
        actor: str | None = None,
        queue: str | None = None,
        priority: str | None = None,
        limit: int = 50,
        before: str | None = None,
        before_position: tuple[datetime, str] | None = None,
    ) -> _List[Job]:
        """Jobs matching every given filter, newest first.

        Pages are keyset-based: pass the last job id of a page as ``before`` to get the next,
        or its :func:`list_position` as ``before_position`` (which needs no row to look up, so
        it still works once that job has been cleaned up).
        """
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}; expected one of {', '.join(STATES)}")
        if not 1 <= limit <= 1000:
            raise ValueError("limit must be between 1 and 1000")
        query = sa.select(*_JOB_COLUMNS)
        for column, value in (
            (jobs.c.tenant, tenant),
            (jobs.c.state, state),
            (jobs.c.actor, actor),
            (jobs.c.queue, queue),
            (jobs.c.lane, priority),
        ):
            if value is not None:
                query = query.where(column == value)
        with self.engine.connect() as connection:
            if before is not None:
                anchor = connection.execute(
                    sa.select(jobs.c.enqueued_at).where(jobs.c.id == before)
                ).scalar_one_or_none()
                if anchor is None:
                    raise JobNotFound(f"no job with id {before!r} to page from")
                before_position = (anchor, before)
            if before_position is not None:
                moment, last_id = before_position
                query = query.where(
                    sa.or_(
                        jobs.c.enqueued_at < moment,
                        sa.and_(jobs.c.enqueued_at == moment, jobs.c.id < last_id),
                    )
                )
            query = query.order_by(jobs.c.enqueued_at.desc(), jobs.c.id.desc()).limit(limit)
            return [_job_from_row(row) for row in connection.execute(query)]

    def snapshots(self, job_ids: Iterable[str]) -> dict[str, JobSnapshot]:
        """The live part (state, attempts, progress…) of each of ``job_ids`` that exists, in one query."""
        ids = _List(job_ids)
        if not ids:
            return {}
        query = sa.select(
            jobs.c.id,
            jobs.c.state,
            jobs.c.attempts,
            jobs.c.progress,
            jobs.c.cancel_requested,
            jobs.c.updated_at,
        ).where(jobs.c.id.in_(ids))
        with self.engine.connect() as connection:
            return {
                row.id: JobSnapshot(
                    id=row.id,
                    state=row.state,
                    attempts=row.attempts,
                    progress=row.progress,
                    cancel_requested=bool(row.cancel_requested),
                    updated_at=as_utc(row.updated_at),  # type: ignore[arg-type]
                )
                for row in connection.execute(query)
            }

    def with_idempotency_key(self, tenant: str, key: str) -> Job | None:
        """The job ``tenant`` submitted with idempotency key ``key``, if any."""
        query = sa.select(*_JOB_COLUMNS).where(
            jobs.c.tenant == tenant, jobs.c.idempotency_key == key, sa.text("idempotency_key IS NOT NULL")
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else _job_from_row(row)

    def backlog_of(self, tenant: str, *, up_to: int) -> int:
        """How many of ``tenant``'s jobs wait in the ledger backlog (pending or retrying), counted
        up to ``up_to``: a check against a cap reads no further than the cap."""
        waiting = sa.select(jobs.c.id).where(jobs.c.tenant == tenant, BACKLOG_PREDICATE).limit(up_to)
        query = sa.select(sa.func.count()).select_from(waiting.subquery())
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def message_of(self, job_id: str) -> str:
        """The encoded Dramatiq message stored for a job."""
        with self.engine.connect() as connection:
            text = connection.execute(sa.select(jobs.c.message).where(jobs.c.id == job_id)).scalar()
        if text is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return str(text)

    def cancel_requested_among(self, job_ids: Iterable[str]) -> set[str]:
        """Those of ``job_ids`` that are running and have been asked to cancel."""
        ids = list(job_ids)
        if not ids:
            return set()
        query = sa.select(jobs.c.id).where(
            jobs.c.id.in_(ids), jobs.c.state == RUNNING, jobs.c.cancel_requested.is_(True)
        )
        with self.engine.connect() as connection:
            return set(connection.scalars(query))

    # -- worker-side transitions ---------------------------------------------------------------------

    def start(self, job_id: str, worker_id: str, *, redelivered: bool = False) -> Start:
        """Mark a received job running and count the attempt, unless it must not run.

        A dispatched job so leaves the queue's dispatch budget. A job already running runs
        again only if RabbitMQ ``redelivered`` its message (its worker's connection died);
        another copy of a running job's message (a re-publish) is skipped, so the job never
        runs twice at once on healthy workers. Cancelled and finished jobs are skipped.
        Workers start jobs in batches through :class:`fairlane.ledger.writer.LedgerWriter`.
        """
        statement = transitions.RESTART_ONE if redelivered else transitions.START_ONE
        with self._single_statement.begin() as connection:
            row = connection.execute(statement, {"p_id": job_id, "p_worker": worker_id}).first()
            if row is not None:
                return Start(StartDecision.RUN, row.attempts, as_utc(row.next_run_at))
            exists = connection.execute(sa.select(jobs.c.id).where(jobs.c.id == job_id)).first()
        return Start(StartDecision.SKIP if exists else StartDecision.UNKNOWN)

    def kill(self, job_id: str, error: JobError) -> None:
        """Dead-letter a job that can never run: no more attempts; its message goes to the dead letters."""
        self._run(transitions.KILL_ONE, p_id=job_id, **_error_values(error))

    def defer(self, job_id: str, until: datetime) -> None:
        """Send a dispatched job back to the backlog until ``until`` (a time read from the ledger's
        clock, e.g. a rate-limit pause's end), without counting an attempt."""
        self._run(transitions.DEFER_ONE, p_id=job_id, p_run_at=until)

    def set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """Store a running job's progress."""
        self._run(transitions.PROGRESS_ONE, p_id=job_id, p_progress=progress)

    def _run(self, statement: sa.Update, **parameters: Any) -> None:
        """Run a one-statement transition (on PostgreSQL in autocommit: one round trip, not three)."""
        with self._single_statement.begin() as connection:
            connection.execute(statement, parameters)

    # -- operator-side transitions -------------------------------------------------------------------

    def cancel(self, job_id: str) -> Job:
        """Cancel a job.

        A job that has not started is cancelled at once and will never run; a running job is
        asked to stop (its worker interrupts it within ``cancel_poll_interval``); a finished job
        is left as it is. Returns the job as it is now.
        """
        with self.engine.begin() as connection:
            cancelled = connection.execute(transitions.CANCEL_ONE, {"p_id": job_id}).rowcount
            if not cancelled:
                connection.execute(transitions.REQUEST_CANCEL_ONE, {"p_id": job_id})
            elif connection.dialect.name == "postgresql":
                # Delivered at commit: a worker holding the job's message skips it.
                connection.execute(sa.select(sa.func.pg_notify(CANCEL_CHANNEL, job_id)))
        return self.get(job_id)

    def dead_jobs(
        self,
        *,
        actor: str | None = None,
        tenant: str | None = None,
        queue: str | None = None,
        finished_before: datetime | None = None,
        limit: int | None = None,
    ) -> _List[Job]:
        """Dead jobs matching every given filter, oldest first."""
        query = sa.select(*_JOB_COLUMNS).where(jobs.c.state == DEAD)
        for column, value in ((jobs.c.actor, actor), (jobs.c.tenant, tenant), (jobs.c.queue, queue)):
            if value is not None:
                query = query.where(column == value)
        if finished_before is not None:
            query = query.where(jobs.c.finished_at < finished_before)
        query = query.order_by(jobs.c.finished_at, jobs.c.id)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [_job_from_row(row) for row in connection.execute(query)]

    def delete(self, job_ids: Sequence[str]) -> int:
        """Delete job rows outright (purging dead letters); returns how many went."""
        if not job_ids:
            return 0
        with self.engine.begin() as connection:
            return connection.execute(
                jobs.delete().where(jobs.c.id.in_(job_ids), jobs.c.state.in_(tuple(FINAL_STATES)))
            ).rowcount


def error_columns(error: JobError | None) -> tuple[str | None, str | None, str | None]:
    """An error's ledger columns (type, message, traceback): bounded, without the NUL characters
    PostgreSQL's text type refuses."""
    if error is None:
        return None, None, None
    traceback = (error.traceback or "")[-50_000:] or None
    return (
        error.type[:255].replace("\x00", ""),
        error.message[:10_000].replace("\x00", "\\x00"),
        traceback.replace("\x00", "\\x00") if traceback else None,
    )


def _error_values(error: JobError) -> dict[str, Any]:
    error_type, message, traceback = error_columns(error)
    return {"p_error_type": error_type, "p_error_message": message, "p_error_traceback": traceback}


__all__ = [
    "CANCELLED",
    "DEAD",
    "DISPATCHED",
    "PENDING",
    "RETRYING",
    "RUNNING",
    "SUCCEEDED",
    "Job",
    "JobError",
    "JobNotFound",
    "JobSnapshot",
    "JobStore",
    "Start",
    "StartDecision",
    "list_position",
]
