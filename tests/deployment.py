"""Real fairlane deployments for the chaos suite and ``bench/soak.py``: private services and processes.

:func:`private_vhost` and :func:`private_database` give a run its own RabbitMQ vhost and
PostgreSQL database, removed at the end (the test fixtures of ``tests/conftest.py`` use them,
and so does the soak). :class:`Deployment` runs ``fairlane worker`` and ``fairlane scheduler``
processes for one actor module, each in a session of its own (so a signal reaches a worker
process's children too) and logging to a file of its own.

Nothing here imports the rest of ``tests``, so ``bench/`` can import it with the repository
root on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP = 30.0  # seconds a new process may take to import, migrate and start working


@contextlib.contextmanager
def private_vhost(server_url: str, name: str) -> Iterator[str]:
    """Create RabbitMQ vhost ``name`` (with ``rabbitmqctl``, guest allowed everything), yield the
    URL of ``server_url``'s server on it, and delete the vhost (and every queue in it) at the end."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError(f"rabbitmqctl is needed to create the private vhost {name!r}")
    subprocess.run([ctl, "-q", "add_vhost", name], check=True, capture_output=True)
    try:
        subprocess.run(
            [ctl, "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield f"{server_url.rsplit('/', 1)[0]}/{quote(name, safe='')}"
    finally:
        subprocess.run([ctl, "-q", "delete_vhost", name], check=False, capture_output=True)


@contextlib.contextmanager
def private_database(server_url: str, name: str) -> Iterator[str]:
    """Create PostgreSQL database ``name`` on ``server_url``'s server, yield its URL, drop it at the end."""
    # pre-ping: the chaos suite restarts PostgreSQL, which ends the pooled connection of this engine
    admin = sa.create_engine(
        server_url.replace("postgresql://", "postgresql+psycopg://", 1),
        isolation_level="AUTOCOMMIT",
        pool_pre_ping=True,
    )
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield server_url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with admin.connect() as connection:
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


class Deployment:
    """Worker and scheduler processes running ``module``'s actors with environment ``env``.

    Logs go to ``logs/<name>.log``. :meth:`close` kills whatever is still running.
    """

    def __init__(self, env: Mapping[str, str], module: str, logs: Path) -> None:
        self.env = dict(env)
        self.module = module
        self.logs = logs
        self.workers: subprocess.Popen[bytes] | None = None
        self.schedulers: list[subprocess.Popen[bytes]] = []
        self._spawned: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, name: str, *arguments: str, env: Mapping[str, str] | None = None, **settings: str
    ) -> subprocess.Popen[bytes]:
        """Run ``fairlane ARGUMENTS… MODULE`` in a session of its own, logging to ``<name>.log``;
        ``settings`` (``FAIRLANE_`` names without the prefix) and ``env`` (any other variables)
        override the deployment's for it."""
        command = [sys.executable, "-m", "fairlane.cli", *arguments, self.module]
        env = self.env | dict(env or {}) | {f"FAIRLANE_{key}": value for key, value in settings.items()}
        with (self.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._spawned.append(process)
        return process

    def start_workers(self, processes: int = 2, threads: int = 4, **settings: str) -> subprocess.Popen[bytes]:
        """Start a worker tree (``fairlane worker --processes P --threads T``) as :attr:`workers`."""
        self.workers = self.spawn(
            f"workers-{len(self._spawned)}",
            "worker",
            "--processes",
            str(processes),
            "--threads",
            str(threads),
            "--shutdown-timeout",
            "20",
            **settings,
        )
        return self.workers

    def start_scheduler(self, **settings: str) -> subprocess.Popen[bytes]:
        """Start one more scheduler replica, logging to ``scheduler-<index>.log``."""
        process = self.spawn(f"scheduler-{len(self.schedulers)}", "scheduler", **settings)
        self.schedulers.append(process)
        return process

    def start_schedulers(self, replicas: int = 2) -> None:
        """Start ``replicas`` scheduler replicas and wait until one leads."""
        for _ in range(replicas):
            self.start_scheduler()
        wait_for(lambda: self.leader() is not None, STARTUP, "a scheduler leads")

    def leader(self) -> subprocess.Popen[bytes] | None:
        """The live scheduler replica that took the leadership last (by its log)."""
        for index, process in enumerate(self.schedulers):
            log = (self.logs / f"scheduler-{index}.log").read_text(errors="replace")
            if process.poll() is None and "event=leader_acquired" in log:
                return process
        return None

    def signal_tree(self, process: subprocess.Popen[bytes], signum: int) -> None:
        """Send ``signum`` to a process and all it started (its own session)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    def kill_tree(self, process: subprocess.Popen[bytes], signum: int = signal.SIGKILL) -> None:
        """Signal a process tree and wait for its head to exit."""
        self.signal_tree(process, signum)
        process.wait(timeout=60)

    def close(self) -> None:
        """Kill every process of the deployment still running."""
        for process in self._spawned:
            if process.poll() is None:
                self.kill_tree(process)

    def log_tail(self) -> str:
        """The last 3,000 characters of every process's log."""
        tails = [
            f"== {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.logs.glob("*"))
        ]
        return "\n".join(tails)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Wait until ``condition()`` holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)
