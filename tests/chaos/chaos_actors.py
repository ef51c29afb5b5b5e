"""The chaos suite's job, for ``fairlane worker tests.chaos.chaos_actors``.

Its queue is named by ``FAIRLANE_CHAOS_QUEUE``. Each run that gets to the end of the job's
body leaves a file ``<job id>.<random>`` in ``FAIRLANE_CHAOS_RUNS``, so the suite can tell a
job that ran from one that did not, and one that ran twice.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import fairlane

QUEUE_VARIABLE = "FAIRLANE_CHAOS_QUEUE"
RUNS_VARIABLE = "FAIRLANE_CHAOS_RUNS"


def declare(queue: str, runs_dir: Path) -> fairlane.Actor[Any]:
    """Declare ``chaos_step`` on ``queue`` in this process's fairlane app."""

    @fairlane.actor(queue_name=queue)
    def chaos_step(milliseconds: int) -> None:
        """Work for ``milliseconds``, then record the run."""
        time.sleep(milliseconds / 1000)
        Path(runs_dir, f"{fairlane.current_job().id}.{uuid.uuid4().hex}").touch()

    return chaos_step


if QUEUE_VARIABLE in os.environ:
    chaos_step = declare(os.environ[QUEUE_VARIABLE], Path(os.environ[RUNS_VARIABLE]))
