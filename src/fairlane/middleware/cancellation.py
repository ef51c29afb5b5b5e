"""Cancellation: interrupt running jobs whose cancel was requested.

A watcher thread checks the ledger every ``cancel_poll_interval`` seconds for cancel
requests among the jobs this process runs, and raises :class:`~fairlane.errors.JobCancelled`
in the thread running each. The job then ends ``cancelled``; it is not retried.
(A job that has not started yet is cancelled in the ledger directly and never runs; if a
worker took its message within the few milliseconds before it heard of the cancel, the
ledger refuses the job's start and the job is interrupted the same way.)
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware
from dramatiq.middleware.threading import raise_thread_exception

from fairlane.errors import JobCancelled
from fairlane.ledger.jobs import JobStore
from fairlane.ledger.schema import CANCELLED
from fairlane.ledger.writer import Finish, LedgerWriter
from fairlane.logs import add_filter_once

logger = logging.getLogger("fairlane.worker")


class _DropCancelErrors(logging.Filter):
    """Drop Dramatiq's worker-thread ERROR ``Failed to process message … with unhandled
    exception.`` (and its traceback) for a job this middleware interrupted: the job did not
    fail, and ``event=job_cancelled`` says what happened to it."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, JobCancelled) and record.msg.startswith("Failed to process message"))


class Cancellation(Middleware):
    """Watch this process's running jobs for cancel requests and interrupt them.

    Last in the middleware list, so that a job counts as interruptible only while its actor
    runs: an exception raised in a thread elsewhere (in a logging call, say) could leave a lock
    held for good.
    """

    def __init__(self, jobs: JobStore, writer: LedgerWriter, poll_interval: float) -> None:
        self.jobs = jobs
        self.writer = writer
        self.poll_interval = poll_interval
        self._running: dict[int, str] = {}
        #: Running jobs whose start the ledger refused, to interrupt at the next check.
        self._refused: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:
        add_filter_once("dramatiq.worker.WorkerThread", _DropCancelErrors)

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="fairlane-cancellation", daemon=True)
        self._watcher.start()

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self._stop.set()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        with self._lock:
            self._running[threading.get_ident()] = message.message_id

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        with self._lock:
            self._running.pop(threading.get_ident(), None)
        if isinstance(exception, JobCancelled):
            self.writer.finish(Finish(message.message_id, CANCELLED))
            logger.info("event=job_cancelled job=%s actor=%s", message.message_id, message.actor_name)

    after_skip_message = after_process_message

    def interrupt_cancelled(self) -> int:
        """Interrupt every running job of this process whose cancel was requested, or whose
        start the ledger refused (see :meth:`interrupt`); returns how many."""
        with self._lock:
            running = dict(self._running)
            refused, self._refused = self._refused, set()
        if not running:
            return 0
        requested = refused | self.jobs.cancel_requested_among(set(running.values()) - refused)
        with self._lock:
            targets = [thread for thread, job_id in self._running.items() if job_id in requested]
            for thread_id in targets:
                # Forget the job so it is interrupted once, however long it takes to unwind.
                del self._running[thread_id]
                raise_thread_exception(thread_id, JobCancelled)
        return len(targets)

    def interrupt(self, job_id: str) -> None:
        """Interrupt ``job_id`` at the watcher's next check, if a thread of this process still runs it.

        For a job that started before its start was recorded and whose start the ledger then
        refused (cancelled meanwhile, or started elsewhere): its outcome leaves no trace in the
        ledger either way. Not at once: a job that ends before the next check (most do) is never
        interrupted, since every exception raised in another thread risks landing somewhere
        unfortunate (a lock held for good).
        """
        with self._lock:
            if job_id in self._running.values():
                self._refused.add(job_id)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.interrupt_cancelled()
            except Exception:
                logger.exception("event=cancellation_check_failed")
