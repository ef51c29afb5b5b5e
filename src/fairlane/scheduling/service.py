"""``fairlane scheduler``: APScheduler in a leader-elected process.

Run any number of replicas; at most one is the leader (see :mod:`fairlane.scheduling.leader`).
Every replica checks leadership every :data:`LEADER_RETRY_SECONDS`: a standby takes the lock
as soon as it is free (the leader died or lost its database session) and a leader that lost
it steps down at once. Only the leader runs the tasks, each an APScheduler interval job on
its own single-thread executor (so a slow cleanup never delays the reaper or cron):

============  ==========================  =============================================
task          every                       does
============  ==========================  =============================================
``cleanup``   ``cleanup_interval``        retention (:mod:`~fairlane.scheduling.cleanup`)
``reaper``    ``reaper_interval``         stale jobs (:mod:`~fairlane.scheduling.reaper`)
``gauges``    ``gauges_interval``         leader gauges (:mod:`~fairlane.scheduling.gauges`)
``cron``      1 s                         due cron fires (:mod:`~fairlane.scheduling.cron`)
============  ==========================  =============================================

Each interval job coalesces missed runs and never overlaps itself; every task is safe to run
twice, so the short overlap of an old leader's last run with a new leader's first is harmless.
A task that fails because RabbitMQ is unreachable is not logged as a failure: the scheduler's
:class:`~fairlane.rabbitmq_outages.Outage` logs the loss once, and, after a later run finds
RabbitMQ again, its return once.
A task's last success is exported as ``fairlane_scheduler_last_success_timestamp_seconds``
and kept in ``fairlane_scheduler_tasks``, so a new leader exports the same times.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from dramatiq.errors import ActorNotFound

from fairlane.app import App, get_app
from fairlane.ledger.clock import database_now
from fairlane.ledger.database import utcnow
from fairlane.ledger.reaping import SchedulerQueries
from fairlane.logs import add_filter_once
from fairlane.middleware.tracking import default_worker_id
from fairlane.observability.catalog import SCHEDULER_IS_LEADER, SCHEDULER_LAST_SUCCESS_TIMESTAMP_SECONDS
from fairlane.observability.exporter import MetricsServer, scheduler_collector, start_metrics_server
from fairlane.observability.health import HealthChecks, HealthServer, Verdict, start_health_server
from fairlane.rabbitmq_outages import CONNECTION_ERRORS
from fairlane.scheduling.cleanup import run_retention
from fairlane.scheduling.cron import Cron, CronRunner, all_schedules
from fairlane.scheduling.gauges import clear_leader_gauges, export_leader_gauges
from fairlane.scheduling.leader import LeaderLock, leader_lock_for
from fairlane.scheduling.reaper import run_reaper

logger = logging.getLogger("fairlane.scheduler")

#: Why a leader steps down when its scheduler stops (logged at INFO, not as a loss).
_STOPPING = "stopping"

#: Seconds between a replica's leadership checks (a standby's attempts to take the lock).
LEADER_RETRY_SECONDS = 1.0
#: Seconds between the leader's checks for due cron fires.
CRON_TICK_SECONDS = 1.0
#: Least seconds between two bookkeeping writes of a task's successes.
RECORD_INTERVAL = 5.0


class _DropOverlapSkips(logging.Filter):
    """Drop APScheduler's WARNING for a run skipped because the task's last run still goes: tasks
    never overlap by design (``max_instances=1``), and a task slowed by an outage would log it
    at every interval."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and "maximum number of running instances" in record.msg)


@dataclasses.dataclass(frozen=True)
class Task:
    """A scheduler task: its name (the ``task`` label), interval and function."""

    name: str
    interval: float
    run: Callable[[], object]
    quiet: bool = False  # log successful runs at debug level (frequent, routine tasks)


class Scheduler:
    """One scheduler replica: contends for leadership and, while leader, runs the tasks."""

    def __init__(
        self,
        app: App,
        *,
        schedules: Sequence[Cron] | None = None,
        lock: LeaderLock | None = None,
        identity: str | None = None,
    ) -> None:
        self.app = app
        self.settings = app.settings
        self.identity = identity or default_worker_id()
        self.lock: LeaderLock = lock or leader_lock_for(app.settings)
        self.queries = SchedulerQueries(app.engine)
        #: The tasks' RabbitMQ outages, logged once each (see fairlane.rabbitmq_outages).
        self.outage = app.broker.outages.scheduler
        self.schedules = list(all_schedules(app.settings.cron) if schedules is None else schedules)
        self._check_schedules()
        self.cron = CronRunner(self.schedules, self._enqueue_fire)
        settings = self.settings
        self.tasks = {
            task.name: task
            for task in (
                Task("cleanup", settings.cleanup_interval, lambda: run_retention(app)),
                Task("reaper", settings.reaper_interval, lambda: run_reaper(app)),
                Task("gauges", settings.gauges_interval, lambda: export_leader_gauges(app), quiet=True),
                # Which cron slots are due is decided on the ledger's clock, read once per tick:
                # a leader whose own clock is off neither fires a slot early nor skips one.
                Task("cron", CRON_TICK_SECONDS, lambda: self.cron.tick(database_now(app.engine)), quiet=True),
            )
        }
        self._aps = BackgroundScheduler(
            timezone=UTC,
            executors={name: ThreadPoolExecutor(max_workers=1) for name in self.tasks},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        add_filter_once("apscheduler.scheduler", _DropOverlapSkips)
        self._leader = threading.Event()
        self._last_check = time.monotonic()
        self._last_recorded: dict[str, float] = {}

    @property
    def is_leader(self) -> bool:
        """Whether this replica holds the leader lock (as of its last check)."""
        return self._leader.is_set()

    # -- leadership ----------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Contend for leadership, and lead when elected, until ``stop`` is set."""
        SCHEDULER_IS_LEADER.set(0)
        self._aps.start(paused=True)
        logger.info("event=scheduler_started identity=%s schedules=%d", self.identity, len(self.schedules))
        try:
            while not stop.is_set():
                self.check_leadership()
                stop.wait(LEADER_RETRY_SECONDS)
        finally:
            self._step_down(_STOPPING)
            self._aps.shutdown(wait=True)
            self.lock.close()
            logger.info("event=scheduler_stopped identity=%s", self.identity)

    def check_leadership(self) -> None:
        """One leadership check: keep, lose or take the lock."""
        self._last_check = time.monotonic()
        if self.is_leader:
            if not self.lock.still_held():
                self._step_down("lock lost")
            return
        if self.lock.try_acquire():
            try:
                self._take_over()
            except Exception:
                logger.exception("event=leader_takeover_failed identity=%s", self.identity)
                self._step_down("takeover failed")
                self.lock.release()

    def _take_over(self) -> None:
        logger.info("event=leader_acquired identity=%s", self.identity)
        self.cron = CronRunner(self.schedules, self._enqueue_fire)  # look back misfire_grace_time
        for name, record in self.queries.task_records().items():
            if name in self.tasks and record.last_success_at is not None:
                SCHEDULER_LAST_SUCCESS_TIMESTAMP_SECONDS.set(record.last_success_at.timestamp(), task=name)
        self._leader.set()
        SCHEDULER_IS_LEADER.set(1)
        now = datetime.now(UTC)
        for task in self.tasks.values():
            self._aps.add_job(
                self._run_task,
                "interval",
                seconds=task.interval,
                args=(task,),
                id=task.name,
                name=task.name,
                executor=task.name,
                next_run_time=now,
                replace_existing=True,
            )
        self._aps.resume()

    def _step_down(self, reason: str) -> None:
        was_leader = self.is_leader
        self._leader.clear()
        if self._aps.running:
            self._aps.pause()
            self._aps.remove_all_jobs()
        SCHEDULER_IS_LEADER.set(0)
        clear_leader_gauges()
        if was_leader and reason == _STOPPING:  # a clean hand-over: another replica takes over
            logger.info("event=leader_released identity=%s", self.identity)
        elif was_leader:
            logger.warning("event=leader_lost identity=%s reason=%r", self.identity, reason)

    # -- tasks ---------------------------------------------------------------------------------------

    def run_task(self, name: str) -> None:
        """Run task ``name`` now, in this thread (tests and operators)."""
        self._run_task(self.tasks[name], force=True)

    def _run_task(self, task: Task, *, force: bool = False) -> None:
        if not (force or self.is_leader):
            return
        # This process's clock: the task's bookkeeping and success gauge, which nothing in fairlane
        # compares with a ledger time (its cutoffs use the ledger's clock, see run_reaper).
        started = utcnow()
        clock = time.monotonic()
        error = None
        try:
            self._call(task)
        except CONNECTION_ERRORS as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.outage.lost(exc)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            logger.exception("event=scheduler_task_failed task=%s identity=%s", task.name, self.identity)
        finished = utcnow()
        if error is None and self.outage.down and self._rabbitmq_reachable():
            self.outage.restored()
        if error is None:
            SCHEDULER_LAST_SUCCESS_TIMESTAMP_SECONDS.set(finished.timestamp(), task=task.name)
            (logger.debug if task.quiet else logger.info)(
                "event=scheduler_task_done task=%s identity=%s duration_ms=%d",
                task.name,
                self.identity,
                (time.monotonic() - clock) * 1000,
            )
        if error is None and clock - self._last_recorded.get(task.name, -RECORD_INTERVAL) < RECORD_INTERVAL:
            return
        try:
            self.queries.record_task_run(task.name, self.identity, started, finished, error)
            self._last_recorded[task.name] = clock
        except Exception:
            logger.warning("event=scheduler_task_not_recorded task=%s", task.name, exc_info=True)

    def _call(self, task: Task) -> None:
        """Run a task; on a dropped RabbitMQ connection, reconnect once and run it again.

        Each task runs in its own thread and so has its own broker connection, which may have
        been idle for a whole interval (long enough for RabbitMQ to drop it).
        """
        try:
            task.run()
        except CONNECTION_ERRORS:
            del self.app.broker.connection
            task.run()

    def _rabbitmq_reachable(self) -> bool:
        """Whether this thread's RabbitMQ connection works (a task may succeed without using it)."""
        try:
            self.app.broker.connection.process_data_events(time_limit=0)
        except CONNECTION_ERRORS:
            del self.app.broker.connection
            return False
        return True

    # -- cron ----------------------------------------------------------------------------------------

    def _check_schedules(self) -> None:
        for schedule in self.schedules:
            try:
                self.app.broker.get_actor(schedule.actor)
            except ActorNotFound:
                raise ValueError(
                    f"cron schedule {schedule.name!r}: actor {schedule.actor!r} is not declared; "
                    "pass the module that declares it to `fairlane scheduler`"
                ) from None

    def _enqueue_fire(self, schedule: Cron, fire_time: datetime) -> bool:
        actor: Any = self.app.broker.get_actor(schedule.actor)
        options: dict[str, Any] = {"idempotency_key": schedule.idempotency_key(fire_time)}
        if schedule.tenant is not None:
            options["tenant"] = schedule.tenant
        if schedule.priority is not None:
            options["priority"] = schedule.priority
        message = actor.message_with_options(args=schedule.args, kwargs=dict(schedule.kwargs), **options)
        stored = self.app.broker.enqueue(message)
        return bool(stored.message_id == message.message_id)

    # -- health --------------------------------------------------------------------------------------

    def checks(self) -> HealthChecks:
        """Live and ready while the leadership loop runs (a standby is healthy too)."""

        def _loop_runs() -> Verdict:
            age = time.monotonic() - self._last_check
            if age > 10 * LEADER_RETRY_SECONDS + 5:
                return Verdict(False, f"leadership loop last ran {age:.0f} s ago")
            return Verdict(True, "ok (leader)" if self.is_leader else "ok (standby)")

        return HealthChecks(live=_loop_runs, ready=_loop_runs)


def run_scheduler(modules: Sequence[str]) -> int:
    """Run a scheduler replica until SIGTERM or SIGINT (``fairlane scheduler``); returns the exit code."""
    from fairlane.worker import import_actor_modules

    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
    logging.getLogger("apscheduler.scheduler").setLevel(logging.WARNING)
    app = get_app()
    import_actor_modules(modules)
    scheduler = Scheduler(app)
    stop = threading.Event()

    def _request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("event=shutdown_requested signal=%s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    servers: list[MetricsServer | HealthServer | None] = [
        start_metrics_server(app.settings.metrics_port, scheduler_collector()),
        start_health_server(app.settings.health_port, scheduler.checks()),
    ]
    try:
        scheduler.run(stop)
    finally:
        for server in servers:
            if server is not None:
                server.close()
        app.close()
    return 0


__all__ = ["CRON_TICK_SECONDS", "LEADER_RETRY_SECONDS", "Scheduler", "Task", "run_scheduler"]
