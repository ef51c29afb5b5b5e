"""Metrics of a 2-process worker pod: one scrape endpoint, merged, exact, no per-pid series.

``fairlane worker --processes 2`` runs a scripted workload (quick jobs in two lanes, jobs
that fail once, a job that dies, a job cancelled while running); its supervisor's
``/metrics`` must then hold exactly the expected counters and histogram counts, each series
once, with no ``pid`` label and none of a previous run's values. Its ``/livez`` and
``/readyz`` answer for both processes.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client.parser import text_string_to_metric_families

import fairlane
from fairlane.app import App
from fairlane.ledger.workers import WorkerStore

from .support import eventually

STARTUP = 30.0

_ACTORS = '''
"""Actors of the metrics test (queue {queue!r})."""
import time
import fairlane

QUEUE = {queue!r}


@fairlane.actor(queue_name=QUEUE)
def quick(n: int) -> int:
    time.sleep(0.05)
    return n


@fairlane.actor(queue_name=QUEUE, max_retries=2, min_backoff=10, max_backoff=20)
def flaky(n: int) -> int:
    if fairlane.current_job().attempt == 1:
        raise ValueError("first attempt fails")
    return n


@fairlane.actor(queue_name=QUEUE, max_retries=1, min_backoff=10, max_backoff=20)
def doomed() -> None:
    raise RuntimeError("always fails")


@fairlane.actor(queue_name=QUEUE)
def held() -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.02)
'''

_STALE = """
from fairlane.observability.catalog import JOBS_SUCCEEDED
JOBS_SUCCEEDED.labels(queue="stale", actor="left_over", lane="normal").inc(5)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


class Pod:
    """A ``fairlane worker --processes 2`` pod and its two ports."""

    def __init__(self, env: dict[str, str], tmp_path: Path, module: str) -> None:
        self.metrics_port, self.health_port = _free_port(), _free_port()
        self.log = tmp_path / "pod.log"
        command = [
            sys.executable,
            "-m",
            "fairlane.cli",
            "worker",
            "--processes",
            "2",
            "--threads",
            "2",
            module,
        ]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                env={
                    **env,
                    "FAIRLANE_METRICS_PORT": str(self.metrics_port),
                    "FAIRLANE_HEALTH_PORT": str(self.health_port),
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def scrape(self) -> str:
        status, text = _get(self.metrics_port, "/metrics")
        assert status == 200, f"scrape failed ({status}); log:\n{self.log_text()[-3000:]}"
        return text

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def pod_setup(
    broker_url: str, postgres_url: str, tmp_path: Path
) -> Iterator[tuple[App, ModuleType, dict[str, str]]]:
    queue = f"metrics_{uuid.uuid4().hex[:10]}"
    module_name = f"metrics_actors_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module_name}.py").write_text(_ACTORS.format(queue=queue))
    app = fairlane.configure(
        fairlane.Settings(
            broker_url=broker_url,
            database_url=postgres_url,
            results_dir=tmp_path / "results",
            admission_interval=0.05,
            cancel_poll_interval=0.05,
        )
    )
    sys.path.insert(0, str(tmp_path))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "FAIRLANE_BROKER_URL": broker_url,
        "FAIRLANE_DATABASE_URL": postgres_url,
        "FAIRLANE_RESULTS_DIR": str(tmp_path / "results"),
        "FAIRLANE_METRICS_DIR": str(tmp_path / "metrics"),
        "FAIRLANE_ADMISSION_INTERVAL": "0.05",
        "FAIRLANE_CANCEL_POLL_INTERVAL": "0.05",
        "FAIRLANE_HEARTBEAT_INTERVAL": "0.3",
    }
    try:
        yield app, importlib.import_module(module_name), env
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module_name, None)
        app.close()


def _series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a scrape, failing on any duplicated series."""
    seen: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            seen[key] += 1
            values[key] = sample.value
    duplicated = [key for key, count in seen.items() if count > 1]
    assert not duplicated, f"duplicated series: {duplicated}"
    return values


def test_two_process_worker_scrape_has_the_expected_names_and_values(
    pod_setup: tuple[App, ModuleType, dict[str, str]], tmp_path: Path
) -> None:
    app, actors, env = pod_setup
    queue = actors.QUEUE
    # Given a metrics directory holding a previous run's counters
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    subprocess.run(
        [sys.executable, "-c", _STALE], env={**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, check=True
    )
    assert list(metrics_dir.glob("counter_*.db"))

    # When a 2-process worker pod starts
    pod = Pod(env, tmp_path, actors.__name__)
    try:
        # Then it is live and ready once both processes consume
        eventually(lambda: _get(pod.health_port, "/readyz")[0] == 200, timeout=STARTUP, message="ready")
        assert _get(pod.health_port, "/livez") == (200, "ok\n")

        # When it runs a scripted workload
        quick = [actors.quick.send_with_options(args=(n,), tenant=f"t{n % 3}").message_id for n in range(8)]
        quick += [actors.quick.send_with_options(args=(n,), priority="high").message_id for n in range(4)]
        flaky = [actors.flaky.send(n).message_id for n in range(2)]
        doomed = actors.doomed.send().message_id
        held = actors.held.send().message_id
        eventually(lambda: fairlane.jobs.get(held).state == "running", timeout=10, message="held job runs")
        fairlane.jobs.cancel(held)
        finished = {
            job_id: fairlane.jobs.wait(job_id, timeout=20) for job_id in [*quick, *flaky, doomed, held]
        }
        assert {job_id: job.state for job_id, job in finished.items()} == {
            **dict.fromkeys(quick + flaky, "succeeded"),
            doomed: "dead",
            held: "cancelled",
        }

        # And both processes took part (their heartbeats count what each processed)
        def _per_process() -> list[int]:
            rows = [row for row in WorkerStore(app.engine).list() if queue in row.queues]
            return sorted(row.processed for row in rows)

        eventually(
            lambda: len(_per_process()) == 2 and sum(_per_process()) == 19, timeout=10, message="beats"
        )
        assert min(_per_process()) > 0, _per_process()

        # Then the pod's one scrape holds the merged totals, each series once
        eventually(
            lambda: _series(pod.scrape()).get(
                ("fairlane_oldest_running_job_age_seconds", (("queue", queue),))
            ) == 0.0,
            timeout=5,
            message="oldest running age back to 0",
        )  # fmt: skip
        text = pod.scrape()
        series = _series(text)

        def value(name: str, actor: str, lane: str = "normal") -> float | None:
            return series.get((name, (("actor", actor), ("lane", lane), ("queue", queue))))

        expected = {
            # (metric, actor, lane): value
            ("fairlane_jobs_started_total", "quick", "normal"): 8,
            ("fairlane_jobs_started_total", "quick", "high"): 4,
            ("fairlane_jobs_succeeded_total", "quick", "normal"): 8,
            ("fairlane_jobs_succeeded_total", "quick", "high"): 4,
            ("fairlane_jobs_started_total", "flaky", "normal"): 4,
            ("fairlane_jobs_failed_total", "flaky", "normal"): 2,
            ("fairlane_jobs_retried_total", "flaky", "normal"): 2,
            ("fairlane_jobs_succeeded_total", "flaky", "normal"): 2,
            ("fairlane_jobs_started_total", "doomed", "normal"): 2,
            ("fairlane_jobs_failed_total", "doomed", "normal"): 2,
            ("fairlane_jobs_retried_total", "doomed", "normal"): 1,
            ("fairlane_jobs_dead_total", "doomed", "normal"): 1,
            ("fairlane_jobs_started_total", "held", "normal"): 1,
            ("fairlane_jobs_cancelled_total", "held", "normal"): 1,
            ("fairlane_job_queue_wait_seconds_count", "quick", "normal"): 8,
            ("fairlane_job_queue_wait_seconds_count", "quick", "high"): 4,
            ("fairlane_job_queue_wait_seconds_count", "flaky", "normal"): 4,
            ("fairlane_job_duration_seconds_count", "quick", "normal"): 8,
            ("fairlane_job_duration_seconds_count", "doomed", "normal"): 2,
            ("fairlane_jobs_in_progress", "quick", "normal"): 0,
            ("fairlane_jobs_in_progress", "held", "normal"): 0,
        }
        assert {key: value(*key) for key in expected} == expected
        # Runs of 50 ms, and waits measured from when a job became runnable (not negative)
        assert 0.05 * 8 <= (value("fairlane_job_duration_seconds_sum", "quick") or 0) < 8
        assert 0 <= (value("fairlane_job_queue_wait_seconds_sum", "flaky") or -1) < 20
        # No job failed or was cancelled that shouldn't have been
        assert value("fairlane_jobs_failed_total", "quick") is None
        assert value("fairlane_jobs_dead_total", "flaky") is None

        # And nothing per process, per tenant or per job, nothing from the previous run, and
        # no leader gauges (the scheduler exports those)
        labels = {name for (_sample, pairs) in series for name, _value in pairs}
        assert labels <= {"queue", "actor", "lane", "le", "reason", "key", "dimension"}, labels
        assert not any(dict(pairs).get("queue") == "stale" for _name, pairs in series)
        assert not any(name.startswith(("fairlane_backlog", "fairlane_scheduler", "fairlane_workers"))
                       for name, _pairs in series)  # fmt: skip
        assert "pid=" not in text and "tenant" not in text
        (tmp_path / "scrape.txt").write_text(text)

        # When SIGTERM stops the pod, it exits cleanly and the workers' rows go
        os.killpg(pod.process.pid, signal.SIGTERM)
        assert pod.process.wait(timeout=30) == 0, pod.log_text()[-3000:]
        assert not [row for row in WorkerStore(app.engine).list() if queue in row.queues]
    finally:
        if pod.process.poll() is None:
            os.killpg(pod.process.pid, signal.SIGKILL)
            pod.process.wait(timeout=10)


def test_heartbeat_log_line_is_structured(pod_setup: tuple[App, ModuleType, dict[str, str]]) -> None:
    # Given the worker-side heartbeat of an app (no worker threads needed to format it)
    from fairlane.observability.heartbeat import WorkerHeartbeat

    app, _actors, _env = pod_setup
    heartbeat = WorkerHeartbeat(app.broker, worker=object())

    # When its log line is formatted
    line = heartbeat.log_line()

    # Then it is key=value pairs naming the worker, its counts and rate-limit usage
    fields = dict(part.split("=", 1) for part in line.split())
    assert fields["event"] == "worker_heartbeat"
    assert fields["worker"] == heartbeat.worker_id
    assert {"in_progress", "processed", "queues", "ratelimits"} <= set(fields)
    assert (fields["in_progress"], fields["processed"]) == ("0", "0")
