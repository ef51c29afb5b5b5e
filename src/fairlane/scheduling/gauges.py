"""Leader gauges: the system-wide state, exported once, by the scheduler leader.

Every ``gauges_interval`` seconds the leader reads the ledger (backlog and oldest runnable
pending job per queue and lane, dead jobs per queue, tenants with backlog, live workers)
and RabbitMQ (ready messages and consumers of every lane queue, by passive declares) and
replaces the samples of the :class:`~fairlane.observability.catalog.LeaderGauge` objects.
Every known queue and lane gets a sample, 0 included, so alerts see zeros, not gaps. If
RabbitMQ can't be read, its two gauges are cleared (no stale numbers) and the run fails.
"""

from __future__ import annotations

import logging
from datetime import datetime

import pika
from dramatiq.errors import ConnectionClosed

from fairlane.app import App
from fairlane.ledger.clock import database_now
from fairlane.ledger.reaping import SchedulerQueries
from fairlane.ledger.workers import WorkerStore
from fairlane.observability.catalog import (
    BACKLOG_JOBS,
    DEAD_LETTERS,
    LANE_CONSUMERS,
    LANE_QUEUE_DEPTH,
    OLDEST_PENDING_AGE_SECONDS,
    SCHEDULER_LAST_SUCCESS_TIMESTAMP_SECONDS,
    TENANTS_WITH_BACKLOG,
    WORKERS,
    LeaderGauge,
)

logger = logging.getLogger("fairlane.scheduler")

#: The gauges a leader exports besides is-leader; a scheduler that is not the leader clears them.
LEADER_ONLY_GAUGES: tuple[LeaderGauge, ...] = (
    BACKLOG_JOBS,
    OLDEST_PENDING_AGE_SECONDS,
    DEAD_LETTERS,
    TENANTS_WITH_BACKLOG,
    LANE_QUEUE_DEPTH,
    LANE_CONSUMERS,
    WORKERS,
    SCHEDULER_LAST_SUCCESS_TIMESTAMP_SECONDS,
)


def clear_leader_gauges() -> None:
    """Stop exporting the leader-only gauges (this scheduler is not, or no longer, the leader)."""
    for gauge in LEADER_ONLY_GAUGES:
        gauge.clear()


def export_leader_gauges(app: App, now: datetime | None = None) -> None:
    """Refresh every leader gauge from the ledger and RabbitMQ, as of ``now`` (default: the
    ledger's current time)."""
    settings = app.settings
    queries = SchedulerQueries(app.engine)
    moment = now or database_now(app.engine)
    backlog = queries.backlog_by_lane(moment)
    queues = sorted(set(app.admission.known_queues()) | {queue for queue, _lane in backlog})
    lanes = list(settings.lanes)

    counts: dict[tuple[str, ...], float] = {}
    ages: dict[tuple[str, ...], float] = {}
    for queue in queues:
        for lane in lanes:
            lane_backlog = backlog.get((queue, lane))
            counts[(queue, lane)] = lane_backlog.jobs if lane_backlog else 0
            oldest = lane_backlog.oldest_runnable_since if lane_backlog else None
            ages[(queue, lane)] = max(0.0, (moment - oldest).total_seconds()) if oldest else 0.0
    BACKLOG_JOBS.replace(counts)
    OLDEST_PENDING_AGE_SECONDS.replace(ages)
    dead = queries.dead_by_queue()
    DEAD_LETTERS.replace({(queue,): dead.get(queue, 0) for queue in sorted(set(queues) | set(dead))})
    tenants = queries.tenants_with_backlog()
    TENANTS_WITH_BACKLOG.replace({(queue,): tenants.get(queue, 0) for queue in queues})
    WORKERS.set(WorkerStore(app.engine).alive_count(settings.heartbeat_timeout, moment))

    depths: dict[tuple[str, ...], float] = {}
    consumers: dict[tuple[str, ...], float] = {}
    try:
        for queue in queues:
            app.broker.declare_queue(queue, ensure=True)
            for lane in lanes:
                declared = app.broker.channel.queue_declare(
                    app.broker.lane_queue_name(queue, lane), passive=True
                )
                depths[(queue, lane)] = declared.method.message_count
                consumers[(queue, lane)] = declared.method.consumer_count
    except (pika.exceptions.AMQPError, ConnectionClosed, OSError):
        LANE_QUEUE_DEPTH.clear()
        LANE_CONSUMERS.clear()
        raise
    LANE_QUEUE_DEPTH.replace(depths)
    LANE_CONSUMERS.replace(consumers)


__all__ = ["LEADER_ONLY_GAUGES", "clear_leader_gauges", "export_leader_gauges"]
