"""Publishing connections that do not go stale while idle.

Dramatiq keeps one RabbitMQ connection per thread for publishing (``broker.connection``), with
a channel on it (``broker.channel``). A pika ``BlockingConnection`` exchanges heartbeats only
while it is used, so RabbitMQ closes one left idle past the heartbeat timeout; the next
publish on it then fails, and pika logs the lost stream as errors before Dramatiq reconnects.

Here a thread's connection idle for half the negotiated heartbeat timeout or more (so RabbitMQ
may have dropped it; pika itself sends heartbeats that often) is replaced before it is used:
the old one is let go without any I/O (closing a dropped connection is what logs errors; its
socket closes when it is collected, and RabbitMQ's side ends with the missed heartbeats), and
one INFO line says so. A connection in use keeps its heartbeats and is never replaced.

For the same reason :meth:`FreshConnectionBroker.close` (a worker's or a sender's shutdown) lets
go, without closing them, of the connections idle that long and of those already closed: a
worker's connection used only while it booted has been dropped by RabbitMQ long before the
worker stops, and closing it logged pika's errors (``Connection reset by peer``) at every stop.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from dramatiq.brokers.rabbitmq import RabbitmqBroker

from fairlane.amqp_writes import coalesce_writes

logger = logging.getLogger("fairlane.broker")

#: RabbitMQ's default heartbeat timeout (seconds), when the connection does not say.
_SERVER_DEFAULT_HEARTBEAT = 60


class FreshConnectionBroker(RabbitmqBroker):
    """A Dramatiq RabbitMQ broker whose idle per-thread connections are replaced before use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: When each publishing connection was last handed out (monotonic seconds).
        self._used_at: dict[Any, float] = {}
        super().__init__(*args, **kwargs)

    @property
    def connection(self) -> Any:
        """This thread's publishing connection (a new one if the last sat idle too long)."""
        current = getattr(self.state, "connection", None)
        if current is not None and self._idle_too_long(current):
            self._let_go(current)
        connection = super().connection
        if connection not in self._used_at:  # new on this thread
            coalesce_writes(connection)
        self._used_at[connection] = time.monotonic()
        return connection

    @connection.deleter
    def connection(self) -> None:
        self._used_at.pop(getattr(self.state, "connection", None), None)
        RabbitmqBroker.connection.fdel(self)  # type: ignore[attr-defined]

    @property
    def channel(self) -> Any:
        """This thread's channel, on a connection that is not stale."""
        current = getattr(self.state, "connection", None)
        if current is not None and self._idle_too_long(current):
            self._let_go(current)
        channel = super().channel
        self._used_at[self.state.connection] = time.monotonic()
        return channel

    @channel.deleter
    def channel(self) -> None:
        RabbitmqBroker.channel.fdel(self)  # type: ignore[attr-defined]

    def close(self) -> None:
        """Close the publishing connections, letting go of those RabbitMQ may have dropped for
        missed heartbeats and of those already closed (closing either only logs pika's errors)."""
        for connection in list(self.connections):
            if connection.is_closed or self._idle_too_long(connection):
                self._forget(connection)
        super().close()

    def _idle_too_long(self, connection: Any) -> bool:
        heartbeat = _negotiated_heartbeat(connection, self.parameters)
        if not heartbeat:  # heartbeats off: RabbitMQ never drops an idle connection
            return False
        used_at = self._used_at.get(connection)
        return used_at is not None and time.monotonic() - used_at >= heartbeat / 2

    def _let_go(self, connection: Any) -> None:
        """Forget this thread's connection and channel without touching their socket."""
        idle = time.monotonic() - self._used_at[connection]
        if getattr(self.state, "channel", None) is not None:
            del self.state.channel
        del self.state.connection
        self._forget(connection)
        logger.info(
            "event=publisher_connection_replaced idle_seconds=%.1f heartbeat_seconds=%s",
            idle,
            _negotiated_heartbeat(connection, self.parameters),
        )

    def _forget(self, connection: Any) -> None:
        """Drop ``connection`` and its channels from those :meth:`close` closes, without any I/O."""
        # list() copies the set in one step: other threads may add channels meanwhile.
        self.channels.difference_update(
            [channel for channel in list(self.channels) if channel.connection is connection]
        )
        self.connections.discard(connection)
        self._used_at.pop(connection, None)


def _negotiated_heartbeat(connection: Any, parameters: Any) -> float:
    """The heartbeat timeout (seconds) the connection agreed with RabbitMQ (0: none)."""
    # pika keeps the negotiated value on its connection's parameters (no public accessor).
    agreed = getattr(getattr(getattr(connection, "_impl", None), "params", None), "heartbeat", None)
    if isinstance(agreed, int | float):
        return float(agreed)
    requested = getattr(parameters, "heartbeat", None)
    return float(requested) if isinstance(requested, int | float) else float(_SERVER_DEFAULT_HEARTBEAT)


__all__ = ["FreshConnectionBroker"]
