"""Worker processes: Dramatiq's worker on fairlane's broker, one message prefetched per thread.

``fairlane worker MODULE… --processes N --threads M`` runs N processes of M threads.
SIGTERM or SIGINT stops consuming, lets running jobs finish (up to ``--shutdown-timeout``)
and returns unstarted prefetched messages to RabbitMQ.
"""

from __future__ import annotations

import importlib
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

import dramatiq

from fairlane.app import App, get_app

logger = logging.getLogger("fairlane.worker")


class _ResultsAreStored(logging.Filter):
    """Drop Dramatiq's warning that results are discarded: fairlane's Results middleware keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "haven't added the Results middleware" not in record.getMessage()


logging.getLogger("dramatiq.worker.WorkerThread").addFilter(_ResultsAreStored())


def import_actor_modules(modules: Sequence[str]) -> None:
    """Import the modules that declare the actors a worker runs."""
    for name in modules:
        importlib.import_module(name)


@contextmanager
def running_worker(app: App, threads: int, shutdown_timeout: float = 600.0) -> Iterator[dramatiq.Worker]:
    """Run a Dramatiq worker for ``app`` in this process until the block exits."""
    broker = app.broker
    if not getattr(broker, "_fairlane_booted", False):
        broker.emit_after("process_boot")
        broker._fairlane_booted = True  # type: ignore[attr-defined]
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.queue_prefetch = threads  # one message per worker thread: the budget, not prefetch, buffers
    worker.start()
    logger.info("event=worker_started threads=%d queues=%s", threads, ",".join(sorted(broker.actor_queues)))
    try:
        yield worker
    finally:
        worker.stop(timeout=int(shutdown_timeout * 1000))
        logger.info("event=worker_stopped")


def run_process(modules: Sequence[str], threads: int, shutdown_timeout: float) -> int:
    """Run one worker process until SIGTERM or SIGINT; returns the exit code."""
    app = get_app()
    import_actor_modules(modules)
    stop = threading.Event()

    def _request_stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("event=shutdown_requested signal=%s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    with running_worker(app, threads, shutdown_timeout):
        stop.wait()
    app.close()
    return 0


def run_processes(modules: Sequence[str], processes: int, threads: int, shutdown_timeout: float) -> int:
    """Run ``processes`` worker processes; stop them all on a signal or when one dies."""
    command = [sys.executable, "-m", "fairlane.cli", "worker", "--processes", "1", "--threads", str(threads)]
    command += ["--shutdown-timeout", str(shutdown_timeout), *modules]
    children = [subprocess.Popen(command) for _ in range(processes)]
    stopping = threading.Event()

    def _forward(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    exit_code = 0
    while any(child.poll() is None for child in children):
        for child in children:
            code = child.poll()
            if code not in (None, 0) and not stopping.is_set():
                logger.error(
                    "event=worker_process_died pid=%d code=%s action='stopping the others'", child.pid, code
                )
                exit_code = code or 1
                _forward(signal.SIGTERM, None)
        time.sleep(0.2)
    return exit_code
