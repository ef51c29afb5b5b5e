"""Helpers for integration tests: RabbitMQ queue depths and waiting for conditions."""

from __future__ import annotations

import time
from collections.abc import Callable

from fairlane.app import App


def lane_depth(app: App, queue: str, lane: str = "normal") -> int:
    """Messages ready in one lane queue of ``queue``."""
    app.broker.declare_queue(queue, ensure=True)
    name = app.broker.lane_queue_name(queue, lane)
    return int(app.broker.channel.queue_declare(name, passive=True).method.message_count)


def dead_letter_depth(app: App, queue: str) -> int:
    """Messages in ``queue``'s dead-letter queue."""
    app.broker.declare_queue(queue, ensure=True)
    return int(app.broker.channel.queue_declare(f"{queue}.XQ", passive=True).method.message_count)


def eventually(condition: Callable[[], bool], timeout: float = 10.0, message: str = "condition") -> None:
    """Wait until ``condition()`` holds, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} did not hold within {timeout} s")
        time.sleep(0.02)
