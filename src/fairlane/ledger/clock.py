"""The ledger's clock: the one clock that orders and delays work.

Every time that orders or delays a job, or that another process compares with its own, is
read from the database, never from the process that writes it: ``next_run_at`` of delays,
retry backoffs and rate-limit deferrals, ``dispatched_at`` (the reaper's dispatch timeout),
``started_at`` and worker heartbeats (the reaper's staleness cutoff), rate-limit budgets and
pauses, and the scheduler's cron slots. Pods whose clocks disagree therefore still agree on
when a job is due, stale or affordable.

Statements take the time from SQL (:func:`ledger_now`, :func:`ledger_epoch`), so the hot path
passes no time parameter and makes no extra round trip. Code that must decide in Python
(the scheduler's cron slots, its retention and reaper cutoffs) reads it once per run with
:func:`database_now`. A worker compares a job's runnable-since time with the ledger's clock
as its heartbeat last measured it (:class:`ClockOffset`), for the queue-wait metric.

* PostgreSQL: ``now()``, the time the statement's transaction started on the server.
* SQLite: SQLite's own ``'now'``, in the stored format (``YYYY-MM-DD HH:MM:SS.ffffff``, so
  text comparisons with stored times hold). An embedded ledger is shared only by processes of
  one host, whose clock is the database's clock: :func:`database_now` reads it in Python.

Local durations (timers, time limits, metrics of one process) stay on the process's
monotonic clock: only a time written to the ledger, or compared with one, must be the ledger's.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from fairlane.ledger.database import as_utc, utcnow


class _LedgerNow(FunctionElement[datetime]):
    """The ledger's current time, plus an optional number of seconds (its one argument)."""

    type = sa.DateTime(timezone=True)
    name = "ledger_now"
    inherit_cache = True


class _LedgerEpoch(FunctionElement[float]):
    """The ledger's current time in epoch seconds (a float)."""

    type = sa.Float()
    name = "ledger_epoch"
    inherit_cache = True


def ledger_now(seconds: float | sa.ColumnElement[Any] | None = None) -> sa.ColumnElement[datetime]:
    """The ledger's current time as SQL, ``seconds`` later when given (negative: earlier).

    ``seconds`` is a number or a SQL expression (e.g. a bound parameter of delays).
    """
    if seconds is None:
        return _LedgerNow()
    if not isinstance(seconds, sa.ColumnElement):
        seconds = sa.literal(float(seconds), sa.Float)
    return _LedgerNow(seconds)


def ledger_epoch() -> sa.ColumnElement[float]:
    """The ledger's current time in epoch seconds, as SQL (rate-limit budgets and pauses)."""
    return _LedgerEpoch()


def database_now(bind: sa.Engine | sa.Connection) -> datetime:
    """The ledger's current time (timezone-aware, UTC).

    PostgreSQL: read in one statement; on a connection, inside its transaction (the time the
    transaction started). SQLite: the host's clock, read here at microsecond resolution (SQLite's
    own ``'now'`` reads the same clock, to the millisecond), so no statement is needed.
    """
    if bind.dialect.name == "sqlite":
        return utcnow()
    if isinstance(bind, sa.Engine):
        with bind.connect() as connection:
            return database_now(connection)
    value = bind.execute(sa.select(ledger_now())).scalar_one()
    return as_utc(value)  # type: ignore[return-value]


class ClockOffset:
    """How far the ledger's clock is ahead of this process's wall clock, as last measured.

    A process measures it from a statement that returns the ledger's time (its worker
    heartbeat); until then it is 0. Only for comparisons a process must make locally (a
    metric): decisions are taken in SQL.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds = 0.0

    @property
    def seconds(self) -> float:
        """The ledger's clock minus this process's, in seconds."""
        with self._lock:
            return self._seconds

    def measure(self, ledger_time: datetime, sent_at: float, received_at: float) -> float:
        """Take ``ledger_time``, returned by a statement sent at ``sent_at`` and answered at
        ``received_at`` (this process's ``time.time()``), as the midpoint; returns the offset."""
        offset = ledger_time.timestamp() - (sent_at + received_at) / 2
        with self._lock:
            self._seconds = offset
        return offset

    def ledger_time(self) -> float:
        """The ledger's current time as this process estimates it, in epoch seconds."""
        return time.time() + self.seconds


@compiles(_LedgerNow, "postgresql")
def _now_postgresql(element: _LedgerNow, compiler: Any, **kw: Any) -> str:
    if not element.clauses.clauses:
        return "now()"
    return f"(now() + make_interval(secs => {compiler.process(element.clauses, **kw)}))"


@compiles(_LedgerNow, "sqlite")
def _now_sqlite(element: _LedgerNow, compiler: Any, **kw: Any) -> str:
    modifier = ""
    if element.clauses.clauses:
        modifier = f", printf('%.6f seconds', {compiler.process(element.clauses, **kw)})"
    # %f is SS.SSS: three more digits give the microseconds SQLAlchemy stores.
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now'{modifier}) || '000')"


@compiles(_LedgerEpoch, "postgresql")
def _epoch_postgresql(element: _LedgerEpoch, compiler: Any, **kw: Any) -> str:
    return "CAST(extract(epoch FROM now()) AS double precision)"


@compiles(_LedgerEpoch, "sqlite")
def _epoch_sqlite(element: _LedgerEpoch, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


__all__ = ["ClockOffset", "database_now", "ledger_epoch", "ledger_now"]
