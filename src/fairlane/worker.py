"""Worker processes: Dramatiq's worker on fairlane's broker, one message prefetched per thread.

``fairlane worker MODULE… --processes N --threads M`` runs N processes of M threads.
SIGTERM or SIGINT stops consuming, lets running jobs finish (up to ``--shutdown-timeout``)
and returns unstarted prefetched messages to RabbitMQ.

Every worker process writes heartbeats to the ledger (``fairlane_workers``) and logs a
heartbeat line every ``heartbeat_log_interval``. A pod has one ``/metrics`` endpoint
(``metrics_port``) and one ``/livez`` + ``/readyz`` endpoint (``health_port``):

* ``--processes 1``: the process serves both itself.
* ``--processes N``: the supervisor serves both. Before it starts the N worker processes it
  wipes the multiprocess directory (``metrics_dir``) and puts it in their environment as
  ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client reads it at import); it serves every
  process's metrics merged, with no ``pid`` label, and marks a process dead when it exits.
  Each worker process reports its liveness and readiness in a status file beside its metric
  files; the supervisor is live and ready only when every process is.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import dramatiq
from prometheus_client import REGISTRY
from prometheus_client.registry import Collector

from fairlane.app import App, get_app
from fairlane.logs import configure_logging
from fairlane.observability.catalog import (
    mark_process_dead,
    prepare_multiprocess_dir,
    worker_registry_for_scrape,
)
from fairlane.observability.exporter import MetricsServer, multiprocess_mode_active, start_metrics_server
from fairlane.observability.health import HealthChecks, HealthServer, Verdict, start_health_server
from fairlane.observability.heartbeat import CHECK_INTERVAL, ProcessStatus, WorkerHeartbeat
from fairlane.settings import Settings, load_settings

logger = logging.getLogger("fairlane.worker")
#: Seconds between the main thread's checks for a stop request (see wait_until_stopped).
SIGNAL_CHECK_SECONDS = 1.0


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
def _worker_with_heartbeat(
    app: App, threads: int, shutdown_timeout: float, status_file: Path | None = None
) -> Iterator[tuple[dramatiq.Worker, WorkerHeartbeat]]:
    broker = app.broker
    if not getattr(broker, "_fairlane_booted", False):
        broker.emit_after("process_boot")
        broker._fairlane_booted = True  # type: ignore[attr-defined]
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    # With 2 unacked messages per thread (DESIGN: 1-2), one runs and one is ready, so a thread
    # never waits for an ack's round trip to RabbitMQ before its next job; the budget bounds the rest.
    worker.queue_prefetch = app.settings.prefetch_per_thread * threads
    app.services.report_status_to(status_file)
    worker.start()  # the broker's WorkerServices start the dispatcher and the heartbeat
    heartbeat = app.services.heartbeat
    assert heartbeat is not None
    logger.info("event=worker_started threads=%d queues=%s", threads, ",".join(sorted(broker.actor_queues)))
    try:
        yield worker, heartbeat
    finally:
        worker.stop(timeout=int(shutdown_timeout * 1000))
        logger.info("event=worker_stopped")


@contextmanager
def running_worker(app: App, threads: int, shutdown_timeout: float = 600.0) -> Iterator[dramatiq.Worker]:
    """Run a Dramatiq worker for ``app`` in this process until the block exits (with heartbeats)."""
    with _worker_with_heartbeat(app, threads, shutdown_timeout) as (worker, _heartbeat):
        yield worker


def stop_on_signals(stop: threading.Event, log: logging.Logger = logger) -> None:
    """Set ``stop`` on SIGTERM or SIGINT (in this process's main thread), logging the signal to ``log``."""

    def _request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("event=shutdown_requested signal=%s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)


def wait_until_stopped(stop: threading.Event) -> None:
    """Block this (main) thread until ``stop`` is set, waking every :data:`SIGNAL_CHECK_SECONDS`.

    Python runs signal handlers in the main thread, between its bytecodes. A SIGTERM the kernel
    delivers to another thread does not interrupt an untimed wait, so the handler would wait
    with it, and the worker would not stop until killed.
    """
    while not stop.wait(SIGNAL_CHECK_SECONDS):
        pass


def run_process(
    modules: Sequence[str],
    threads: int,
    shutdown_timeout: float,
    *,
    status_dir: Path | None = None,
) -> int:
    """Run one worker process until SIGTERM or SIGINT; returns the exit code.

    Without ``status_dir`` the process is the whole pod: it serves ``/metrics`` and the health
    endpoints. With it, a supervisor does, and this process writes its status file there.
    """
    app = get_app()
    settings = app.settings
    supervised = status_dir is not None
    if not supervised and multiprocess_mode_active():
        # PROMETHEUS_MULTIPROC_DIR was set for this lone process: start from a clean directory.
        prepare_multiprocess_dir(settings.metrics_dir)
    import_actor_modules(modules)
    stop = threading.Event()
    stop_on_signals(stop)
    status_file = _status_file(status_dir, os.getpid()) if status_dir is not None else None
    with _worker_with_heartbeat(app, threads, shutdown_timeout, status_file) as (_worker, heartbeat):
        servers: list[MetricsServer | HealthServer | None] = []
        if not supervised:
            collector: Collector = (
                worker_registry_for_scrape(settings.metrics_dir) if multiprocess_mode_active() else REGISTRY
            )
            servers.append(start_metrics_server(settings.metrics_port, collector))
            servers.append(start_health_server(settings.health_port, heartbeat.checks()))
        try:
            wait_until_stopped(stop)
        finally:
            _close(servers)
    app.close()
    return 0


def _close(servers: Sequence[MetricsServer | HealthServer | None]) -> None:
    for server in servers:
        if server is not None:
            server.close()


def _status_file(status_dir: Path, pid: int) -> Path:
    return status_dir / f"worker-{pid}.health.json"


class _Supervisor:
    """The parent of a pod's worker processes: health of the group, and their metrics."""

    def __init__(self, settings: Settings, metrics_dir: Path) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir
        self.children: list[tuple[subprocess.Popen[bytes], float]] = []

    def live(self) -> Verdict:
        for child, started in self.children:
            if child.poll() is not None:
                return Verdict(False, f"worker process {child.pid} exited with {child.returncode}")
            status = ProcessStatus.read(_status_file(self.metrics_dir, child.pid))
            if status is None:
                if time.monotonic() - started > self.settings.heartbeat_timeout:
                    return Verdict(False, f"worker process {child.pid} reports no status")
                continue
            if not status.live:
                return Verdict(False, f"worker process {child.pid}: {status.reason}")
            if time.time() - status.written_at > self.settings.heartbeat_timeout:
                return Verdict(False, f"worker process {child.pid}: status is stale")
        return Verdict(True)

    def ready(self) -> Verdict:
        if not self.children:
            return Verdict(False, "no worker processes")
        for child, _started in self.children:
            status = ProcessStatus.read(_status_file(self.metrics_dir, child.pid))
            if child.poll() is not None or status is None:
                return Verdict(False, f"worker process {child.pid} is not running yet")
            if not status.ready:
                return Verdict(False, f"worker process {child.pid}: {status.reason}")
            if time.time() - status.written_at > 5 * CHECK_INTERVAL:
                return Verdict(False, f"worker process {child.pid}: status is stale")
        return Verdict(True)

    def forget(self, child: subprocess.Popen[bytes]) -> None:
        """A child exited: drop its live gauges and its status file."""
        mark_process_dead(child.pid, self.metrics_dir)
        _status_file(self.metrics_dir, child.pid).unlink(missing_ok=True)


def run_processes(modules: Sequence[str], processes: int, threads: int, shutdown_timeout: float) -> int:
    """Run ``processes`` worker processes; stop them all on a signal or when one dies."""
    settings = load_settings()
    metrics_dir = settings.metrics_dir.resolve()
    prepare_multiprocess_dir(metrics_dir)
    for stale in metrics_dir.glob("worker-*.health.json*"):
        stale.unlink(missing_ok=True)
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    command = [sys.executable, "-m", "fairlane.worker", "--threads", str(threads)]
    command += ["--shutdown-timeout", str(shutdown_timeout), "--status-dir", str(metrics_dir)]
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        command.append("--verbose")
    command += list(modules)

    supervisor = _Supervisor(settings, metrics_dir)
    stopping = threading.Event()

    def _forward(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        for child, _started in supervisor.children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    for _ in range(processes):
        supervisor.children.append((subprocess.Popen(command, env=environment), time.monotonic()))
    servers: list[MetricsServer | HealthServer | None] = [
        start_metrics_server(settings.metrics_port, worker_registry_for_scrape(metrics_dir)),
        start_health_server(settings.health_port, HealthChecks(live=supervisor.live, ready=supervisor.ready)),
    ]
    exit_code = 0
    running = {child.pid for child, _started in supervisor.children}
    try:
        while running:
            for child, _started in supervisor.children:
                code = child.poll()
                if code is None or child.pid not in running:
                    continue
                running.discard(child.pid)
                supervisor.forget(child)
                if code != 0 and not stopping.is_set():
                    logger.error(
                        "event=worker_process_died pid=%d code=%s action='stopping the others'",
                        child.pid,
                        code,
                    )
                    exit_code = code or 1
                    _forward(signal.SIGTERM, None)
            time.sleep(0.2)
    finally:
        _close(servers)
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of one supervised worker process (``python -m fairlane.worker``).

    ``fairlane worker --processes N`` starts these; run ``fairlane worker`` yourself instead.
    """
    parser = argparse.ArgumentParser(prog="python -m fairlane.worker", description=main.__doc__)
    parser.add_argument("modules", nargs="+", metavar="MODULE")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--shutdown-timeout", type=float, required=True)
    parser.add_argument("--status-dir", type=Path, required=True)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    return run_process(args.modules, args.threads, args.shutdown_timeout, status_dir=args.status_dir)


if __name__ == "__main__":
    sys.exit(main())
