"""Admission: accepting jobs into the ledger backlog and admitting them to RabbitMQ in fair order.

A job is accepted with a stride tag ``pass = max(tenant_last_pass + cost / weight,
lane_virtual_time)``. A queue's backlog is admitted only while the queue's dispatch budget
(jobs published but not yet started) has room, so RabbitMQ queues stay short and a tenant's
flood waits here, not in front of other tenants. Each free slot goes to:

1. a lane that is *owed* its minimum share (every backlogged lane earns its share of each
   slot as credit and pays 1 when served; a lane holding >= 1 credit is owed), else
2. the highest-priority lane with backlog;

and within the lane to the job with the lowest ``(pass, id)`` whose tenant is under its
concurrency cap and whose rate-limit key can afford it. Jobs passed over stay pending: no
worker slot, no retry spent.

Whether a job is due (its delay or backoff over) is decided on the ledger's clock
(:mod:`fairlane.ledger.clock`): a job's ``next_run_at`` is written as the ledger's ``now`` plus
its delay, and compared with the ledger's ``now``, so senders and dispatchers with skewed
clocks agree. So is the first-come pass of ``fairness=False``.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.rows import namedtuple_row
from sqlalchemy.dialects import postgresql, sqlite

from fairlane.ledger import transitions
from fairlane.ledger.clock import database_now, ledger_now
from fairlane.ledger.database import INDEX_PLANNING, POOL_RECYCLE, POOL_SIZE, as_utc
from fairlane.ledger.pg_arrays import float_array, int_array, text_array
from fairlane.ledger.ratelimits import RateLimits
from fairlane.ledger.schema import (
    BACKLOG_PREDICATE,
    DISPATCHED,
    DISPATCHED_PREDICATE,
    LIVE_PREDICATE,
    PENDING,
    jobs,
    lanes,
    queues,
    tenant_passes,
    tenants,
)
from fairlane.ledger.statement_connections import StatementConnections
from fairlane.settings import Settings


def _overtake_budget(budget: int) -> int:
    """The dispatch limit for a job that overtakes a lower lane's backlog (see ``accept``)."""
    return budget + max(1, budget // 2)


#: The PostgreSQL NOTIFY channel on which senders wake the dispatchers of a queue (payload: queue).
ADMISSION_CHANNEL = "fairlane_admission"
#: Seconds a process trusts its cached tenant weights and caps.
TENANT_CACHE_SECONDS = 5.0


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
    #: Seconds after its acceptance (on the ledger's clock) before the job may run.
    delay: float = 0.0
    rate_key: str | None = None
    rate_tokens: float | None = None


@dataclasses.dataclass(frozen=True)
class Accepted:
    """The outcome of accepting one job."""

    job_id: str
    #: False when an existing job was returned (same idempotency key or message id).
    created: bool
    #: True when the job took a free slot of an idle queue: the sender publishes it now.
    dispatched: bool
    #: Since when a dispatched job is runnable (its acceptance, on the ledger's clock).
    runnable_since: datetime | None = None


@dataclasses.dataclass(frozen=True)
class AdmittedJob:
    """A job just moved to ``dispatched``: publish ``message`` to its lane queue."""

    id: str
    lane: str
    message: str
    #: The attempt its next start will be, and since when it is runnable, when known: published
    #: with the message, so a worker can run it without waiting for its start to be recorded.
    attempt: int | None = None
    runnable_since: datetime | None = None


@dataclasses.dataclass(frozen=True)
class Admitted:
    """The outcome of one admission round."""

    jobs: list[AdmittedJob]
    #: In how many seconds a job held back by a rate limit may be affordable.
    retry_in: float | None = None
    #: How many candidates were held back, by reason (``concurrency``, ``ratelimit``).
    deferred: Counter[str] = dataclasses.field(default_factory=Counter)


def _greatest(left: sa.ColumnElement[float], right: sa.ColumnElement[float]) -> sa.ColumnElement[float]:
    return sa.case((left > right, left), else_=right)


@dataclasses.dataclass
class _Round:
    """Mutable state of one admission round."""

    room: int
    caps: dict[str, int | None] = dataclasses.field(default_factory=dict)
    live: Counter[str] = dataclasses.field(default_factory=Counter)
    blocked_keys: dict[str, float] = dataclasses.field(default_factory=dict)
    deferred: Counter[str] = dataclasses.field(default_factory=Counter)

    def tenant_full(self, tenant: str) -> bool:
        cap = self.caps.get(tenant)
        return cap is not None and self.live[tenant] >= cap


class Admission:
    """The ledger side of admission for one database."""

    def __init__(self, engine: sa.Engine, settings: Settings, rate_limits: RateLimits) -> None:
        self.engine = engine
        self.settings = settings
        self.rate_limits = rate_limits
        self.lane_names = settings.lanes
        self.shares = [settings.min_shares[lane] for lane in settings.lanes]
        #: The round's fixed parameters on PostgreSQL: lane names, and the lanes with a minimum share
        #: (array literals, see fairlane.ledger.pg_arrays).
        self._lanes_array = text_array(self.lane_names)
        self._share_ranks_array = int_array(rank for rank, share in enumerate(self.shares) if share > 0)
        self._postgresql = engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if self._postgresql else sqlite.insert
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        #: Where a send's accept runs on PostgreSQL, when one is free (see its module).
        kept = POOL_SIZE if self._postgresql else 0
        self._statement_connections = StatementConnections(engine, kept, POOL_RECYCLE)
        self._statements = _Statements(self._insert, self._postgresql)
        self._tenant_cache: tuple[float, dict[str, tuple[float, int | None]]] = (0.0, {})
        self._queue_rows: set[str] = set()

    def close(self) -> None:
        """Close the connections kept for accepts (the engine's pool is the engine's)."""
        self._statement_connections.close()

    # -- accepting -----------------------------------------------------------------------------------

    def accept(self, job: NewJob, budget: int | None = None) -> Accepted:
        """Insert a job with its stride tag; ``dispatched`` at once if its queue is idle.

        The job may take a slot when no job of its lane or a higher one is due in the backlog
        and fewer than ``budget`` of the queue's jobs are dispatched, or, when only lower lanes
        have backlog, fewer than ``budget`` plus half of it: a job that overtakes a lower lane's
        backlog does not wait for that backlog's slots to free up. Then the job is inserted
        ``dispatched`` (the caller publishes it) and charges nothing to its tenant's stride
        pass: fairness accounts for contention only. Jobs with a delay, a rate-limit key or
        a tenant cap that applies always wait for an admission round. On PostgreSQL the
        whole accept is one statement, which also notifies the queue's dispatchers
        (``NOTIFY fairlane_admission``) when the job waits.

        When the tenant already has a job with the same idempotency key (or the message id
        exists), nothing is inserted and that job's id is returned, not ``created``.
        """
        self._ensure_queue_row(job.queue)
        eligible = (
            budget is not None
            and job.rate_key is None
            and job.delay <= 0
            and not (self.settings.fairness and self._caps_apply(None, job.queue))
        )
        if self._postgresql:
            accepted = self._accept_pg(job, budget if eligible else None)
            if accepted is None:
                return Accepted(self._existing_id(job), created=False, dispatched=False)
            state, runnable_since = accepted
            dispatched = state == DISPATCHED
            return Accepted(job.id, created=True, dispatched=dispatched, runnable_since=runnable_since)
        with self.engine.begin() as connection:
            if job.idempotency_key is not None:
                existing = self._job_with_key(connection, job.tenant, job.idempotency_key)
                if existing is not None:
                    return Accepted(existing, created=False, dispatched=False)
            now = database_now(connection)
            idle = eligible and self._idle(connection, job, budget or 0)
            if idle:
                stride_pass = self._virtual_time(connection, job.queue, job.lane, now)
            else:
                passes = self._next_passes(connection, job.queue, job.lane, job.tenant, [job.cost], now)
                stride_pass = passes[0]
            row = self._row(job, stride_pass, now)
            if idle:
                row.update(state=DISPATCHED, dispatched_at=now)
            inserted = connection.execute(self._statements.insert_job, row)
            if inserted.rowcount == 0:
                # A concurrent send with the same key (or a resent message id) won the race.
                existing = self._job_with_key(connection, job.tenant, job.idempotency_key) or job.id
                return Accepted(existing, created=False, dispatched=False)
        return Accepted(job.id, created=True, dispatched=idle, runnable_since=now if idle else None)

    def _accept_pg(self, job: NewJob, budget: int | None) -> tuple[str, datetime] | None:
        """The one-statement accept on PostgreSQL: the new row's state and ``next_run_at``, or None
        if it existed."""
        fair = self.settings.fairness
        weight = self.tenant_settings().get(job.tenant, (1.0, None))[0] if fair else 1.0
        parameters = {
            "id": job.id,
            "actor": job.actor,
            "queue": job.queue,
            "tenant": job.tenant,
            "lane": job.lane,
            "rank": job.lane_rank,
            "cost": job.cost,
            "message": job.message,
            "key": job.idempotency_key,
            "rate_key": job.rate_key,
            "rate_tokens": job.rate_tokens,
            "delay": max(job.delay, 0.0),
            "eligible": budget is not None,
            "budget": budget or 0,
            "overtake_budget": _overtake_budget(budget or 0),
            "fair": fair,
            "increment": job.cost / weight,
            "notify": job.delay <= 0,
        }
        with self._statement_connections.connection() as kept:
            if kept is not None:
                row = kept.execute(_ACCEPT_PG, parameters, prepare=True).fetchone()
                return None if row is None else (str(row[0]), row[1])
        dbapi = self.engine.dialect.loaded_dbapi
        with self._autocommit.connect() as connection:  # more sends at once than kept connections
            driver = connection.connection.driver_connection
            try:
                row = driver.execute(_ACCEPT_PG, parameters, prepare=True).fetchone()  # type: ignore[union-attr]
            except (dbapi.OperationalError, dbapi.InterfaceError):
                # SQLAlchemy did not see this driver error: keep the broken connection out of the pool.
                connection.invalidate()
                raise
        return None if row is None else (str(row[0]), row[1])

    def _existing_id(self, job: NewJob) -> str:
        with self.engine.connect() as connection:
            return self._job_with_key(connection, job.tenant, job.idempotency_key) or job.id

    def _idle(self, connection: sa.Connection, job: NewJob, budget: int) -> bool:
        """Whether ``job`` may take a slot now (SQLite; see :meth:`accept`)."""

        def due(*rank_condition: sa.ColumnElement[bool]) -> bool:
            query = sa.select(jobs.c.id).where(
                jobs.c.queue == job.queue,
                BACKLOG_PREDICATE,
                jobs.c.next_run_at <= ledger_now(),
                *rank_condition,
            )
            return connection.execute(query.limit(1)).first() is not None

        if due(jobs.c.lane_rank <= job.lane_rank):
            return False
        dispatched = self._dispatched_count(connection, job.queue)
        if dispatched < budget:
            return True
        return dispatched < _overtake_budget(budget) and due(jobs.c.lane_rank > job.lane_rank)

    def _virtual_time(self, connection: sa.Connection, queue: str, lane: str, now: datetime) -> float:
        if not self.settings.fairness:
            return now.timestamp()
        value = connection.execute(
            sa.select(lanes.c.virtual_time).where(lanes.c.queue == queue, lanes.c.lane == lane)
        ).scalar()
        return float(value or 0.0)

    def accept_many(self, batch: Sequence[NewJob]) -> None:
        """Insert many pending jobs (no idempotency keys) in one transaction, in fair order.

        The transaction reads the ledger's clock once: COPY writes values, not expressions.
        """
        groups: dict[tuple[str, str, str], list[NewJob]] = {}
        for queue in {job.queue for job in batch}:
            self._ensure_queue_row(queue)
        for job in batch:
            groups.setdefault((job.queue, job.lane, job.tenant), []).append(job)
        with self.engine.begin() as connection:
            now = database_now(connection)
            passes = [
                (
                    members,
                    self._next_passes(connection, queue, lane, tenant, [job.cost for job in members], now),
                )
                for (queue, lane, tenant), members in groups.items()
            ]
            in_fair_order = [
                (job, stride_pass)
                for members, group_passes in passes
                for job, stride_pass in zip(members, group_passes, strict=True)
            ]
            if not self._postgresql:
                connection.execute(
                    jobs.insert(), [self._row(job, stride_pass, now) for job, stride_pass in in_fair_order]
                )
                return
            # COPY: one stream for the whole batch, several times faster than row-by-row inserts.
            # Each row is built as it is written: PostgreSQL stores the rows already sent meanwhile.
            cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
            with cursor.copy(_COPY_JOBS) as copy:
                for job, stride_pass in in_fair_order:
                    copy.write_row(_copy_row(job, stride_pass, now))
            for queue in {job.queue for job in batch}:
                connection.execute(self._statements.notify, {"p_queue": queue})

    def _row(self, job: NewJob, stride_pass: float, now: datetime) -> dict[str, Any]:
        """The job's row as accepted at ``now`` (the ledger's clock), by column name."""
        return dict(zip(_COPY_COLUMNS, _copy_row(job, stride_pass, now), strict=True))

    # -- admitting -----------------------------------------------------------------------------------

    def admit(
        self,
        queue: str,
        budget: int,
        *,
        wait: bool = True,
        turn_timeout: float | None = None,
        publish: Callable[[list[AdmittedJob]], None] | None = None,
    ) -> Admitted | None:
        """Move the best admissible backlog jobs of ``queue`` to ``dispatched`` while its budget has room.

        Admissions of one queue take turns on its row. With ``wait=False`` a round already
        under way elsewhere is not waited for: returns None. With ``turn_timeout`` (PostgreSQL)
        it is waited for that many seconds at most, then None is returned the same way.

        ``publish`` runs before the round commits: if it raises, nothing was admitted (the
        jobs stay in the backlog), and a process that dies in between leaves no job
        dispatched without a message. A message published for a round that then failed to
        commit is harmless: its job still starts only once (see ``transitions.START``).
        """
        try:
            return self._admit(queue, budget, wait, turn_timeout, publish)
        except (sa.exc.OperationalError, psycopg.errors.LockNotAvailable) as error:
            if isinstance(getattr(error, "orig", error), psycopg.errors.LockNotAvailable):
                return None  # the turn was not had within turn_timeout
            raise

    def _admit(
        self,
        queue: str,
        budget: int,
        wait: bool,
        turn_timeout: float | None,
        publish: Callable[[list[AdmittedJob]], None] | None,
    ) -> Admitted | None:
        lock_timeout = _lock_timeout(turn_timeout) if wait and self._postgresql else None
        if self._postgresql and not (self.settings.fairness and self._caps_apply(None, queue)):
            return self._admit_pg(queue, budget, wait, lock_timeout, publish)
        with self.engine.begin() as connection:
            if self._postgresql:
                connection.exec_driver_sql(ROUND_SETTINGS, {"timeout": lock_timeout})
            dispatched = self._lock_queue(connection, queue, wait)
            if dispatched is None:
                return None
            room = budget - dispatched
            if room <= 0:
                return Admitted([])
            state = _Round(room=room)
            capped = self.settings.fairness and self._caps_apply(connection, queue)
            if capped:
                state.live = self._live_per_tenant(connection, queue)
                state.caps = self._caps(connection, queue, state.live)
            candidates = self._candidates(connection, queue, state, capped)
            contended = sum(1 for rows in candidates if rows) > 1
            stored_credits = self._credits(connection, queue) if contended else [0.0] * len(candidates)
            credits = list(stored_credits)
            chosen = self._choose(connection, candidates, credits, state, capped)
            admitted = [
                AdmittedJob(row.id, row.lane, row.message, row.attempts + 1, as_utc(row.next_run_at))
                for row in chosen
            ]
            if chosen:
                self._dispatch(connection, queue, chosen)
                if contended:
                    self._save_credits(connection, queue, stored_credits, credits)
                if publish is not None:
                    publish(admitted)
        retry_in = min(state.blocked_keys.values()) if state.blocked_keys else None
        return Admitted(admitted, retry_in, state.deferred)

    def _admit_pg(
        self,
        queue: str,
        budget: int,
        wait: bool,
        lock_timeout: str | None,
        publish: Callable[[list[AdmittedJob]], None] | None,
    ) -> Admitted | None:
        """A round on PostgreSQL where no tenant cap applies, in two prepared statements: one takes
        the queue's turn and reads its dispatched count, lane credits and first due backlog jobs
        (:data:`_OPEN_ROUND_PG`), the other dispatches the chosen jobs and advances the lanes
        (:data:`_CLOSE_ROUND_PG`). Lanes below those found are read only when they are owed a share."""
        with self.engine.begin() as connection:
            self._ensure_queue_row(queue, connection)
            driver: Any = connection.connection.driver_connection
            cursor = driver.cursor(row_factory=namedtuple_row)
            parameters = {
                "queue": queue,
                "lanes": self._lanes_array,
                "budget": budget,
                "factor": 2 if self.rate_limits.budgets else 1,
                "share_ranks": self._share_ranks_array,
            }
            with driver.pipeline():  # the transaction's BEGIN and settings leave with the statement
                driver.execute(ROUND_SETTINGS, {"timeout": lock_timeout}, prepare=True)
                cursor.execute(_OPEN_ROUND_PG[wait], parameters, prepare=True)
            rows = cursor.fetchall()
            if not rows:
                return None
            room = budget - rows[0].dispatched
            if room <= 0:
                return Admitted([])
            state = _Round(room=room)
            per_lane: list[list[Any]] = [[] for _ in self.lane_names]
            for row in rows:
                if row.id is not None:
                    per_lane[row.lane_rank].append(row)
            present = [rank for rank, lane_rows in enumerate(per_lane) if lane_rows]
            if self.settings.fairness and present:
                for rank in rows[0].owed_ranks or ():
                    if rank > max(present):  # a lower lane with a share and due jobs
                        per_lane[rank] = list(
                            connection.execute(
                                self._backlog_query(queue, [], room * parameters["factor"], rank)
                            )
                        )
            contended = sum(1 for lane_rows in per_lane if lane_rows) > 1
            stored = [float(credit or 0.0) for credit in rows[0].credits]
            credits = list(stored) if contended else [0.0] * len(per_lane)
            chosen = self._choose(connection, per_lane, credits, state, False)
            admitted = [
                AdmittedJob(row.id, row.lane, row.message, row.attempts + 1, as_utc(row.next_run_at))
                for row in chosen
            ]
            if chosen:
                # The dispatch statement is sent without waiting for it: PostgreSQL runs it while
                # RabbitMQ takes the messages, then the COMMIT leaves (one round trip for both).
                # The chosen rows stay locked until the COMMIT. A crash or an error before it
                # leaves them backlog with a message already sent, whose job then runs once
                # (a second copy is skipped at its start).
                with driver.pipeline():
                    cursor.execute(
                        _CLOSE_ROUND_PG,
                        self._close_parameters(queue, chosen, stored, credits, contended),
                        prepare=True,
                    )
                    if publish is not None:
                        publish(admitted)
                    driver.commit()
        retry_in = min(state.blocked_keys.values()) if state.blocked_keys else None
        return Admitted(admitted, retry_in, state.deferred)

    def _close_parameters(
        self, queue: str, chosen: list[Any], stored: list[float], credits: list[float], contended: bool
    ) -> dict[str, Any]:
        """What :data:`_CLOSE_ROUND_PG` writes: the chosen jobs, and per lane touched its newest
        pass (the lane's virtual time moves up to it) and its credit (changed only if contended)."""
        touched: dict[int, float] = {}
        if self.settings.fairness:
            for row in chosen:
                touched[row.lane_rank] = max(touched.get(row.lane_rank, 0.0), row.stride_pass)
            if contended:
                touched.update(
                    {
                        rank: touched.get(rank, 0.0)
                        for rank, credit in enumerate(credits)
                        if credit != stored[rank]
                    }
                )
        ranks = sorted(touched)
        return {
            "ids": text_array([row.id for row in chosen]),
            "queue": queue,
            "lanes": text_array([self.lane_names[rank] for rank in ranks]),
            "times": float_array([touched[rank] for rank in ranks]),
            "credits": float_array([(credits if contended else stored)[rank] for rank in ranks]),
        }

    def _candidates(
        self, connection: sa.Connection, queue: str, state: _Round, capped: bool
    ) -> list[list[Any]]:
        """Per lane, the first due backlog jobs in stride order (locked, skipping locked ones).

        One query serves the common case: the highest lanes with backlog. Lanes below them are
        looked at only if they have a minimum share and a due job, so that they can be owed.
        """
        excluded = [tenant for tenant in state.live if capped and state.tenant_full(tenant)]
        limit = state.room * 2 if capped or self.rate_limits.budgets else state.room
        per_lane: list[list[Any]] = [[] for _ in self.lane_names]
        for row in connection.execute(self._backlog_query(queue, excluded, limit)):
            per_lane[row.lane_rank].append(row)
        present = [rank for rank, rows in enumerate(per_lane) if rows]
        below = [
            rank
            for rank in range(len(self.lane_names))
            if self.settings.fairness and self.shares[rank] > 0 and present and rank > max(present)
        ]
        if below:
            due = connection.execute(
                sa.select(*[sa.exists(self._backlog_query(queue, excluded, 1, rank)) for rank in below])
            ).one()
            for rank, has_backlog in zip(below, due, strict=True):
                if has_backlog:
                    per_lane[rank] = list(
                        connection.execute(self._backlog_query(queue, excluded, limit, rank))
                    )
        if capped:
            state.caps.update(
                self._caps(connection, queue, {row.tenant for rows in per_lane for row in rows})
            )
        return per_lane

    def _backlog_query(
        self, queue: str, excluded: list[str], limit: int, rank: int | None = None
    ) -> sa.Select[Any]:
        query = (
            sa.select(
                jobs.c.id,
                jobs.c.lane,
                jobs.c.lane_rank,
                jobs.c.tenant,
                jobs.c.stride_pass,
                jobs.c.message,
                jobs.c.rate_key,
                jobs.c.rate_tokens,
                jobs.c.attempts,
                jobs.c.next_run_at,
            )
            .where(jobs.c.queue == queue, BACKLOG_PREDICATE, jobs.c.next_run_at <= ledger_now())
            .order_by(jobs.c.lane_rank, jobs.c.stride_pass, jobs.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if rank is not None:
            query = query.where(jobs.c.lane_rank == rank)
        if excluded:
            query = query.where(jobs.c.tenant.not_in(excluded))
        return query

    def _choose(
        self,
        connection: sa.Connection,
        per_lane: list[list[Any]],
        credits: list[float],
        state: _Round,
        capped: bool,
    ) -> list[Any]:
        chosen: list[Any] = []
        cursors = [0] * len(per_lane)
        while len(chosen) < state.room:
            backlogged = [rank for rank, rows in enumerate(per_lane) if cursors[rank] < len(rows)]
            if not backlogged:
                break
            rank = self._pick_lane(backlogged, credits)
            row = per_lane[rank][cursors[rank]]
            cursors[rank] += 1
            if capped and state.tenant_full(row.tenant):
                state.deferred["concurrency"] += 1
                continue
            if row.rate_key is not None and not self._afford(connection, row, state):
                state.deferred["ratelimit"] += 1
                continue
            for other in backlogged:
                credits[other] += self.shares[other]
            # A lane served beyond its share carries at most one slot of debt, so a lane that ran
            # alone for an hour is owed its share again within 2/share slots once others compete.
            credits[rank] = max(credits[rank] - 1.0, -1.0)
            state.live[row.tenant] += 1
            chosen.append(row)
        for rank, rows in enumerate(per_lane):
            if cursors[rank] >= len(rows):
                credits[rank] = min(credits[rank], 0.0)  # no banking credit while a lane is idle
        return chosen

    def _pick_lane(self, backlogged: list[int], credits: list[float]) -> int:
        if not self.settings.fairness:
            return backlogged[0]
        owed = [rank for rank in backlogged if credits[rank] >= 1.0]
        if owed:
            return max(owed, key=lambda rank: (credits[rank], -rank))
        return backlogged[0]

    def _afford(self, connection: sa.Connection, row: Any, state: _Round) -> bool:
        if row.rate_key in state.blocked_keys:
            return False
        retry_in = self.rate_limits.try_spend(connection, row.rate_key, float(row.rate_tokens or 0.0))
        if retry_in is None:
            return True
        state.blocked_keys[row.rate_key] = retry_in
        return False

    def _dispatch(self, connection: sa.Connection, queue: str, chosen: list[Any]) -> None:
        connection.execute(self._statements.dispatch, {"p_ids": [row.id for row in chosen]})
        if not self.settings.fairness:
            return
        for lane in {row.lane for row in chosen}:
            newest = max(row.stride_pass for row in chosen if row.lane == lane)
            self._advance_virtual_time(connection, queue, lane, newest)

    # -- re-driving ----------------------------------------------------------------------------------

    def unadmit(self, job_ids: Sequence[str]) -> None:
        """Return dispatched jobs whose publish failed to the backlog, freeing their budget."""
        with self.engine.begin() as connection:
            connection.execute(
                jobs.update()
                .where(jobs.c.id.in_(job_ids), transitions.UNADMIT.guard)
                .values(state=transitions.UNADMIT.target, dispatched_at=None, updated_at=ledger_now())
            )

    def requeue_dead(self, job_id: str) -> str | None:
        """Put a dead job back in the backlog with its attempts reset; returns its queue."""
        with self.engine.begin() as connection:
            row = connection.execute(
                sa.select(jobs.c.queue, jobs.c.lane, jobs.c.tenant, jobs.c.cost)
                .where(jobs.c.id == job_id, transitions.REQUEUE_DEAD.guard)
                .with_for_update()
            ).first()
            if row is None:
                return None
            now = database_now(connection)
            stride_pass = self._next_passes(connection, row.queue, row.lane, row.tenant, [row.cost], now)[0]
            connection.execute(
                jobs.update()
                .where(jobs.c.id == job_id, transitions.REQUEUE_DEAD.guard)
                .values(
                    state=transitions.REQUEUE_DEAD.target,
                    attempts=0,
                    stride_pass=stride_pass,
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

    def backlog_counts(self, queue: str) -> tuple[int, int]:
        """``(now, later)``: jobs of ``queue`` left to run now (waiting and due, dispatched or
        running) and later (waiting for a delay or a retry backoff)."""
        later = sa.and_(BACKLOG_PREDICATE, jobs.c.next_run_at > ledger_now())
        query = sa.select(sa.func.count(), sa.func.count().filter(later)).where(
            jobs.c.queue == queue, sa.or_(BACKLOG_PREDICATE, LIVE_PREDICATE)
        )
        with self.engine.connect() as connection:
            total, waiting = connection.execute(query).one()
        return int(total) - int(waiting), int(waiting)

    def drop_backlog(self, queue: str) -> int:
        """Cancel every job of ``queue`` that has not started (a flushed queue); returns how many."""
        now = ledger_now()
        with self.engine.begin() as connection:
            return connection.execute(
                jobs.update()
                .where(jobs.c.queue == queue, transitions.CANCEL.guard)
                .values(state=transitions.CANCEL.target, finished_at=now, updated_at=now)
            ).rowcount

    def known_queues(self) -> list[str]:
        """Every actor queue that has ever been sent a job."""
        with self.engine.connect() as connection:
            return list(connection.scalars(sa.select(queues.c.name).order_by(queues.c.name)))

    # -- tenants -------------------------------------------------------------------------------------

    def tenant_settings(self, connection: sa.Connection | None = None) -> dict[str, tuple[float, int | None]]:
        """``tenant -> (weight, cap)`` for tenants with settings, cached for a few seconds.

        Pass the open connection when inside a transaction (SQLite allows one writer).
        """
        loaded_at, cached = self._tenant_cache
        if time.monotonic() - loaded_at < TENANT_CACHE_SECONDS:
            return cached
        query = sa.select(tenants.c.tenant, tenants.c.weight, tenants.c.max_running)
        if connection is None:
            with self.engine.connect() as own:
                rows = own.execute(query).all()
        else:
            rows = connection.execute(query).all()
        fresh = {row.tenant: (float(row.weight), row.max_running) for row in rows}
        self._tenant_cache = (time.monotonic(), fresh)
        return fresh

    def forget_tenant_cache(self) -> None:
        """Make the next admission read tenant weights and caps afresh."""
        self._tenant_cache = (0.0, {})

    def _caps_apply(self, connection: sa.Connection | None, queue: str) -> bool:
        if self.settings.tenant_cap is not None or queue in self.settings.queue_tenant_caps:
            return True
        return any(cap is not None for _, cap in self.tenant_settings(connection).values())

    def _caps(self, connection: sa.Connection, queue: str, names: Iterable[str]) -> dict[str, int | None]:
        default = self.settings.queue_tenant_caps.get(queue, self.settings.tenant_cap)
        configured = self.tenant_settings(connection)
        return {name: configured.get(name, (1.0, None))[1] or default for name in names}

    def _live_per_tenant(self, connection: sa.Connection, queue: str) -> Counter[str]:
        rows = connection.execute(
            sa.select(jobs.c.tenant, sa.func.count())
            .where(jobs.c.queue == queue, LIVE_PREDICATE)
            .group_by(jobs.c.tenant)
        )
        return Counter({row[0]: int(row[1]) for row in rows})

    # -- helpers -------------------------------------------------------------------------------------

    def _job_with_key(self, connection: sa.Connection, tenant: str, key: str | None) -> str | None:
        if key is None:
            return None
        return connection.execute(
            sa.select(jobs.c.id).where(jobs.c.tenant == tenant, jobs.c.idempotency_key == key)
        ).scalar_one_or_none()

    def _next_passes(
        self,
        connection: sa.Connection,
        queue: str,
        lane: str,
        tenant: str,
        costs: Sequence[float],
        now: datetime,
    ) -> list[float]:
        """Stride passes for a tenant's next jobs in a lane, recording the last one (without
        fairness: ``now``, the ledger's clock, in epoch seconds: first come, first served)."""
        if not self.settings.fairness:
            return [now.timestamp()] * len(costs)
        weight = self.tenant_settings(connection).get(tenant, (1.0, None))[0]
        increments = [cost / weight for cost in costs]
        rest = sum(increments[1:])
        parameters = {
            "p_queue": queue,
            "p_lane": lane,
            "p_tenant": tenant,
            "p_first": increments[0],
            "p_rest": rest,
        }
        first = float(connection.execute(self._statements.next_pass, parameters).scalar_one()) - rest
        passes = [float(first)]
        for increment in increments[1:]:
            passes.append(passes[-1] + increment)
        return passes

    def _ensure_queue_row(self, queue: str, connection: sa.Connection | None = None) -> None:
        """Record the queue in ``fairlane_queues`` (once per process): rounds lock its row, and
        the scheduler's sweeps and gauges list the queues from there."""
        if queue in self._queue_rows:
            return
        statement = self._insert(queues).values(name=queue).on_conflict_do_nothing()
        if connection is None:
            with self.engine.begin() as own:
                own.execute(statement)
        else:
            connection.execute(statement)
        self._queue_rows.add(queue)

    def _lock_queue(self, connection: sa.Connection, queue: str, wait: bool) -> int | None:
        """Take the queue's admission turn and count its dispatched jobs.

        Returns None if ``wait`` is off and another round holds the turn.
        """
        self._ensure_queue_row(queue, connection)
        statement = self._statements.lock_queue if wait else self._statements.try_lock_queue
        row = connection.execute(statement, {"p_queue": queue}).first()
        return None if row is None else int(row[0])

    def _dispatched_count(self, connection: sa.Connection, queue: str) -> int:
        return int(connection.execute(self._statements.dispatched_count, {"p_queue": queue}).scalar_one())

    def _credits(self, connection: sa.Connection, queue: str) -> list[float]:
        stored: Mapping[str, float] = dict(
            connection.execute(sa.select(lanes.c.lane, lanes.c.credit).where(lanes.c.queue == queue)).all()
        )
        return [float(stored.get(lane, 0.0)) for lane in self.lane_names]

    def _save_credits(
        self, connection: sa.Connection, queue: str, stored: list[float], credits: list[float]
    ) -> None:
        if not self.settings.fairness:
            return
        for lane, before, credit in zip(self.lane_names, stored, credits, strict=True):
            if credit == before:
                continue
            statement = self._insert(lanes).values(queue=queue, lane=lane, virtual_time=0.0, credit=credit)
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[lanes.c.queue, lanes.c.lane], set_={"credit": credit}
                )
            )

    def _advance_virtual_time(self, connection: sa.Connection, queue: str, lane: str, value: float) -> None:
        connection.execute(
            self._statements.advance_virtual_time, {"p_queue": queue, "p_lane": lane, "p_value": value}
        )


class _Statements:
    """The admission statements that run per send or per round, built once per dialect."""

    def __init__(self, insert: Any, postgres: bool) -> None:
        queue: sa.BindParameter[str] = sa.bindparam("p_queue")
        lane: sa.BindParameter[str] = sa.bindparam("p_lane")
        self.insert_job = insert(jobs).on_conflict_do_nothing()
        virtual_time = (
            sa.select(sa.func.coalesce(sa.func.max(lanes.c.virtual_time), 0.0))
            .where(lanes.c.queue == queue, lanes.c.lane == lane)
            .scalar_subquery()
        )
        rest = sa.bindparam("p_rest", type_=sa.Float)
        pass_insert = insert(tenant_passes).values(
            queue=queue, lane=lane, tenant=sa.bindparam("p_tenant"), last_pass=virtual_time + rest
        )
        self.next_pass = pass_insert.on_conflict_do_update(
            index_elements=[tenant_passes.c.queue, tenant_passes.c.lane, tenant_passes.c.tenant],
            set_={
                "last_pass": _greatest(
                    tenant_passes.c.last_pass + sa.bindparam("p_first", type_=sa.Float), virtual_time
                )
                + rest
            },
        ).returning(tenant_passes.c.last_pass)
        self.notify = sa.select(sa.func.pg_notify(ADMISSION_CHANNEL, queue))
        self.dispatched_count = sa.select(sa.func.count()).where(jobs.c.queue == queue, DISPATCHED_PREDICATE)
        # The turn and the count in one round trip.
        lock = sa.select(self.dispatched_count.scalar_subquery()).where(queues.c.name == queue)
        self.lock_queue = lock.with_for_update(of=queues)
        self.try_lock_queue = lock.with_for_update(of=queues, skip_locked=True)
        now = ledger_now()
        ids = sa.bindparam("p_ids", type_=sa.ARRAY(sa.String)) if postgres else None
        self.dispatch = (
            jobs.update()
            .where(
                jobs.c.id == sa.func.any(ids)
                if ids is not None
                else jobs.c.id.in_(sa.bindparam("p_ids", expanding=True))
            )
            .where(transitions.DISPATCH.guard)
            .values(state=transitions.DISPATCH.target, dispatched_at=now, updated_at=now)
        )
        value = sa.bindparam("p_value", type_=sa.Float)
        self.advance_virtual_time = (
            insert(lanes)
            .values(queue=queue, lane=lane, virtual_time=value)
            .on_conflict_do_update(
                index_elements=[lanes.c.queue, lanes.c.lane],
                set_={"virtual_time": _greatest(lanes.c.virtual_time, value)},
            )
        )


#: A new job's columns, in the order :func:`_copy_row` gives its values (``COPY`` and ``_row``).
_COPY_COLUMNS = (
    "id",
    "actor",
    "queue",
    "tenant",
    "lane",
    "lane_rank",
    "state",
    "stride_pass",
    "cost",
    "message",
    "idempotency_key",
    "rate_key",
    "rate_tokens",
    "enqueued_at",
    "next_run_at",
    "updated_at",
)
_COPY_JOBS = f"COPY fairlane_jobs ({', '.join(_COPY_COLUMNS)}) FROM STDIN"


def _copy_row(job: NewJob, stride_pass: float, now: datetime) -> tuple[Any, ...]:
    """The pending job's row as accepted at ``now`` (the ledger's clock), in ``_COPY_COLUMNS``' order."""
    return (
        job.id,
        job.actor,
        job.queue,
        job.tenant,
        job.lane,
        job.lane_rank,
        PENDING,
        stride_pass,
        job.cost,
        job.message,
        job.idempotency_key,
        job.rate_key,
        job.rate_tokens,
        now,
        now + timedelta(seconds=max(job.delay, 0.0)),
        now,
    )


#: The accept of one job on PostgreSQL, in one statement: the idle check, the tenant's stride
#: pass (only when the job waits), the insert, and a NOTIFY to the queue's dispatchers. Its
#: times are the server's ``now()`` (the job's ``delay`` counts from it); it returns the new
#: row's state and ``next_run_at``. The backlog probes read the first due job in the claim
#: index's order (``LIMIT 1``), so their plan is that index's first entry at any backlog size (an
#: ``EXISTS`` was planned as a bitmap scan of the whole backlog: 12-27 ms behind 100,000 jobs).
_ACCEPT_PG = f"""
WITH vt AS (
  SELECT coalesce(
    (SELECT virtual_time FROM fairlane_lanes WHERE queue = %(queue)s AND lane = %(lane)s), 0.0) AS t
), room AS (
  SELECT %(eligible)s
     AND (SELECT count(*) FROM fairlane_jobs WHERE queue = %(queue)s AND {DISPATCHED_PREDICATE})
         < CASE WHEN coalesce((
                  SELECT true FROM fairlane_jobs
                  WHERE queue = %(queue)s AND {BACKLOG_PREDICATE} AND lane_rank > %(rank)s
                    AND next_run_at <= now()
                  ORDER BY lane_rank, stride_pass, id LIMIT 1), false)
                THEN %(overtake_budget)s ELSE %(budget)s END
     AND (SELECT true FROM fairlane_jobs
          WHERE queue = %(queue)s AND {BACKLOG_PREDICATE} AND lane_rank <= %(rank)s AND next_run_at <= now()
          ORDER BY lane_rank, stride_pass, id LIMIT 1) IS NULL AS free
), pass AS (
  INSERT INTO fairlane_tenant_passes (queue, lane, tenant, last_pass)
  SELECT %(queue)s, %(lane)s, %(tenant)s, vt.t FROM vt, room WHERE %(fair)s AND NOT room.free
  ON CONFLICT (queue, lane, tenant) DO UPDATE
  SET last_pass = greatest(fairlane_tenant_passes.last_pass + %(increment)s, (SELECT t FROM vt))
  RETURNING last_pass
), job AS (
  INSERT INTO fairlane_jobs (
    id, actor, queue, tenant, lane, lane_rank, state, stride_pass, cost, attempts, message,
    idempotency_key, rate_key, rate_tokens, cancel_requested, enqueued_at, next_run_at,
    dispatched_at, updated_at)
  SELECT %(id)s::text, %(actor)s::text, %(queue)s::text, %(tenant)s::text, %(lane)s::text,
    %(rank)s::smallint,
    CASE WHEN room.free THEN '{DISPATCHED}' ELSE '{PENDING}' END,
    CASE WHEN NOT %(fair)s THEN extract(epoch FROM now())::float8
         ELSE coalesce((SELECT last_pass FROM pass), vt.t) END,
    %(cost)s::float8, 0, %(message)s::text, %(key)s::text, %(rate_key)s::text, %(rate_tokens)s::float8,
    false, now(), now() + make_interval(secs => %(delay)s::float8),
    CASE WHEN room.free THEN now() END, now()
  FROM room, vt
  ON CONFLICT DO NOTHING
  RETURNING state, next_run_at
)
SELECT state, next_run_at, CASE WHEN state = '{PENDING}' AND %(notify)s
                                THEN pg_notify('{ADMISSION_CHANNEL}', %(queue)s) END
FROM job
"""


_ROUND_COLUMNS = (
    "id, lane, lane_rank, tenant, stride_pass, message, rate_key, rate_tokens, attempts, next_run_at"
)


def _open_round_pg(wait: bool) -> str:
    """The first statement of a round on PostgreSQL: take the queue's turn (or, unless ``wait``,
    return no row when another round holds it) and read, in the same round trip, its dispatched
    count, its lanes' credits, which lanes with a minimum share have due jobs, and the first due
    backlog jobs in admission order, locked, up to the budget's room (times ``factor``).
    With the turn, there is always at least one row; ``id`` is NULL when no job is due."""
    return f"""
WITH turn AS (
  SELECT name FROM fairlane_queues WHERE name = %(queue)s FOR UPDATE{"" if wait else " SKIP LOCKED"}
), head AS MATERIALIZED (
  SELECT turn.name,
    (SELECT count(*) FROM fairlane_jobs WHERE queue = turn.name AND {DISPATCHED_PREDICATE}) AS dispatched,
    (SELECT array_agg(l.credit ORDER BY r.rank)
       FROM unnest(%(lanes)s::text[]) WITH ORDINALITY AS r(lane, rank)
       LEFT JOIN fairlane_lanes AS l ON l.queue = turn.name AND l.lane = r.lane) AS credits,
    (SELECT array_agg(r) FROM unnest(%(share_ranks)s::int[]) AS r
      WHERE (SELECT true FROM fairlane_jobs
             WHERE queue = turn.name AND {BACKLOG_PREDICATE} AND lane_rank = r AND next_run_at <= now()
             ORDER BY stride_pass, id LIMIT 1)) AS owed_ranks
  FROM turn
)
SELECT head.dispatched, head.credits, head.owed_ranks, c.*
FROM head LEFT JOIN LATERAL (
  SELECT {_ROUND_COLUMNS} FROM fairlane_jobs
  WHERE queue = head.name AND {BACKLOG_PREDICATE} AND next_run_at <= now()
  ORDER BY lane_rank, stride_pass, id
  LIMIT greatest(%(budget)s - head.dispatched, 0) * %(factor)s
  FOR UPDATE SKIP LOCKED
) AS c ON true
"""


#: A round's settings, for its transaction only: the hot path's planner settings (see
#: :func:`fairlane.ledger.database.plan_by_index`) and the lock timeout that bounds its wait for
#: the queue's turn (``turn_timeout``; without one, the server's setting is kept).
ROUND_SETTINGS = (
    "SELECT "
    + ", ".join(f"set_config('{name}', '{value}', true)" for name, value in INDEX_PLANNING)
    + ", set_config('lock_timeout', coalesce(%(timeout)s, current_setting('lock_timeout')), true)"
)


def _lock_timeout(turn_timeout: float | None) -> str | None:
    """``turn_timeout`` as a ``lock_timeout`` setting (at least 1 ms: 0 would mean no limit)."""
    return None if turn_timeout is None else f"{max(1, round(turn_timeout * 1000))}ms"


#: By ``wait``: the statement that opens a round (see :func:`_open_round_pg`).
_OPEN_ROUND_PG = {wait: _open_round_pg(wait) for wait in (True, False)}

_DISPATCH_SOURCES = transitions.sql_in(transitions.DISPATCH.sources)

#: The second statement of a round on PostgreSQL: dispatch the chosen jobs (DISPATCH's guard) and
#: upsert the lanes touched: virtual time up to the newest pass admitted, credit as given.
#: The plan, prepared once, must find each id by primary key whatever the statistics (a fresh
#: table has none): the ids come from ``unnest``, and the guard is written as a CASE, which no
#: plan can mistake for the backlog's partial-index predicate (and scan the whole backlog).
#: The rows were locked by the first statement, so the guard holds anyway.
_CLOSE_ROUND_PG = f"""
WITH dispatched AS (
  UPDATE fairlane_jobs AS j
  SET state = '{transitions.DISPATCH.target}', dispatched_at = now(), updated_at = now()
  FROM unnest(%(ids)s::text[]) AS d(id)
  WHERE j.id = d.id AND CASE WHEN j.state IN ({_DISPATCH_SOURCES}) THEN true END
  RETURNING j.id
), lane_rows AS (
  INSERT INTO fairlane_lanes AS l (queue, lane, virtual_time, credit)
  SELECT %(queue)s, x.lane, x.virtual_time, x.credit
  FROM unnest(%(lanes)s::text[], %(times)s::float8[], %(credits)s::float8[]) AS x(lane, virtual_time, credit)
  ON CONFLICT (queue, lane) DO UPDATE
  SET virtual_time = greatest(l.virtual_time, excluded.virtual_time), credit = excluded.credit
  RETURNING l.lane
)
SELECT (SELECT count(*) FROM dispatched) AS dispatched, (SELECT count(*) FROM lane_rows) AS lanes
"""
