"""`fairlane worker` as real processes: killed, stopped gracefully, and run as several processes.

Workers run ``tests.integration.process_actors`` on a queue of their own, with the
PostgreSQL ledger (the production one). The test process only sends and reads the ledger.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fairlane

from .process_actors import RELEASE
from .support import eventually, lane_depth
from .worker_processes import SHUTDOWN_TIMEOUT, STARTUP, WorkerProcesses, spawned_workers


class Workers(WorkerProcesses):
    """Spawns worker processes for one test and reads the marker files their jobs leave."""

    def send_held(self, count: int, **options: Any) -> list[str]:
        """Jobs that run until :meth:`release`."""
        return [
            self.held_step.send_with_options(args=(str(self.markers),), **options).message_id
            for _ in range(count)
        ]

    def send_quick(self, count: int, **options: Any) -> list[str]:
        """Jobs that take 50 ms."""
        return [
            self.slow_step.send_with_options(args=(str(self.markers), 0.05), **options).message_id
            for _ in range(count)
        ]

    def release(self) -> None:
        """Let held jobs finish."""
        (self.markers / RELEASE).touch()

    def marks(self, job_id: str, stage: str) -> dict[int, int]:
        """``{attempt: pid}`` of a job's ``started`` or ``done`` markers."""
        found = {}
        for path in self.markers.glob(f"{job_id}.*.{stage}"):
            pid = path.read_text()
            if pid:  # an empty file is a marker still being written: not there yet
                found[int(path.name.split(".")[1])] = int(pid)
        return found

    def started_count(self, job_ids: list[str]) -> int:
        return sum(len(self.marks(job_id, "started")) for job_id in job_ids)


@pytest.fixture
def workers(broker_url: str, postgres_url: str, tmp_path: Path) -> Iterator[Workers]:
    # One message per thread: these tests count exactly which process holds which long job.
    with spawned_workers(
        Workers,
        broker_url,
        postgres_url,
        tmp_path,
        "proc",
        {},
        CANCEL_POLL_INTERVAL="0.05",
        PREFETCH_PER_THREAD="1",
    ) as spawned:
        yield spawned


def test_job_of_a_killed_worker_runs_again_on_a_new_worker(workers: Workers) -> None:
    # Given a worker process running a long job, and more jobs sent behind it
    first = workers.spawn()
    long_job = workers.send_held(1, tenant="acme")[0]
    eventually(lambda: 1 in workers.marks(long_job, "started"), STARTUP, "long job started on worker 1")
    held = workers.send_held(3, tenant="acme")
    quick = workers.send_quick(3, tenant="globex")
    # (its second thread runs quick jobs until it, too, is busy with a long one)
    eventually(lambda: workers.started_count(held) == 1, message="worker 1's second thread busy")
    [also_killed] = [job_id for job_id in held if workers.marks(job_id, "started")]

    # When that worker is killed with SIGKILL in the middle of both long jobs
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait(timeout=10) == -signal.SIGKILL
    workers.release()

    # And a new worker starts
    second = workers.spawn()

    # Then the long job runs again on the new worker and succeeds on its second attempt
    job = fairlane.jobs.wait(long_job, timeout=STARTUP)
    assert (job.state, job.attempts) == ("succeeded", 2)
    assert workers.marks(long_job, "started") == {1: first.pid, 2: second.pid}
    assert workers.marks(long_job, "done") == {2: second.pid}
    assert job.result == {"job": long_job, "attempt": 2, "pid": second.pid}
    assert fairlane.jobs.wait(also_killed, timeout=STARTUP).attempts == 2

    # And no job sent before the kill is lost: each succeeded, finishing exactly one attempt
    for job_id in held + quick:
        other = fairlane.jobs.wait(job_id, timeout=STARTUP)
        assert other.state == "succeeded", other
        assert len(workers.marks(job_id, "done")) == 1
        assert other.attempts == len(workers.marks(job_id, "started"))


def test_sigterm_lets_running_jobs_finish_and_returns_unstarted_ones(workers: Workers) -> None:
    # Given a worker whose two threads run held jobs, and two more jobs it took but can't start yet
    worker = workers.spawn()
    running = workers.send_held(2, tenant="acme")
    eventually(lambda: workers.started_count(running) == 2, STARTUP, "both held jobs started")
    waiting = workers.send_quick(2, tenant="acme", priority="high")
    eventually(lambda: lane_depth(workers.app, workers.queue, "high") == 0, message="high jobs prefetched")

    # When the worker gets SIGTERM
    worker.send_signal(signal.SIGTERM)
    eventually(lambda: "Shutting down" in workers.log_text(), message="worker shutting down")

    # Then it keeps running until its jobs finish, then exits 0
    assert worker.poll() is None, "worker exited with jobs still running"
    workers.release()
    assert workers.wait_exit(worker, SHUTDOWN_TIMEOUT) == 0

    # And the running jobs finished on their first attempt
    for job_id in running:
        job = fairlane.jobs.get(job_id)
        assert (job.state, job.attempts) == ("succeeded", 1)

    # And the jobs it had not started went back to RabbitMQ, untouched
    for job_id in waiting:
        job = fairlane.jobs.get(job_id)
        assert (job.state, job.attempts) == ("dispatched", 0)
    assert lane_depth(workers.app, workers.queue, "high") == 2

    # And a new worker runs them once each; the finished jobs don't run again
    workers.spawn()
    for job_id in waiting:
        job = fairlane.jobs.wait(job_id, timeout=STARTUP)
        assert (job.state, job.attempts) == ("succeeded", 1)
    assert all(len(workers.marks(job_id, "started")) == 1 for job_id in running + waiting)


def test_two_processes_share_the_work_and_sigterm_stops_both(workers: Workers) -> None:
    # Given `fairlane worker --processes 2 --threads 2` (each process takes at most 2 jobs of a lane)
    parent = workers.spawn(processes=2)

    # When four long jobs are sent
    held = workers.send_held(4, tenant="acme")

    # Then both processes run them at once: two jobs each
    eventually(lambda: workers.started_count(held) == 4, STARTUP, "all four jobs started")
    pids = [pid for job_id in held for pid in workers.marks(job_id, "started").values()]
    assert sorted(pids.count(pid) for pid in set(pids)) == [2, 2]
    assert parent.pid not in pids

    # When the parent gets SIGTERM while they run
    parent.send_signal(signal.SIGTERM)
    eventually(lambda: workers.log_text().count("Shutting down") == 2, message="both children stopping")
    workers.release()

    # Then both children finish their jobs and stop, and the parent exits 0
    assert workers.wait_exit(parent, SHUTDOWN_TIMEOUT) == 0
    for pid in set(pids):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for job_id in held:
        job = fairlane.jobs.get(job_id)
        assert (job.state, job.attempts) == ("succeeded", 1)
