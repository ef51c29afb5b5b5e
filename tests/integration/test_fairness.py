"""Fairness under real workers: caps across processes, rate-limit waits, pauses, bulk sends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import fairlane
from fairlane.worker import running_worker

from .fairness_actors import declare, most_at_once
from .support import eventually

REPO = Path(__file__).resolve().parents[2]


def test_tenant_cap_holds_across_worker_processes(broker_url: str, postgres_url: str, queue: str) -> None:
    # Given a PostgreSQL ledger, tenant "big" capped at 3, and a worker with 2 processes x 4 threads
    app = fairlane.configure(fairlane.Settings(broker_url=broker_url, database_url=postgres_url))
    observed_step = declare(queue)
    fairlane.tenants.set_cap("big", 3)
    env = {
        **os.environ,
        "FAIRLANE_BROKER_URL": broker_url,
        "FAIRLANE_DATABASE_URL": postgres_url,
        "FAIRLANE_TEST_QUEUE": queue,
        "FAIRLANE_ADMISSION_INTERVAL": "0.05",
        "FAIRLANE_METRICS_PORT": "0",
        "FAIRLANE_HEALTH_PORT": "0",
    }
    command = [sys.executable, "-m", "fairlane.cli", "worker", "--processes", "2", "--threads", "4"]
    worker = subprocess.Popen([*command, "tests.integration.fairness_actors"], cwd=REPO, env=env)
    try:
        # When "big" sends 30 jobs and "small" 10
        big = [m.message_id for m in observed_step.send_many([(0.1,)] * 30, tenant="big")]
        small = [m.message_id for m in observed_step.send_many([(0.1,)] * 10, tenant="small")]

        # Then everything finishes, "big" never ran more than 3 at once yet did reach 3
        results = {job_id: fairlane.jobs.wait(job_id, timeout=60) for job_id in big + small}
        assert all(job.state == "succeeded" for job in results.values())
        assert most_at_once([results[job_id].result for job_id in big]) == 3
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        fairlane.tenants.set_cap("big", None)
        app.close()


def test_rate_limited_jobs_wait_without_spending_attempts(make_app: Any, queue: str) -> None:
    # Given a key allowing 120 requests/min (one per ~0.5 s) and an actor that settles real tokens
    app = make_app(rate_limits={"api": {"requests_per_minute": 120, "tokens_per_minute": 100_000}})

    @fairlane.actor(queue_name=queue, rate_limit="api", tokens=lambda n: 100 * n)
    def call_api(n: int) -> int:
        fairlane.ratelimit.settle(90 * n)
        return n

    # When four jobs are sent at once
    with running_worker(app, 4, shutdown_timeout=10):
        ids = [call_api.send(n).message_id for n in range(1, 5)]
        finished = [fairlane.jobs.wait(job_id, timeout=20) for job_id in ids]

    # Then all succeed on their first attempt, spread out by the budget (less its small burst)
    assert [job.attempts for job in finished] == [1, 1, 1, 1]
    requests = app.rate_limits.budget("api").requests
    dispatched = sorted(job.dispatched_at.timestamp() for job in finished if job.dispatched_at)
    allowed_burst = requests.tolerance / requests.interval
    assert dispatched[-1] - dispatched[0] >= (len(dispatched) - allowed_burst) * requests.interval - 0.01


def test_estimate_over_the_per_job_ceiling_is_refused(make_app: Any, queue: str) -> None:
    # Given a 10,000 tokens/min key (one job may estimate at most 100)
    make_app(rate_limits={"api": {"requests_per_minute": 60, "tokens_per_minute": 10_000}})

    @fairlane.actor(queue_name=queue, rate_limit="api", tokens=500)
    def big_prompt() -> None:
        pass

    # When sent, then it is refused at once
    with pytest.raises(fairlane.InvalidJob, match="exceed"):
        big_prompt.send()


def test_pause_stops_admission_and_starts_everywhere(make_app: Any, queue: str) -> None:
    # Given a rate-limited actor with one job already published
    app = make_app(rate_limits={"api": {"requests_per_minute": 600}})

    @fairlane.actor(queue_name=queue, rate_limit="api")
    def call_api() -> str:
        return "called"

    early = call_api.send().message_id
    assert fairlane.jobs.get(early).state == "pending"  # rate-limited jobs wait for a round
    assert app.dispatcher.admit(queue) == 1
    assert fairlane.jobs.get(early).state == "dispatched"

    # When the key is paused (a 429 with Retry-After: 1.5) and more jobs are sent
    fairlane.ratelimit.pause("api", 1.5)
    paused_at = time.time()
    late = call_api.send().message_id
    assert fairlane.jobs.get(late).state == "pending"

    with running_worker(app, 2, shutdown_timeout=10):
        # Then the published job is handed back to the ledger without spending an attempt
        eventually(lambda: fairlane.jobs.get(early).state == "pending", message="early job deferred")
        assert fairlane.jobs.get(early).attempts == 0

        # And both run once the pause is over, on their first attempt
        done = [fairlane.jobs.wait(job_id, timeout=15) for job_id in (early, late)]
    assert all(job.state == "succeeded" and job.attempts == 1 for job in done)
    assert all(job.started_at and job.started_at.timestamp() >= paused_at + 1.4 for job in done)


def test_unknown_rate_limit_key_is_refused(app: Any, queue: str) -> None:
    # Given an actor naming a key settings don't declare
    @fairlane.actor(queue_name=queue, rate_limit="nowhere")
    def call() -> None:
        pass

    # When sent, then the error names the key
    with pytest.raises(fairlane.InvalidJob, match="'nowhere'"):
        call.send()


def test_send_many_is_all_or_nothing(app: Any, queue: str) -> None:
    # Given an actor
    @fairlane.actor(queue_name=queue)
    def add(x: int, y: int) -> int:
        return x + y

    # When a batch holds one invalid job, then none is stored and the error says which
    with pytest.raises(fairlane.InvalidJob, match="message 2"):
        add.send_many([(1, 2), (3, 4), (5,)], tenant="bulk")
    assert fairlane.jobs.list(queue=queue) == []

    # And a valid batch is stored and runs
    with running_worker(app, 2, shutdown_timeout=10):
        sent = add.send_many([(n, n) for n in range(5)], tenant="bulk")
        results = [fairlane.jobs.wait(message.message_id, timeout=10).result for message in sent]
    assert results == [0, 2, 4, 6, 8]


def test_tenant_stats_show_backlog_running_and_settings(make_app: Any, queue: str) -> None:
    # Given a budget of 2, a weighted tenant with a backlog and no worker
    make_app(dispatch_budget=2)

    @fairlane.actor(queue_name=queue)
    def noop() -> None:
        pass

    fairlane.tenants.set_weight("stats-a", 5)
    noop.send_many([()] * 6, tenant="stats-a")

    # When stats are read, then they show 2 in flight, 4 waiting, weight 5
    stats = {row.tenant: row for row in fairlane.tenants.stats(queue=queue)}
    assert (stats["stats-a"].running, stats["stats-a"].backlog, stats["stats-a"].weight) == (2, 4, 5.0)
    with pytest.raises(ValueError, match="weight"):
        fairlane.tenants.set_weight("stats-a", 0)
    with pytest.raises(fairlane.InvalidJob):
        fairlane.tenants.set_cap("", 3)
