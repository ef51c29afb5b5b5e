"""Poison jobs end: a job that kills its worker process is retried ``max_retries`` times, then
is dead with ``WorkerLost`` naming its last worker, instead of taking down worker after worker.

Workers are real ``fairlane worker`` processes on the PostgreSQL ledger; the job SIGKILLs the
process running it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fairlane
from fairlane.scheduling.reaper import run_reaper

from .process_actors import declare_doomed
from .support import eventually, lane_depth
from .worker_processes import STARTUP, WorkerProcesses, spawned_workers


class Workers(WorkerProcesses):
    """Worker processes of one test, and the poison actor they run."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.doomed_step = declare_doomed(self.queue)

    def started(self, job_id: str) -> dict[int, int]:
        """``{attempt: pid}`` of the job's ``started`` markers."""
        found = {}
        for path in self.markers.glob(f"{job_id}.*.started"):
            pid = path.read_text()
            if pid:  # an empty file is a marker still being written
                found[int(path.name.split(".")[1])] = int(pid)
        return found

    def run_until_killed(self, job_id: str, attempt: int) -> int:
        """Start a worker, let it pick up the job's ``attempt`` and die of it; its worker pid."""
        process = self.spawn(threads=1)
        eventually(lambda: attempt in self.started(job_id), STARTUP, f"attempt {attempt} started")
        self.wait_exit(process, STARTUP)
        return self.started(job_id)[attempt]


@pytest.fixture
def workers(broker_url: str, postgres_url: str, tmp_path: Path) -> Iterator[Workers]:
    with spawned_workers(
        Workers,
        broker_url,
        postgres_url,
        tmp_path,
        "poison",
        {"heartbeat_timeout": 2.0},
        PREFETCH_PER_THREAD="1",
        HEARTBEAT_INTERVAL="0.2",
    ) as spawned:
        yield spawned


def test_a_job_that_kills_its_worker_is_dead_after_its_retries(workers: Workers) -> None:
    # Given a job (max_retries=1) that SIGKILLs the worker process running it
    job_id = workers.doomed_step.send(str(workers.markers)).message_id

    # When it kills a first worker, and then (one retry left) the worker started after it
    workers.run_until_killed(job_id, attempt=1)
    last_pid = workers.run_until_killed(job_id, attempt=2)

    # And a third worker receives its message again
    third = workers.spawn(threads=1)

    # Then the job is dead with WorkerLost, naming the worker its last attempt died with
    job = fairlane.jobs.wait(job_id, timeout=STARTUP)
    assert (job.state, job.attempts) == ("dead", 2)
    assert job.error is not None and job.error.type == "WorkerLost"
    assert f"{socket.gethostname()}:{last_pid}" in job.error.message
    # And the third worker never ran it: it lives on, and the message is in the dead letters
    assert sorted(workers.started(job_id)) == [1, 2]
    assert third.poll() is None
    assert [dead.id for dead in workers.app.jobs.dead_jobs(queue=workers.queue)] == [job_id]


def test_the_reaper_ends_a_job_whose_worker_died_during_its_last_attempt(workers: Workers) -> None:
    # Given a job with no retries that killed its worker, whose message RabbitMQ handed back is lost
    job_id = workers.doomed_step.send_with_options(args=(str(workers.markers),), max_retries=0).message_id
    pid = workers.run_until_killed(job_id, attempt=1)
    eventually(lambda: lane_depth(workers.app, workers.queue) == 1, message="RabbitMQ requeued the message")
    workers.app.broker.channel.queue_purge(workers.app.broker.lane_queue_name(workers.queue, "normal"))

    # When the reaper runs once the worker's heartbeat is stale
    reaped = []
    deadline = time.monotonic() + 10
    while not reaped and time.monotonic() < deadline:
        reaped = [job for job in run_reaper(workers.app).reaped if job.queue == workers.queue]
        time.sleep(0.1)

    # Then the job is dead with WorkerLost naming that worker, not back in the backlog
    assert [(job.id, job.state) for job in reaped] == [(job_id, "dead")]
    job = fairlane.jobs.get(job_id)
    assert (job.state, job.attempts) == ("dead", 1)
    assert job.error is not None and job.error.type == "WorkerLost"
    assert f"{socket.gethostname()}:{pid}" in job.error.message
