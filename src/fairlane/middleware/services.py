"""Worker services: start the dispatcher with the worker, and flush the ledger writer at its end.

At boot the dispatcher learns the queues this worker consumes and starts its thread. At
shutdown it stops before the worker threads finish their jobs (no new admissions while the
process drains), and the ledger writer flushes after every worker thread has ended, so no
finish of a job that ran here is left unwritten by a clean stop.
"""

from __future__ import annotations

from typing import Any

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware

from fairlane.dispatch import Dispatcher
from fairlane.ledger.writer import LedgerWriter


class WorkerServices(Middleware):
    """Tie the dispatcher's and the ledger writer's threads to the worker's life."""

    def __init__(self, dispatcher: Dispatcher, writer: LedgerWriter) -> None:
        self.dispatcher = dispatcher
        self.writer = writer

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        self.dispatcher.serve(broker.actor_queues)  # type: ignore[attr-defined]
        self.dispatcher.start()

    def before_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self.dispatcher.stop()

    def after_worker_shutdown(self, broker: Broker, worker: Any) -> None:
        self.writer.stop()
