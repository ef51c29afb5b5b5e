"""What the ledger tells a worker process as it happens: admission wake-ups and cancels.

A worker process keeps one ``LISTEN`` connection to a PostgreSQL ledger (none on SQLite):

* ``fairlane_admission``: a send whose job had to wait names its queue, and the process's
  dispatcher runs a round for it (see :mod:`fairlane.dispatch`);
* ``fairlane_cancel``: a cancel names a job that must not start. The ids go to the process's
  :class:`CancelledJobs`, which the worker checks before it runs a job without waiting for the
  ledger to record its start (see :mod:`fairlane.middleware.tracking`). Each time the
  connection is made, the jobs cancelled before they started within the last hour are loaded
  too, so a cancel made while nobody listened is known as well.

While the connection is down, :attr:`CancelledJobs.complete` is False and workers record every
start before running its job, as on SQLite.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import sqlalchemy as sa

from fairlane.ledger.admission import ADMISSION_CHANNEL
from fairlane.ledger.database import dedicated_connection
from fairlane.ledger.jobs import CANCEL_CHANNEL, CANCEL_LOOKBACK_SECONDS, CANCELLED_UNSTARTED_PG

logger = logging.getLogger("fairlane.dispatch")

#: Seconds before a failed LISTEN connection is tried again.
RECONNECT_PAUSE = 1.0
#: Most cancelled ids a process remembers (the oldest are forgotten first).
MAX_CANCELLED = 100_000


class CancelledJobs:
    """Ids of jobs cancelled before they started, as this process has heard of them (thread-safe)."""

    def __init__(self) -> None:
        self._ids: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()
        #: True while every cancel is heard (the LISTEN connection is up and the lookback loaded).
        self.complete = False

    def add(self, job_ids: list[str]) -> None:
        """Remember these ids (for :data:`~fairlane.ledger.jobs.CANCEL_LOOKBACK_SECONDS`)."""
        now = time.monotonic()
        with self._lock:
            for job_id in job_ids:
                self._ids[job_id] = now
                self._ids.move_to_end(job_id)
            oldest = now - CANCEL_LOOKBACK_SECONDS
            while self._ids and (len(self._ids) > MAX_CANCELLED or next(iter(self._ids.values())) < oldest):
                self._ids.popitem(last=False)

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            return job_id in self._ids


class LedgerListener:
    """``LISTEN`` for admission wake-ups and cancels on a dedicated PostgreSQL connection."""

    def __init__(self, engine: sa.Engine, cancelled: CancelledJobs) -> None:
        self.engine = engine
        self.cancelled = cancelled
        self._raw: Any = None  # the psycopg connection
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def connect(self) -> Any:
        """The connection, made (and the recent cancels loaded) if it is not up; None on SQLite."""
        with self._lock:
            wanted = self._raw is None and self.engine.dialect.name == "postgresql"
            if wanted and time.monotonic() >= self._retry_at:
                try:
                    connection = dedicated_connection(self.engine)
                    connection.execute(f"LISTEN {ADMISSION_CHANNEL}")
                    connection.execute(f"LISTEN {CANCEL_CHANNEL}")
                    # Listening first, then loading: no cancel falls between the two.
                    self.cancelled.add([row[0] for row in connection.execute(CANCELLED_UNSTARTED_PG)])
                    self._raw = connection
                    self.cancelled.complete = True
                except Exception as error:
                    self._retry_at = time.monotonic() + RECONNECT_PAUSE
                    logger.warning(
                        "event=listen_failed error=%s action='sweeping until it reconnects'", error
                    )
            return self._raw

    def fds(self) -> list[int]:
        """The descriptor to wait on for notifications (none while disconnected)."""
        connection = self.connect()
        return [] if connection is None else [connection.fileno()]

    def notified(self) -> set[str]:
        """Queues named by admission wake-ups since the last call (cancels go to ``cancelled``)."""
        connection = self.connect()
        if connection is None:
            return set()
        queues: set[str] = set()
        cancelled: list[str] = []
        try:
            connection.pgconn.consume_input()
            while (notification := connection.pgconn.notifies()) is not None:
                if notification.relname.decode() == CANCEL_CHANNEL:
                    cancelled.append(notification.extra.decode())
                else:
                    queues.add(notification.extra.decode())
        except Exception as error:
            logger.warning("event=listen_lost error=%s action=reconnecting", error)
            self.close()
        self.cancelled.add(cancelled)
        return queues

    def close(self) -> None:
        """Drop the connection; until it is made again, cancels may go unheard."""
        with self._lock:
            self.cancelled.complete = False
            raw, self._raw = self._raw, None
        if raw is not None:
            try:
                raw.close()
            except Exception:
                logger.debug("event=listen_close_failed")


__all__ = ["CancelledJobs", "LedgerListener"]
