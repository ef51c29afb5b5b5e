"""One socket write for every AMQP frame a connection has queued, not one per frame.

pika queues each frame it marshals as its own buffer and sends the buffers one ``send()`` at a
time: a persistent message is three frames (method, header, body), so an admission round of 16
jobs made 48 system calls where one does, and the consumer thread's batch of acks one per ack.
:func:`coalesce_writes` makes a connection join whatever is queued into one buffer before it
sends. The bytes on the wire and their order are the same; a partial send leaves the rest
queued, as before. Beyond :data:`JOIN_LIMIT` queued bytes nothing is joined: such buffers are
worth a ``send()`` each, and a large remainder is not copied again at every partial send.

Measured (``tx_select`` channel, 16 persistent messages per commit, one process alternating
plain and coalesced connections, 4 x 9,600 messages): the publisher's CPU per message fell from
42-50 µs to 27-35 µs, RabbitMQ's from 74-81 µs to 71-77 µs.

It reaches into pika's transport (``connection._impl._transport``: ``_tx_buffers``,
``_tx_buffered_byte_count`` and ``_produce``, pika 1.3 and 1.4); a pika without them is left as
it is.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("fairlane.broker")

#: Set on a transport whose writes are coalesced (so it is wrapped once).
_COALESCED = "_fairlane_coalesced"
#: Queued bytes up to which frames are joined into one write.
JOIN_LIMIT = 1 << 20


def coalesce_writes(connection: Any) -> bool:
    """Make a pika ``BlockingConnection`` send its queued frames in one write; whether it could."""
    transport: Any = getattr(getattr(connection, "_impl", None), "_transport", None)
    buffers = getattr(transport, "_tx_buffers", None)
    produce = getattr(transport, "_produce", None)
    if buffers is None or not callable(produce) or not hasattr(transport, "_tx_buffered_byte_count"):
        logger.debug("event=write_coalescing_unavailable reason='pika transport not as expected'")
        return False
    if getattr(transport, _COALESCED, False):
        return True

    def produce_joined() -> None:
        if len(buffers) > 1 and transport._tx_buffered_byte_count <= JOIN_LIMIT:
            joined = b"".join(buffers)
            buffers.clear()
            buffers.append(joined)
        produce()

    transport._produce = produce_joined
    setattr(transport, _COALESCED, True)
    return True


__all__ = ["coalesce_writes"]
