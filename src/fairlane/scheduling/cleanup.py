"""Retention: delete finished jobs (and their result files and dead letters) once they expire.

``succeeded`` jobs expire ``retention_succeeded_days`` after they finished, ``cancelled``
ones after ``retention_cancelled_days`` and ``dead`` ones after ``retention_dead_days``.
Rows go in batches of ``cleanup_batch_size``, each its own short transaction, oldest first;
a run deletes at most :data:`MAX_BATCHES_PER_RUN` batches per state and leaves the rest to
the next run. A row's result file is deleted inside the row's transaction (a crash can
leave a row whose file is gone, which the next run deletes, never a file without a row).

Dead letters stay consistent with the ledger: after the rows, each affected queue's
dead-letter queue ``Q.XQ`` is swept once, removing the copies of the dead jobs just deleted
and any message that died before the dead-letter cutoff and has no dead row left (a copy
whose row an earlier run deleted before it crashed, or a raw dead letter that never had a
row). A queue is swept only when this run deleted its dead rows or when its ``Q.XQ`` holds
more messages than it has dead rows. (RabbitMQ's own ``x-message-ttl``,
``dead_letter_ttl_days``, may drop a copy earlier; the ledger row then still has the error
and the message, so the job can still be inspected and re-driven.)

Worker heartbeat rows silent for more than :data:`WORKER_ROW_RETENTION` go too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pika

from fairlane.app import App
from fairlane.broker import dead_letter_queue_name
from fairlane.dead_letters import dead_at_of, job_id_of
from fairlane.ledger.clock import database_now
from fairlane.ledger.reaping import ExpiredJob, SchedulerQueries
from fairlane.ledger.schema import CANCELLED, DEAD, SUCCEEDED
from fairlane.ledger.workers import WorkerStore
from fairlane.rabbitmq_outages import CONNECTION_ERRORS

logger = logging.getLogger("fairlane.scheduler")

#: Most batches of one state deleted by one run.
MAX_BATCHES_PER_RUN = 200
#: Worker rows silent this long are deleted (their jobs were reaped long before).
WORKER_ROW_RETENTION = timedelta(days=1)


@dataclasses.dataclass
class RetentionReport:
    """What one retention run deleted."""

    jobs: dict[str, int] = dataclasses.field(default_factory=dict)
    result_files: int = 0
    dead_letters: int = 0
    workers: int = 0


def run_retention(app: App, now: datetime | None = None) -> RetentionReport:
    """Delete what has expired at ``now`` (default: the ledger's current time)."""
    settings = app.settings
    queries = SchedulerQueries(app.engine)
    moment = now or database_now(app.engine)
    report = RetentionReport()
    expired_dead: dict[str, set[str]] = {}

    def _delete_result_files(batch: Sequence[ExpiredJob]) -> None:
        report.result_files += _delete_result_files_of(batch)

    for state, days in (
        (SUCCEEDED, settings.retention_succeeded_days),
        (CANCELLED, settings.retention_cancelled_days),
        (DEAD, settings.retention_dead_days),
    ):
        cutoff = moment - timedelta(days=days)
        deleted = 0
        for _ in range(MAX_BATCHES_PER_RUN):
            batch = queries.delete_expired(
                state, cutoff, settings.cleanup_batch_size, before_commit=_delete_result_files
            )
            deleted += len(batch)
            if state == DEAD:
                for job in batch:
                    expired_dead.setdefault(job.queue, set()).add(job.id)
            if len(batch) < settings.cleanup_batch_size:
                break
        report.jobs[state] = deleted

    dead_cutoff = moment - timedelta(days=settings.retention_dead_days)
    for queue in _queues_to_sweep(app, queries, expired_dead):
        report.dead_letters += sweep_dead_letter_queue(
            app, queries, queue, expired_dead.get(queue, set()), dead_cutoff
        )
    report.workers = WorkerStore(app.engine).delete_silent_since(moment - WORKER_ROW_RETENTION)
    logger.info(
        "event=retention_done succeeded=%d cancelled=%d dead=%d result_files=%d dead_letters=%d workers=%d",
        report.jobs.get(SUCCEEDED, 0),
        report.jobs.get(CANCELLED, 0),
        report.jobs.get(DEAD, 0),
        report.result_files,
        report.dead_letters,
        report.workers,
    )
    return report


def _delete_result_files_of(batch: Sequence[ExpiredJob]) -> int:
    deleted = 0
    for job in batch:
        if not job.result_path:
            continue
        path = Path(job.result_path)
        if path.name != f"{job.id}.json":  # only ever the file Results wrote for this job
            logger.warning("event=result_file_skipped job=%s reason='unexpected path'", job.id)
            continue
        try:
            path.unlink()
            deleted += 1
        except FileNotFoundError:
            pass
    return deleted


def _queues_to_sweep(app: App, queries: SchedulerQueries, expired_dead: dict[str, set[str]]) -> list[str]:
    queues = set(expired_dead)
    dead_rows = queries.dead_by_queue()
    for queue in app.admission.known_queues():
        if queue in queues:
            continue
        try:
            app.broker.declare_queue(queue, ensure=True)
            waiting = app.broker.channel.queue_declare(dead_letter_queue_name(queue), passive=True)
        except CONNECTION_ERRORS:
            raise  # the run ends here; the scheduler logs the outage once
        except (pika.exceptions.AMQPError, OSError) as error:
            del app.broker.channel  # a refused request closes the channel
            logger.warning("event=dead_letter_count_failed queue=%s error=%s", queue, type(error).__name__)
            continue
        if waiting.method.message_count > dead_rows.get(queue, 0):
            queues.add(queue)
    return sorted(queues)


def sweep_dead_letter_queue(
    app: App, queries: SchedulerQueries, queue: str, expired_ids: Collection[str], cutoff: datetime
) -> int:
    """Remove from ``queue``'s dead-letter queue what the ledger no longer keeps; returns how many.

    That is the copies of ``expired_ids`` and every message that died before ``cutoff`` and
    has no dead row. Every message is read once and held unacked until the channel closes,
    when RabbitMQ puts the kept ones back in order.
    """
    app.broker.declare_queue(queue, ensure=True)
    channel = app.broker.connection.channel()
    removed = 0
    try:
        name = dead_letter_queue_name(queue)
        waiting = channel.queue_declare(name, passive=True).method.message_count
        remove: list[int] = []
        old: list[tuple[int, str | None]] = []
        for _ in range(waiting):
            method, properties, body = channel.basic_get(name, auto_ack=False)
            if method is None:
                break
            job_id = job_id_of(body)
            if job_id is not None and job_id in expired_ids:
                remove.append(method.delivery_tag)
                continue
            dead_at = dead_at_of(properties)
            if dead_at is not None and dead_at < cutoff:
                old.append((method.delivery_tag, job_id))
        still_dead = queries.dead_ids_among({job_id for _tag, job_id in old if job_id is not None})
        remove += [tag for tag, job_id in old if job_id is None or job_id not in still_dead]
        for tag in remove:
            channel.basic_ack(tag)
        removed = len(remove)
    finally:
        channel.close()
    if removed:
        logger.info("event=dead_letters_expired queue=%s count=%d", queue, removed)
    return removed


__all__ = ["MAX_BATCHES_PER_RUN", "RetentionReport", "run_retention", "sweep_dead_letter_queue"]
