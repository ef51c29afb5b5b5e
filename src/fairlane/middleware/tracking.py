"""Tracking: moves each received job to ``running`` (counting the attempt) or skips it.

A job cancelled before it started, or already finished (a duplicate delivery), is acked
without running. A message with no ledger row, or for an actor this worker doesn't know,
is dead-lettered with the reason. Starts go through the process's ledger writer, which
flushes them in batches and then asks the dispatcher to refill the slots they freed.
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
from fairlane.ledger.writer import LedgerWriter

logger = logging.getLogger("fairlane.worker")

#: Keys of a message's in-memory options: the attempt number, and when the job became
#: runnable (epoch seconds; start minus this is the job's queue wait).
ATTEMPT_OPTION = "attempt"
RUNNABLE_SINCE_OPTION = "runnable_since"


def default_worker_id() -> str:
    """``host:pid`` of this process, as recorded on the jobs it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Tracking(Middleware):
    """Record job starts in the ledger and refuse messages that must not run."""

    def __init__(self, jobs: JobStore, writer: LedgerWriter) -> None:
        self.jobs = jobs
        self.writer = writer

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        start = self.writer.start(
            message.message_id,
            broker.actor_queue_of(message.queue_name),  # type: ignore[attr-defined]
            redelivered=bool(getattr(message, "redelivered", False)),
        )
        if start.decision is StartDecision.UNKNOWN:
            reason = f"no ledger row for job {message.message_id}"
            logger.error("event=message_dead_lettered job=%s reason=%r", message.message_id, reason)
            broker.dead_letter_raw(message.queue_name, message.encode(), reason)  # type: ignore[attr-defined]
            raise SkipMessage(reason)
        if start.decision is StartDecision.SKIP:
            logger.info(
                "event=job_skipped job=%s reason='cancelled, finished or running'", message.message_id
            )
            raise SkipMessage("cancelled, finished or already running")
        message.options[ATTEMPT_OPTION] = start.attempt
        if start.runnable_since is not None:
            message.options[RUNNABLE_SINCE_OPTION] = start.runnable_since.timestamp()

    def before_nack(self, broker: Broker, message: MessageProxy) -> None:
        error: Any = getattr(message, "_exception", None)
        if isinstance(error, ActorNotFound):
            reason = f"actor {message.actor_name!r} is not declared in this worker"
            self.jobs.kill(message.message_id, JobError("ActorNotFound", reason))
            logger.error("event=message_dead_lettered job=%s reason=%r", message.message_id, reason)
