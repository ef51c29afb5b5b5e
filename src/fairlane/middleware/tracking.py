"""Tracking: moves each received job to ``running`` (counting the attempt) or skips it.

A job cancelled before it started, or already finished (a duplicate delivery), is acked
without running. A message with no ledger row, or for an actor this worker doesn't know,
is dead-lettered with the reason. Starts go through the process's ledger writer, which
flushes them in batches and then asks the dispatcher to refill the slots they freed.

**Two ways to start.** A message that says which attempt it is (its
:mod:`~fairlane.message_headers` start hint), that RabbitMQ did not redeliver, whose job
this process has not heard cancelled, while the process hears every cancel (a PostgreSQL
ledger, see :mod:`fairlane.notifications`), runs at once: its start is recorded by the
writer's next flush, or with its finish in one write. Should the ledger refuse that start
(a cancel this process had not heard yet, or a copy already running elsewhere), its outcome
is dropped, and the job is interrupted if it still runs at the cancellation watcher's next
check. Any other message waits for its start to be flushed, and runs only if the ledger says
it may: redelivered messages (whose job may be running or finished already), messages without
a hint, and every message on SQLite.

A job skipped here is logged once, with its reason, at INFO: Dramatiq's own WARNING ``Message …
was skipped.`` for it is dropped (after a RabbitMQ outage, every redelivered finished job is one).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import Middleware, SkipMessage

from fairlane.ledger.jobs import JobError, JobStore, StartDecision
from fairlane.ledger.schema import CANCELLED, DEAD
from fairlane.ledger.writer import Finish, LedgerWriter
from fairlane.logs import add_filter_once
from fairlane.message_headers import start_hint_of
from fairlane.notifications import CancelledJobs

logger = logging.getLogger("fairlane.worker")

#: Attributes of a received message (its proxy, never its options, which stay as sent):
#: the attempt number, and when the job became runnable (epoch seconds).
_ATTEMPT = "_fairlane_attempt"
_RUNNABLE_SINCE = "_fairlane_runnable_since"


def attempt_of(message: MessageProxy) -> int:
    """Which attempt of its job ``message`` is (1 for the first run), as its start recorded."""
    return int(getattr(message, _ATTEMPT, 1))


def runnable_since_of(message: MessageProxy) -> float | None:
    """When ``message``'s job became runnable (epoch seconds), if its start recorded it."""
    return getattr(message, _RUNNABLE_SINCE, None)


_FAILED_SKIP = "a middleware failed and skipped it before it ran (e.g. AgeLimit: older than max_age)"


#: The attribute of a received message (its proxy) saying that Tracking logged why it skipped it.
_SKIP_LOGGED = "_fairlane_skip_logged"


class _DropLoggedSkips(logging.Filter):
    """Drop Dramatiq's worker-thread WARNING ``Message … was skipped.`` for a job whose skip this
    middleware logged with its reason at INFO (after an outage, every redelivered finished job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        skipped = record.args[0] if isinstance(record.args, tuple) and record.args else None
        return not (record.msg == "Message %s was skipped." and getattr(skipped, _SKIP_LOGGED, False))


def _skip(message: MessageProxy, reason: str) -> SkipMessage:
    """The SkipMessage for a job this middleware skips, its reason logged (by the caller)."""
    setattr(message, _SKIP_LOGGED, True)
    return SkipMessage(reason)


def default_worker_id() -> str:
    """``host:pid`` of this process, as recorded on the jobs it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Tracking(Middleware):
    """Record job starts in the ledger and refuse messages that must not run."""

    def __init__(self, jobs: JobStore, writer: LedgerWriter, cancelled: CancelledJobs) -> None:
        self.jobs = jobs
        self.writer = writer
        self.cancelled = cancelled

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:
        add_filter_once("dramatiq.worker.WorkerThread", _DropLoggedSkips)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        queue = broker.actor_queue_of(message.queue_name)  # type: ignore[attr-defined]
        redelivered = bool(getattr(message, "redelivered", False))
        if message.message_id in self.cancelled:
            logger.info("event=job_skipped job=%s reason='cancelled before it started'", message.message_id)
            raise _skip(message, "cancelled before it started")
        hint = start_hint_of(message)
        if hint is not None and not redelivered and self.cancelled.complete:
            self.writer.started(message.message_id, queue)
            setattr(message, _ATTEMPT, hint.attempt)
            setattr(message, _RUNNABLE_SINCE, hint.runnable_since)
            return
        start = self.writer.start(message.message_id, queue, redelivered=redelivered)
        if start.decision is StartDecision.UNKNOWN:
            reason = f"no ledger row for job {message.message_id}"
            logger.error("event=message_dead_lettered job=%s reason=%r", message.message_id, reason)
            broker.dead_letter_raw(message.queue_name, message.encode(), reason)  # type: ignore[attr-defined]
            raise _skip(message, reason)
        if start.decision is StartDecision.SKIP:
            logger.info(
                "event=job_skipped job=%s reason='cancelled, finished or running'", message.message_id
            )
            raise _skip(message, "cancelled, finished or already running")
        setattr(message, _ATTEMPT, start.attempt)
        if start.runnable_since is not None:
            setattr(message, _RUNNABLE_SINCE, start.runnable_since.timestamp())

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """A middleware skipped a job: give it a final state.

        Failed first (as ``AgeLimit``, before this middleware, does for a message older than
        ``max_age``), it is dead; skipped after its start without failing, it is cancelled:
        Dramatiq acks a skipped message, so it never runs. A job skipped unfailed before its
        start (a paused rate limit deferred it) or by this middleware itself is left alone.
        """
        started = getattr(message, _ATTEMPT, None) is not None
        if message.failed:
            error = JobError("SkipMessage", _FAILED_SKIP)
            if started:
                self.writer.finish(Finish(message.message_id, DEAD, error=error))
            else:
                self.jobs.kill(message.message_id, error)
        elif started:
            self.writer.finish(Finish(message.message_id, CANCELLED))
        else:
            return
        logger.info(
            "event=job_skipped job=%s reason='skipped by a middleware' failed=%s",
            message.message_id,
            message.failed,
        )

    def before_nack(self, broker: Broker, message: MessageProxy) -> None:
        error: Any = getattr(message, "_exception", None)
        if isinstance(error, ActorNotFound):
            reason = f"actor {message.actor_name!r} is not declared in this worker"
            self.jobs.kill(message.message_id, JobError("ActorNotFound", reason))
            logger.error("event=message_dead_lettered job=%s reason=%r", message.message_id, reason)
