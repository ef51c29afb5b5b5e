"""Retention: exactly the expired jobs go, with their result files and their dead letters."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pika
import sqlalchemy as sa

import fairlane
from fairlane.app import App
from fairlane.broker import dead_letter_queue_name
from fairlane.ledger.database import utcnow
from fairlane.ledger.reaping import SchedulerQueries
from fairlane.ledger.schema import jobs
from fairlane.scheduling.cleanup import run_retention
from fairlane.worker import running_worker

from .support import dead_letter_depth, eventually


def _finished_days_ago(app: App, ages: dict[str, float]) -> None:
    now = utcnow()
    with app.engine.begin() as connection:
        for job_id, days in ages.items():
            connection.execute(
                jobs.update().where(jobs.c.id == job_id).values(finished_at=now - timedelta(days=days))
            )


def _dead_letter_ids(app: App, queue: str) -> list[str | None]:
    """Message ids in ``queue``'s dead-letter queue (None for a body that isn't a message), left in place."""
    channel = app.broker.connection.channel()
    found: list[str | None] = []
    try:
        name = dead_letter_queue_name(queue)
        for _ in range(channel.queue_declare(name, passive=True).method.message_count):
            method, _properties, body = channel.basic_get(name, auto_ack=False)
            if method is None:
                break
            try:
                found.append(json.loads(body).get("message_id"))
            except ValueError:
                found.append(None)
    finally:
        channel.close()
    return found


def _publish_raw_dead_letter(app: App, queue: str, body: bytes, days_ago: float) -> None:
    app.broker.channel.basic_publish(
        exchange="",
        routing_key=dead_letter_queue_name(queue),
        body=body,
        properties=pika.BasicProperties(delivery_mode=2, timestamp=int(time.time() - days_ago * 86_400)),
    )


def test_retention_deletes_exactly_what_expired(make_app: Any, queue: str) -> None:
    # Given every result stored as a file, small batches, and retention of 30/90/7 days
    app = make_app(
        result_inline_bytes=0,
        cleanup_batch_size=2,
        retention_succeeded_days=30,
        retention_dead_days=90,
        retention_cancelled_days=7,
    )

    @fairlane.actor(queue_name=queue, max_retries=0)
    def export(fail: bool) -> dict[str, bool]:
        if fail:
            raise ValueError("boom")
        return {"ok": True}

    # ... and succeeded, dead (with copies in Q.XQ) and cancelled jobs of various ages
    ok = [export.send(False).message_id for _ in range(5)]
    dead = [export.send(True).message_id for _ in range(4)]
    with running_worker(app, 4, shutdown_timeout=10):
        for job_id in ok + dead:
            fairlane.jobs.wait(job_id, timeout=20)
    cancelled = [export.send_with_options(args=(False,), delay=3_600_000).message_id for _ in range(3)]
    for job_id in cancelled:
        fairlane.jobs.cancel(job_id)
    _finished_days_ago(app, dict(zip(ok, [31, 31, 29, 45, 1], strict=True)))
    _finished_days_ago(app, dict(zip(dead, [91, 91, 89, 1], strict=True)))
    _finished_days_ago(app, dict(zip(cancelled, [8, 6, 8], strict=True)))
    result_files = {job_id: Path(fairlane.jobs.get(job_id).result_path or "") for job_id in ok}
    assert all(path.is_file() for path in result_files.values())

    # ... and, in Q.XQ, raw dead letters: an old and a new one without a ledger row, and an
    # old copy whose row is already gone (a previous run deleted it, then crashed)
    _publish_raw_dead_letter(app, queue, b"not a message", days_ago=100)
    _publish_raw_dead_letter(app, queue, b"not a message either", days_ago=1)
    _publish_raw_dead_letter(app, queue, json.dumps({"message_id": "gone-row"}).encode(), days_ago=95)
    eventually(lambda: dead_letter_depth(app, queue) == 7, message="7 dead letters")

    # When retention runs
    report = run_retention(app)

    # Then exactly the expired rows are gone, and the rest are untouched
    with app.engine.connect() as connection:
        left = set(connection.scalars(sa.select(jobs.c.id).where(jobs.c.queue == queue)))
    expired = {ok[0], ok[1], ok[3], dead[0], dead[1], cancelled[0], cancelled[2]}
    assert left == set(ok + dead + cancelled) - expired
    assert report.jobs == {"succeeded": 3, "cancelled": 2, "dead": 2}

    # And the expired jobs' result files are deleted, the others kept
    assert {job_id for job_id, path in result_files.items() if path.exists()} == {ok[2], ok[4]}
    assert report.result_files == 3

    # And Q.XQ keeps only the copies of the dead jobs still in the ledger, and the new raw letter
    assert sorted(_dead_letter_ids(app, queue), key=str) == sorted([dead[2], dead[3], None], key=str)
    assert report.dead_letters == 4

    # When it runs again, nothing more goes
    again = run_retention(app)
    assert (again.jobs, again.result_files, again.dead_letters) == (
        {"succeeded": 0, "cancelled": 0, "dead": 0},
        0,
        0,
    )
    assert dead_letter_depth(app, queue) == 3


def test_expired_rows_go_oldest_first_in_batches(make_app: Any, queue: str) -> None:
    # Given five cancelled jobs that finished 10..14 days ago
    app = make_app()

    @fairlane.actor(queue_name=queue)
    def later() -> None:
        pass

    ids = [later.send_with_options(delay=3_600_000).message_id for _ in range(5)]
    for job_id in ids:
        fairlane.jobs.cancel(job_id)
    _finished_days_ago(app, dict(zip(ids, [10, 11, 12, 13, 14], strict=True)))
    queries = SchedulerQueries(app.engine)

    # When one batch of 2 is deleted with a cutoff of 10.5 days
    batch = queries.delete_expired("cancelled", utcnow() - timedelta(days=10.5), limit=2)

    # Then the two oldest went; the next batch takes the other two expired ones, then none
    assert [job.id for job in batch] == [ids[4], ids[3]]
    assert [job.id for job in queries.delete_expired("cancelled", utcnow() - timedelta(days=10.5), 2)] == [
        ids[2],
        ids[1],
    ]
    assert queries.delete_expired("cancelled", utcnow() - timedelta(days=10.5), 2) == []
    assert fairlane.jobs.get(ids[0]).state == "cancelled"
    app.jobs.delete([ids[0]])  # leave no expiring rows to other tests sharing the ledger
