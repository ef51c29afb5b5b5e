"""Worker services: the dispatcher, the ledger writer and the heartbeat, tied to the worker's life.

At boot the worker's actors go to the actor catalog (so services that do not declare them
can send to them), the dispatcher learns the queues this worker consumes and starts its
thread, and the heartbeat starts beating (the reaper leaves this worker's running jobs
alone while it beats). At shutdown the dispatcher stops before the worker threads finish
their jobs (no new admissions while the process drains); after every worker thread has
ended, the ledger writer flushes (so no finish of a job that ran here is left unwritten by a
clean stop) and the heartbeat stops, removing the worker's row.

Because these hooks come with the broker's middleware, a plain ``dramatiq.Worker`` (or the
``dramatiq`` command) on fairlane's broker gets all of this too, not only ``fairlane worker``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware

from fairlane.broker import FairlaneBroker
from fairlane.dispatch import Dispatcher
from fairlane.ledger.actors import CatalogEntry
from fairlane.ledger.clock import ClockOffset
from fairlane.ledger.writer import LedgerWriter
from fairlane.observability.heartbeat import WorkerHeartbeat
from fairlane.work_queue import LaneWorkQueue

logger = logging.getLogger("fairlane.worker")


class WorkerServices(Middleware):
    """Start and stop the dispatcher, the ledger writer and the heartbeat with the worker."""

    def __init__(self, dispatcher: Dispatcher, writer: LedgerWriter, clock_offset: ClockOffset) -> None:
        self.dispatcher = dispatcher
        self.writer = writer
        #: Measured by the heartbeat, read by the metrics (see fairlane.ledger.clock).
        self.clock_offset = clock_offset
        #: The heartbeat of the running worker (None before boot and after shutdown).
        self.heartbeat: WorkerHeartbeat | None = None
        self._status_file: Path | None = None

    def report_status_to(self, path: Path | None) -> None:
        """Have the next worker's heartbeat write its health verdicts to ``path`` (a supervisor's)."""
        self._status_file = path

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:
        # Prefetched urgent work runs first, whoever built the worker.
        if not isinstance(worker.work_queue, LaneWorkQueue):
            worker.work_queue = LaneWorkQueue(self._broker(broker).lane_ranks)
        # Hear cancels before the first message arrives (jobs may then run before their start
        # is recorded, see fairlane.middleware.tracking).
        self.dispatcher.listen()

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        fairlane_broker = self._broker(broker)
        entries = [
            CatalogEntry.describe(actor.actor_name, actor.queue_name, actor.fn, actor.options)
            for actor in broker.actors.values()
        ]
        try:
            fairlane_broker.catalog.publish(entries, self.writer.worker_id)
        except Exception:  # senders elsewhere can't see these actors yet; the worker runs anyway
            logger.exception("event=actor_catalog_not_published")
        self.dispatcher.serve(fairlane_broker.actor_queues)
        self.dispatcher.consuming_threads = int(getattr(worker, "worker_threads", 0))
        self.dispatcher.start()
        self.heartbeat = WorkerHeartbeat(
            fairlane_broker, worker, status_file=self._status_file, clock_offset=self.clock_offset
        )
        self.heartbeat.start()

    def after_declare_queue(self, broker: Broker, queue_name: str) -> None:
        # An actor declared after the worker booted: its queue is consumed and swept too.
        self.dispatcher.serve([queue_name])

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self.dispatcher.stop()

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self.writer.stop()
        # Heartbeats went on while running jobs finished, so the reaper left them alone.
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None

    @staticmethod
    def _broker(broker: Broker) -> FairlaneBroker:
        if not isinstance(broker, FairlaneBroker):
            raise TypeError(f"fairlane's worker services need fairlane's broker, not {type(broker).__name__}")
        return broker
