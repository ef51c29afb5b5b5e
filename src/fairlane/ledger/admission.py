"""Admission: accepting jobs into the ledger backlog and admitting them to RabbitMQ in fair order.

A job is accepted with a stride tag ``pass = max(tenant_last_pass + cost / weight,
lane_virtual_time)``. A queue's backlog is admitted in ``(lane rank, pass, id)`` order, and
only while the queue's dispatch budget (jobs published but not yet started) has room, so
RabbitMQ queues stay short and a tenant's flood waits here, not in front of other tenants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from fairlane.ledger.database import utcnow
from fairlane.ledger.schema import (
    BACKLOG_STATES,
    DEAD,
    DISPATCHED,
    PENDING,
    jobs,
    lanes,
    queues,
    tenant_passes,
)


@dataclasses.dataclass(frozen=True)
class NewJob:
    """A job about to be accepted: its identity, placement and encoded message."""

    id: str
    actor: str
    queue: str
    tenant: str
    lane: str
    lane_rank: int
    cost: float
    message: str
    idempotency_key: str | None
    run_at: datetime


@dataclasses.dataclass(frozen=True)
class AdmittedJob:
    """A job just moved to ``dispatched``: publish ``message`` to its lane queue."""

    id: str
    lane: str
    message: str


def _greatest(left: sa.ColumnElement[float], right: sa.ColumnElement[float]) -> sa.ColumnElement[float]:
    return sa.case((left > right, left), else_=right)


class Admission:
    """The ledger side of admission for one database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def accept(self, job: NewJob) -> tuple[str, bool]:
        """Insert a pending job with its stride tag.

        Returns ``(job_id, created)``. When the tenant already has a job with the same
        idempotency key, nothing is inserted and that job's id is returned.
        """
        now = utcnow()
        with self.engine.begin() as connection:
            if job.idempotency_key is not None:
                existing = self._job_with_key(connection, job.tenant, job.idempotency_key)
                if existing is not None:
                    return existing, False
            stride_pass = self._next_pass(connection, job)
            inserted = connection.execute(
                self._insert(jobs)
                .values(
                    id=job.id,
                    actor=job.actor,
                    queue=job.queue,
                    tenant=job.tenant,
                    lane=job.lane,
                    lane_rank=job.lane_rank,
                    state=PENDING,
                    stride_pass=stride_pass,
                    cost=job.cost,
                    message=job.message,
                    idempotency_key=job.idempotency_key,
                    enqueued_at=now,
                    next_run_at=max(job.run_at, now),
                    updated_at=now,
                )
                .on_conflict_do_nothing()
            )
            if inserted.rowcount == 0:
                # A concurrent send with the same key (or a resent message id) won the race.
                existing = self._job_with_key(connection, job.tenant, job.idempotency_key) or job.id
                return existing, False
        return job.id, True

    def admit(self, queue: str, budget: int) -> list[AdmittedJob]:
        """Move the best backlog jobs of ``queue`` to ``dispatched`` while its budget has room."""
        now = utcnow()
        with self.engine.begin() as connection:
            in_flight = self._lock_queue(connection, queue)
            room = budget - in_flight
            if room <= 0:
                return []
            rows = connection.execute(
                sa.select(jobs.c.id, jobs.c.lane, jobs.c.stride_pass, jobs.c.message)
                .where(
                    jobs.c.queue == queue,
                    jobs.c.state.in_(BACKLOG_STATES),
                    jobs.c.next_run_at <= now,
                )
                .order_by(jobs.c.lane_rank, jobs.c.stride_pass, jobs.c.id)
                .limit(room)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return []
            connection.execute(
                jobs.update()
                .where(jobs.c.id.in_([row.id for row in rows]))
                .values(state=DISPATCHED, dispatched_at=now, updated_at=now)
            )
            connection.execute(
                queues.update().where(queues.c.name == queue).values(in_flight=queues.c.in_flight + len(rows))
            )
            for lane in {row.lane for row in rows}:
                newest = max(row.stride_pass for row in rows if row.lane == lane)
                self._advance_virtual_time(connection, queue, lane, newest)
        return [AdmittedJob(row.id, row.lane, row.message) for row in rows]

    def unadmit(self, queue: str, job_ids: Sequence[str]) -> None:
        """Return dispatched jobs whose publish failed to the backlog, freeing their budget."""
        with self.engine.begin() as connection:
            self._lock_queue(connection, queue)
            moved = connection.execute(
                jobs.update()
                .where(jobs.c.id.in_(job_ids), jobs.c.state == DISPATCHED)
                .values(state=PENDING, dispatched_at=None, updated_at=utcnow())
            ).rowcount
            connection.execute(
                queues.update()
                .where(queues.c.name == queue)
                .values(in_flight=_greatest(queues.c.in_flight - moved, sa.literal(0)))
            )

    def requeue_dead(self, job_id: str) -> str | None:
        """Put a dead job back in the backlog with its attempts reset; returns its queue."""
        now = utcnow()
        with self.engine.begin() as connection:
            row = connection.execute(
                sa.select(jobs.c.queue, jobs.c.lane, jobs.c.tenant, jobs.c.cost)
                .where(jobs.c.id == job_id, jobs.c.state == DEAD)
                .with_for_update()
            ).first()
            if row is None:
                return None
            probe = NewJob(job_id, "", row.queue, row.tenant, row.lane, 0, row.cost, "", None, now)
            connection.execute(
                jobs.update()
                .where(jobs.c.id == job_id)
                .values(
                    state=PENDING,
                    attempts=0,
                    stride_pass=self._next_pass(connection, probe),
                    cancel_requested=False,
                    next_run_at=now,
                    dispatched_at=None,
                    started_at=None,
                    finished_at=None,
                    worker_id=None,
                    updated_at=now,
                )
            )
        return str(row.queue)

    def known_queues(self) -> list[str]:
        """Every actor queue that has ever admitted or been sent a job."""
        with self.engine.connect() as connection:
            return list(connection.scalars(sa.select(queues.c.name).order_by(queues.c.name)))

    # -- helpers -------------------------------------------------------------------------------------

    def _job_with_key(self, connection: sa.Connection, tenant: str, key: str | None) -> str | None:
        if key is None:
            return None
        return connection.execute(
            sa.select(jobs.c.id).where(jobs.c.tenant == tenant, jobs.c.idempotency_key == key)
        ).scalar_one_or_none()

    def _next_pass(self, connection: sa.Connection, job: NewJob) -> float:
        virtual_time = connection.execute(
            sa.select(lanes.c.virtual_time).where(lanes.c.queue == job.queue, lanes.c.lane == job.lane)
        ).scalar_one_or_none()
        virtual_time = float(virtual_time or 0.0)
        increment = job.cost  # every tenant weighs 1 until tenant weights are configured
        insert = self._insert(tenant_passes).values(
            queue=job.queue, lane=job.lane, tenant=job.tenant, last_pass=virtual_time
        )
        statement = insert.on_conflict_do_update(
            index_elements=[tenant_passes.c.queue, tenant_passes.c.lane, tenant_passes.c.tenant],
            set_={
                "last_pass": _greatest(
                    tenant_passes.c.last_pass + increment, sa.literal(virtual_time, sa.Float)
                )
            },
        ).returning(tenant_passes.c.last_pass)
        return float(connection.execute(statement).scalar_one())

    def _lock_queue(self, connection: sa.Connection, queue: str) -> int:
        connection.execute(self._insert(queues).values(name=queue, in_flight=0).on_conflict_do_nothing())
        return int(
            connection.execute(
                sa.select(queues.c.in_flight).where(queues.c.name == queue).with_for_update()
            ).scalar_one()
        )

    def _advance_virtual_time(self, connection: sa.Connection, queue: str, lane: str, value: float) -> None:
        statement = self._insert(lanes).values(queue=queue, lane=lane, virtual_time=value)
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=[lanes.c.queue, lanes.c.lane],
                set_={"virtual_time": _greatest(lanes.c.virtual_time, sa.literal(value, sa.Float))},
            )
        )
