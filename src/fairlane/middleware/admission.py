"""The admitter: each worker process's thread that admits backlog jobs into RabbitMQ.

Sends admit their own queue at once. Inside a worker, every job start frees a dispatch slot
and asks the admitter for a round (:meth:`FairlaneBroker.request_admission`); requests that
arrive during a round are served together by the next, so rounds batch themselves under
load and stay off the jobs' own path. Every ``admission_interval`` seconds (sooner when a
rate-limited job becomes affordable) the admitter also sweeps every queue this worker
consumes, for jobs whose delay or retry backoff ended and jobs left pending by a failed
publish. When another process's round holds a queue, the request is kept for the next turn.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware

logger = logging.getLogger("fairlane.worker")

#: Seconds to wait before retrying a queue whose round another process holds.
BUSY_RETRY = 0.005


class Admitter(Middleware):
    """Run admission rounds on request and on a timer, in one thread per worker process."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        self._stop.clear()
        threading.Thread(target=self._run, args=(broker,), name="fairlane-admitter", daemon=True).start()

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self._stop.set()
        broker.admission_wanted.set()  # type: ignore[attr-defined]

    def _run(self, broker: Any) -> None:
        next_sweep = time.monotonic()
        while not self._stop.is_set():
            broker.admission_wanted.wait(self._next_wait(broker, next_sweep))
            broker.admission_wanted.clear()
            requested = set(broker.admission_requests)
            broker.admission_requests.difference_update(requested)
            requested |= self._affordable_now(broker)
            if time.monotonic() >= next_sweep:
                requested |= set(broker.actor_queues)
                next_sweep = time.monotonic() + self.interval
            for queue in sorted(requested):
                self._admit(broker, queue)

    def _admit(self, broker: Any, queue: str) -> None:
        try:
            if broker.admit(queue, wait=False) is None:
                time.sleep(BUSY_RETRY)
                broker.request_admission(queue)
        except Exception:
            logger.exception("event=admission_failed queue=%s", queue)

    def _affordable_now(self, broker: Any) -> set[str]:
        """Queues whose rate-limited jobs may be affordable by now (their hint is consumed)."""
        now = time.time()
        due = {queue for queue, moment in list(broker.next_admission_at.items()) if moment <= now}
        for queue in due:
            broker.next_admission_at.pop(queue, None)
        return due

    def _next_wait(self, broker: Any, next_sweep: float) -> float:
        """Until the next sweep, or until a rate-limited job may be affordable, if sooner."""
        wait = next_sweep - time.monotonic()
        hints = list(broker.next_admission_at.values())
        if hints:
            wait = min(wait, min(hints) - time.time())
        return max(0.0, wait)
