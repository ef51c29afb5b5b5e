"""The stale-job reaper: jobs of dead workers run again, lost dispatches are published again."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import fairlane
from fairlane.app import App
from fairlane.ledger.database import utcnow
from fairlane.ledger.schema import jobs
from fairlane.ledger.workers import WorkerBeat, WorkerStore
from fairlane.scheduling.reaper import run_reaper
from fairlane.worker import running_worker

from .process_actors import QUEUE_VARIABLE, RELEASE, declare
from .support import eventually, lane_depth

REPO_ROOT = Path(__file__).resolve().parents[2]


def _started_ago(app: App, job_id: str, seconds: float) -> None:
    with app.engine.begin() as connection:
        connection.execute(
            jobs.update().where(jobs.c.id == job_id).values(started_at=utcnow() - timedelta(seconds=seconds))
        )


def _purge(app: App, queue: str, lane: str = "normal") -> None:
    app.broker.channel.queue_purge(app.broker.lane_queue_name(queue, lane))


def test_job_of_a_worker_killed_with_sigkill_is_reaped_and_runs_again(
    broker_url: str, postgres_url: str, tmp_path: Path
) -> None:
    # Given a worker process (heartbeat every 0.2 s) running a job that waits for a release file,
    # and a reaper that calls a heartbeat older than 2 s stale
    queue = f"reap_{uuid.uuid4().hex[:10]}"
    app = fairlane.configure(
        fairlane.Settings(
            broker_url=broker_url,
            database_url=postgres_url,
            results_dir=tmp_path / "results",
            admission_interval=0.05,
            heartbeat_timeout=2.0,
        )
    )
    _slow_step, held_step = declare(queue)
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {
        **os.environ,
        "FAIRLANE_BROKER_URL": broker_url,
        "FAIRLANE_DATABASE_URL": postgres_url,
        "FAIRLANE_RESULTS_DIR": str(tmp_path / "results"),
        "FAIRLANE_HEARTBEAT_INTERVAL": "0.2",
        "FAIRLANE_METRICS_PORT": "0",
        "FAIRLANE_HEALTH_PORT": "0",
        QUEUE_VARIABLE: queue,
    }
    command = [
        sys.executable,
        "-m",
        "fairlane.cli",
        "worker",
        "--threads",
        "1",
        "tests.integration.process_actors",
    ]
    with (tmp_path / "worker.log").open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        job_id = held_step.send(str(markers)).message_id
        eventually(lambda: app.jobs.get(job_id).state == "running", timeout=30, message="job running")
        worker_id = f"{socket.gethostname()}:{process.pid}"

        # When the reaper runs while the worker lives (and the job has run longer than the timeout)
        time.sleep(2.3)
        # Then it leaves the job alone: its worker's heartbeat is fresh
        assert [job for job in run_reaper(app).reaped if job.queue == queue] == []
        assert app.jobs.get(job_id).state == "running"

        # When the worker is killed with SIGKILL, and the message RabbitMQ hands back is lost
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        eventually(lambda: lane_depth(app, queue) == 1, message="RabbitMQ requeued the unacked message")
        _purge(app, queue)

        # Then, once its heartbeat is stale, the reaper puts the job back (attempt 1 counted)
        # and admits it again
        reaped = []
        deadline = time.monotonic() + 10
        while not reaped and time.monotonic() < deadline:
            reaped = [job for job in run_reaper(app).reaped if job.queue == queue]
            time.sleep(0.1)
        assert [(job.id, job.worker_id, job.attempts, job.state) for job in reaped] == [
            (job_id, worker_id, 1, "pending")
        ]
        assert app.jobs.get(job_id).state == "dispatched"
        assert lane_depth(app, queue) == 1

        # And a new worker runs it to success as attempt 2
        (markers / RELEASE).touch()
        with running_worker(app, 1, shutdown_timeout=10):
            done = fairlane.jobs.wait(job_id, timeout=20)
        assert (done.state, done.attempts) == ("succeeded", 2)
        assert sorted(path.name.split(".", 1)[1] for path in markers.glob(f"{job_id}.*")) == [
            "1.started",
            "2.done",
            "2.started",
        ]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        app.close()


def test_reaper_keeps_jobs_of_live_workers_and_honours_cancel_requests(make_app: Any, queue: str) -> None:
    # Given three running jobs, started a minute ago: one on a worker with a fresh heartbeat,
    # one on a worker that never wrote one, and one of those asked to cancel
    app = make_app(heartbeat_timeout=10)

    @fairlane.actor(queue_name=queue)
    def task(n: int) -> None:
        pass

    live, orphan, cancelled = (task.send(n).message_id for n in range(3))
    WorkerStore(app.engine).beat(WorkerBeat("live-host:1", "live-host", 1, [queue], 0, 1))
    app.jobs.start(live, "live-host:1")
    app.jobs.start(orphan, "ghost-host:2")
    app.jobs.start(cancelled, "ghost-host:2")
    fairlane.jobs.cancel(cancelled)
    for job_id in (live, orphan, cancelled):
        _started_ago(app, job_id, 60)

    # When the reaper runs
    reaped = [job for job in run_reaper(app).reaped if job.queue == queue]

    # Then the orphan is back in the backlog (and admitted again), the cancelled one is
    # cancelled, and the live worker's job still runs
    assert sorted((job.id, job.state) for job in reaped) == sorted(
        [(orphan, "pending"), (cancelled, "cancelled")]
    )
    assert (fairlane.jobs.get(orphan).state, fairlane.jobs.get(orphan).attempts) == ("dispatched", 1)
    assert fairlane.jobs.get(cancelled).state == "cancelled"
    assert fairlane.jobs.get(live).state == "running"

    # When it runs again, nothing more happens (it is safe to run twice)
    assert [job for job in run_reaper(app).reaped if job.queue == queue] == []


def test_lost_dispatch_is_published_again_once_a_consumer_is_there(make_app: Any, queue: str) -> None:
    # Given a dispatched job whose message was lost from RabbitMQ, and a dispatch timeout of 0.3 s
    app = make_app(dispatch_timeout=0.3)

    @fairlane.actor(queue_name=queue)
    def task() -> str:
        return "done"

    job_id = task.send().message_id
    assert fairlane.jobs.get(job_id).state == "dispatched"
    eventually(lambda: lane_depth(app, queue) == 1, message="published")  # sends publish unconfirmed
    _purge(app, queue)
    time.sleep(0.4)

    # When the reaper runs with no consumer on the lane queue (the ledger may be shared with
    # other tests, so only this test's job is looked at)
    report = run_reaper(app)

    # Then it waits (another copy could only pile up behind a missing consumer)
    assert job_id not in report.republished
    assert report.waiting >= 1
    assert lane_depth(app, queue) == 0

    # When a worker consumes the queue and the reaper runs again after the timeout
    with running_worker(app, 2, shutdown_timeout=10):
        time.sleep(0.4)
        eventually(lambda: job_id in run_reaper(app).republished, timeout=10, message="republished")

        # Then the job runs once, as its first attempt
        done = fairlane.jobs.wait(job_id, timeout=10)
    assert (done.state, done.attempts, done.result) == ("succeeded", 1, "done")
    with app.engine.connect() as connection:
        assert connection.execute(sa.select(jobs.c.state).where(jobs.c.id == job_id)).scalar() == "succeeded"
