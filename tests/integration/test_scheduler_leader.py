"""Scheduler leadership on PostgreSQL: one leader runs the tasks; a killed leader is replaced.

The process test runs two real ``fairlane scheduler`` processes against the test run's
PostgreSQL database and RabbitMQ vhost, with short task intervals and a per-second cron
schedule, and reads each one's ``/metrics`` and log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from fairlane.ledger.schema import jobs, scheduler_tasks
from fairlane.scheduling.leader import LEADER_LOCK_ID, PostgresLeaderLock
from fairlane.settings import Settings

from .support import eventually

STARTUP = 30.0  # seconds a new scheduler process may take to import, migrate and serve

_ACTORS = """
import fairlane

@fairlane.actor(queue_name="{queue}")
def heartbeat_job() -> None:
    pass
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _scrape(port: int) -> dict[str, float] | None:
    """``{sample name{labels}: value}`` of a /metrics endpoint, or None while it is down."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


class Replica:
    """One ``fairlane scheduler`` process with its own ports and log."""

    def __init__(self, name: str, env: dict[str, str], tmp_path: Path, module: str) -> None:
        self.metrics_port = _free_port()
        self.log = tmp_path / f"{name}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fairlane.cli", "scheduler", module],
                env={**env, "FAIRLANE_METRICS_PORT": str(self.metrics_port), "FAIRLANE_HEALTH_PORT": "0"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def identity(self) -> str:
        return f"{socket.gethostname()}:{self.process.pid}"

    def is_leader(self) -> float | None:
        samples = _scrape(self.metrics_port)
        return None if samples is None else samples.get("fairlane_scheduler_is_leader{}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def replicas(broker_url: str, postgres_url: str, tmp_path: Path) -> Iterator[Callable[[str], Replica]]:
    queue = f"sched_{uuid.uuid4().hex[:10]}"
    (tmp_path / "leader_test_actors.py").write_text(_ACTORS.format(queue=queue))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "FAIRLANE_BROKER_URL": broker_url,
        "FAIRLANE_DATABASE_URL": postgres_url,
        "FAIRLANE_RESULTS_DIR": str(tmp_path / "results"),
        "FAIRLANE_REAPER_INTERVAL": "0.3",
        "FAIRLANE_CLEANUP_INTERVAL": "0.5",
        "FAIRLANE_GAUGES_INTERVAL": "1",
        "FAIRLANE_CRON": json.dumps(
            [{"name": f"every_second_{queue}", "cron": "* * * * * *", "actor": "heartbeat_job"}]
        ),
    }
    started: list[Replica] = []

    def _start(name: str) -> Replica:
        replica = Replica(name, env, tmp_path, "leader_test_actors")
        started.append(replica)
        return replica

    yield _start
    for replica in started:
        replica.stop()


def test_one_of_two_schedulers_leads_and_a_killed_leader_is_replaced_within_seconds(
    replicas: Callable[[str], Replica], postgres_url: str
) -> None:
    # Given scheduler A, which becomes the leader, and then scheduler B
    first = replicas("a")
    eventually(lambda: first.is_leader() == 1, timeout=STARTUP, message="A leads")
    second = replicas("b")
    eventually(lambda: second.is_leader() is not None, timeout=STARTUP, message="B serves /metrics")

    # When both run for a few seconds
    time.sleep(2.5)

    # Then only A leads, and only A ran tasks and cron fires; B stayed a standby
    assert (first.is_leader(), second.is_leader()) == (1, 0)
    first_log, second_log = first.log_text(), second.log_text()
    assert first_log.count("task=reaper") >= 3, first_log[-3000:]
    assert "event=cron_fired" in first_log
    assert "scheduler_task_done" not in second_log and "cron_fired" not in second_log, second_log[-3000:]
    engine = sa.create_engine(Settings(database_url=postgres_url).sqlalchemy_url)
    with engine.connect() as connection:
        leaders = set(connection.scalars(sa.select(scheduler_tasks.c.last_leader)))
    assert leaders == {first.identity}

    # When the leader is killed with SIGKILL
    os.kill(first.process.pid, signal.SIGKILL)
    killed_at = time.monotonic()

    # Then B leads within a few seconds and runs the tasks
    eventually(lambda: second.is_leader() == 1, timeout=10, message="B takes over")
    takeover = time.monotonic() - killed_at
    assert takeover < 5, f"takeover took {takeover:.1f} s"
    eventually(lambda: "task=reaper" in second.log_text(), timeout=5, message="B runs the reaper")
    eventually(lambda: "event=cron_fired" in second.log_text(), timeout=5, message="B fires cron")
    samples = _scrape(second.metrics_port) or {}
    assert {f"fairlane_scheduler_last_success_timestamp_seconds{{task={task}}}" for task in
            ("cleanup", "cron", "gauges", "reaper")} <= set(samples)  # fmt: skip

    # And every cron slot was enqueued once (the ledger holds one job per fire time)
    with engine.connect() as connection:
        keys = list(
            connection.scalars(
                sa.select(jobs.c.idempotency_key).where(
                    jobs.c.actor == "heartbeat_job", jobs.c.queue.like("sched_%")
                )
            )
        )
    engine.dispose()
    assert len(keys) == len(set(keys)) >= 3

    # When B is stopped with SIGTERM, it exits cleanly
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(timeout=15) == 0
    assert "event=scheduler_stopped" in second.log_text()


def test_advisory_lock_has_one_holder_and_dies_with_its_session(postgres_url: str) -> None:
    # Given two schedulers' advisory locks on one database (a lock id of this test's own)
    url = Settings(database_url=postgres_url).sqlalchemy_url
    lock_id = LEADER_LOCK_ID + 1 + uuid.uuid4().int % 1000
    first, second = PostgresLeaderLock(url, lock_id), PostgresLeaderLock(url, lock_id)
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        # When the first takes it, the second can't
        assert first.try_acquire()
        assert not second.try_acquire()
        assert first.still_held()

        # When the first's session dies (as when its process is killed)
        with admin.connect() as connection:
            terminated = connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND granted AND classid = :high AND objid = :low"
                ),
                {"high": lock_id >> 32, "low": lock_id & 0xFFFFFFFF},
            ).all()
        assert terminated == [(True,)]

        # Then the first notices it lost the lock, and the second takes it
        eventually(lambda: not first.still_held(), timeout=5, message="first steps down")
        eventually(second.try_acquire, timeout=5, message="second takes over")
        assert not first.try_acquire()
    finally:
        first.close()
        second.close()
        admin.dispose()
