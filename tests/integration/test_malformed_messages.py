"""Messages a worker can't run (garbage, unknown actor, no ledger row) are dead-lettered, not fatal."""

from __future__ import annotations

import json
from typing import Any

import dramatiq
import pika
import pytest

import fairlane
from fairlane import dead_letters
from fairlane.app import App
from fairlane.broker import REASON_HEADER

from .support import dead_letter_depth, eventually


def _publish_raw(broker_url: str, routing_key: str, body: bytes) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        connection.channel().basic_publish("", routing_key, body, pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()


def _peek_dead_letters(broker_url: str, queue: str) -> list[tuple[bytes, dict[str, Any]]]:
    """Bodies and headers in ``queue``'s dead-letter queue; they stay there (never acked)."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        found = []
        while True:
            method, properties, body = channel.basic_get(f"{queue}.XQ", auto_ack=False)
            if method is None:
                return found
            found.append((body, dict(properties.headers or {})))
    finally:
        connection.close()


def _message(queue: str, actor_name: str) -> bytes:
    return dramatiq.Message(
        queue_name=f"{queue}.normal", actor_name=actor_name, args=(), kwargs={}, options={}
    ).encode()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("not json", "undecodable message"),
        ("unknown actor", "rejected by the worker"),  # RabbitMQ's own dead-lettering; no fairlane header
        ("no ledger row", "no ledger row for job"),
    ],
)
def test_unrunnable_message_is_dead_lettered_and_the_worker_keeps_going(
    app: App, queue: str, worker: Any, broker_url: str, kind: str, reason: str
) -> None:
    # Given a worker consuming a queue
    @fairlane.actor(queue_name=queue)
    def ping() -> str:
        return "pong"

    app.broker.declare_queue(queue, ensure=True)
    body = {
        "not json": b"not json",
        "unknown actor": _message(queue, "nobody"),
        "no ledger row": _message(queue, "ping"),  # published around fairlane, so never recorded
    }[kind]

    with worker(threads=2):
        # When a message it can't run lands in the queue's normal lane
        _publish_raw(broker_url, f"{queue}.normal", body)

        # Then the message ends up, as it was, in the queue's dead-letter queue (one fairlane
        # dead-letters itself under its actor queue's name: the worker acks messages by that name)
        eventually(lambda: dead_letter_depth(app, queue) == 1, message=f"{kind} message dead-lettered")
        [(dead_body, headers)] = _peek_dead_letters(broker_url, queue)
        if kind == "no ledger row":
            assert json.loads(dead_body) == json.loads(body) | {"queue_name": queue}
        else:
            assert dead_body == body
        if kind != "unknown actor":
            assert reason in headers[REASON_HEADER]

        # And the worker kept running: a normal job sent afterwards succeeds
        job = fairlane.jobs.wait(ping.send().message_id, timeout=10)
        assert (job.state, job.result) == ("succeeded", "pong")

    # And `dlq list` can tell an operator why each message is there
    [raw] = dead_letters.raw_dead_letters(app, queue)
    assert reason in raw.reason
