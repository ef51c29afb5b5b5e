"""A job's path from send to the ledger: states, results, progress, retries, cancel, dedupe."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import dramatiq
import pytest

import fairlane
from fairlane import dead_letters
from fairlane.ledger.jobs import JobNotFound

from .support import dead_letter_depth, eventually, lane_depth


def test_job_moves_pending_dispatched_running_succeeded(app: Any, queue: str, worker: Any) -> None:
    # Given an actor that blocks until released and reports progress
    release = threading.Event()

    @fairlane.actor(queue_name=queue)
    def export_catalog(store_id: int) -> dict[str, int]:
        fairlane.progress(done=1, total=2)
        release.wait(10)
        return {"store": store_id, "items": 47}

    # When it is sent with no worker running
    message = export_catalog.send_with_options(args=(42,), tenant="store-42", priority="high")

    # Then the job is dispatched (published) and its row says so
    job = fairlane.jobs.get(message.message_id)
    assert (job.state, job.tenant, job.priority, job.queue, job.actor) == (
        "dispatched",
        "store-42",
        "high",
        queue,
        "export_catalog",
    )
    eventually(lambda: lane_depth(app, queue, "high") == 1, message="published")  # sends publish unconfirmed

    # When a worker picks it up, it is running with one attempt and progress
    with worker(threads=2):
        eventually(lambda: fairlane.jobs.get(message.message_id).state == "running", message="running")
        eventually(lambda: fairlane.jobs.get(message.message_id).progress is not None, message="progress")
        running = fairlane.jobs.get(message.message_id)
        assert running.attempts == 1
        assert running.progress == {"done": 1, "total": 2, "percent": 50.0}
        release.set()
        done = fairlane.jobs.wait(message.message_id, timeout=10)

    # Then it succeeded with its result and ordered timestamps
    assert done.state == "succeeded"
    assert done.result == {"store": 42, "items": 47}
    assert done.error is None
    assert done.enqueued_at <= done.dispatched_at <= done.started_at <= done.finished_at  # type: ignore[operator]


def test_send_without_options_uses_default_tenant_and_normal_priority(
    app: Any, queue: str, worker: Any
) -> None:
    # Given a plain Dramatiq actor declared on fairlane's broker
    @dramatiq.actor(queue_name=queue, broker=fairlane.get_broker())
    def plain(x: int) -> None:
        assert x == 1

    # When it is sent the Dramatiq way and a worker runs
    with worker():
        message = plain.send(1)
        job = fairlane.jobs.wait(message.message_id, timeout=10)

    # Then fairlane tracked it like any other job
    assert (job.state, job.tenant, job.priority, job.attempts) == ("succeeded", "default", "normal", 1)


def test_dispatch_budget_keeps_rabbitmq_queue_short(make_app: Any, queue: str) -> None:
    # Given a queue whose dispatch budget is 3 and no worker
    app = make_app(dispatch_budget=3)

    @fairlane.actor(queue_name=queue)
    def noop() -> None:
        pass

    # When 20 jobs are sent
    ids = [noop.send().message_id for _ in range(20)]

    # Then only 3 are in RabbitMQ; the rest wait pending in the ledger
    states = [fairlane.jobs.get(job_id).state for job_id in ids]
    assert states.count("dispatched") == 3
    assert states.count("pending") == 17
    eventually(lambda: lane_depth(app, queue) == 3, message="published")  # sends publish unconfirmed

    # And once a worker runs, every job is admitted and succeeds
    from fairlane.worker import running_worker

    with running_worker(app, 4, shutdown_timeout=10):
        for job_id in ids:
            assert fairlane.jobs.wait(job_id, timeout=20).state == "succeeded"
    assert lane_depth(app, queue) == 0


def test_light_tenant_is_admitted_ahead_of_a_backlog(make_app: Any, queue: str) -> None:
    # Given a budget of 1, one worker thread, and tenant "noisy" with 30 queued jobs
    app = make_app(dispatch_budget=1)
    order: list[str] = []

    @fairlane.actor(queue_name=queue)
    def record(tenant: str) -> None:
        order.append(tenant)

    for _ in range(30):
        record.send_with_options(args=("noisy",), tenant="noisy")

    # When tenant "light" sends 2 jobs afterwards
    light = [record.send_with_options(args=("light",), tenant="light").message_id for _ in range(2)]

    # Then both light jobs run among the first few, not behind the 30
    from fairlane.worker import running_worker

    with running_worker(app, 1, shutdown_timeout=10):
        for job_id in light:
            fairlane.jobs.wait(job_id, timeout=20)
    assert [index for index, tenant in enumerate(order) if tenant == "light"][-1] <= 4


def test_urgent_job_overtakes_normal_backlog_of_its_own_tenant(make_app: Any, queue: str) -> None:
    # Given a budget of 1, one worker thread, and 20 normal jobs of tenant "t"
    app = make_app(dispatch_budget=1)
    order: list[str] = []

    @fairlane.actor(queue_name=queue)
    def record(label: str) -> None:
        order.append(label)

    normal = [record.send_with_options(args=("normal",), tenant="t").message_id for _ in range(20)]

    # When the same tenant sends an urgent job
    urgent = record.send_with_options(args=("urgent",), tenant="t", priority="urgent")

    # Then it runs right after the one job already dispatched
    from fairlane.worker import running_worker

    with running_worker(app, 1, shutdown_timeout=10):
        fairlane.jobs.wait(urgent.message_id, timeout=20)
        fairlane.jobs.wait(normal[-1], timeout=30)
    assert order.index("urgent") <= 1


def test_retries_with_backoff_then_succeeds(app: Any, queue: str, worker: Any) -> None:
    # Given an actor that fails twice, then succeeds
    calls: list[int] = []

    @fairlane.actor(queue_name=queue, max_retries=3, min_backoff=30, max_backoff=60)
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"upstream down ({len(calls)})")
        return "ok"

    # When it runs
    with worker():
        job = fairlane.jobs.wait(flaky.send().message_id, timeout=15)

    # Then it succeeded on the third attempt, and the waits happened in the ledger
    assert (job.state, job.attempts, job.result) == ("succeeded", 3, "ok")
    assert lane_depth(app, queue) == 0


def test_exhausted_retries_dead_letter_then_requeue_runs_again(app: Any, queue: str, worker: Any) -> None:
    # Given an actor that fails until switched on
    healthy = threading.Event()

    @fairlane.actor(queue_name=queue, max_retries=2, min_backoff=10, max_backoff=20)
    def sync_inventory(store: str) -> str:
        if not healthy.is_set():
            raise RuntimeError(f"inventory API refused {store}")
        return "synced"

    with worker():
        # When it exhausts its retries
        message = sync_inventory.send_with_options(args=("s-1",), tenant="acme")
        dead = fairlane.jobs.wait(message.message_id, timeout=15)

        # Then it is dead with the error, attempts and traceback, and its message is in the DLQ
        assert (dead.state, dead.attempts) == ("dead", 3)
        assert dead.error is not None
        assert dead.error.type == "RuntimeError"
        assert dead.error.message == "inventory API refused s-1"
        assert "sync_inventory" in (dead.error.traceback or "")
        eventually(lambda: dead_letter_depth(app, queue) == 1, message="message in the dead-letter queue")

        # When it is re-driven after the cause is fixed
        healthy.set()
        assert dead_letters.requeue(app, dead_letters.dead_jobs(app, tenant="acme", queue=queue)) == 1

        # Then it runs again from attempt 1 and succeeds, and the dead letter is gone
        eventually(
            lambda: fairlane.jobs.get(message.message_id).state == "succeeded", message="re-driven job ran"
        )
    again = fairlane.jobs.get(message.message_id)
    assert (again.attempts, again.result) == (1, "synced")
    assert dead_letter_depth(app, queue) == 0


def test_non_retryable_exception_dead_letters_at_once(app: Any, queue: str, worker: Any) -> None:
    # Given an actor whose ValueError is declared non-retryable
    @fairlane.actor(queue_name=queue, max_retries=5, throws=(ValueError,))
    def parse(text: str) -> int:
        return int(text)

    # When it fails with that exception
    with worker():
        job = fairlane.jobs.wait(parse.send("not a number").message_id, timeout=10)

    # Then it is dead after one attempt
    assert (job.state, job.attempts, job.error.type if job.error else None) == ("dead", 1, "ValueError")


def test_retry_when_decides(app: Any, queue: str, worker: Any) -> None:
    # Given an actor that retries only timeouts
    @fairlane.actor(
        queue_name=queue, retry_when=lambda retries, error: isinstance(error, TimeoutError) and retries < 1
    )
    def call(kind: str) -> None:
        raise TimeoutError() if kind == "timeout" else KeyError(kind)

    # When one job times out and one hits a KeyError
    with worker():
        timeout = fairlane.jobs.wait(call.send("timeout").message_id, timeout=10)
        missing = fairlane.jobs.wait(call.send("missing").message_id, timeout=10)

    # Then only the timeout was retried
    assert (timeout.state, timeout.attempts) == ("dead", 2)
    assert (missing.state, missing.attempts) == ("dead", 1)


def test_time_limit_interrupts_and_counts_as_failure(app: Any, queue: str, worker: Any) -> None:
    # Given an actor that takes longer than its 300 ms limit
    @fairlane.actor(queue_name=queue, time_limit=300, max_retries=0)
    def slow() -> None:
        for _ in range(600):  # interrupts land between Python bytecodes, not inside one long C call
            time.sleep(0.05)

    # When it runs
    with worker():
        job = fairlane.jobs.wait(slow.send().message_id, timeout=15)

    # Then it was interrupted and dead-lettered with the time limit error
    assert job.state == "dead"
    assert job.error is not None and job.error.type == "TimeLimitExceeded"


def test_cancel_pending_job_never_runs(make_app: Any, queue: str) -> None:
    # Given a job waiting in the ledger backlog (budget full) and another already dispatched
    app = make_app(dispatch_budget=1)
    ran: list[str] = []

    @fairlane.actor(queue_name=queue)
    def work(label: str) -> None:
        ran.append(label)

    dispatched = work.send("dispatched").message_id
    pending = work.send("pending").message_id
    assert fairlane.jobs.get(pending).state == "pending"

    # When both are cancelled before any worker runs
    assert fairlane.jobs.cancel(pending).state == "cancelled"
    assert fairlane.jobs.cancel(dispatched).state == "cancelled"

    # Then a worker runs neither, and the budget is free for new work
    from fairlane.worker import running_worker

    with running_worker(app, 2, shutdown_timeout=10):
        after = work.send("after").message_id
        assert fairlane.jobs.wait(after, timeout=10).state == "succeeded"
    assert ran == ["after"]
    assert fairlane.jobs.get(pending).started_at is None


def test_cancel_running_job_interrupts_it(
    app: Any, queue: str, worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a long-running job
    caplog.set_level(logging.INFO)
    started = threading.Event()
    interrupted = threading.Event()

    @fairlane.actor(queue_name=queue, max_retries=3)
    def long_export() -> None:
        started.set()
        try:
            for _ in range(300):
                threading.Event().wait(0.05)
        except fairlane.JobCancelled:
            interrupted.set()
            raise

    with worker():
        message = long_export.send()
        assert started.wait(10)
        eventually(lambda: fairlane.jobs.get(message.message_id).state == "running", message="start recorded")

        # When it is cancelled
        requested = fairlane.jobs.cancel(message.message_id)
        assert requested.cancel_requested

        # Then it is interrupted and ends cancelled, without a retry
        job = fairlane.jobs.wait(message.message_id, timeout=10)
    assert interrupted.is_set()
    assert (job.state, job.attempts) == ("cancelled", 1)
    # And the logs say it was cancelled, not that it failed (no ERROR with a traceback)
    assert any(f"event=job_cancelled job={message.message_id}" in r.getMessage() for r in caplog.records)
    assert [
        r.getMessage()
        for r in caplog.records
        if r.exc_info and isinstance(r.exc_info[1], fairlane.JobCancelled)
    ] == []


def test_cancel_of_a_job_already_in_a_workers_hands_keeps_it_from_running(
    app: Any, queue: str, worker: Any
) -> None:
    # Given a one-thread worker busy with a blocking job, and a second job it has prefetched
    release = threading.Event()
    ran: list[str] = []

    @fairlane.actor(queue_name=queue)
    def step(label: str) -> None:
        ran.append(label)
        if label == "blocker":
            release.wait(10)

    with worker(threads=1):
        step.send("blocker")
        eventually(lambda: ran == ["blocker"], message="blocker running")
        victim = step.send("victim").message_id
        eventually(lambda: lane_depth(app, queue, "normal") == 0, message="victim prefetched")

        # When the prefetched job is cancelled (on PostgreSQL the worker hears of it at once)
        assert fairlane.jobs.cancel(victim).state == "cancelled"
        if app.engine.dialect.name == "postgresql":
            eventually(lambda: victim in app.broker.dispatcher.cancelled, message="cancel heard")
        release.set()

        # Then it never runs, while the worker goes on with other work
        after = step.send("after").message_id
        assert fairlane.jobs.wait(after, timeout=10).state == "succeeded"
    assert ran == ["blocker", "after"]
    job = fairlane.jobs.get(victim)
    assert (job.state, job.attempts, job.started_at) == ("cancelled", 0, None)


def test_cancel_finished_job_changes_nothing_and_unknown_id_raises(app: Any, queue: str, worker: Any) -> None:
    # Given a finished job
    @fairlane.actor(queue_name=queue)
    def noop() -> None:
        pass

    with worker():
        job_id = noop.send().message_id
        fairlane.jobs.wait(job_id, timeout=10)

    # When it is cancelled, then it stays succeeded; an unknown id is an error
    assert fairlane.jobs.cancel(job_id).state == "succeeded"
    with pytest.raises(JobNotFound):
        fairlane.jobs.cancel("no-such-job")
    with pytest.raises(JobNotFound):
        fairlane.jobs.get("no-such-job")


def test_idempotency_key_dedupes_per_tenant(app: Any, queue: str) -> None:
    # Given an actor
    @fairlane.actor(queue_name=queue)
    def sync(store: int) -> None:
        pass

    # When the same tenant sends twice with one key, and another tenant uses the same key
    first = sync.send_with_options(args=(42,), tenant="store-42", idempotency_key="sync-42")
    second = sync.send_with_options(args=(42,), tenant="store-42", idempotency_key="sync-42")
    other = sync.send_with_options(args=(7,), tenant="store-7", idempotency_key="sync-42")

    # Then the second send returns the first job and stores nothing new
    assert second.message_id == first.message_id
    assert other.message_id != first.message_id
    assert len(fairlane.jobs.list(tenant="store-42", queue=queue)) == 1
    eventually(lambda: lane_depth(app, queue) == 2, message="published")  # sends publish unconfirmed


def test_large_result_goes_to_results_dir_and_reads_back(make_app: Any, queue: str) -> None:
    # Given results above 1 KiB are kept out of the ledger row
    app = make_app(result_inline_bytes=1024)

    @fairlane.actor(queue_name=queue)
    def report() -> dict[str, list[int]]:
        return {"rows": list(range(2000))}

    from fairlane.worker import running_worker

    with running_worker(app, 2, shutdown_timeout=10):
        job = fairlane.jobs.wait(report.send().message_id, timeout=10)

    # Then the result is read back whole from its file
    assert job.result == {"rows": list(range(2000))}
    assert job.result_path is not None and job.result_path.endswith(f"{job.id}.json")


def test_non_json_result_dead_letters(app: Any, queue: str, worker: Any) -> None:
    # Given an actor that returns something JSON cannot hold
    @fairlane.actor(queue_name=queue, max_retries=3)
    def bad() -> object:
        return {1, 2, 3}

    # When it runs, then the job is dead (retrying would return the same) with the reason
    with worker():
        job = fairlane.jobs.wait(bad.send().message_id, timeout=10)
    assert (job.state, job.attempts) == ("dead", 1)
    assert job.error is not None and "JSON" in job.error.message


def test_delay_waits_in_the_ledger(app: Any, queue: str, worker: Any) -> None:
    # Given an actor
    @fairlane.actor(queue_name=queue)
    def later() -> None:
        pass

    # When a job is sent with a 300 ms delay
    with worker():
        sent_at = datetime.now(UTC)
        message = later.send_with_options(delay=300)
        job = fairlane.jobs.wait(message.message_id, timeout=10)

    # Then it waited in the ledger until due (not published before), then ran
    assert job.state == "succeeded"
    assert (job.next_run_at - sent_at).total_seconds() >= 0.3
    assert job.dispatched_at is not None and job.dispatched_at >= job.next_run_at
    assert job.started_at is not None and job.started_at >= job.next_run_at


def test_list_filters_and_pages_newest_first(app: Any, queue: str) -> None:
    # Given five jobs of one tenant and one of another
    @fairlane.actor(queue_name=queue)
    def noop(n: int) -> None:
        pass

    ids = [noop.send_with_options(args=(n,), tenant="pager").message_id for n in range(5)]
    noop.send_with_options(args=(9,), tenant="other")

    # When listed two at a time
    first = fairlane.jobs.list(tenant="pager", queue=queue, limit=2)
    second = fairlane.jobs.list(tenant="pager", queue=queue, limit=2, before=first[-1].id)
    third = fairlane.jobs.list(tenant="pager", queue=queue, limit=2, before=second[-1].id)

    # Then pages are newest first, complete and disjoint, and hold only that tenant
    listed = [job.id for job in first + second + third]
    assert listed == list(reversed(ids))
    assert all(job.tenant == "pager" for job in first + second + third)
    with pytest.raises(ValueError, match="unknown state"):
        fairlane.jobs.list(state="exploded")


def test_wait_times_out_on_unfinished_job(app: Any, queue: str) -> None:
    # Given a job no worker will run
    @fairlane.actor(queue_name=queue)
    def noop() -> None:
        pass

    message = noop.send()

    # When waited on briefly, then the wait says so
    with pytest.raises(fairlane.JobTimeout):
        fairlane.jobs.wait(message.message_id, timeout=0.2)
