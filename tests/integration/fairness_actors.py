"""Actors for fairness tests in worker processes: ``fairlane worker tests.integration.fairness_actors``.

The queue is named by ``FAIRLANE_TEST_QUEUE``. ``observed_step`` sleeps, and returns when it
ran (epoch seconds, start and end), so a test can tell how many jobs of a tenant ran at once
across every worker process.
"""

from __future__ import annotations

import os
import time

import fairlane


def declare(queue: str) -> fairlane.Actor[list[float]]:
    """Declare ``observed_step`` on ``queue`` in this process's fairlane app."""

    @fairlane.actor(queue_name=queue)
    def observed_step(seconds: float) -> list[float]:
        started = time.time()
        time.sleep(seconds)
        return [started, time.time()]

    return observed_step


def most_at_once(intervals: list[list[float]]) -> int:
    """The most of these ``[start, end]`` intervals that overlap at any moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, change in events:  # at equal times an end (-1) sorts before a start (+1)
        running += change
        most = max(most, running)
    return most


if "FAIRLANE_TEST_QUEUE" in os.environ:
    observed_step = declare(os.environ["FAIRLANE_TEST_QUEUE"])
