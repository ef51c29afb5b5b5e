"""Jobs whose worker died under them, and when that ends them: the ``WorkerLost`` rule.

A worker process that dies (SIGKILL, an out-of-memory kill, a segfault) leaves its jobs
``running`` in the ledger, their attempts counted when they started. Two paths bring such a
job back: RabbitMQ redelivers its unacked message to another worker
(:mod:`fairlane.middleware.lost_workers`), or the scheduler's reaper finds its worker's
heartbeat stale (:mod:`fairlane.scheduling.reaper`). Either way the lost attempt counts as a
failed one: the job runs again only while it has retries left (``max_retries``, or the
actor's ``retry_when``); after its last it is ``dead`` with error type ``WorkerLost``, naming
the worker, so a job that kills its worker every time (a poison job) ends instead of taking
down worker after worker.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa

from fairlane.ledger import transitions
from fairlane.ledger.jobs import JobError, error_columns
from fairlane.ledger.schema import RUNNING, jobs


class WorkerLost(Exception):
    """A job's worker died while running it (what an actor's ``retry_when`` is given)."""


def worker_lost_error(worker_id: str | None, attempt: int) -> JobError:
    """The error recorded on a job whose last allowed attempt died with its worker."""
    return JobError(
        WorkerLost.__name__,
        f"attempt {attempt} never finished: its worker {worker_id or '(unknown)'} died while running it "
        "(killed, out of memory or crashed), and no retries are left",
    )


def retries_left(attempts: int, max_retries: int | None) -> bool:
    """Whether a job whose attempt number ``attempts`` was lost may run again (None: no limit)."""
    return max_retries is None or attempts - 1 < max_retries


@dataclasses.dataclass(frozen=True)
class LostAttempt:
    """A running job's current attempt, and the worker that holds it."""

    job_id: str
    worker_id: str | None
    attempts: int


class LostAttempts:
    """Reads and ends attempts whose worker died, in one ledger database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def running(self, job_id: str) -> LostAttempt | None:
        """The job's attempt if it is ``running`` (its worker may be gone), else None."""
        query = sa.select(jobs.c.worker_id, jobs.c.attempts).where(
            jobs.c.id == job_id, jobs.c.state == RUNNING
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else LostAttempt(job_id, row.worker_id, int(row.attempts))

    def end(self, attempt: LostAttempt) -> bool:
        """Mark the job dead with ``WorkerLost``, if it is still in that attempt on that worker."""
        error_type, message, traceback = error_columns(worker_lost_error(attempt.worker_id, attempt.attempts))
        statement = transitions.FAIL_ONE.where(
            jobs.c.attempts == attempt.attempts,
            jobs.c.worker_id.is_(None)
            if attempt.worker_id is None
            else jobs.c.worker_id == attempt.worker_id,
        )
        parameters: dict[str, Any] = {
            "p_id": attempt.job_id,
            "p_error_type": error_type,
            "p_error_message": message,
            "p_error_traceback": traceback,
        }
        with self.engine.begin() as connection:
            return bool(connection.execute(statement, parameters).rowcount)


__all__ = ["LostAttempt", "LostAttempts", "WorkerLost", "retries_left", "worker_lost_error"]
