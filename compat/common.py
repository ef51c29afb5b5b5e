"""The helpers Dramatiq's tests import from ``tests/common.py``, which its sdist does not ship.

Written for fairlane's compat run (copied next to the unpacked tests as ``tests/common.py``):
a ``worker`` context manager, the platform skip markers, RabbitMQ credentials, and the registry
of running workers that the conftest's StubBroker-style ``join`` waits for.
"""

from __future__ import annotations

import os
import platform
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika
import pytest
from dramatiq import Worker
from dramatiq.threading import is_gevent_active

#: Worker.stop() waits this long (ms) for running jobs, so a stuck actor can't stall teardown.
STOP_TIMEOUT_MS = 10_000

_running: dict[int, set[Worker]] = {}
_running_lock = threading.Lock()


def track_worker(worker: Worker) -> None:
    """Note a started worker, so joins on its broker wait for its work in progress."""
    with _running_lock:
        _running.setdefault(id(worker.broker), set()).add(worker)


def untrack_worker(worker: Worker) -> None:
    with _running_lock:
        _running.get(id(worker.broker), set()).discard(worker)


def running_workers(broker: Any) -> list[Worker]:
    """The tracked workers currently running on ``broker``."""
    with _running_lock:
        return list(_running.get(id(broker), ()))


@contextmanager
def worker(*args: Any, **kwargs: Any) -> Iterator[Worker]:
    """A started ``dramatiq.Worker(*args, **kwargs)``, stopped when the block ends."""
    started = Worker(*args, **kwargs)
    started.start()
    track_worker(started)
    try:
        yield started
    finally:
        untrack_worker(started)
        started.stop(timeout=STOP_TIMEOUT_MS)


_IN_CI = os.getenv("APPVEYOR") is not None or os.getenv("GITHUB_ACTION") is not None
skip_in_ci = pytest.mark.skipif(_IN_CI, reason="test skipped in CI")
skip_on_windows = pytest.mark.skipif(platform.system() == "Windows", reason="test skipped on Windows")
skip_on_pypy = pytest.mark.skipif(
    platform.python_implementation() == "PyPy", reason="time limits are not supported on PyPy"
)
skip_with_gevent = pytest.mark.skipif(is_gevent_active(), reason="behaves differently under gevent")
skip_without_gevent = pytest.mark.skipif(not is_gevent_active(), reason="needs gevent")

RABBITMQ_USERNAME = os.getenv("RABBITMQ_USERNAME", "guest")
RABBITMQ_PASSWORD = os.getenv("RABBITMQ_PASSWORD", "guest")
RABBITMQ_CREDENTIALS = pika.credentials.PlainCredentials(RABBITMQ_USERNAME, RABBITMQ_PASSWORD)


def _rabbitmq_unreachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            return False
    except OSError:
        return True


skip_unless_rabbit_mq = pytest.mark.skipif(_rabbitmq_unreachable(), reason="RabbitMQ is unreachable")
