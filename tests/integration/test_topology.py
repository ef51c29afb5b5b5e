"""RabbitMQ topology: lane and dead-letter queues, quorum queues, argument changes."""

from __future__ import annotations

import logging
from typing import Any

import pika
import pytest

import fairlane
from fairlane.worker import running_worker


def _lane_queue_type(broker_url: str, queue: str) -> str:
    # A passive declare can't show arguments; redeclaring with the wrong type proves the real one.
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        for candidate in ("classic", "quorum"):
            channel = connection.channel()
            try:
                arguments = {
                    "x-queue-type": candidate,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": f"{queue}.XQ",
                }
                channel.queue_declare(f"{queue}.normal", durable=True, arguments=arguments)
            except pika.exceptions.ChannelClosedByBroker:
                continue
            else:
                return candidate
        return "unknown"
    finally:
        connection.close()


def test_each_queue_gets_lane_queues_and_a_dead_letter_queue(app: Any, queue: str, broker_url: str) -> None:
    # Given an actor on a new queue
    @fairlane.actor(queue_name=queue)
    def noop() -> None:
        pass

    # When the topology is ensured
    app.broker.declare_queue(queue, ensure=True)

    # Then every lane and the dead-letter queue exist, durable
    channel = app.broker.channel
    for name in [f"{queue}.{lane}" for lane in ("urgent", "high", "normal", "low")] + [f"{queue}.XQ"]:
        assert channel.queue_declare(name, passive=True).method.queue == name
    assert _lane_queue_type(broker_url, queue) == "classic"


def test_quorum_queues_as_a_setting(make_app: Any, queue: str, broker_url: str) -> None:
    # Given quorum queues configured
    app = make_app(queue_type="quorum")

    @fairlane.actor(queue_name=queue)
    def noop() -> str:
        return "ran"

    # When a job runs through them
    with running_worker(app, 2, shutdown_timeout=10):
        job = fairlane.jobs.wait(noop.send().message_id, timeout=15)

    # Then the lane queue is a quorum queue and the job succeeded
    assert _lane_queue_type(broker_url, queue) == "quorum"
    assert job.state == "succeeded"


def test_changed_queue_arguments_are_reported_not_crashed_on(
    make_app: Any, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given queues first declared as classic
    classic = make_app(queue_type="classic")

    @fairlane.actor(queue_name=queue)
    def first() -> None:
        pass

    classic.broker.declare_queue(queue, ensure=True)

    # When the setting changes to quorum and the app sends and runs jobs
    quorum = make_app(queue_type="quorum")

    @fairlane.actor(queue_name=queue)
    def second() -> str:
        return "still works"

    with (
        caplog.at_level(logging.WARNING, logger="fairlane.broker"),
        running_worker(quorum, 2, shutdown_timeout=10),
    ):
        job = fairlane.jobs.wait(second.send().message_id, timeout=15)

    # Then the existing queues keep working and the difference is logged
    assert job.result == "still works"
    assert any("queue_arguments_differ" in record.getMessage() for record in caplog.records)
