"""Per (queue, lane) load figures: backlog, jobs in flight, and recent finish rates.

Two statements, each on a partial index the hot path already keeps: the unfinished jobs
(``ix_fairlane_jobs_claim`` / ``_live``) and the jobs finished within the window
(``ix_fairlane_jobs_cleanup``). Nothing here scans the whole jobs table.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from datetime import timedelta

import sqlalchemy as sa

from fairlane.ledger.clock import ledger_now
from fairlane.ledger.schema import (
    BACKLOG_PREDICATE,
    CANCELLED,
    DEAD,
    DISPATCHED,
    FINAL_STATES,
    LIVE_PREDICATE,
    PENDING,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    jobs,
)


@dataclasses.dataclass(frozen=True)
class LaneStats:
    """One lane of one queue: jobs waiting and in flight, and finishes per minute over the window."""

    queue: str
    lane: str
    pending: int
    retrying: int
    dispatched: int
    running: int
    succeeded_per_minute: float
    dead_per_minute: float
    cancelled_per_minute: float


def lane_stats(engine: sa.Engine, window: timedelta = timedelta(minutes=5)) -> list[LaneStats]:
    """Every (queue, lane) with unfinished jobs or finishes within ``window``, by queue and lane."""
    since = ledger_now(-window.total_seconds())
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with engine.connect() as connection:
        unfinished = connection.execute(
            sa.select(jobs.c.queue, jobs.c.lane, jobs.c.state, sa.func.count())
            .where(sa.or_(BACKLOG_PREDICATE, LIVE_PREDICATE))
            .group_by(jobs.c.queue, jobs.c.lane, jobs.c.state)
        )
        finished = connection.execute(
            sa.select(jobs.c.queue, jobs.c.lane, jobs.c.state, sa.func.count())
            .where(jobs.c.state.in_(tuple(FINAL_STATES)), jobs.c.finished_at >= since)
            .group_by(jobs.c.queue, jobs.c.lane, jobs.c.state)
        )
        for queue, lane, state, count in (*unfinished, *finished):
            counts[(queue, lane)][state] += int(count)
    minutes = window.total_seconds() / 60
    return [
        LaneStats(
            queue=queue,
            lane=lane,
            pending=by_state[PENDING],
            retrying=by_state[RETRYING],
            dispatched=by_state[DISPATCHED],
            running=by_state[RUNNING],
            succeeded_per_minute=by_state[SUCCEEDED] / minutes,
            dead_per_minute=by_state[DEAD] / minutes,
            cancelled_per_minute=by_state[CANCELLED] / minutes,
        )
        for (queue, lane), by_state in sorted(counts.items())
    ]
