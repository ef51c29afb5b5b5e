"""Leader gauges: backlog, ages, dead letters, tenants, lane depth and consumers, workers."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

import pytest

import fairlane
from fairlane.ledger.database import utcnow
from fairlane.ledger.jobs import JobError
from fairlane.ledger.workers import WorkerBeat, WorkerStore
from fairlane.observability.catalog import (
    BACKLOG_JOBS,
    DEAD_LETTERS,
    LANE_CONSUMERS,
    LANE_QUEUE_DEPTH,
    OLDEST_PENDING_AGE_SECONDS,
    SCHEDULER_IS_LEADER,
    SCHEDULER_LAST_SUCCESS_TIMESTAMP_SECONDS,
    TENANTS_WITH_BACKLOG,
    WORKERS,
)
from fairlane.scheduling.gauges import LEADER_ONLY_GAUGES, clear_leader_gauges, export_leader_gauges
from fairlane.scheduling.service import Scheduler
from fairlane.worker import running_worker

from .support import eventually


def test_leader_gauges_describe_the_ledger_and_rabbitmq(make_app: Any, queue: str, ledger_url: str) -> None:
    # Given a queue with a dispatch budget of 1: one normal job dispatched and two of tenant "a"
    # pending, an urgent one of tenant "b" dispatched too (it overtook the normal backlog, with
    # the headroom overtaking jobs get), a delayed low one of tenant "c", a dead one
    app = make_app(dispatch_budget=1, heartbeat_timeout=30)

    @fairlane.actor(queue_name=queue)
    def task() -> None:
        pass

    task.send_with_options(tenant="a")
    task.send_with_options(tenant="a")
    task.send_with_options(tenant="a")
    task.send_with_options(tenant="b", priority="urgent")
    task.send_with_options(tenant="c", priority="low", delay=3_600_000)
    doomed = task.send_with_options(tenant="d", priority="high").message_id
    app.jobs.kill(doomed, JobError("Boom", "gone"))
    # ... a live worker and one silent for a minute
    workers = WorkerStore(app.engine)
    alive_before = workers.alive_count(30)
    workers.beat(WorkerBeat("gauge-host:1", "gauge-host", 1, [queue], 0, 0))
    workers.beat(
        WorkerBeat("gauge-host:2", "gauge-host", 2, [queue], 0, 0),
        now=utcnow() - timedelta(minutes=1),
    )
    time.sleep(0.2)

    # When the leader exports its gauges
    export_leader_gauges(app)

    # Then the backlog counts pending jobs per lane; the oldest age counts only runnable ones
    assert BACKLOG_JOBS.get(queue=queue, lane="normal") == 2
    assert BACKLOG_JOBS.get(queue=queue, lane="urgent") == 0
    assert BACKLOG_JOBS.get(queue=queue, lane="low") == 1
    assert BACKLOG_JOBS.get(queue=queue, lane="high") == 0
    assert 0.2 <= (OLDEST_PENDING_AGE_SECONDS.get(queue=queue, lane="normal") or 0) < 30
    assert OLDEST_PENDING_AGE_SECONDS.get(queue=queue, lane="low") == 0
    assert TENANTS_WITH_BACKLOG.get(queue=queue) == 2
    assert DEAD_LETTERS.get(queue=queue) == 1
    # And RabbitMQ holds the two dispatched messages, with no consumer yet
    assert LANE_QUEUE_DEPTH.get(queue=queue, lane="normal") == 1
    assert LANE_QUEUE_DEPTH.get(queue=queue, lane="urgent") == 1
    assert LANE_CONSUMERS.get(queue=queue, lane="normal") == 0
    # And only the live worker counts
    assert WORKERS.get() == alive_before + 1
    if ledger_url.startswith("sqlite"):
        assert WORKERS.get() == 1

    # When a worker consumes the queue and the gauges are exported again
    with running_worker(app, 2, shutdown_timeout=10):
        for job in fairlane.jobs.list(queue=queue, state="pending"):
            if job.tenant != "c":
                fairlane.jobs.wait(job.id, timeout=10)
        export_leader_gauges(app)

        # Then every lane shows its consumer, and only the delayed job is left in the backlog
        assert {
            lane: LANE_CONSUMERS.get(queue=queue, lane=lane) for lane in app.settings.lanes
        } == dict.fromkeys(app.settings.lanes, 1)
        assert [BACKLOG_JOBS.get(queue=queue, lane=lane) for lane in app.settings.lanes] == [0, 0, 0, 1]


def test_scheduler_exports_last_success_and_clears_leader_gauges_when_not_leading(
    make_app: Any, queue: str
) -> None:
    # Given a scheduler of an app with one known queue
    app = make_app()

    @fairlane.actor(queue_name=queue)
    def task() -> None:
        pass

    task.send()
    scheduler = Scheduler(app, schedules=[])
    try:
        # When it runs its gauges task
        before = time.time()
        scheduler.run_task("gauges")

        # Then the task's last success is now, and the gauges are exported
        assert (SCHEDULER_LAST_SUCCESS_TIMESTAMP_SECONDS.get(task="gauges") or 0) >= before
        assert BACKLOG_JOBS.get(queue=queue, lane="normal") == 0
        assert LANE_QUEUE_DEPTH.get(queue=queue, lane="normal") == 1

        # When leader gauges are cleared (what a scheduler that is not the leader does)
        clear_leader_gauges()
        SCHEDULER_IS_LEADER.set(0)

        # Then none of them is exported, and is-leader says 0
        exported = [
            sample for gauge in LEADER_ONLY_GAUGES for family in gauge.collect() for sample in family.samples
        ]
        assert exported == []
        assert SCHEDULER_IS_LEADER.get() == 0
    finally:
        scheduler.lock.close()


def test_a_leader_that_stops_releases_leadership_without_a_warning(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a scheduler that leads
    app = make_app()
    scheduler = Scheduler(app, schedules=[])
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="fairlane")
    runner = threading.Thread(target=scheduler.run, args=(stop,))
    runner.start()
    try:
        eventually(lambda: scheduler.is_leader, message="leader")
    finally:
        # When it stops
        stop.set()
        runner.join(30)

    # Then it says it released leadership, at INFO, and warns of no lost leadership
    # (its gauges task may warn about other tests' queues in the shared vhost)
    messages = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert (logging.INFO, f"event=leader_released identity={scheduler.identity}") in messages
    assert [text for level, text in messages if level >= logging.WARNING and "leader" in text] == []
