"""Admission sweeps: admit backlog jobs that became due while nothing else happened.

Admission normally runs on every send and every job start. Jobs whose retry backoff or
delay ends later, and jobs left pending by a failed publish, are admitted by this sweep,
which runs in each worker every ``admission_interval`` seconds for the queues it consumes,
or sooner when admission said when a rate-limited job becomes affordable.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware

logger = logging.getLogger("fairlane.worker")


class AdmissionSweeper(Middleware):
    """Periodically admit the due backlog of every queue this worker consumes."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        self._stop.clear()
        threading.Thread(target=self._sweep, args=(broker,), name="fairlane-admission", daemon=True).start()

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self._stop.set()

    def _sweep(self, broker: Any) -> None:
        while not self._stop.wait(self._next_wait(broker)):
            for queue in sorted(broker.actor_queues):
                try:
                    broker.admit(queue)
                except Exception:
                    logger.exception("event=admission_sweep_failed queue=%s", queue)

    def _next_wait(self, broker: Any) -> float:
        """Sleep until the next sweep, or until a rate-limited job may be affordable, if sooner."""
        hints = broker.next_admission_at
        if not hints:
            return self.interval
        soonest = min(hints.values())
        hints.clear()
        return max(0.0, min(self.interval, soonest - time.time()))
