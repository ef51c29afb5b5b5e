"""A few PostgreSQL connections kept in autocommit for one-statement round trips (a send's accept).

A send's accept is one prepared statement on an autocommit connection. Taken from SQLAlchemy's
pool, the connection adds about a third to the accept's client CPU: the checkout and checkin
events, and autocommit switched on at checkout and off again at checkin (measured here, one
process alternating both ways: 117-157 µs of CPU per accept through the pool, 86-106 µs on a
kept connection; 415-556 µs of wall time against 375-416 µs). :class:`StatementConnections`
keeps up to ``size`` driver connections that stay in autocommit, most recently used first.

Like the pool's, each is planned again every second (:func:`~fairlane.ledger.database.replan_if_stale`)
and recycled after ``recycle`` seconds. A thread that finds none idle while ``size`` are in
use gets ``None`` and takes the pool's way, so a process holds at most ``size`` of these
beside the pool's (which a sending process then rarely opens). A connection that failed
broken is closed and so are the idle ones (a server restart breaks them all; the next use
opens new ones); one found dead when it is planned again is replaced at once. After a fork
the child opens its own: the parent's sockets are never used or closed by the child.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from fairlane.ledger.database import dedicated_connection, replan_if_stale


@dataclasses.dataclass
class _Kept:
    connection: Any
    opened_at: float
    planned_at: float | None = None


class StatementConnections:
    """Up to ``size`` autocommit driver connections for one-statement round trips."""

    def __init__(self, engine: sa.Engine, size: int, recycle: float) -> None:
        self.engine = engine
        self.size = size
        self.recycle = recycle
        self._lock = threading.Lock()
        self._idle: list[_Kept] = []
        self._in_use = 0
        self._pid = os.getpid()
        dbapi = engine.dialect.loaded_dbapi
        self._driver_errors: tuple[type[BaseException], ...] = (dbapi.OperationalError, dbapi.InterfaceError)

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """A kept connection for one statement, or ``None`` when all ``size`` are in use.

        The connection is given back when the block ends; if the block raised and left it
        broken (or closed), it is closed with every idle one instead.
        """
        kept = self._take()
        if kept is not None:
            try:
                kept.planned_at = replan_if_stale(kept.connection, kept.planned_at)
            except self._driver_errors:  # it died while idle: so did the others, most likely
                self._discard_all(kept)
                kept = self._take()  # a new one
        if kept is None:
            yield None
            return
        try:
            yield kept.connection
        except BaseException:
            if kept.connection.broken or kept.connection.closed:
                self._discard_all(kept)
            else:
                self._give_back(kept)
            raise
        self._give_back(kept)

    def close(self) -> None:
        """Close the idle connections and keep none from now on (those in use are closed when
        given back; later statements take the pool)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self.size = 0
        for kept in idle:
            _close(kept.connection)

    def _take(self) -> _Kept | None:
        with self._lock:
            if os.getpid() != self._pid:  # forked: the parent's connections are not ours to use
                self._pid, self._idle, self._in_use = os.getpid(), [], 0
            while self._idle:
                kept = self._idle.pop()
                if time.monotonic() - kept.opened_at < self.recycle and not kept.connection.closed:
                    self._in_use += 1
                    return kept
                _close(kept.connection)
            if self._in_use >= self.size:
                return None
            self._in_use += 1
        try:
            return _Kept(dedicated_connection(self.engine, by_index=True), time.monotonic())
        except BaseException:
            with self._lock:
                self._in_use -= 1
            raise

    def _give_back(self, kept: _Kept) -> None:
        with self._lock:
            if os.getpid() != self._pid:
                return  # taken before a fork: the parent's, left alone
            self._in_use -= 1
            if len(self._idle) < self.size:
                self._idle.append(kept)
                return
        _close(kept.connection)

    def _discard_all(self, kept: _Kept) -> None:
        """Close ``kept``, found broken, and every idle connection."""
        with self._lock:
            if os.getpid() != self._pid:
                return  # taken before a fork: the parent's, left alone
            self._in_use -= 1
            idle, self._idle = self._idle, []
        for each in (kept, *idle):
            _close(each.connection)


def _close(connection: Any) -> None:
    with contextlib.suppress(Exception):  # already broken: nothing to give back
        connection.close()


__all__ = ["StatementConnections"]
