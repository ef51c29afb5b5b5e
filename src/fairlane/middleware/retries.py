"""Retries: exponential backoff with jitter in the ledger, then dead-lettering.

A failed attempt with retries left puts the job back in the ledger backlog as
``retrying``, runnable after ``uniform(0.5, 1) * min(max_backoff, min_backoff * 2**retries)``
milliseconds; the message is acked, so nothing waits unacked in a worker. The last
failure marks the job ``dead`` (error type, message, traceback, attempts) and rejects the
message into the queue's dead-letter queue.

Actor options: ``max_retries``, ``min_backoff``, ``max_backoff`` (milliseconds),
``retry_when(retries_so_far, exception) -> bool`` and ``throws`` (exception types that
are never retried).
"""

from __future__ import annotations

import logging
import random
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware

from fairlane.errors import JobCancelled
from fairlane.ledger.database import utcnow
from fairlane.ledger.jobs import JobError
from fairlane.ledger.schema import DEAD, RETRYING
from fairlane.ledger.writer import Finish, LedgerWriter
from fairlane.middleware.tracking import ATTEMPT_OPTION
from fairlane.settings import Settings

logger = logging.getLogger("fairlane.worker")


def backoff_ms(
    retries_so_far: int, min_backoff: int, max_backoff: int, rng: random.Random | None = None
) -> int:
    """Milliseconds to wait before retry number ``retries_so_far + 1`` (equal jitter)."""
    ceiling = min(max_backoff, min_backoff * 2 ** min(retries_so_far, 62))
    return int(ceiling * (rng or random).uniform(0.5, 1.0))


class Retries(Middleware):
    """Schedule a failed job's retry in the ledger, or dead-letter it."""

    def __init__(self, writer: LedgerWriter, settings: Settings) -> None:
        self.writer = writer
        self.settings = settings

    @property
    def actor_options(self) -> set[str]:
        return {"max_retries", "min_backoff", "max_backoff", "retry_when", "throws"}

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or isinstance(exception, JobCancelled) or message.failed:
            return
        actor = broker.get_actor(message.actor_name)
        option = _options_of(actor.options, message.options)
        retries_so_far = int(message.options.get(ATTEMPT_OPTION, 1)) - 1
        error = JobError(
            type=type(exception).__name__,
            message=str(exception),
            traceback="".join(traceback.format_exception(exception)),
        )
        if self._should_retry(option, retries_so_far, exception):
            delay = backoff_ms(
                retries_so_far,
                option("min_backoff", self.settings.min_backoff),
                option("max_backoff", self.settings.max_backoff),
            )
            run_at = utcnow() + timedelta(milliseconds=delay)
            self.writer.finish(Finish(message.message_id, RETRYING, error=error, run_at=run_at))
            logger.info(
                "event=job_retrying job=%s actor=%s attempt=%d delay_ms=%d error_type=%s",
                message.message_id,
                message.actor_name,
                retries_so_far + 1,
                delay,
                error.type,
            )
            return
        self.writer.finish(Finish(message.message_id, DEAD, error=error))
        message.fail()
        logger.warning(
            "event=job_dead job=%s actor=%s attempts=%d error_type=%s",
            message.message_id,
            message.actor_name,
            retries_so_far + 1,
            error.type,
        )

    def _should_retry(
        self, option: Callable[[str, Any], Any], retries_so_far: int, exception: BaseException
    ) -> bool:
        throws = option("throws", None)
        if throws and isinstance(exception, throws):
            return False
        retry_when = option("retry_when", None)
        if retry_when is not None:
            return bool(retry_when(retries_so_far, exception))
        return retries_so_far < option("max_retries", self.settings.max_retries)


def _options_of(actor_options: dict[str, Any], message_options: dict[str, Any]) -> Callable[[str, Any], Any]:
    def option(name: str, default: Any) -> Any:
        if name in message_options:
            return message_options[name]
        return actor_options.get(name, default)

    return option
