"""The job a worker thread is running, and progress reports from inside it."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware

from fairlane.ledger.jobs import JobStore
from fairlane.middleware.tracking import attempt_of

#: Minimum seconds between two progress writes of one job (the final one is always written).
PROGRESS_INTERVAL = 0.2


@dataclasses.dataclass
class CurrentJob:
    """The job running in this thread."""

    id: str
    actor: str
    tenant: str
    attempt: int
    jobs: JobStore
    rate_limit: str | None = None
    tokens: float = 0.0
    last_progress_write: float = 0.0


_local = threading.local()


def current_job() -> CurrentJob:
    """The job this thread is running; raises ``RuntimeError`` outside a fairlane actor."""
    job: CurrentJob | None = getattr(_local, "job", None)
    if job is None:
        raise RuntimeError("not inside a fairlane job: call this from an actor run by a fairlane worker")
    return job


def running_tenant() -> str | None:
    """The tenant of the job this thread is running, or None outside a job."""
    job: CurrentJob | None = getattr(_local, "job", None)
    return None if job is None else job.tenant


def progress(done: int, total: int | None = None, message: str | None = None) -> None:
    """Report a running job's progress (``done`` of ``total`` items), readable via ``fairlane.jobs``.

    Writes are throttled to one per 0.2 s per job, except that reaching ``total`` is always written.
    """
    if isinstance(done, bool) or not isinstance(done, int) or done < 0:
        raise ValueError(f"done must be a non-negative integer, not {done!r}")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < done):
        raise ValueError(f"total must be an integer >= done, not {total!r}")
    job = current_job()
    now = time.monotonic()
    if done != total and now - job.last_progress_write < PROGRESS_INTERVAL:
        return
    job.last_progress_write = now
    report: dict[str, Any] = {"done": done, "total": total}
    if total:
        report["percent"] = round(100.0 * done / total, 1)
    if message is not None:
        report["message"] = str(message)[:500]
    job.jobs.set_progress(job.id, report)


class JobContext(Middleware):
    """Make the running job known to its thread (for :func:`progress` and :func:`current_job`)."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        _local.job = CurrentJob(
            id=message.message_id,
            actor=message.actor_name,
            tenant=str(message.options.get("tenant", "")),
            attempt=attempt_of(message),
            jobs=self.jobs,
            rate_limit=message.options.get("rate_limit"),
            tokens=float(message.options.get("tokens") or 0.0),
        )

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        _local.job = None

    after_skip_message = after_process_message
