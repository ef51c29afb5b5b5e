"""Cron through the real ledger and broker: once per slot across a restart; SQLite leadership.

The first test drives the schedulers' cron runners with an explicit clock, so the slots and
the restart are exact (no waiting for wall-clock minutes). The second runs two schedulers
for real on the SQLite ledger with a per-second schedule.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import fairlane
from fairlane.scheduling import cron as cron_module
from fairlane.scheduling.cron import Cron, declared_schedules
from fairlane.scheduling.service import Scheduler

from .support import eventually

T0 = datetime(2026, 11, 2, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _forget_declared_schedules() -> Iterator[None]:
    saved = dict(cron_module._declared)
    yield
    cron_module._declared.clear()
    cron_module._declared.update(saved)


def test_cron_slot_is_enqueued_once_across_a_restart(make_app: Any, queue: str) -> None:
    # Given an actor on a 5-minute schedule for tenant "acme", declared with @fairlane.cron
    app = make_app()

    @fairlane.cron("*/5 * * * *", name=f"report_{queue}", tenant="acme", args=(7,))
    @fairlane.actor(queue_name=queue)
    def report(store: int) -> None:
        pass

    schedules = [schedule for schedule in declared_schedules() if schedule.name == f"report_{queue}"]
    first = Scheduler(app, schedules=schedules)
    try:
        # When the leader ticks at 12:00:00.5 and 12:00:30
        fired = first.cron.tick(T0 + timedelta(seconds=0.5)) + first.cron.tick(T0 + timedelta(seconds=30))

        # Then the 12:00 slot was enqueued once
        assert [(fire.fire_time, fire.created) for fire in fired] == [(T0, True)]
    finally:
        first.lock.close()

    # When the scheduler restarts at 12:00:40 (a new process: no memory of what it fired)
    second = Scheduler(app, schedules=schedules)
    try:
        again = second.cron.tick(T0 + timedelta(seconds=40))
        later = second.cron.tick(T0 + timedelta(minutes=5, seconds=0.2))
    finally:
        second.lock.close()

    # Then it finds 12:00 already enqueued and enqueues 12:05 once
    assert [(fire.fire_time, fire.created) for fire in again] == [(T0, False)]
    assert [(fire.fire_time, fire.created) for fire in later] == [(T0 + timedelta(minutes=5), True)]
    enqueued = fairlane.jobs.list(queue=queue)
    assert sorted((job.idempotency_key, job.tenant, job.actor) for job in enqueued) == [
        (f"cron:report_{queue}:2026-11-02T12:00:00+00:00", "acme", "report"),
        (f"cron:report_{queue}:2026-11-02T12:05:00+00:00", "acme", "report"),
    ]


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)  # PostgreSQL: test_scheduler_leader
def test_two_schedulers_on_sqlite_fire_a_per_second_schedule_once_per_slot(make_app: Any, queue: str) -> None:
    # Given two schedulers on one SQLite ledger (file lock) with a per-second schedule
    app = make_app()

    @fairlane.actor(queue_name=queue)
    def tick() -> None:
        pass

    schedules = [Cron(f"tick_{queue}", "* * * * * *", "tick")]
    schedulers = [Scheduler(app, schedules=schedules, identity=f"replica-{n}") for n in range(2)]
    stops = [threading.Event() for _ in schedulers]
    threads = [
        threading.Thread(target=scheduler.run, args=(stop,), daemon=True)
        for scheduler, stop in zip(schedulers, stops, strict=True)
    ]
    for thread in threads:
        thread.start()
    try:
        # When they run for a while
        eventually(lambda: any(s.is_leader for s in schedulers), timeout=5, message="a leader")
        time.sleep(2.5)

        # Then exactly one leads
        assert sum(scheduler.is_leader for scheduler in schedulers) == 1
        leader = next(index for index, scheduler in enumerate(schedulers) if scheduler.is_leader)

        # When the leader stops, the other takes over and keeps firing
        fired_before = len(fairlane.jobs.list(queue=queue, limit=1000))
        stops[leader].set()
        threads[leader].join(timeout=10)
        eventually(lambda: schedulers[1 - leader].is_leader, timeout=5, message="takeover")
        eventually(
            lambda: len(fairlane.jobs.list(queue=queue, limit=1000)) >= fired_before + 2,
            timeout=5,
            message="new leader fires",
        )
    finally:
        for stop in stops:
            stop.set()
        for thread in threads:
            thread.join(timeout=10)

    # Then each slot was enqueued once, at whole seconds
    keys = [job.idempotency_key or "" for job in fairlane.jobs.list(queue=queue, limit=1000)]
    fire_times = sorted(datetime.fromisoformat(key.split(":", 2)[2]) for key in keys)
    assert len(fire_times) == len(set(fire_times)) >= 4
    assert all(moment.microsecond == 0 for moment in fire_times)
