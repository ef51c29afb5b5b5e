"""The scheduler's ledger queries: retention, the stale-job reaper, leader gauges, task bookkeeping.

Every write here is a short transaction over a bounded batch of rows (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL), so the scheduler never holds long locks against workers, and each
is safe to run twice: it re-checks the state it changes.

Cutoffs are taken ``now``, the ledger's current time, which each scheduler task reads once per
run (:func:`fairlane.ledger.clock.database_now`): heartbeats, starts and dispatches are the
ledger's times too, so a scheduler whose own clock is off reaps and expires nothing early or late.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from fairlane.ledger import transitions
from fairlane.ledger.database import as_utc
from fairlane.ledger.jobs import error_columns
from fairlane.ledger.lost_workers import worker_lost_error
from fairlane.ledger.schema import (
    BACKLOG_STATES,
    DEAD,
    DISPATCHED,
    RUNNING,
    jobs,
    scheduler_tasks,
    workers,
)


@dataclasses.dataclass(frozen=True)
class ExpiredJob:
    """A finished job deleted by retention."""

    id: str
    queue: str
    state: str
    result_path: str | None


@dataclasses.dataclass(frozen=True)
class ReapedJob:
    """A running job whose worker stopped sending heartbeats, and what became of it."""

    id: str
    queue: str
    worker_id: str | None
    attempts: int
    #: pending; cancelled when a cancel had been requested; dead (``WorkerLost``) with no retries left
    state: str


@dataclasses.dataclass(frozen=True)
class StaleDispatch:
    """A dispatched job no worker started in time: its message may have to be published again."""

    id: str
    queue: str
    lane: str
    message: str


@dataclasses.dataclass(frozen=True)
class LaneBacklog:
    """Backlog of one (queue, lane): how many jobs wait, and since when the oldest runnable one."""

    jobs: int
    oldest_runnable_since: datetime | None


@dataclasses.dataclass(frozen=True)
class TaskRecord:
    """A scheduler task's bookkeeping row."""

    name: str
    runs: int
    failures: int
    last_leader: str | None
    last_error: str | None
    last_started_at: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None


class SchedulerQueries:
    """The scheduler's reads and writes of one ledger database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    # -- retention -----------------------------------------------------------------------------------

    def delete_expired(
        self,
        state: str,
        finished_before: datetime,
        limit: int,
        before_commit: Callable[[Sequence[ExpiredJob]], None] | None = None,
    ) -> list[ExpiredJob]:
        """Delete up to ``limit`` jobs in final ``state`` that finished before ``finished_before``.

        Oldest first, in one short transaction. ``before_commit`` runs inside it with the rows
        about to go (retention deletes their result files there, so a crash can leave a row
        without its file, which the next run deletes, but never a file without its row).
        """
        with self.engine.begin() as connection:
            rows = connection.execute(
                sa.select(jobs.c.id, jobs.c.queue, jobs.c.state, jobs.c.result_path)
                .where(jobs.c.state == state, jobs.c.finished_at < finished_before)
                .order_by(jobs.c.finished_at, jobs.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            expired = [ExpiredJob(row.id, row.queue, row.state, row.result_path) for row in rows]
            if not expired:
                return []
            if before_commit is not None:
                before_commit(expired)
            connection.execute(
                jobs.delete().where(jobs.c.id.in_([job.id for job in expired]), jobs.c.state == state)
            )
        return expired

    def dead_ids_among(self, job_ids: Collection[str]) -> set[str]:
        """Those of ``job_ids`` that have a ``dead`` row."""
        found: set[str] = set()
        ids = list(job_ids)
        with self.engine.connect() as connection:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                found.update(
                    connection.scalars(sa.select(jobs.c.id).where(jobs.c.id.in_(chunk), jobs.c.state == DEAD))
                )
        return found

    # -- reaper --------------------------------------------------------------------------------------

    def reap_abandoned(
        self,
        heartbeat_timeout: float,
        limit: int,
        now: datetime,
        may_retry: Callable[[str, str, int, str | None], bool] | None = None,
    ) -> list[ReapedJob]:
        """Return running jobs whose worker's heartbeat is stale to the backlog.

        A job qualifies when it started more than ``heartbeat_timeout`` seconds ago and its
        worker has no heartbeat that recent (or no row at all). It becomes ``pending`` and
        runnable now; the attempt it used stays counted (``start`` counted it). A job whose
        cancel was requested is ``cancelled`` instead, and one ``may_retry(actor, message,
        attempts, worker_id)`` says has no retries left is ``dead`` with ``WorkerLost`` (see
        :mod:`fairlane.ledger.lost_workers`). Running jobs hold no dispatch budget, so the
        queue's budget is untouched.
        """
        moment = now
        cutoff = moment - timedelta(seconds=heartbeat_timeout)
        fresh = sa.select(workers.c.worker_id).where(workers.c.last_heartbeat_at >= cutoff)
        with self.engine.begin() as connection:
            rows = connection.execute(
                sa.select(
                    jobs.c.id,
                    jobs.c.queue,
                    jobs.c.worker_id,
                    jobs.c.attempts,
                    jobs.c.cancel_requested,
                    jobs.c.actor,
                    jobs.c.message,
                )
                .where(
                    jobs.c.state == RUNNING,
                    jobs.c.started_at < cutoff,
                    sa.or_(jobs.c.worker_id.is_(None), jobs.c.worker_id.not_in(fresh)),
                )
                .order_by(jobs.c.started_at, jobs.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            reaped = []
            for row in rows:
                values: dict[str, Any]
                if row.cancel_requested:
                    transition = transitions.REAP_CANCELLED
                    values = {"finished_at": moment, "worker_id": None}
                elif may_retry is not None and not may_retry(
                    row.actor, row.message, row.attempts, row.worker_id
                ):
                    transition = transitions.FAIL
                    error_type, message, traceback = error_columns(
                        worker_lost_error(row.worker_id, row.attempts)
                    )
                    values = {
                        "finished_at": moment,
                        "error_type": error_type,
                        "error_message": message,
                        "error_traceback": traceback,
                    }
                else:
                    transition = transitions.REAP
                    values = {"next_run_at": moment, "dispatched_at": None, "worker_id": None}
                state = transition.target
                changed = connection.execute(
                    jobs.update()
                    .where(jobs.c.id == row.id, transition.guard)
                    .values(state=state, updated_at=moment, **values)
                ).rowcount
                if changed:
                    reaped.append(ReapedJob(row.id, row.queue, row.worker_id, row.attempts, state))
        return reaped

    def stale_dispatches(self, dispatch_timeout: float, limit: int, now: datetime) -> list[StaleDispatch]:
        """Dispatched jobs no worker started within ``dispatch_timeout`` s before ``now``, oldest first."""
        cutoff = now - timedelta(seconds=dispatch_timeout)
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(jobs.c.id, jobs.c.queue, jobs.c.lane, jobs.c.message)
                .where(jobs.c.state == DISPATCHED, jobs.c.dispatched_at < cutoff)
                .order_by(jobs.c.dispatched_at, jobs.c.id)
                .limit(limit)
            ).all()
        return [StaleDispatch(row.id, row.queue, row.lane, row.message) for row in rows]

    def mark_redispatched(self, job_ids: Collection[str], now: datetime) -> int:
        """Restart the dispatch clock of jobs just published again (if still dispatched), at ``now``.

        So each is published again at most once per ``dispatch_timeout``. They stay
        ``dispatched`` and keep their slot of the dispatch budget.
        """
        if not job_ids:
            return 0
        with self.engine.begin() as connection:
            return int(
                connection.execute(
                    jobs.update()
                    .where(jobs.c.id.in_(list(job_ids)), jobs.c.state == DISPATCHED)
                    .values(dispatched_at=now, updated_at=now)
                ).rowcount
            )

    # -- leader gauges -------------------------------------------------------------------------------

    def backlog_by_lane(self, now: datetime) -> dict[tuple[str, str], LaneBacklog]:
        """Backlog jobs per (queue, lane), with when the oldest job runnable at ``now`` became runnable."""
        runnable_since = sa.case((jobs.c.next_run_at <= now, jobs.c.next_run_at), else_=None)
        query = (
            sa.select(jobs.c.queue, jobs.c.lane, sa.func.count(), sa.func.min(runnable_since))
            .where(jobs.c.state.in_(BACKLOG_STATES))
            .group_by(jobs.c.queue, jobs.c.lane)
        )
        with self.engine.connect() as connection:
            return {
                (queue, lane): LaneBacklog(int(count), as_utc(oldest))
                for queue, lane, count, oldest in connection.execute(query)
            }

    def tenants_with_backlog(self) -> dict[str, int]:
        """Distinct tenants with backlog jobs, per queue."""
        query = (
            sa.select(jobs.c.queue, sa.func.count(sa.distinct(jobs.c.tenant)))
            .where(jobs.c.state.in_(BACKLOG_STATES))
            .group_by(jobs.c.queue)
        )
        with self.engine.connect() as connection:
            return {queue: int(count) for queue, count in connection.execute(query)}

    def dead_by_queue(self) -> dict[str, int]:
        """Dead jobs per queue."""
        query = sa.select(jobs.c.queue, sa.func.count()).where(jobs.c.state == DEAD).group_by(jobs.c.queue)
        with self.engine.connect() as connection:
            return {queue: int(count) for queue, count in connection.execute(query)}

    # -- task bookkeeping ----------------------------------------------------------------------------

    def record_task_run(
        self, name: str, leader: str, started_at: datetime, finished_at: datetime, error: str | None
    ) -> None:
        """Record one run of scheduler task ``name`` (``error`` is None when it succeeded)."""
        values: dict[str, object] = {"last_leader": leader[:128], "last_started_at": started_at}
        if error is None:
            values["last_success_at"] = finished_at
        else:
            values.update(last_failure_at=finished_at, last_error=error[:10_000])
        insert = self._insert(scheduler_tasks).values(
            name=name, runs=1, failures=0 if error is None else 1, **values
        )
        statement = insert.on_conflict_do_update(
            index_elements=[scheduler_tasks.c.name],
            set_={
                "runs": scheduler_tasks.c.runs + 1,
                "failures": scheduler_tasks.c.failures + (0 if error is None else 1),
                **values,
            },
        )
        with self.engine.begin() as connection:
            connection.execute(statement)

    def task_records(self) -> dict[str, TaskRecord]:
        """Every scheduler task's bookkeeping row, by name."""
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(scheduler_tasks)).all()
        return {
            row.name: TaskRecord(
                name=row.name,
                runs=int(row.runs),
                failures=int(row.failures),
                last_leader=row.last_leader,
                last_error=row.last_error,
                last_started_at=as_utc(row.last_started_at),
                last_success_at=as_utc(row.last_success_at),
                last_failure_at=as_utc(row.last_failure_at),
            )
            for row in rows
        }


__all__ = [
    "ExpiredJob",
    "LaneBacklog",
    "ReapedJob",
    "SchedulerQueries",
    "StaleDispatch",
    "TaskRecord",
]
