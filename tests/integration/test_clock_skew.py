"""One clock: processes whose clocks are 2 minutes off still agree with the others on when work is due.

Real ``fairlane worker`` and ``fairlane scheduler`` processes run under libfaketime (Debian
package ``faketime``), which moves their ``time.time()`` and ``datetime.now()`` by
:data:`SKEW` seconds, beside unskewed ones and this unskewed test process, on the PostgreSQL
ledger. Every time that orders or delays work comes from the database's clock, so delays and
retry backoffs hold to the second, a skewed worker's heartbeat is fresh (neither stale nor in
the future) and its running job is reaped only once it is dead, and a skewed scheduler fires
each cron slot once, on time.

When things ran is read from this process's clock and from marker files' modification times,
which the kernel stamps whatever the process that wrote them believes the time is.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

import fairlane
from fairlane.app import App
from fairlane.ledger.schema import jobs
from fairlane.ledger.workers import WorkerStore
from fairlane.scheduling.reaper import run_reaper

from ..deployment import Deployment
from .skew_actors import QUEUE_VARIABLE, RELEASE, declare, marker
from .support import eventually
from .worker_processes import STARTUP, worker_environment

#: How far the skewed processes' clocks are off (seconds).
SKEW = 120
#: A job that should have run must have run within this many seconds (a skew-late one would not).
RAN_WITHIN = 60.0
#: The kernel stamps file times from a coarse clock, up to a tick behind the precise one.
TOLERANCE = 0.05
HEARTBEAT_TIMEOUT = 5.0
HEARTBEAT_INTERVAL = 0.5
LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))), None)
#: Put on a skewed process's path: works around libfaketime's broken ``time.sleep`` (see its docstring).
FAKETIME_SITE = Path(__file__).with_name("faketime_site")

pytestmark = pytest.mark.skipif(
    LIBFAKETIME is None, reason="libfaketime not installed (Debian package `faketime`: `make tools`)"
)


class Processes:
    """The ``fairlane`` processes of one test (a :class:`Deployment` of ``skew_actors``), each with
    the clock skew it was given."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        logs.mkdir(exist_ok=True)
        self.deployment = Deployment(env, "tests.integration.skew_actors", logs)
        self._count = itertools.count()

    def worker(self, queue: str, skew: int = 0) -> subprocess.Popen[bytes]:
        """A ``fairlane worker`` consuming ``queue`` (the actors of ``skew_actors``)."""
        arguments = ("worker", "--processes", "1", "--threads", "2", "--shutdown-timeout", "10")
        return self._spawn(queue, skew, *arguments)

    def scheduler(self, queue: str, skew: int, cron: list[dict[str, object]]) -> subprocess.Popen[bytes]:
        """A ``fairlane scheduler`` with the ``cron`` schedules of ``FAIRLANE_CRON``."""
        return self._spawn(queue, skew, "scheduler", CRON=json.dumps(cron))

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM: a clean stop."""
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STARTUP)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"process {process.pid} did not stop; log:\n{self.log_text()[-5000:]}"
            ) from None

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the process and its children (each process is its own process group)."""
        self.deployment.kill_tree(process)

    def kill_all(self) -> None:
        self.deployment.close()

    def log_text(self) -> str:
        """Every process's whole log."""
        return "\n".join(
            path.read_text(errors="replace") for path in sorted(self.deployment.logs.glob("*.log"))
        )

    def _spawn(self, queue: str, skew: int, *arguments: str, **settings: str) -> subprocess.Popen[bytes]:
        env = {QUEUE_VARIABLE: queue}
        if skew:
            assert LIBFAKETIME is not None
            base = self.deployment.env
            env.update(
                LD_PRELOAD=" ".join(filter(None, [LIBFAKETIME, base.get("LD_PRELOAD")])),
                FAKETIME=f"{skew:+d}",  # the wall clock only: timers and timeouts stay right
                FAKETIME_DONT_FAKE_MONOTONIC="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(FAKETIME_SITE), base.get("PYTHONPATH")])),
            )
        name = f"{arguments[0]}-{next(self._count)}"
        return self.deployment.spawn(name, *arguments, env=env, **settings)


@pytest.fixture
def app(broker_url: str, postgres_url: str, tmp_path: Path) -> Iterator[App]:
    """This (unskewed) process's app: it sends, reads the ledger and runs the reaper."""
    settings = fairlane.Settings(
        broker_url=broker_url,
        database_url=postgres_url,
        results_dir=tmp_path / "results",
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
    )
    built = fairlane.configure(settings)
    yield built
    built.close()


@pytest.fixture
def processes(app: App, broker_url: str, postgres_url: str, tmp_path: Path) -> Iterator[Processes]:
    env = worker_environment(
        broker_url,
        postgres_url,
        tmp_path,
        "",
        HEARTBEAT_INTERVAL=str(HEARTBEAT_INTERVAL),
        HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT),
        METRICS_PORT="0",
        HEALTH_PORT="0",
    )
    spawned = Processes(env, tmp_path / "processes")
    try:
        yield spawned
    finally:
        spawned.kill_all()
        print(f"process log tail:\n{spawned.log_text()[-5000:]}")


@pytest.fixture
def markers(tmp_path: Path) -> str:
    directory = tmp_path / "markers"
    directory.mkdir()
    return str(directory)


def _queue() -> str:
    return f"skew_{uuid.uuid4().hex[:10]}"


def _consumed(app: App, queue: str) -> bool:
    """Whether a worker consuming ``queue`` has sent a heartbeat."""
    return any(queue in row.queues for row in WorkerStore(app.engine).list())


def _ran(path: Path, timeout: float = RAN_WITHIN) -> float:
    """When the step of marker ``path`` ran (the marker's modification time), waiting for it."""
    eventually(path.exists, timeout, f"{path.name} ran")
    return path.stat().st_mtime


def _database_now(app: App) -> datetime:
    with app.engine.connect() as connection:
        return connection.execute(sa.text("SELECT now()")).scalar_one()  # type: ignore[no-any-return]


def test_delayed_sends_wait_their_delay_by_the_database_clock(
    app: App, processes: Processes, markers: str
) -> None:
    # Given a worker whose clock is 2 minutes ahead on one queue, and an unskewed worker on another
    skewed_queue, plain_queue = _queue(), _queue()
    skewed = declare(skewed_queue)
    declare(plain_queue)
    processes.worker(skewed_queue, skew=SKEW)
    processes.worker(plain_queue)
    eventually(lambda: _consumed(app, skewed_queue) and _consumed(app, plain_queue), STARTUP, "workers up")

    # When this process sends a job with a 3 s delay to the skewed worker's queue
    sent_at = time.time()
    skewed.stamp.send_with_options(args=(markers, "direct"), delay=3000)
    # And a job on the skewed worker sends one with a 3 s delay to the unskewed worker's queue
    skewed.relay.send(markers, "relay", plain_queue, 3000)

    # Then neither runs before its delay has passed, nor minutes late
    assert _ran(marker(markers, "direct")) >= sent_at + 3 - TOLERANCE
    relayed_by = _ran(marker(markers, "relay"))
    assert _ran(marker(markers, "relay_relayed")) >= relayed_by + 3 - TOLERANCE


def test_retry_backoffs_hold_when_skewed_and_unskewed_workers_take_over_each_others_queues(
    app: App, processes: Processes, markers: str
) -> None:
    backoff = 10
    # Given a worker whose clock is 2 minutes ahead on one queue, and an unskewed worker on another
    first_queue, second_queue = _queue(), _queue()
    first, second = declare(first_queue), declare(second_queue)
    skewed = processes.worker(first_queue, skew=SKEW)
    plain = processes.worker(second_queue)
    eventually(lambda: _consumed(app, first_queue) and _consumed(app, second_queue), STARTUP, "workers up")

    # When a job fails on each and asks to be retried in 10 s
    ids = {
        "ahead": first.flaky.send(markers, "ahead", backoff * 1000).message_id,
        "plain": second.flaky.send(markers, "plain", backoff * 1000).message_id,
    }
    eventually(
        lambda: all(fairlane.jobs.get(i).state == "retrying" for i in ids.values()), STARTUP, "retrying"
    )
    # And the workers hand over: each stops, and one with the other clock takes its queue
    processes.stop(skewed)
    processes.stop(plain)
    processes.worker(first_queue)
    processes.worker(second_queue, skew=SKEW)

    # Then each retry runs once its backoff has passed, not sooner (the skewed worker's clock says
    # the unskewed one's retry is long due) and not 2 minutes late (the unskewed one's says the
    # skewed one's retry is not due yet)
    for tag in ids:
        failed_at = marker(markers, tag, 1).stat().st_mtime
        assert _ran(marker(markers, tag, 2)) >= failed_at + backoff - TOLERANCE, tag
    assert [fairlane.jobs.wait(job_id, timeout=STARTUP).state for job_id in ids.values()] == ["succeeded"] * 2


@pytest.mark.parametrize("skew", [SKEW, -SKEW], ids=["ahead", "behind"])
def test_a_skewed_workers_running_job_is_reaped_only_once_the_worker_is_dead(
    app: App, processes: Processes, markers: str, skew: int
) -> None:
    # Given a worker whose clock is 2 minutes off, running a job
    queue = _queue()
    actors = declare(queue)
    worker = processes.worker(queue, skew=skew)
    job_id = actors.held.send(markers, "held").message_id
    _ran(marker(markers, "held"), STARTUP)
    eventually(lambda: fairlane.jobs.get(job_id).state == "running", STARTUP, "start recorded")

    # Then its heartbeat is as fresh as the database's clock says: neither stale nor in the future
    [row] = [row for row in WorkerStore(app.engine).list() if queue in row.queues]
    age = (_database_now(app) - row.last_heartbeat_at).total_seconds()
    assert -1 < age < HEARTBEAT_TIMEOUT, f"heartbeat {age:.1f} s old"

    # When the (unskewed) reaper runs after the heartbeat timeout, then it leaves the job alone
    time.sleep(HEARTBEAT_TIMEOUT + 1)
    assert job_id not in [job.id for job in run_reaper(app).reaped]
    assert fairlane.jobs.get(job_id).state == "running"

    # When the worker is killed
    processes.kill(worker)
    killed_at = time.time()

    # Then the reaper returns the job to the backlog once the heartbeat timeout has passed, not minutes later
    def reaped() -> bool:
        return job_id in [job.id for job in run_reaper(app).reaped]

    eventually(reaped, RAN_WITHIN, "reaped")
    assert time.time() >= killed_at + HEARTBEAT_TIMEOUT - HEARTBEAT_INTERVAL - TOLERANCE
    Path(markers, RELEASE).touch()

    # And the worker had seen its own clock off by the skew
    offsets = re.findall(r"event=clock_offset .*ahead_of_ledger_s=(-?[\d.]+)", processes.log_text())
    assert offsets and abs(float(offsets[0]) - skew) < 5, offsets


@pytest.mark.parametrize("skew", [SKEW, -SKEW], ids=["ahead", "behind"])
def test_a_skewed_scheduler_fires_each_cron_slot_once_on_time(
    app: App, processes: Processes, skew: int
) -> None:
    period = 3
    # Given a scheduler whose clock is 2 minutes off, with a schedule every 3 seconds
    queue = _queue()
    declare(queue)
    name = f"every_{period}s_{queue}"
    cron = [{"name": name, "cron": f"*/{period} * * * * *", "actor": f"stamp_{queue}", "args": ["", "cron"]}]
    processes.scheduler(queue, skew, cron)

    # When it leads for a few slots (this process notes when each fire's job appears)
    seen: dict[str, float] = {}

    def three_fires() -> bool:
        query = sa.select(jobs.c.idempotency_key).where(jobs.c.actor == f"stamp_{queue}")
        with app.engine.connect() as connection:
            for key in connection.scalars(query):
                seen.setdefault(key, time.time())
        return len(seen) >= 3

    eventually(three_fires, STARTUP + 3 * period, "three cron fires")

    # Then each slot fired once its time had come on the database's clock, within a few seconds
    fire_times = {key: datetime.fromisoformat(key.removeprefix(f"cron:{name}:")).timestamp() for key in seen}
    for key, fire_time in fire_times.items():
        assert fire_time - TOLERANCE <= seen[key] <= fire_time + 10, key
    # And no slot between the first and the last was skipped
    ordered = sorted(fire_times.values())
    assert [later - earlier for earlier, later in itertools.pairwise(ordered)] == [period] * (
        len(ordered) - 1
    )
