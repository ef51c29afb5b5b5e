"""Dead letters: list, inspect, re-drive and purge them, in the ledger and in RabbitMQ.

A dead job has a ``dead`` ledger row (error type, message, traceback, attempts) and its
message in the queue's dead-letter queue ``Q.XQ``. Messages that never had a usable
ledger row (undecodable bodies) exist only in ``Q.XQ``, with the reason in a header.
Re-driving resets attempts and goes through admission; both it and purging remove the
RabbitMQ copy too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika

from fairlane.app import App
from fairlane.broker import REASON_HEADER, dead_letter_queue_name
from fairlane.ledger.jobs import Job

logger = logging.getLogger("fairlane.dead_letters")

Progress = Callable[[int], None]


@dataclasses.dataclass(frozen=True)
class RawDeadLetter:
    """A message in a dead-letter queue that has no dead ledger row."""

    queue: str
    reason: str
    dead_at: datetime | None
    body_preview: str


def dead_jobs(
    app: App,
    *,
    actor: str | None = None,
    tenant: str | None = None,
    queue: str | None = None,
    older_than: datetime | None = None,
    limit: int | None = None,
) -> list[Job]:
    """Dead jobs in the ledger, oldest first."""
    return app.jobs.dead_jobs(
        actor=actor, tenant=tenant, queue=queue, finished_before=older_than, limit=limit
    )


def dead_letter_counts(app: App) -> dict[str, int]:
    """Messages waiting in each declared queue's dead-letter queue."""
    counts = {}
    channel = app.broker.channel
    for queue in sorted(app.broker.actor_queues):
        app.broker.declare_queue(queue, ensure=True)
        counts[queue] = channel.queue_declare(
            dead_letter_queue_name(queue), passive=True
        ).method.message_count
    return counts


def raw_dead_letters(app: App, queue: str) -> list[RawDeadLetter]:
    """Messages in ``queue``'s dead-letter queue with no dead ledger row (read without removing)."""
    dead_ids = {job.id for job in app.jobs.dead_jobs(queue=queue)}
    found: list[RawDeadLetter] = []

    def _keep_raw(job_id: str | None, properties: pika.BasicProperties, body: bytes) -> bool:
        if job_id is None or job_id not in dead_ids:
            found.append(
                RawDeadLetter(
                    queue, _reason(properties), dead_at_of(properties), body[:200].decode(errors="replace")
                )
            )
        return False

    _sweep_dead_letter_queue(app, queue, _keep_raw)
    return found


def requeue(app: App, jobs: Iterable[Job], progress: Progress | None = None) -> int:
    """Re-drive dead jobs: attempts reset, back through admission. Returns how many."""
    by_queue: dict[str, set[str]] = {}
    for count, job in enumerate(jobs, start=1):
        queue = app.admission.requeue_dead(job.id)
        if queue is not None:
            by_queue.setdefault(queue, set()).add(job.id)
        if progress:
            progress(count)
    for queue, ids in by_queue.items():
        _remove_dead_letters(app, queue, ids)
        app.broker.declare_queue(queue)
        app.dispatcher.admit(queue)
    requeued = sum(len(ids) for ids in by_queue.values())
    logger.info("event=dead_letters_requeued count=%d", requeued)
    return requeued


def purge(
    app: App, jobs: Iterable[Job], progress: Progress | None = None, *, raw_before: datetime | None = None
) -> int:
    """Delete dead jobs (rows, result files, RabbitMQ copies). Returns how many rows went.

    With ``raw_before``, raw dead letters (no ledger row) that died before it go too.
    """
    by_queue: dict[str, list[Job]] = {}
    for job in jobs:
        by_queue.setdefault(job.queue, []).append(job)
    removed = 0
    for queue, queue_jobs in by_queue.items():
        for start in range(0, len(queue_jobs), 500):
            batch = queue_jobs[start : start + 500]
            removed += app.jobs.delete([job.id for job in batch])
            for job in batch:
                if job.result_path:
                    Path(job.result_path).unlink(missing_ok=True)
            if progress:
                progress(removed)
        _remove_dead_letters(app, queue, {job.id for job in queue_jobs})
    if raw_before is not None:
        for queue in sorted(app.broker.actor_queues):
            _remove_raw_dead_letters(app, queue, raw_before)
    logger.info("event=dead_letters_purged count=%d", removed)
    return removed


def _remove_dead_letters(app: App, queue: str, job_ids: Collection[str]) -> int:
    return _sweep_dead_letter_queue(app, queue, lambda job_id, _properties, _body: job_id in job_ids)


def _remove_raw_dead_letters(app: App, queue: str, before: datetime) -> int:
    dead_ids = {job.id for job in app.jobs.dead_jobs(queue=queue)}

    def _is_old_raw(job_id: str | None, properties: pika.BasicProperties, _body: bytes) -> bool:
        dead_at = dead_at_of(properties)
        return (job_id is None or job_id not in dead_ids) and dead_at is not None and dead_at < before

    return _sweep_dead_letter_queue(app, queue, _is_old_raw)


def _sweep_dead_letter_queue(
    app: App, queue: str, remove: Callable[[str | None, pika.BasicProperties, bytes], bool]
) -> int:
    """Look at every message of ``queue``'s dead-letter queue once; ack those ``remove`` picks.

    The rest are held unacked until the channel closes, when RabbitMQ puts them back in order.
    """
    app.broker.declare_queue(queue, ensure=True)
    channel = app.broker.connection.channel()
    removed = 0
    try:
        name = dead_letter_queue_name(queue)
        pending = channel.queue_declare(name, passive=True).method.message_count
        for _ in range(pending):
            method, properties, body = channel.basic_get(name, auto_ack=False)
            if method is None:
                break
            if remove(job_id_of(body), properties, body):
                channel.basic_ack(method.delivery_tag)
                removed += 1
    finally:
        channel.close()
    return removed


def job_id_of(body: bytes) -> str | None:
    """The job id in a dead letter's body, if it is a decodable Dramatiq message."""
    try:
        decoded: Any = json.loads(body)
    except ValueError:
        return None
    job_id = decoded.get("message_id") if isinstance(decoded, dict) else None
    return job_id if isinstance(job_id, str) else None


def _reason(properties: pika.BasicProperties) -> str:
    headers = properties.headers or {}
    reason = headers.get(REASON_HEADER)
    if isinstance(reason, bytes):
        reason = reason.decode(errors="replace")
    if reason:
        return str(reason)
    deaths = headers.get("x-death") or []
    if not deaths:
        return "unknown"
    death_reason = deaths[0].get("reason", "")
    if isinstance(death_reason, bytes):
        death_reason = death_reason.decode(errors="replace")
    return f"rejected by the worker ({death_reason}); no job is recorded for it (e.g. an undeclared actor)"


def dead_at_of(properties: pika.BasicProperties) -> datetime | None:
    """When a dead letter died: RabbitMQ's x-death time, else when fairlane dead-lettered it."""
    headers = properties.headers or {}
    deaths = headers.get("x-death") or []
    if deaths and isinstance(deaths[0].get("time"), datetime):
        moment: datetime = deaths[0]["time"]
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if properties.timestamp:
        return datetime.fromtimestamp(properties.timestamp, UTC)
    return None
