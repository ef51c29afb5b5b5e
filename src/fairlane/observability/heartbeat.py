"""Worker heartbeats: the ledger row, the health verdicts and the periodic heartbeat log line.

A :class:`WorkerHeartbeat` runs one daemon thread per worker process. Every second it checks
that the worker's consumers are connected (readiness) and, for a supervised process, writes
both verdicts to a small status file its supervisor serves; every ``heartbeat_interval`` it
upserts the process's ``fairlane_workers`` row (liveness is "that write succeeded within
``heartbeat_timeout``"), measures how far the ledger's clock is from the process's own (see
:class:`~fairlane.ledger.clock.ClockOffset`; an offset over :data:`CLOCK_OFFSET_WARNING`
seconds is logged once, as ``event=clock_offset``: the process's own clock then differs from
the database's, which fairlane's decisions never depend on) and refreshes the rate-limit usage
gauges; every ``heartbeat_log_interval`` it logs one line::

    event=worker_heartbeat worker=host:1234 in_progress=3 processed=1207 queues=exports,ingest
    ratelimits=openai.requests_per_minute:387/450
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fairlane.broker import FairlaneBroker
from fairlane.ledger.clock import ClockOffset
from fairlane.ledger.workers import WorkerBeat, WorkerStore
from fairlane.middleware.metrics import Metrics
from fairlane.middleware.tracking import default_worker_id
from fairlane.observability.catalog import RATELIMIT_LIMIT, RATELIMIT_USED
from fairlane.observability.health import HealthChecks, Verdict

logger = logging.getLogger("fairlane.worker")

#: Seconds between readiness checks (and status-file writes).
CHECK_INTERVAL = 1.0
#: Seconds between this process's clock and the ledger's above which the heartbeat says so.
CLOCK_OFFSET_WARNING = 1.0


def consumers_connected(worker: Any) -> Verdict:
    """Whether every consumer thread of a Dramatiq worker holds an open RabbitMQ channel."""
    consumers = list(getattr(worker, "consumers", {}).values())
    if not consumers:
        return Verdict(False, "no consumers (no actors declared, or not started)")
    down = []
    for thread in consumers:
        consumer = getattr(thread, "consumer", None)
        connection = getattr(consumer, "connection", None)
        channel = getattr(consumer, "channel", None)
        if not (
            thread.is_alive()
            and connection is not None
            and connection.is_open
            and channel is not None
            and channel.is_open
        ):
            down.append(str(thread.queue_name))
    if down:
        return Verdict(False, f"consumers not connected: {','.join(sorted(down))}")
    return Verdict(True)


@dataclasses.dataclass(frozen=True)
class ProcessStatus:
    """What a supervised worker process reports to its supervisor through its status file."""

    pid: int
    live: bool
    ready: bool
    reason: str
    written_at: float

    @classmethod
    def read(cls, path: Path) -> ProcessStatus | None:
        """The status in ``path``, or None if it is missing or unreadable."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None

    def write(self, path: Path) -> None:
        """Write atomically (the supervisor never reads half a file)."""
        partial = path.with_name(path.name + ".tmp")
        partial.write_text(json.dumps(dataclasses.asdict(self)), encoding="utf-8")
        os.replace(partial, path)


class WorkerHeartbeat:
    """Heartbeats, health verdicts and heartbeat log lines of one worker process."""

    def __init__(
        self,
        broker: FairlaneBroker,
        worker: Any,
        *,
        status_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        clock_offset: ClockOffset | None = None,
    ) -> None:
        self.broker = broker
        self.worker = worker
        self.settings = broker.settings
        self.status_file = status_file
        self.worker_id = default_worker_id()
        #: The ledger's clock against this process's, measured by every heartbeat.
        self.clock_offset = clock_offset or ClockOffset()
        self._offset_reported = False
        self.store = WorkerStore(broker.admission.engine)
        self._metrics = next((item for item in broker.middleware if isinstance(item, Metrics)), None)
        self._clock = clock
        self._last_beat: float | None = None
        self._beat_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- verdicts ------------------------------------------------------------------------------------

    def live(self) -> Verdict:
        """Fresh when the last heartbeat reached the ledger within ``heartbeat_timeout``."""
        if self._last_beat is None:
            return Verdict(False, f"no heartbeat yet ({self._beat_error or 'starting'})")
        age = self._clock() - self._last_beat
        if age > self.settings.heartbeat_timeout:
            return Verdict(False, f"heartbeat is {age:.0f} s old ({self._beat_error or 'loop stalled'})")
        return Verdict(True)

    def ready(self) -> Verdict:
        """Ready when every consumer is connected to RabbitMQ."""
        return consumers_connected(self.worker)

    def checks(self) -> HealthChecks:
        """The checks a health server of this process answers with."""
        return HealthChecks(live=self.live, ready=self.ready)

    # -- loop ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Beat once now (so the worker is visible at once), then keep beating in a thread."""
        self.beat()
        self._thread = threading.Thread(target=self._run, name="fairlane-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and delete this process's row (it stopped cleanly)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.store.remove(self.worker_id)
        except Exception:
            logger.warning("event=heartbeat_row_not_removed worker=%s", self.worker_id, exc_info=True)
        if self.status_file is not None:
            self.status_file.unlink(missing_ok=True)

    def beat(self) -> bool:
        """Write one heartbeat to the ledger; returns whether it succeeded."""
        processed, in_progress = self._counts()
        try:
            sent_at = time.time()
            recorded = self.store.beat(
                WorkerBeat(
                    worker_id=self.worker_id,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    queues=sorted(self.broker.actor_queues),
                    processed=processed,
                    in_progress=in_progress,
                    threads=int(getattr(self.worker, "worker_threads", 0)),
                )
            )
            received_at = time.time()
        except Exception as error:
            self._beat_error = f"ledger write failed: {type(error).__name__}"
            logger.warning("event=heartbeat_failed worker=%s error=%s", self.worker_id, type(error).__name__)
            return False
        self._last_beat = self._clock()
        self._beat_error = None
        self._measure_offset(recorded, sent_at, received_at)
        return True

    def _measure_offset(self, recorded: datetime, sent_at: float, received_at: float) -> None:
        offset = self.clock_offset.measure(recorded, sent_at, received_at)
        if abs(offset) > CLOCK_OFFSET_WARNING and not self._offset_reported:
            self._offset_reported = True
            logger.warning(
                "event=clock_offset worker=%s ahead_of_ledger_s=%.1f "
                "action='none: job times come from the database clock'",
                self.worker_id,
                -offset,
            )

    def log_line(self) -> str:
        """The structured heartbeat line (also logged every ``heartbeat_log_interval``)."""
        processed, in_progress = self._counts()
        queues = ",".join(sorted(self.broker.actor_queues)) or "-"
        return (
            f"event=worker_heartbeat worker={self.worker_id} in_progress={in_progress} "
            f"processed={processed} queues={queues} ratelimits={self._rate_limit_usage() or '-'}"
        )

    def _run(self) -> None:
        next_beat = self._clock() + self.settings.heartbeat_interval
        next_log = self._clock() + self.settings.heartbeat_log_interval
        while not self._stop.wait(min(CHECK_INTERVAL, self.settings.heartbeat_interval)):
            now = self._clock()
            if now >= next_beat:
                next_beat = now + self.settings.heartbeat_interval
                if self.beat():
                    self._refresh_rate_limits()
            if now >= next_log:
                next_log = now + self.settings.heartbeat_log_interval
                logger.info(self.log_line())
            self._write_status()

    def _write_status(self) -> None:
        if self.status_file is None:
            return
        live, ready = self.live(), self.ready()
        reason = live.reason if not live.ok else ready.reason
        try:
            ProcessStatus(os.getpid(), live.ok, ready.ok, reason, time.time()).write(self.status_file)
        except OSError:
            logger.warning("event=status_file_not_written path=%s", self.status_file, exc_info=True)

    def _counts(self) -> tuple[int, int]:
        if self._metrics is None:
            return 0, 0
        return self._metrics.processed, self._metrics.in_progress

    def _refresh_rate_limits(self) -> None:
        """Set the rate-limit usage gauges of every configured key from the ledger."""
        for key in sorted(self.settings.rate_limits):
            try:
                usage = self.broker.admission.rate_limits.usage(key)
            except Exception:
                logger.debug("event=ratelimit_usage_failed key=%s", key, exc_info=True)
                continue
            for dimension, (used, limit) in usage.items():
                labels = {"key": key, "dimension": f"{dimension}_per_minute"}
                RATELIMIT_USED.labels(**labels).set(used)
                RATELIMIT_LIMIT.labels(**labels).set(limit)

    def _rate_limit_usage(self) -> str:
        parts = []
        used = {
            (sample.labels["key"], sample.labels["dimension"]): sample.value
            for family in RATELIMIT_USED.collect()
            for sample in family.samples
        }
        limits = {
            (sample.labels["key"], sample.labels["dimension"]): sample.value
            for family in RATELIMIT_LIMIT.collect()
            for sample in family.samples
        }
        for (key, dimension), value in sorted(used.items()):
            limit = limits.get((key, dimension))
            shown = f"{value:g}/{limit:g}" if limit is not None else f"{value:g}"
            parts.append(f"{key}.{dimension}:{shown}")
        return ",".join(parts)


__all__ = ["CHECK_INTERVAL", "ProcessStatus", "WorkerHeartbeat", "consumers_connected"]
