"""The publish frames fairlane marshals itself are, byte for byte, what pika writes for the same
message; what can't be marshalled is refused before anything is queued."""

from __future__ import annotations

import pika
import pytest
from pika import frame, spec

from fairlane.amqp_frames import marshal_ack, marshal_publish
from fairlane.message_headers import ATTEMPT_HEADER, RUNNABLE_SINCE_HEADER

BODY_MAX = 131_064  # RabbitMQ's default frame_max (131,072) less the frame's 8 bytes


def _pika_frames(channel: int, routing_key: str, body: bytes, properties: pika.BasicProperties) -> bytes:
    """What pika's connection marshals for ``basic_publish`` (see ``Connection._send_message``)."""
    frames = [
        frame.Method(channel, spec.Basic.Publish(exchange="", routing_key=routing_key)).marshal(),
        frame.Header(channel, len(body), properties).marshal(),
    ]
    frames += [
        frame.Body(channel, body[at : at + BODY_MAX]).marshal() for at in range(0, len(body), BODY_MAX)
    ]
    return b"".join(frames)


HINT = {ATTEMPT_HEADER: 3, RUNNABLE_SINCE_HEADER: 1_764_700_000_123}


@pytest.mark.parametrize(
    ("body", "priority", "headers"),
    [
        (b'{"args":[1]}', None, None),  # a plain persistent message
        (b'{"args":[1]}', None, HINT),  # with a start hint: a 32-bit and a 64-bit integer
        (b'{"args":[1]}', 7, HINT),  # and a broker priority
        (b'{"args":[1]}', 0, None),
        (b"", None, HINT),  # no body: no body frame
        (b"x" * (BODY_MAX * 2 + 5), 255, HINT),  # a body split over three frames
        (b"y" * BODY_MAX, None, None),  # exactly one full frame
        (
            b"z",
            None,
            {"a": -(2**31), "b": 2**31 - 1, "c": 2**31, "d": -(2**63)},
        ),  # each integer width's edges
        (b"z", None, {}),  # an empty table
    ],
)
def test_a_message_is_marshalled_as_pika_marshals_it(
    body: bytes, priority: int | None, headers: dict[str, int] | None
) -> None:
    properties = pika.BasicProperties(delivery_mode=2, priority=priority, headers=headers)
    for channel, routing_key in ((1, "orders.normal"), (65_535, "é" * 100)):
        marshalled, count = marshal_publish(channel, routing_key, body, priority, headers, BODY_MAX)
        assert marshalled == _pika_frames(channel, routing_key, body, properties)
        assert count == 2 + -(-len(body) // BODY_MAX)


def test_a_routing_key_over_255_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 255 bytes"):
        marshal_publish(1, "q" * 256, b"{}", None, None, BODY_MAX)
    with pytest.raises(ValueError, match="at most 255 bytes"):
        marshal_publish(1, "é" * 128, b"{}", None, None, BODY_MAX)  # 256 bytes in UTF-8


@pytest.mark.parametrize("value", [True, 1.5, "1", None, 2**63])
def test_a_header_that_is_not_a_64_bit_integer_is_refused(value: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        marshal_publish(1, "q", b"{}", None, {"x": value}, BODY_MAX)  # type: ignore[dict-item]


@pytest.mark.parametrize("delivery_tag", [1, 2, 255, 2**32, 2**64 - 1])
def test_an_ack_is_marshalled_as_pika_marshals_it(delivery_tag: int) -> None:
    for channel in (1, 7, 65_535):
        expected = frame.Method(channel, spec.Basic.Ack(delivery_tag, multiple=False)).marshal()
        assert marshal_ack(channel, delivery_tag) == expected
