"""Real ``fairlane worker`` processes for one test: spawn, read their log, wait for or kill them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import fairlane
from fairlane.app import App

from .process_actors import QUEUE_VARIABLE, declare

REPO_ROOT = Path(__file__).resolve().parents[2]
SHUTDOWN_TIMEOUT = 30.0
STARTUP = 30.0  # seconds a new worker process may take to import, migrate and consume


def worker_environment(
    broker_url: str, postgres_url: str, tmp_path: Path, queue: str, **settings: str
) -> dict[str, str]:
    """The environment of a test's worker processes: its broker, ledger, queue and ``settings``
    (``FAIRLANE_*`` names without the prefix, e.g. ``HEARTBEAT_TIMEOUT="2"``)."""
    return {
        **os.environ,
        "FAIRLANE_BROKER_URL": broker_url,
        "FAIRLANE_DATABASE_URL": postgres_url,
        "FAIRLANE_RESULTS_DIR": str(tmp_path / "results"),
        "FAIRLANE_METRICS_DIR": str(tmp_path / "metrics"),
        "FAIRLANE_ADMISSION_INTERVAL": "0.05",
        **{f"FAIRLANE_{name}": value for name, value in settings.items()},
        QUEUE_VARIABLE: queue,
        "PYTHONUNBUFFERED": "1",
    }


_Processes = TypeVar("_Processes", bound="WorkerProcesses")


@contextlib.contextmanager
def spawned_workers(
    kind: type[_Processes],
    broker_url: str,
    postgres_url: str,
    tmp_path: Path,
    prefix: str,
    app_settings: dict[str, Any],
    **worker_settings: str,
) -> Iterator[_Processes]:
    """A test's app on PostgreSQL (``app_settings`` over the defaults) and its worker processes
    (``worker_settings`` as in :func:`worker_environment`) on a queue of its own; all stopped at
    the end, the workers' log tail printed (pytest shows it when the test failed)."""
    queue = f"{prefix}_{uuid.uuid4().hex[:12]}"
    settings: dict[str, Any] = {
        "broker_url": broker_url,
        "database_url": postgres_url,
        "results_dir": tmp_path / "results",
        "admission_interval": 0.05,
    }
    app = fairlane.configure(fairlane.Settings(**(settings | app_settings)))
    env = worker_environment(broker_url, postgres_url, tmp_path, queue, **worker_settings)
    spawned = kind(app, queue, env, tmp_path)
    try:
        yield spawned
    finally:
        spawned.stop_all()
        app.close()
        print(f"worker log tail:\n{spawned.log_text()[-5000:]}")


class WorkerProcesses:
    """Worker processes of one test on a queue of its own (actors of ``process_actors``)."""

    def __init__(self, app: App, queue: str, env: dict[str, str], tmp_path: Path) -> None:
        self.app = app
        self.queue = queue
        self.env = env
        self.markers = tmp_path / "markers"
        self.markers.mkdir()
        self.log = tmp_path / "workers.log"
        self.spawned: list[subprocess.Popen[bytes]] = []
        self.slow_step, self.held_step = declare(queue)

    def spawn(self, processes: int = 1, threads: int = 2) -> subprocess.Popen[bytes]:
        """Start ``fairlane worker`` in a session of its own, logging to ``self.log``."""
        command = [sys.executable, "-m", "fairlane.cli", "worker", "--threads", str(threads)]
        command += ["--processes", str(processes), "--shutdown-timeout", str(SHUTDOWN_TIMEOUT)]
        command.append("tests.integration.process_actors")
        with self.log.open("ab") as log:
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.spawned.append(process)
        return process

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_exit(self, process: subprocess.Popen[bytes], timeout: float) -> int:
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {process.pid} still running after {timeout} s; log:\n{self.log_text()[-5000:]}"
            ) from None

    def stop_all(self) -> None:
        """Kill whatever is left of the spawned workers (each is its own process group)."""
        for process in self.spawned:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
