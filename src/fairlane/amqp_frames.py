"""AMQP frames fairlane marshals itself: many persistent publishes, and many acks, in one buffer.

pika sends a method by building objects (a ``Basic.Publish`` or ``Basic.Ack``, a properties
object, one frame object per part) and marshalling them piece by piece, with a check and a
``struct`` call per field: about 30 µs of the dispatcher's 47 µs of CPU per message, measured on
an admission round of 21 jobs, and some 10 µs per ack on the consumer thread. fairlane's bulk
traffic has two fixed shapes:

* the job messages an admission round publishes: to the default exchange, persistent, maybe a
  broker priority, maybe integer headers (the start hint, :mod:`fairlane.message_headers`);
* the acks a consumer thread sends for its worker threads' finished jobs.

:func:`marshal_publish` and :func:`marshal_ack` write exactly the bytes pika would write (the tests
compare the two), and :func:`publish_persistent` and :func:`ack_all` hand a whole batch to the
connection as one buffer, where pika queues it like any frames it marshalled itself (and
:mod:`fairlane.amqp_writes` sends it in one write).

This reaches into pika's channel and connection (``channel.connection``, ``_body_max_length``,
``_output_marshaled_frames``, ``frames_sent``: pika 1.3 and 1.4); on a pika without them each
message and ack goes through ``basic_publish`` and ``basic_ack`` as before.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

import pika

#: One message to publish: routing key (a queue name), body, broker priority, headers.
Outgoing = tuple[str, bytes, int | None, Mapping[str, int] | None]

_FRAME_METHOD, _FRAME_HEADER, _FRAME_BODY, _FRAME_END = 1, 2, 3, b"\xce"
_BASIC_CLASS, _BASIC_PUBLISH, _BASIC_ACK = 60, 40, 80
#: A ``Basic.Ack`` method frame, all of it but the end octet (its payload is always 13 bytes).
_ACK_METHOD = struct.Struct(">BHIHHQB")
#: ``Basic.Publish``, ticket 0, exchange "" (the default exchange).
_PUBLISH_HEAD = struct.pack(">HHHB", _BASIC_CLASS, _BASIC_PUBLISH, 0, 0)
#: ``Basic.Publish``'s flags octet: not mandatory, not immediate.
_NO_FLAGS = b"\x00"
_FLAG_HEADERS, _FLAG_DELIVERY_MODE, _FLAG_PRIORITY = 1 << 13, 1 << 12, 1 << 11
_PERSISTENT = b"\x02"
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + _FRAME_END


def _short_string(value: str) -> bytes:
    encoded = value.encode()
    if len(encoded) > 255:
        raise ValueError(f"an AMQP short string has at most 255 bytes, not {len(encoded)}: {value[:40]!r}…")
    return bytes((len(encoded),)) + encoded


def _int_table(headers: Mapping[str, int]) -> bytes:
    """An AMQP field table of integers, as pika encodes one (32-bit ``I`` when it fits, else ``l``)."""
    fields = []
    for key, value in headers.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"header {key!r}: only integer header values are marshalled here, not {value!r}")
        fields.append(_short_string(key))
        if _INT32_MIN <= value <= _INT32_MAX:
            fields.append(struct.pack(">ci", b"I", value))
        elif _INT64_MIN <= value <= _INT64_MAX:
            fields.append(struct.pack(">cq", b"l", value))
        else:
            raise ValueError(f"header {key!r}: {value} does not fit an AMQP 64-bit integer")
    table = b"".join(fields)
    return struct.pack(">I", len(table)) + table


def marshal_publish(
    channel: int,
    routing_key: str,
    body: bytes,
    priority: int | None,
    headers: Mapping[str, int] | None,
    body_max: int,
) -> tuple[bytes, int]:
    """The frames of one persistent message to the default exchange, and how many there are.

    ``body_max`` is the most body bytes a frame carries (the connection's frame size less 8).
    """
    method = _PUBLISH_HEAD + _short_string(routing_key) + _NO_FLAGS
    flags = _FLAG_DELIVERY_MODE
    properties = [_PERSISTENT]
    if headers is not None:
        flags |= _FLAG_HEADERS
        properties.insert(0, _int_table(headers))
    if priority is not None:
        flags |= _FLAG_PRIORITY
        properties.append(struct.pack("B", priority))
    header = struct.pack(">HxxQH", _BASIC_CLASS, len(body), flags) + b"".join(properties)
    frames = [_frame(_FRAME_METHOD, channel, method), _frame(_FRAME_HEADER, channel, header)]
    for start in range(0, len(body), body_max):
        frames.append(_frame(_FRAME_BODY, channel, body[start : start + body_max]))
    return b"".join(frames), len(frames)


def marshal_ack(channel: int, delivery_tag: int) -> bytes:
    """The frame of a ``Basic.Ack`` of one delivery (not ``multiple``)."""
    return (
        _ACK_METHOD.pack(_FRAME_METHOD, channel, 13, _BASIC_CLASS, _BASIC_ACK, delivery_tag, 0) + _FRAME_END
    )


def _body_max(connection: Any) -> int | None:
    """The most body bytes a frame of ``connection`` carries, if it has what marshalling
    needs (pika's internals, as of pika 1.3 and 1.4); None if not."""
    body_max = getattr(connection, "_body_max_length", None)
    if not isinstance(body_max, int) or body_max <= 0 or not hasattr(connection, "frames_sent"):
        return None
    return body_max if callable(getattr(connection, "_output_marshaled_frames", None)) else None


def publish_persistent(channel: Any, messages: Sequence[Outgoing]) -> None:
    """Publish ``messages`` persistently to the default exchange on ``channel``, a pika
    ``pika.channel.Channel`` (a blocking channel's ``_impl``). Like ``basic_publish``, this only
    queues the frames: they leave with the channel's next blocking call (e.g. its ``tx_commit``).

    Raises :class:`pika.exceptions.ChannelWrongStateError` (or another pika error) when the
    channel is not open, as ``basic_publish`` does; a message that can't be marshalled (a routing
    key over 255 bytes) raises before any of them is queued.
    """
    connection: Any = getattr(channel, "connection", None)
    body_max = _body_max(connection)
    if body_max is None:
        for routing_key, body, priority, headers in messages:
            table = None if headers is None else dict(headers)
            properties = pika.BasicProperties(delivery_mode=2, priority=priority, headers=table)
            channel.basic_publish(exchange="", routing_key=routing_key, body=body, properties=properties)
        return
    channel._raise_if_not_open()
    number = channel.channel_number
    buffers, count = [], 0
    for routing_key, body, priority, headers in messages:
        frames, frame_count = marshal_publish(number, routing_key, body, priority, headers, body_max)
        buffers.append(frames)
        count += frame_count
    if not buffers:
        return
    connection._output_marshaled_frames([b"".join(buffers)])
    connection.frames_sent += count - 1  # pika counted the joined buffer as one frame


def ack_all(channel: Any, delivery_tags: Sequence[int]) -> None:
    """Ack each of ``delivery_tags`` (one by one, not ``multiple``) on ``channel``, a pika
    ``pika.channel.Channel``; like ``basic_ack``, this only queues the frames. Raises as
    ``basic_ack`` does when the channel is not open."""
    connection: Any = getattr(channel, "connection", None)
    if _body_max(connection) is None:
        for tag in delivery_tags:
            channel.basic_ack(tag)
        return
    channel._raise_if_not_open()
    if not delivery_tags:
        return
    number = channel.channel_number
    connection._output_marshaled_frames([b"".join([marshal_ack(number, tag) for tag in delivery_tags])])
    connection.frames_sent += len(delivery_tags) - 1  # pika counted the joined buffer as one frame


__all__ = ["Outgoing", "ack_all", "marshal_ack", "marshal_publish", "publish_persistent"]
