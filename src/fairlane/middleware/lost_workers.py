"""Lost workers: a redelivered job whose worker died under it on its last attempt is not run again.

RabbitMQ redelivers the unacked messages of a worker whose connection closed. If the ledger
still says the job is ``running`` (under that worker), the worker died while running it, and
that attempt counts as failed (see :mod:`fairlane.ledger.lost_workers`). With retries left
the job simply runs again (its start counts the new attempt); without, it is marked ``dead``
with ``WorkerLost`` and its message is dead-lettered instead of taking down another worker.

Only redelivered messages are looked at (one extra read each): a first delivery costs nothing.
A worker whose RabbitMQ connection broke while it lives on cannot be told apart here from a
dead one: as before, its job may run again beside it (at-least-once), and on its last attempt
the job is marked dead, so the live worker's finish no longer applies.
It must run before :class:`~fairlane.middleware.tracking.Tracking`, whose start would
restart the job.
"""

from __future__ import annotations

import logging
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import Middleware, SkipMessage

from fairlane.ledger.lost_workers import LostAttempts, WorkerLost, retries_left
from fairlane.settings import Settings

logger = logging.getLogger("fairlane.worker")


class LostWorkers(Middleware):
    """End a redelivered job whose last allowed attempt died with its worker."""

    def __init__(self, attempts: LostAttempts, settings: Settings) -> None:
        self.attempts = attempts
        self.settings = settings

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        if not getattr(message, "redelivered", False):
            return
        lost = self.attempts.running(message.message_id)
        if lost is None:
            return
        try:
            actor_options = broker.get_actor(message.actor_name).options
        except ActorNotFound:  # Dramatiq and Tracking deal with it
            return

        def option(name: str, default: Any) -> Any:
            return message.options.get(name, actor_options.get(name, default))

        retry_when = option("retry_when", None)
        if retry_when is not None:
            again = bool(retry_when(lost.attempts - 1, WorkerLost(f"worker {lost.worker_id} died")))
        else:
            again = retries_left(lost.attempts, option("max_retries", self.settings.max_retries))
        if again or not self.attempts.end(lost):
            return
        logger.warning(
            "event=job_dead job=%s actor=%s attempts=%d error_type=WorkerLost worker=%s "
            "reason='its worker died during its last attempt'",
            message.message_id,
            message.actor_name,
            lost.attempts,
            lost.worker_id,
        )
        message.fail()  # Dramatiq rejects the message into the dead-letter queue
        raise SkipMessage("its worker died during its last attempt")
