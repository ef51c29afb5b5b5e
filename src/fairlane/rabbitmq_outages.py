"""RabbitMQ outages as a process reports them: one line when a part loses RabbitMQ, one when it is back.

A fairlane process has up to four parts that talk to RabbitMQ, each with its own :class:`Outage`:

==============  =====================================  ==============================================
component       loses RabbitMQ when it fails to        meanwhile
==============  =====================================  ==============================================
``sender``      publish a job its send dispatched      the job waits in the ledger for a dispatcher
``dispatcher``  publish an admission round             admitted jobs stay pending in the ledger
``worker``      consume (a member per queue)           consumers reconnect; unacked jobs come again
``scheduler``   do a task's RabbitMQ work              the next run does it; jobs wait in the ledger
==============  =====================================  ==============================================

The first failure logs one WARNING, ``event=rabbitmq_unreachable component=… error=… action='…'``;
further failures and every retry log nothing, and the first success after them (every member
back, for the worker) logs one INFO, ``event=rabbitmq_reconnected component=… down_seconds=…``.
pika's own connection errors and Dramatiq's per-consumer restart lines are silenced
(:func:`silence_pika`, :func:`quiet_consumer_thread`): those two lines are all an outage leaves.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Hashable
from typing import Any

import pika.exceptions
from dramatiq.errors import ConnectionClosed

logger = logging.getLogger("fairlane.rabbitmq")

#: Errors that mean RabbitMQ (or the connection to it) is gone, not that one request was refused.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
    ConnectionClosed,
)

#: Dramatiq's consumer-thread lines about connection errors and restarts (message templates).
_CONSUMER_RESTART_LINES = (
    "Consumer encountered a connection error:",
    "Restarting consumer in ",
    "Failed to post_process_message(",
)


class Outage:
    """Whether one component of this process has lost RabbitMQ, logged once per outage."""

    def __init__(self, component: str, action: str) -> None:
        self.component = component
        #: What the component does while RabbitMQ is away (the WARNING says it).
        self.action = action
        self._lock = threading.Lock()
        self._members_down: set[Hashable] = set()
        self._since: float | None = None

    @property
    def down(self) -> bool:
        """Whether the component has lost RabbitMQ and not got it back yet."""
        return bool(self._members_down)

    def lost(self, error: BaseException, member: Hashable = None) -> None:
        """``member`` of the component (a consumed queue; None for single-member components)
        failed on a connection error; the first loss of an outage is logged."""
        with self._lock:
            first = not self._members_down
            self._members_down.add(member)
            if not first:
                return
            self._since = time.monotonic()
        logger.warning(
            "event=rabbitmq_unreachable component=%s error=%s action=%r",
            self.component,
            type(error).__name__,
            self.action,
        )

    def restored(self, member: Hashable = None) -> None:
        """``member`` talked to RabbitMQ again; once every lost member has, the return is logged."""
        if not self._members_down:  # the common case, without the lock
            return
        with self._lock:
            if member not in self._members_down:
                return
            self._members_down.discard(member)
            if self._members_down:
                return
            since, self._since = self._since, None
        logger.info(
            "event=rabbitmq_reconnected component=%s down_seconds=%.1f",
            self.component,
            time.monotonic() - (since or time.monotonic()),
        )


@dataclasses.dataclass(frozen=True)
class RabbitmqOutages:
    """The outages of one process's components (one set per broker)."""

    sender: Outage = dataclasses.field(
        default_factory=lambda: Outage(
            "sender", "sends go on: their jobs wait in the ledger and a dispatcher publishes them"
        )
    )
    dispatcher: Outage = dataclasses.field(
        default_factory=lambda: Outage(
            "dispatcher", "admitted jobs stay pending in the ledger; every round tries to publish again"
        )
    )
    worker: Outage = dataclasses.field(
        default_factory=lambda: Outage(
            "worker", "consumers reconnect every few seconds; unacked jobs are delivered again"
        )
    )
    scheduler: Outage = dataclasses.field(
        default_factory=lambda: Outage(
            "scheduler", "tasks skip their RabbitMQ work until their next run; jobs wait in the ledger"
        )
    )


class _DropConsumerRestartLines(logging.Filter):
    """Drop Dramatiq's consumer-thread lines about connection errors and restarts (fairlane's
    worker outage says it once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(_CONSUMER_RESTART_LINES))


_CONSUMER_FILTER = _DropConsumerRestartLines()


def quiet_consumer_thread(thread: Any) -> None:
    """Silence the connection-error and restart lines of a Dramatiq worker's consumer thread
    (each logs them per retry, and per message it could not ack)."""
    thread_logger = getattr(thread, "logger", None)
    if isinstance(thread_logger, logging.Logger):
        thread_logger.addFilter(_CONSUMER_FILTER)


def silence_pika() -> None:
    """Keep pika's own logs of lost connections and failed reconnects out (unless an
    application set pika's log level itself): fairlane logs each outage once per component."""
    pika_logger = logging.getLogger("pika")
    if pika_logger.level == logging.NOTSET:
        pika_logger.setLevel(logging.CRITICAL)


__all__ = [
    "CONNECTION_ERRORS",
    "Outage",
    "RabbitmqOutages",
    "quiet_consumer_thread",
    "silence_pika",
]
