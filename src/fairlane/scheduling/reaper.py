"""The stale-job reaper: recover jobs a dead worker held, and dispatches nobody picked up.

* A ``running`` job that started more than ``heartbeat_timeout`` seconds ago on a worker
  whose heartbeat is older than that (or gone) goes back to ``pending``, runnable now, and
  is admitted again; the attempt it used stays counted. (A job whose cancel was requested
  is ``cancelled`` instead.) This recovers a job whatever became of its message: RabbitMQ
  redelivers the unacked message of a worker whose connection closed, but not that of a
  worker that hangs, or one partitioned from the ledger but not from RabbitMQ. A job whose
  lost attempt was its last (``max_retries``: a job that kills its worker every time) is
  ``dead`` with ``WorkerLost`` instead, naming the worker (:mod:`fairlane.ledger.lost_workers`).
* A ``dispatched`` job no worker started within ``dispatch_timeout`` seconds is published
  again, once per ``dispatch_timeout``: its message was lost (a purged or deleted queue, a
  broker failure). It is re-published only while its lane queue has consumers and no ready
  messages; otherwise the message may simply be waiting in that queue, and another copy
  would only run the job twice. It stays ``dispatched`` and keeps its dispatch-budget slot.

A lost RabbitMQ connection ends a run's RabbitMQ work (the ledger's is done): the error goes to
the scheduler, which logs the outage once; the next run does what was left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from datetime import datetime
from typing import Any

import pika
from dramatiq.errors import ActorNotFound

from fairlane.app import App
from fairlane.ledger.admission import AdmittedJob
from fairlane.ledger.clock import database_now
from fairlane.ledger.lost_workers import WorkerLost, retries_left
from fairlane.ledger.reaping import ReapedJob, SchedulerQueries, StaleDispatch
from fairlane.ledger.schema import DEAD, PENDING
from fairlane.rabbitmq_outages import CONNECTION_ERRORS

logger = logging.getLogger("fairlane.scheduler")

#: Jobs handled per transaction by the reaper.
REAP_BATCH = 500


@dataclasses.dataclass
class ReaperReport:
    """What one reaper run did."""

    reaped: list[ReapedJob] = dataclasses.field(default_factory=list)
    republished: list[str] = dataclasses.field(default_factory=list)
    waiting: int = 0  # stale dispatches left alone (lane queue has ready messages or no consumers)


def run_reaper(app: App, now: datetime | None = None) -> ReaperReport:
    """Reap abandoned running jobs and re-publish lost dispatches as of ``now`` (default: the
    ledger's current time, never this process's clock)."""
    settings = app.settings
    queries = SchedulerQueries(app.engine)
    moment = now or database_now(app.engine)
    report = ReaperReport()
    while True:
        batch = queries.reap_abandoned(
            settings.heartbeat_timeout, REAP_BATCH, now=moment, may_retry=lambda *job: _may_retry(app, *job)
        )
        report.reaped += batch
        if len(batch) < REAP_BATCH:
            break
    for job in report.reaped:
        logger.warning(
            "event=job_reaped job=%s queue=%s worker=%s attempts=%d now=%s%s",
            job.id,
            job.queue,
            job.worker_id,
            job.attempts,
            job.state,
            " error_type=WorkerLost reason='no retries left'" if job.state == DEAD else "",
        )
    for queue in sorted({job.queue for job in report.reaped if job.state == PENDING}):
        app.broker.declare_queue(queue)
        app.dispatcher.admit(queue)

    stale = queries.stale_dispatches(settings.dispatch_timeout, REAP_BATCH, now=moment)
    publishable = _publishable_lanes(app, {(job.queue, job.lane) for job in stale})
    try:
        for dispatch in stale:
            if (dispatch.queue, dispatch.lane) not in publishable:
                report.waiting += 1
                continue
            if _republish(app, dispatch):
                report.republished.append(dispatch.id)
    finally:  # those published before RabbitMQ went away wait another dispatch_timeout
        queries.mark_redispatched(report.republished, now=moment)
    if report.waiting:
        logger.info(
            "event=stale_dispatches_waiting count=%d reason='lane queue has ready messages or no consumers'",
            report.waiting,
        )
    return report


def _may_retry(app: App, actor_name: str, message: str, attempts: int, worker_id: str | None) -> bool:
    """Whether a job whose attempt ``attempts`` died with its worker has retries left, as a
    failure would: its actor's ``retry_when`` if the actor is declared here, else its message's
    ``max_retries``, its actor's (declared here or in the actor catalog) or the default."""
    options: dict[str, Any] = {}
    try:
        options = dict(app.broker.get_actor(actor_name).options)
    except ActorNotFound:
        entry = app.broker.catalog.lookup(actor_name)
        if entry is not None:
            options = dict(entry.options)
    with contextlib.suppress(ValueError, AttributeError):  # unreadable: its actor's options decide
        options.update(json.loads(message).get("options") or {})
    retry_when = options.get("retry_when")
    if callable(retry_when):
        return bool(retry_when(attempts - 1, WorkerLost(f"worker {worker_id} died")))
    return retries_left(attempts, options.get("max_retries", app.settings.max_retries))


def _publishable_lanes(app: App, lanes: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The lanes whose queue has consumers and no ready message (a lost connection raises)."""
    publishable = set()
    for queue, lane in sorted(lanes):
        try:
            app.broker.declare_queue(queue, ensure=True)
            declared = app.broker.channel.queue_declare(app.broker.lane_queue_name(queue, lane), passive=True)
        except CONNECTION_ERRORS:
            raise
        except (pika.exceptions.AMQPError, OSError) as error:
            del app.broker.channel  # a refused request closes the channel
            logger.warning(
                "event=lane_queue_unreadable queue=%s lane=%s error=%s", queue, lane, type(error).__name__
            )
            continue
        if declared.method.consumer_count > 0 and declared.method.message_count == 0:
            publishable.add((queue, lane))
    return publishable


def _republish(app: App, job: StaleDispatch) -> bool:
    """Publish the job's stored message again, as its admission round did (no decoding; a lost
    connection raises)."""
    try:
        app.broker.publish_batch(job.queue, [AdmittedJob(job.id, job.lane, job.message)])
    except CONNECTION_ERRORS:
        raise
    except (pika.exceptions.AMQPError, OSError) as error:
        logger.warning(
            "event=republish_failed job=%s queue=%s error=%s", job.id, job.queue, type(error).__name__
        )
        return False
    logger.warning("event=job_republished job=%s queue=%s lane=%s", job.id, job.queue, job.lane)
    return True


__all__ = ["REAP_BATCH", "ReaperReport", "run_reaper"]
