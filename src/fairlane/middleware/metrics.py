"""Metrics: count every attempt's start and outcome, its queue wait and run time.

Labels are ``queue`` (the actor queue, not the lane queue), ``actor`` and ``lane``, never a
tenant, job id or error text. The middleware sits right after Tracking in the stack, so it
sees the attempt number and runnable time Tracking put on the message, and its
after-hooks run after those of Results, Retries and Cancellation (Dramatiq runs after-hooks
in reverse order), so it sees each attempt's final outcome:

* returned normally: succeeded (or, if Results refused the result, failed and dead);
* raised :class:`~fairlane.errors.JobCancelled`: cancelled;
* raised anything else: failed, then dead if Retries dead-lettered it (``message.failed``),
  else retried.

Queue wait is start time minus the moment the job became runnable (accepted, or its delay
or backoff ended), so delays and backoffs are not counted as waiting. In progress and the
oldest running attempt's age are gauges, refreshed every second while the worker runs.
The middleware also keeps this process's own counts (processed, in progress) for heartbeats.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware

from fairlane.errors import JobCancelled
from fairlane.middleware.tracking import RUNNABLE_SINCE_OPTION
from fairlane.observability.catalog import (
    JOB_DURATION_SECONDS,
    JOB_QUEUE_WAIT_SECONDS,
    JOBS_CANCELLED,
    JOBS_DEAD,
    JOBS_FAILED,
    JOBS_IN_PROGRESS,
    JOBS_RETRIED,
    JOBS_STARTED,
    JOBS_SUCCEEDED,
    OLDEST_RUNNING_JOB_AGE_SECONDS,
)

#: Seconds between refreshes of the oldest-running-attempt gauge.
AGE_REFRESH_INTERVAL = 1.0


@dataclasses.dataclass(frozen=True)
class _Attempt:
    queue: str
    actor: str
    lane: str
    started: float  # monotonic
    started_at: float  # wall clock

    @property
    def labels(self) -> dict[str, str]:
        return {"queue": self.queue, "actor": self.actor, "lane": self.lane}


class Metrics(Middleware):
    """Record job metrics in the process's prometheus_client metrics."""

    def __init__(self) -> None:
        self._running: dict[tuple[str, int], _Attempt] = {}
        self._queues: set[str] = set()
        self._lock = threading.Lock()
        self._processed = 0
        self._stop = threading.Event()

    # -- counts for heartbeats -----------------------------------------------------------------------

    @property
    def processed(self) -> int:
        """Attempts this process finished, whatever their outcome."""
        with self._lock:
            return self._processed

    @property
    def in_progress(self) -> int:
        """Attempts running in this process now."""
        with self._lock:
            return len(self._running)

    # -- hooks ---------------------------------------------------------------------------------------

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        self._stop.clear()
        with self._lock:
            self._queues.update(getattr(broker, "actor_queues", ()))
        threading.Thread(target=self._refresh_ages, name="fairlane-metrics", daemon=True).start()

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self._stop.set()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        queue = broker.actor_queue_of(message.queue_name)  # type: ignore[attr-defined]
        lane = str(message.options.get("priority") or message.queue_name.rpartition(".")[2])
        attempt = _Attempt(queue, message.actor_name, lane, time.monotonic(), time.time())
        labels = attempt.labels
        JOBS_STARTED.labels(**labels).inc()
        runnable_since = message.options.get(RUNNABLE_SINCE_OPTION)
        if isinstance(runnable_since, int | float):
            JOB_QUEUE_WAIT_SECONDS.labels(**labels).observe(max(0.0, attempt.started_at - runnable_since))
        JOBS_IN_PROGRESS.labels(**labels).inc()
        with self._lock:
            self._running[(message.message_id, threading.get_ident())] = attempt
            self._queues.add(queue)
        self.refresh_ages()

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        attempt = self._finish(message, processed=True)
        if attempt is None:
            return
        labels = attempt.labels
        JOB_DURATION_SECONDS.labels(**labels).observe(time.monotonic() - attempt.started)
        if isinstance(exception, JobCancelled):
            JOBS_CANCELLED.labels(**labels).inc()
        elif exception is None and not message.failed:
            JOBS_SUCCEEDED.labels(**labels).inc()
        else:
            JOBS_FAILED.labels(**labels).inc()
            if message.failed:
                JOBS_DEAD.labels(**labels).inc()
            else:
                JOBS_RETRIED.labels(**labels).inc()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        # Only a middleware after this one can skip a message this one saw start; the attempt
        # then ends without an outcome (whoever skipped it counts why, e.g. as deferred).
        self._finish(message, processed=False)

    # -- gauges --------------------------------------------------------------------------------------

    def refresh_ages(self) -> None:
        """Set the oldest-running-attempt age of every queue this process knows (0 when idle)."""
        now = time.monotonic()
        with self._lock:
            oldest: dict[str, float] = dict.fromkeys(self._queues, 0.0)
            for attempt in self._running.values():
                oldest[attempt.queue] = max(oldest[attempt.queue], now - attempt.started)
        for queue, age in oldest.items():
            OLDEST_RUNNING_JOB_AGE_SECONDS.labels(queue=queue).set(age)

    def _finish(self, message: MessageProxy, *, processed: bool) -> _Attempt | None:
        with self._lock:
            attempt = self._running.pop((message.message_id, threading.get_ident()), None)
            if attempt is not None and processed:
                self._processed += 1
        if attempt is not None:
            JOBS_IN_PROGRESS.labels(**attempt.labels).dec()
            self.refresh_ages()
        return attempt

    def _refresh_ages(self) -> None:
        while not self._stop.wait(AGE_REFRESH_INTERVAL):
            self.refresh_ages()


__all__ = ["Metrics"]
