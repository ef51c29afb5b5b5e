"""Actors for worker-process tests: ``fairlane worker tests.integration.process_actors``.

Their queue is named by ``FAIRLANE_TEST_QUEUE`` so each test gets its own. Every attempt
leaves marker files in ``marker_dir``: ``<job id>.<attempt>.started`` when it begins and
``<job id>.<attempt>.done`` when it ends, each holding the worker's pid.
The test process declares the same actors with :func:`declare` before sending.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import fairlane

QUEUE_VARIABLE = "FAIRLANE_TEST_QUEUE"
#: File whose presence lets held jobs finish.
RELEASE = "release"
_HOLD_LIMIT = 60.0


def _mark(marker_dir: str, stage: str) -> dict[str, Any]:
    job = fairlane.current_job()
    Path(marker_dir, f"{job.id}.{job.attempt}.{stage}").write_text(str(os.getpid()))
    return {"job": job.id, "attempt": job.attempt, "pid": os.getpid()}


def declare(queue: str) -> tuple[fairlane.Actor[Any], fairlane.Actor[Any]]:
    """Declare ``slow_step`` and ``held_step`` on ``queue`` in this process's fairlane app."""

    @fairlane.actor(queue_name=queue)
    def slow_step(marker_dir: str, seconds: float) -> dict[str, Any]:
        """Take ``seconds``, in short sleeps so a time limit or cancel could interrupt it."""
        _mark(marker_dir, "started")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        return _mark(marker_dir, "done")

    @fairlane.actor(queue_name=queue)
    def held_step(marker_dir: str) -> dict[str, Any]:
        """Run until the test creates ``<marker_dir>/release``."""
        _mark(marker_dir, "started")
        deadline = time.monotonic() + _HOLD_LIMIT
        while not Path(marker_dir, RELEASE).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"nobody created {marker_dir}/{RELEASE} within {_HOLD_LIMIT} s")
            time.sleep(0.02)
        return _mark(marker_dir, "done")

    return slow_step, held_step


def declare_doomed(queue: str) -> fairlane.Actor[Any]:
    """Declare ``doomed_step`` (one retry) on ``queue``: a poison job that kills its own worker process."""

    @fairlane.actor(queue_name=queue, max_retries=1)
    def doomed_step(marker_dir: str) -> None:
        """Leave its ``started`` marker, then, once the ledger has recorded its start (as for a
        job killed after it ran a while), SIGKILL the process running it (as an OOM kill would)."""
        _mark(marker_dir, "started")
        job_id, deadline = fairlane.current_job().id, time.monotonic() + _HOLD_LIMIT
        while fairlane.jobs.get(job_id).state != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)

    return doomed_step


if QUEUE_VARIABLE in os.environ:
    slow_step, held_step = declare(os.environ[QUEUE_VARIABLE])
    doomed_step = declare_doomed(os.environ[QUEUE_VARIABLE])
