"""Actors for fairness tests in worker processes: ``fairlane worker tests.integration.fairness_actors``.

The queue is named by ``FAIRLANE_TEST_QUEUE``. ``observed_step`` reports how many jobs of its
tenant were running in the ledger when it started, across every worker process.
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa

import fairlane
from fairlane.ledger.schema import jobs


def declare(queue: str) -> fairlane.Actor[int]:
    """Declare ``observed_step`` on ``queue`` in this process's fairlane app."""

    @fairlane.actor(queue_name=queue)
    def observed_step(seconds: float) -> int:
        job = fairlane.current_job()
        with fairlane.get_app().engine.connect() as connection:
            running = connection.execute(
                sa.select(sa.func.count()).where(jobs.c.tenant == job.tenant, jobs.c.state == "running")
            ).scalar_one()
        time.sleep(seconds)
        return int(running)

    return observed_step


if "FAIRLANE_TEST_QUEUE" in os.environ:
    observed_step = declare(os.environ["FAIRLANE_TEST_QUEUE"])
