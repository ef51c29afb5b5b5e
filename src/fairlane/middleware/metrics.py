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
or backoff ended), so delays and backoffs are not counted as waiting. That moment is a time
on the ledger's clock, so the start is too: this process's clock plus its heartbeat's last
measured offset (:class:`~fairlane.ledger.clock.ClockOffset`). In progress and the
oldest running attempt's age are gauges; the age is refreshed every second while the worker
runs. Each (queue, actor, lane) resolves its labelled series once: a job pays no label lookup.
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
from fairlane.ledger.clock import ClockOffset
from fairlane.middleware.tracking import runnable_since_of
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


class _Series:
    """The labelled series of one (queue, actor, lane), each resolved on first use.

    An outcome's series appears only once that outcome happened (no zero series for it).
    """

    def __init__(self, queue: str, actor: str, lane: str) -> None:
        self.queue = queue
        self._labels = {"queue": queue, "actor": actor, "lane": lane}
        self._children: dict[int, Any] = {}

    def __getitem__(self, metric: Any) -> Any:
        child = self._children.get(id(metric))
        if child is None:
            child = self._children.setdefault(id(metric), metric.labels(**self._labels))
        return child


@dataclasses.dataclass(frozen=True)
class _Attempt:
    series: _Series
    started: float  # monotonic


class Metrics(Middleware):
    """Record job metrics in the process's prometheus_client metrics."""

    def __init__(self, clock_offset: ClockOffset | None = None) -> None:
        #: The ledger's clock against this process's (queue waits are measured on the ledger's).
        self.clock_offset = clock_offset or ClockOffset()
        self._running: dict[tuple[str, int], _Attempt] = {}
        self._series: dict[tuple[str, str, str], _Series] = {}
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
        lane = str(message.options.get("priority", ""))
        key = (queue, message.actor_name, lane)
        series = self._series.get(key)
        if series is None:
            series = self._series.setdefault(key, _Series(*key))
        attempt = _Attempt(series, time.monotonic())
        series[JOBS_STARTED].inc()
        runnable_since = runnable_since_of(message)
        if runnable_since is not None:
            waited = self.clock_offset.ledger_time() - runnable_since
            series[JOB_QUEUE_WAIT_SECONDS].observe(max(0.0, waited))
        series[JOBS_IN_PROGRESS].inc()
        with self._lock:
            self._running[(message.message_id, threading.get_ident())] = attempt
            self._queues.add(queue)

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
        series = attempt.series
        series[JOB_DURATION_SECONDS].observe(time.monotonic() - attempt.started)
        if isinstance(exception, JobCancelled):
            series[JOBS_CANCELLED].inc()
        elif exception is None and not message.failed:
            series[JOBS_SUCCEEDED].inc()
        else:
            series[JOBS_FAILED].inc()
            series[JOBS_DEAD if message.failed else JOBS_RETRIED].inc()

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
                queue = attempt.series.queue
                oldest[queue] = max(oldest[queue], now - attempt.started)
        for queue, age in oldest.items():
            OLDEST_RUNNING_JOB_AGE_SECONDS.labels(queue=queue).set(age)

    def _finish(self, message: MessageProxy, *, processed: bool) -> _Attempt | None:
        with self._lock:
            attempt = self._running.pop((message.message_id, threading.get_ident()), None)
            if attempt is not None and processed:
                self._processed += 1
        if attempt is not None:
            attempt.series[JOBS_IN_PROGRESS].dec()
        return attempt

    def _refresh_ages(self) -> None:
        while not self._stop.wait(AGE_REFRESH_INTERVAL):
            self.refresh_ages()


__all__ = ["Metrics"]
