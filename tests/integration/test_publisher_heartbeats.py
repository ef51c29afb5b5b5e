"""Idle publishers: a sender whose RabbitMQ connection was dropped for missed heartbeats
publishes again without error noise (one INFO line says the connection was replaced)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import pytest

import fairlane
from fairlane.app import App

from .support import eventually, lane_depth


def _connections(vhost: str) -> int:
    """Client connections RabbitMQ holds open on ``vhost``."""
    ctl = shutil.which("rabbitmqctl")
    assert ctl is not None
    listed = subprocess.run(
        [ctl, "-q", "list_connections", "vhost"], check=True, capture_output=True, text=True
    ).stdout
    return sum(1 for line in listed.splitlines() if line.strip() == vhost)


def test_an_idle_publisher_past_the_heartbeat_timeout_publishes_without_errors(
    make_app: Callable[..., App], broker_url: str, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a sender with 2 s RabbitMQ heartbeats that has published (a send and a batch)
    app = make_app(broker_url=f"{broker_url}?heartbeat=2")

    @fairlane.actor(queue_name=queue)
    def export(store_id: int) -> None:
        pass

    export.send(1)
    export.send_many([(2,), (3,)])
    assert lane_depth(app, queue) == 3

    # When it stays idle until RabbitMQ has dropped its connections for missed heartbeats
    vhost = unquote(urlsplit(broker_url).path.lstrip("/"))
    eventually(lambda: _connections(vhost) == 0, timeout=60, message="RabbitMQ dropped the idle connections")

    # And then sends again, one job and a batch
    caplog.clear()
    with caplog.at_level(logging.INFO):
        export.send(4)
        export.send_many([(5,), (6,)])

    # Then every job is published, nothing is logged as a warning or an error, and one line
    # says the idle connection was replaced
    assert lane_depth(app, queue) == 6
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
    replaced = [
        record for record in caplog.records if "event=publisher_connection_replaced" in record.getMessage()
    ]
    assert len(replaced) == 1


def test_closing_a_sender_whose_idle_connection_rabbitmq_dropped_logs_no_errors(
    make_app: Callable[..., App], broker_url: str, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a sender with 2 s RabbitMQ heartbeats that has published
    app = make_app(broker_url=f"{broker_url}?heartbeat=2")

    @fairlane.actor(queue_name=queue)
    def export(store_id: int) -> None:
        pass

    export.send(1)
    eventually(lambda: lane_depth(app, queue) == 1, message="the job is published")

    # When it stays idle until RabbitMQ has dropped its connections for missed heartbeats
    vhost = unquote(urlsplit(broker_url).path.lstrip("/"))
    eventually(lambda: _connections(vhost) == 0, timeout=60, message="RabbitMQ dropped the idle connections")

    # And then it closes (a worker process or a service shutting down)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        app.close()

    # Then nothing is logged as a warning or an error
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
