"""Every state transition of a job row, and the table of which ones are allowed.

A job moves ``pending → dispatched → running → succeeded | retrying … | dead | cancelled``.
:data:`ALLOWED` lists, for each state, the states a job may move to from it. Each
:class:`Transition` below names its source states and its target; every statement that
changes a job's ``state`` (here, in admission and in the reaper) is built from one of them,
guarded by ``state IN (sources)``, so that repeating a transition (a redelivered message, a
retried call) is harmless and an illegal one changes nothing. The tests check every
transition against the table and run each against a row in every state.

The worker's starts and finishes are flushed in batches, one statement for many jobs
(:data:`FLUSH_PG`, ``UPDATE … FROM unnest(…)`` on PostgreSQL); see :mod:`fairlane.ledger.writer`.

Every time these statements write (``started_at``, ``finished_at``, a retry's ``next_run_at``,
``updated_at``) is the ledger's clock (:mod:`fairlane.ledger.clock`), never the writing
process's: a retry's backoff is passed as a delay in seconds.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from fairlane.ledger.clock import ledger_now
from fairlane.ledger.schema import (
    CANCELLED,
    DEAD,
    DISPATCHED,
    PENDING,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    jobs,
)

#: ``from -> {to}``: the only state changes a job row may go through.
ALLOWED: dict[str, frozenset[str]] = {
    # admitted; started from a re-published copy; cancelled; dead-lettered (no such actor)
    PENDING: frozenset({DISPATCHED, RUNNING, CANCELLED, DEAD}),
    RETRYING: frozenset({DISPATCHED, RUNNING, CANCELLED, DEAD}),
    # started; publish failed or deferred by a paused rate limit; cancelled; dead-lettered
    DISPATCHED: frozenset({RUNNING, PENDING, CANCELLED, DEAD}),
    # finished; retried; reaped (pending, or cancelled if asked); restarted after redelivery
    RUNNING: frozenset({SUCCEEDED, RETRYING, DEAD, CANCELLED, PENDING, RUNNING}),
    SUCCEEDED: frozenset(),
    # re-driven from the dead letters
    DEAD: frozenset({PENDING}),
    CANCELLED: frozenset(),
}


@dataclasses.dataclass(frozen=True)
class Transition:
    """One named transition: from any of ``sources`` to ``target``."""

    name: str
    sources: tuple[str, ...]
    target: str

    @property
    def guard(self) -> sa.ColumnElement[bool]:
        """``state IN (sources)``: the condition under which the transition applies."""
        if len(self.sources) == 1:
            return jobs.c.state == self.sources[0]
        return jobs.c.state.in_(self.sources)


_WAITING = (PENDING, RETRYING)
DISPATCH = Transition("dispatch", _WAITING, DISPATCHED)
UNADMIT = Transition("unadmit", (DISPATCHED,), PENDING)
DEFER = Transition("defer", (DISPATCHED,), PENDING)
START = Transition("start", (*_WAITING, DISPATCHED), RUNNING)
RESTART = Transition("restart", (*_WAITING, DISPATCHED, RUNNING), RUNNING)  # a redelivered message
SUCCEED = Transition("succeed", (RUNNING,), SUCCEEDED)
RETRY = Transition("retry", (RUNNING,), RETRYING)
FAIL = Transition("fail", (RUNNING,), DEAD)  # the last attempt failed
KILL = Transition("kill", (*_WAITING, DISPATCHED, RUNNING), DEAD)  # no attempt can ever succeed
INTERRUPT = Transition("interrupt", (RUNNING,), CANCELLED)  # a running job stopped by its cancel
CANCEL = Transition("cancel", (*_WAITING, DISPATCHED), CANCELLED)
REAP = Transition("reap", (RUNNING,), PENDING)
REAP_CANCELLED = Transition("reap_cancelled", (RUNNING,), CANCELLED)
REQUEUE_DEAD = Transition("requeue_dead", (DEAD,), PENDING)

#: Every transition, by name (the tests walk this).
TRANSITIONS: dict[str, Transition] = {
    transition.name: transition
    for transition in (
        DISPATCH,
        UNADMIT,
        DEFER,
        START,
        RESTART,
        SUCCEED,
        RETRY,
        FAIL,
        KILL,
        INTERRUPT,
        CANCEL,
        REAP,
        REAP_CANCELLED,
        REQUEUE_DEAD,
    )
}

#: The finishes a worker flushes in batches, by target state.
FINISHES: dict[str, Transition] = {t.target: t for t in (SUCCEED, RETRY, FAIL, INTERRUPT)}


# -- single-row statements (prebuilt: building one costs more than running it) -----------------------

_NOW: sa.ColumnElement[datetime] = ledger_now()
_ERROR: dict[str, Any] = {
    "error_type": sa.bindparam("p_error_type"),
    "error_message": sa.bindparam("p_error_message"),
    "error_traceback": sa.bindparam("p_error_traceback"),
}


def _update(transition: Transition, **values: Any) -> sa.Update:
    return (
        jobs.update()
        .where(jobs.c.id == sa.bindparam("p_id"), transition.guard)
        .values(state=transition.target, updated_at=_NOW, **values)
    )


_STARTED: dict[str, Any] = {
    "attempts": jobs.c.attempts + 1,
    "started_at": _NOW,
    "worker_id": sa.bindparam("p_worker"),
}
START_ONE = _update(START, **_STARTED).returning(jobs.c.attempts, jobs.c.next_run_at, jobs.c.started_at)
RESTART_ONE = _update(RESTART, **_STARTED).returning(jobs.c.attempts, jobs.c.next_run_at, jobs.c.started_at)
SUCCEED_ONE = _update(
    SUCCEED,
    result=sa.bindparam("p_result", type_=sa.JSON),
    result_path=sa.bindparam("p_result_path"),
    finished_at=_NOW,
)
RETRY_ONE = _update(
    RETRY,
    next_run_at=ledger_now(sa.bindparam("p_delay", type_=sa.Float)),
    worker_id=None,
    message=sa.func.coalesce(sa.bindparam("p_message", type_=sa.Text), jobs.c.message),
    **_ERROR,
)
FAIL_ONE = _update(FAIL, finished_at=_NOW, **_ERROR)
KILL_ONE = _update(KILL, finished_at=_NOW, **_ERROR)
INTERRUPT_ONE = _update(INTERRUPT, finished_at=_NOW)
DEFER_ONE = _update(DEFER, next_run_at=sa.bindparam("p_run_at"), dispatched_at=None)
CANCEL_ONE = _update(CANCEL, finished_at=_NOW)
#: Not a transition: a running job is asked to stop (its worker interrupts it).
REQUEST_CANCEL_ONE = (
    jobs.update()
    .where(jobs.c.id == sa.bindparam("p_id"), jobs.c.state == RUNNING)
    .values(cancel_requested=True, updated_at=_NOW)
)
#: Not a transition: a running job's progress (also before its start is flushed: the job runs
#: already, see fairlane.ledger.writer, so any state it may start from is accepted).
PROGRESS_ONE = (
    jobs.update()
    .where(jobs.c.id == sa.bindparam("p_id"), jobs.c.state.in_((*START.sources, RUNNING)))
    .values(progress=sa.bindparam("p_progress", type_=sa.JSON), updated_at=_NOW)
)

#: Single-row finish statements by target state (SQLite flushes run these for each job).
FINISH_ONE: dict[str, sa.Update] = {
    SUCCEEDED: SUCCEED_ONE,
    RETRYING: RETRY_ONE,
    DEAD: FAIL_ONE,
    CANCELLED: INTERRUPT_ONE,
}


def sql_in(states: tuple[str, ...]) -> str:
    """``states`` as an SQL list of literals, for a statement written as text: `'a', 'b'`."""
    return ", ".join(f"'{state}'" for state in states)


# -- batched statements (PostgreSQL): one statement for many jobs -------------------------------------

#: One flush of a worker's ledger writer, in one statement (one round trip, one commit):
#: finish many jobs, each to its own target (succeeded, retrying, dead or cancelled), and start
#: many received jobs (``restart`` marks redelivered messages, which may restart a running job);
#: a data-modifying CTE always runs to completion. A finish either ends a running job (SUCCEED,
#: RETRY, FAIL, INTERRUPT), or, when ``starting``, is the whole attempt of a job that started and
#: finished before its start was flushed: START and the finish applied together, so the row goes
#: from START's sources through ``running`` to the finish's target in one write.
#: Returns one row per start id that exists, with its attempt number if it started (a missing
#: row means an unknown job), then one row per ``starting`` finish that applied (``ran``).
#: A success keeps the error of an earlier attempt; a retry keeps the result columns empty and
#: may replace the stored message (Dramatiq's retry options for the next attempt).
#: No job may be both finished and started in one flush (PostgreSQL would apply only one).
#: Times are the server's ``now()``; a retry's ``delay`` (seconds) is counted from it. Each row
#: also returns the ``started_at`` it wrote (the writer recognises its own starts by it).
FLUSH_PG = f"""
WITH finished AS (
  UPDATE fairlane_jobs AS j
  SET state = f.state,
      attempts = j.attempts + CASE WHEN f.starting THEN 1 ELSE 0 END,
      started_at = CASE WHEN f.starting THEN now() ELSE j.started_at END,
      result = coalesce(f.result::json, j.result),
      result_path = coalesce(f.result_path, j.result_path),
      error_type = coalesce(f.error_type, j.error_type),
      error_message = coalesce(f.error_message, j.error_message),
      error_traceback = coalesce(f.error_traceback, j.error_traceback),
      next_run_at = coalesce(now() + make_interval(secs => f.delay), j.next_run_at),
      message = coalesce(f.message, j.message),
      worker_id = CASE WHEN f.state = '{RETRYING}' THEN NULL
                       WHEN f.starting THEN %(worker)s ELSE j.worker_id END,
      finished_at = CASE WHEN f.state = '{RETRYING}' THEN j.finished_at ELSE now() END,
      updated_at = now()
  FROM unnest(%(finish_ids)s::text[], %(states)s::text[], %(results)s::text[],
              %(result_paths)s::text[], %(error_types)s::text[], %(error_messages)s::text[],
              %(error_tracebacks)s::text[], %(delays)s::float8[], %(messages)s::text[],
              %(starting)s::boolean[])
       AS f(id, state, result, result_path, error_type, error_message, error_traceback, delay, message,
            starting)
  WHERE j.id = f.id AND f.state IN ({sql_in(tuple(FINISHES))})
    AND CASE WHEN f.starting THEN j.state IN ({sql_in(START.sources)}) ELSE j.state = '{RUNNING}' END
  RETURNING j.id, f.starting, j.started_at
), started AS (
  UPDATE fairlane_jobs AS j
  SET state = '{RUNNING}', attempts = j.attempts + 1, started_at = now(), worker_id = %(worker)s,
      updated_at = now()
  FROM unnest(%(start_ids)s::text[], %(restart)s::boolean[]) AS s(id, restart)
  WHERE j.id = s.id
    AND (j.state IN ({sql_in(START.sources)}) OR (s.restart AND j.state IN ({sql_in(RESTART.sources)})))
  RETURNING j.id, j.attempts, j.next_run_at, j.started_at
)
SELECT e.id, s.attempts, s.next_run_at, false AS ran, s.started_at
FROM fairlane_jobs AS e LEFT JOIN started AS s ON s.id = e.id
WHERE e.id = ANY(%(start_ids)s::text[])
UNION ALL
SELECT f.id, NULL, NULL, true, f.started_at FROM finished AS f WHERE f.starting
"""


__all__ = [
    "ALLOWED",
    "CANCEL",
    "DEFER",
    "DISPATCH",
    "FINISHES",
    "KILL",
    "REAP",
    "REAP_CANCELLED",
    "REQUEUE_DEAD",
    "RETRY",
    "START",
    "SUCCEED",
    "TRANSITIONS",
    "UNADMIT",
    "Transition",
]
