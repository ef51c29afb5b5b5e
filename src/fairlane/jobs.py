"""``fairlane.jobs``: look up, list, cancel and wait for jobs in the ledger."""

from __future__ import annotations

import dataclasses
import time

from fairlane.app import get_app
from fairlane.errors import JobTimeout
from fairlane.ledger.jobs import Job, JobError, JobNotFound
from fairlane.middleware.results import read_result_file

__all__ = ["Job", "JobError", "JobNotFound", "cancel", "get", "list", "wait"]

_list = list


def _with_result(job: Job) -> Job:
    if job.result_path is None:
        return job
    return dataclasses.replace(job, result=read_result_file(job.result_path))


def get(job_id: str) -> Job:
    """The job with this id (its result loaded, wherever stored); raises :class:`JobNotFound`."""
    return _with_result(get_app().jobs.get(job_id))


def list(
    *,
    tenant: str | None = None,
    state: str | None = None,
    actor: str | None = None,
    queue: str | None = None,
    limit: int = 50,
    before: str | None = None,
) -> _list[Job]:
    """Jobs matching every given filter, newest first, at most ``limit`` (1..1000).

    For the next page pass the last job's id as ``before``. Large results are not loaded
    here; use :func:`get` for one job's full result.
    """
    return get_app().jobs.list(
        tenant=tenant, state=state, actor=actor, queue=queue, limit=limit, before=before
    )


def cancel(job_id: str) -> Job:
    """Cancel a job: one not yet started never runs; a running one is interrupted.

    Cancelling a finished job changes nothing. Returns the job as it is now.
    """
    return get_app().jobs.cancel(job_id)


def wait(job_id: str, timeout: float = 30.0, poll_interval: float = 0.05) -> Job:
    """Block until the job is succeeded, dead or cancelled, and return it.

    Raises :class:`JobTimeout` after ``timeout`` seconds and :class:`JobNotFound` for an unknown id.
    """
    deadline = time.monotonic() + timeout
    store = get_app().jobs
    while True:
        job = store.get(job_id)
        if job.finished:
            return _with_result(job)
        if time.monotonic() >= deadline:
            raise JobTimeout(f"job {job_id} is still {job.state} after {timeout} s")
        time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))
