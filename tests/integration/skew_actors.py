"""Actors for the clock-skew tests: ``fairlane worker tests.integration.skew_actors``.

A process declares the actors of the queue ``FAIRLANE_TEST_QUEUE`` names, each named after
that queue (``stamp_<queue>``…), so a test process can declare the actors of several queues
at once and each worker process consumes its own queue only. Every step leaves a marker file
``<marker_dir>/<tag>.<attempt>``: its modification time, stamped by the kernel, says when the
step ran whatever the running process's clock says.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import dramatiq

import fairlane

QUEUE_VARIABLE = "FAIRLANE_TEST_QUEUE"
#: File whose presence lets held jobs finish.
RELEASE = "release"
_HOLD_LIMIT = 120.0


def marker(marker_dir: str, tag: str, attempt: int = 1) -> Path:
    """The marker file of ``tag``'s ``attempt``."""
    return Path(marker_dir, f"{tag}.{attempt}")


def _mark(marker_dir: str, tag: str) -> int:
    attempt = fairlane.current_job().attempt
    marker(marker_dir, tag, attempt).write_text(str(os.getpid()))
    return attempt


@dataclasses.dataclass(frozen=True)
class SkewActors:
    """The actors of one queue."""

    stamp: fairlane.Actor[Any]
    flaky: fairlane.Actor[Any]
    relay: fairlane.Actor[Any]
    held: fairlane.Actor[Any]


def declare(queue: str) -> SkewActors:
    """Declare the actors of ``queue`` in this process's fairlane app."""

    @fairlane.actor(queue_name=queue, actor_name=f"stamp_{queue}")
    def stamp(marker_dir: str, tag: str) -> None:
        """Leave the marker ``tag``."""
        _mark(marker_dir, tag)

    @fairlane.actor(queue_name=queue, actor_name=f"flaky_{queue}", max_retries=1)
    def flaky(marker_dir: str, tag: str, delay_ms: int) -> None:
        """Leave the marker ``tag``; the first attempt then asks to be retried in ``delay_ms``."""
        if _mark(marker_dir, tag) == 1:
            raise dramatiq.Retry(delay=delay_ms)

    @fairlane.actor(queue_name=queue, actor_name=f"relay_{queue}")
    def relay(marker_dir: str, tag: str, peer_queue: str, delay_ms: int) -> None:
        """Leave the marker ``tag``, then send ``stamp_<peer_queue>(marker_dir, tag + "_relayed")``
        with ``delay_ms`` (the peer's actor is known from the actor catalog, not declared here)."""
        _mark(marker_dir, tag)
        message = dramatiq.Message(
            queue_name=peer_queue,
            actor_name=f"stamp_{peer_queue}",
            args=(marker_dir, f"{tag}_relayed"),
            kwargs={},
            options={},
        )
        fairlane.get_broker().enqueue(message, delay=delay_ms)

    @fairlane.actor(queue_name=queue, actor_name=f"held_{queue}")
    def held(marker_dir: str, tag: str) -> None:
        """Leave the marker ``tag``, then run until the test creates ``<marker_dir>/release``."""
        _mark(marker_dir, tag)
        deadline = time.monotonic() + _HOLD_LIMIT
        while not Path(marker_dir, RELEASE).exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    return SkewActors(stamp, flaky, relay, held)


if QUEUE_VARIABLE in os.environ:
    actors = declare(os.environ[QUEUE_VARIABLE])
