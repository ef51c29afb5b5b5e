"""Rate limits on the worker side: declare the actor options, and honour pauses at start.

Budgets are spent at admission (see :mod:`fairlane.ratelimit`). A job that was already
published when its key got paused is not started: it goes back to the ledger backlog,
runnable when the pause ends, without spending an attempt.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware, SkipMessage

from fairlane.ledger.jobs import JobStore
from fairlane.ledger.ratelimits import Pause, RateLimits
from fairlane.observability.catalog import JOBS_DEFERRED

logger = logging.getLogger("fairlane.worker")

#: Seconds a worker trusts its last reading of a key's pause.
PAUSE_CACHE_SECONDS = 0.25


class RateLimitPauses(Middleware):
    """Send jobs of a paused rate-limit key back to the backlog instead of running them."""

    def __init__(self, jobs: JobStore, rate_limits: RateLimits) -> None:
        self.jobs = jobs
        self.rate_limits = rate_limits
        #: Per key, its last reading and when it was read (this process's monotonic clock).
        self._pauses: dict[str, tuple[float, Pause]] = {}

    @property
    def actor_options(self) -> set[str]:
        return {"rate_limit", "tokens"}

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        key = message.options.get("rate_limit")
        if key is None:
            return
        pause = self._pause(key)
        if pause is None:
            return
        # The pause's end is a time on the ledger's clock: the job waits exactly that long.
        self.jobs.defer(message.message_id, datetime.fromtimestamp(pause.until, UTC))
        JOBS_DEFERRED.labels(
            queue=broker.actor_queue_of(message.queue_name),  # type: ignore[attr-defined]
            actor=message.actor_name,
            lane=message.options.get("priority", ""),
            reason="ratelimit_paused",
        ).inc()
        logger.info("event=job_deferred job=%s reason=ratelimit_paused key=%s", message.message_id, key)
        raise SkipMessage(f"rate limit {key!r} is paused")

    def _pause(self, key: str) -> Pause | None:
        """The key's pause if it still runs (the time left counted on this process's timer since
        the reading, so this process's wall clock never matters)."""
        read_at, pause = self._pauses.get(key, (0.0, Pause(0.0, 0.0)))
        if time.monotonic() - read_at > PAUSE_CACHE_SECONDS:
            read_at, pause = time.monotonic(), self.rate_limits.pause_of(key)
            self._pauses[key] = (read_at, pause)
        return pause if pause.remaining > time.monotonic() - read_at else None
