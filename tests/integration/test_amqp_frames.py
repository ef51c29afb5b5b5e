"""Messages published through fairlane's own frame marshalling reach RabbitMQ as published:
body, persistence, priority and headers, a multi-frame body included; a bad message queues none."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from fairlane import amqp_frames
from fairlane.amqp_frames import ack_all, publish_persistent


@pytest.fixture
def channel(broker_url: str) -> Iterator[Any]:
    """A blocking channel in transaction mode, as the dispatcher publishes, and a fresh queue."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    channel.queue_declare(f"frames_{uuid.uuid4().hex[:10]}", durable=True, arguments={"x-max-priority": 10})
    channel.tx_select()
    yield channel
    if connection.is_open:
        connection.close()


def _queue(channel: Any) -> str:
    return str(channel.queue_declare("", passive=False, exclusive=True).method.queue)


def _drain(channel: Any, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    received = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return received
        received.append((properties, body))


@pytest.mark.parametrize("marshalled", [True, False], ids=["marshalled", "pika-fallback"])
def test_published_messages_arrive_with_their_properties_and_whole_bodies(
    channel: Any, marshalled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given three messages: a plain one, one with a start hint and a priority, one of 3 frames' body
    queue = _queue(channel)
    big = bytes(range(256)) * 1_200  # 307,200 bytes: more than two frames of 131,064
    hint = {"x-fairlane-attempt": 2, "x-fairlane-runnable-ms": 1_764_700_000_123}
    messages = [(queue, b'{"n":1}', None, None), (queue, b'{"n":2}', 9, hint), (queue, big, None, hint)]
    if not marshalled:  # a pika without the internals fairlane marshals through: basic_publish
        monkeypatch.setattr(amqp_frames, "_body_max", lambda connection: None)

    # When they are published in one transaction
    publish_persistent(channel._impl, messages)
    channel.tx_commit()
    channel.tx_commit()  # (an empty commit: the transaction's messages are all routed)

    # Then each arrives once, whole, persistent, with its priority and headers
    received = _drain(channel, queue)
    assert sorted(body for _, body in received) == sorted([b'{"n":1}', b'{"n":2}', big])
    by_body = {body: properties for properties, body in received}
    assert all(properties.delivery_mode == 2 for properties in by_body.values())
    assert (by_body[b'{"n":1}'].priority, by_body[b'{"n":1}'].headers) == (None, None)
    assert (by_body[b'{"n":2}'].priority, by_body[b'{"n":2}'].headers) == (9, hint)
    assert by_body[big].headers == hint
    # And the connection still works (its frame stream stayed well-formed)
    publish_persistent(channel._impl, [(queue, b"after", None, None)])
    channel.tx_commit()
    assert [body for _, body in _drain(channel, queue)] == [b"after"]


def test_a_round_with_a_message_that_cannot_be_marshalled_queues_none_of_it(channel: Any) -> None:
    queue = _queue(channel)
    good = (queue, b'{"n":1}', None, None)
    with pytest.raises(ValueError, match="at most 255 bytes"):
        publish_persistent(channel._impl, [good, ("q" * 300, b"{}", None, None), good])
    channel.tx_commit()
    assert _drain(channel, queue) == []


def test_publishing_on_a_closed_channel_raises(channel: Any) -> None:
    queue = _queue(channel)
    channel.close()
    with pytest.raises(pika.exceptions.ChannelWrongStateError):
        publish_persistent(channel._impl, [(queue, b"{}", None, None)])


@pytest.mark.parametrize("marshalled", [True, False], ids=["marshalled", "pika-fallback"])
def test_acked_deliveries_are_settled_and_the_others_come_back(
    broker_url: str, channel: Any, marshalled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given five messages in a durable queue, received on a second connection without acking
    queue = str(channel.queue_declare(f"acks_{uuid.uuid4().hex[:10]}", durable=True).method.queue)
    publish_persistent(channel._impl, [(queue, f"m{index}".encode(), None, None) for index in range(5)])
    channel.tx_commit()
    if not marshalled:
        monkeypatch.setattr(amqp_frames, "_body_max", lambda connection: None)
    consumer = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        receiving = consumer.channel()
        delivered = {}
        for _ in range(5):
            method, _properties, body = receiving.basic_get(queue, auto_ack=False)
            delivered[body] = method.delivery_tag

        # When three of them are acked in one batch, and the connection closes
        ack_all(receiving._impl, [delivered[b"m0"], delivered[b"m2"], delivered[b"m4"]])
        receiving.basic_qos(prefetch_count=0)  # a round trip: the acks have reached RabbitMQ
    finally:
        consumer.close()

    # Then only the two unacked ones are delivered again
    channel.tx_commit()
    assert sorted(body for _, body in _drain(channel, queue)) == [b"m1", b"m3"]
    channel.queue_delete(queue)
