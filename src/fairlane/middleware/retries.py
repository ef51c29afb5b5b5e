"""Retries: Dramatiq's retry contract, kept in the ledger; then dead-lettering.

A failed attempt with retries left puts the job back in the ledger backlog as ``retrying``,
runnable after Dramatiq's backoff: ``min_backoff * 2**retries * uniform(1, 2)``
milliseconds, or ``uniform(0.5, 1) * max_backoff`` once that exceeds ``max_backoff``; a
``Retry(delay=ms)`` raised by the actor sets the delay itself. The message is acked, so
nothing waits unacked in a worker, and a retry that is due at once is admitted at once. The
last failure marks the job ``dead`` (error type, message, traceback, attempts), rejects the
message into the queue's dead-letter queue and, with ``on_retry_exhausted``, sends that
actor ``(message.asdict(), {"retries": n, "max_retries": m})`` for the same tenant.

As in Dramatiq, a failure sets the message's ``retries``, ``traceback`` and
``requeue_timestamp`` options (callbacks such as ``on_failure`` see them), and the retried
attempt receives the message with them (the ledger stores it as the job's message).

Actor options (also per message): ``max_retries``, ``min_backoff``, ``max_backoff``
(milliseconds), ``retry_when(retries_so_far, exception) -> bool`` (takes precedence over
``max_retries``), ``throws`` (exception types that are never retried: logged at INFO, as an
expected outcome) and ``on_retry_exhausted`` (an actor name).
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections.abc import Callable
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.errors import Retry
from dramatiq.middleware import Middleware

from fairlane.errors import JobCancelled
from fairlane.ledger.jobs import JobError
from fairlane.ledger.schema import DEAD, RETRYING
from fairlane.ledger.writer import Finish, LedgerWriter
from fairlane.middleware.tracking import attempt_of
from fairlane.settings import Settings

logger = logging.getLogger("fairlane.worker")

#: Dramatiq's largest exponent and longest backoff (7 days).
_MAX_EXPONENT = 32
_MAX_BACKOFF = 7 * 86_400_000


def backoff_ms(
    retries_so_far: int, min_backoff: int, max_backoff: int, rng: random.Random | None = None
) -> int:
    """Milliseconds to wait before retry number ``retries_so_far + 1``: Dramatiq's formula.

    ``min_backoff * 2**retries_so_far`` stretched by a random factor in [1, 2); a draw above
    ``max_backoff`` becomes a random point in [max_backoff / 2, max_backoff].
    """
    draw = (rng or random).uniform
    max_backoff = min(max_backoff, _MAX_BACKOFF)
    delay = int(min_backoff * 2 ** min(retries_so_far, _MAX_EXPONENT) * draw(1.0, 2.0))
    if delay > max_backoff:
        delay = int(max_backoff * draw(0.5, 1.0))
    return delay


class Retries(Middleware):
    """Schedule a failed job's retry in the ledger, or dead-letter it."""

    def __init__(self, writer: LedgerWriter, settings: Settings) -> None:
        self.writer = writer
        self.settings = settings

    @property
    def actor_options(self) -> set[str]:
        return {"max_retries", "min_backoff", "max_backoff", "retry_when", "throws", "on_retry_exhausted"}

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
        retries = attempt_of(message) - 1
        error = JobError(
            type=type(exception).__name__,
            message=str(exception),
            traceback="".join(traceback.format_exception(exception)),
        )
        throws = option("throws", None)
        if throws and isinstance(exception, throws):
            self._dead(message, error, retries, logging.INFO, "throws")
            return
        message.options["retries"] = retries + 1
        message.options["traceback"] = "".join(traceback.format_exception(exception, limit=30))
        # This process's clock, as in Dramatiq: for callbacks to read, never compared by fairlane.
        message.options["requeue_timestamp"] = int(time.time() * 1000)
        max_retries = option("max_retries", self.settings.max_retries)
        retry_when = option("retry_when", None)
        if retry_when is not None:
            exhausted = not retry_when(retries, exception)
        else:
            exhausted = max_retries is not None and retries >= max_retries
        if exhausted:
            self._dead(message, error, retries, logging.WARNING, "retries exhausted")
            target = option("on_retry_exhausted", None)
            if target:
                self._send_exhausted(broker, str(target), message, retries, max_retries)
            return
        if isinstance(exception, Retry) and exception.delay is not None:
            delay = int(exception.delay)
        else:
            delay = backoff_ms(
                retries,
                option("min_backoff", self.settings.min_backoff),
                option("max_backoff", self.settings.max_backoff),
            )
        queue = broker.actor_queue_of(message.queue_name)  # type: ignore[attr-defined]
        stored = self._next_attempt_message(message)
        # The backoff counts on the ledger's clock, from the flush that records the failure.
        self.writer.finish(
            Finish(message.message_id, RETRYING, error=error, delay=delay / 1000, queue=queue, message=stored)
        )
        logger.info(
            "event=job_retrying job=%s actor=%s attempt=%d delay_ms=%d error_type=%s",
            message.message_id,
            message.actor_name,
            retries + 1,
            delay,
            error.type,
        )

    def _next_attempt_message(self, message: MessageProxy) -> str | None:
        """The message the next attempt receives: this one with its retry options, as in
        Dramatiq (None, keeping the stored one, if the options made it too large)."""
        encoded = message.encode()
        if len(encoded) > self.settings.max_payload_bytes:
            return None
        return encoded.decode()

    def _send_exhausted(
        self, broker: Broker, target: str, message: MessageProxy, retries: int, max_retries: Any
    ) -> None:
        """Tell ``target`` that ``message`` ran out of retries (as the message's tenant)."""
        try:
            broker.get_actor(target).send_with_options(
                args=(message.asdict(), {"retries": retries, "max_retries": max_retries}),
                tenant=message.options.get("tenant"),
            )
        except Exception:  # the job is dead either way; the failed hand-off is logged
            logger.exception("event=retry_exhausted_send_failed job=%s target=%s", message.message_id, target)

    def _dead(self, message: MessageProxy, error: JobError, retries: int, level: int, reason: str) -> None:
        self.writer.finish(Finish(message.message_id, DEAD, error=error))
        message.fail()
        logger.log(
            level,
            "event=job_dead job=%s actor=%s attempts=%d error_type=%s reason=%r",
            message.message_id,
            message.actor_name,
            retries + 1,
            error.type,
            reason,
        )


def _options_of(actor_options: dict[str, Any], message_options: dict[str, Any]) -> Callable[[str, Any], Any]:
    def option(name: str, default: Any) -> Any:
        if name in message_options:
            return message_options[name]
        return actor_options.get(name, default)

    return option
