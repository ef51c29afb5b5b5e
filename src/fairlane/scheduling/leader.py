"""Scheduler leadership: one lock, held by at most one scheduler process at a time.

* PostgreSQL: a session-level advisory lock taken with ``pg_try_advisory_lock`` on a
  dedicated connection (its own engine, no pool, TCP keepalives on). The lock lives exactly
  as long as that session: a leader that dies (even by SIGKILL) or loses its connection
  drops it at once, and the leader checks its session every second, stepping down if it
  has gone.
* SQLite: an exclusive ``fcntl.flock`` on a lock file (``leader_lock_path``, default beside
  the database file), released by the kernel when the process dies.

Standbys call :meth:`LeaderLock.try_acquire` every second or so and take over as soon as
the lock is free.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import IO, Protocol

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from fairlane.settings import Settings

logger = logging.getLogger("fairlane.scheduler")

#: Constant naming the scheduler leader lock among PostgreSQL advisory locks ("fairls").
LEADER_LOCK_ID = 0x6661_6972_6C73


class LeaderLock(Protocol):
    """A lock that makes one scheduler the leader."""

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True if this process holds it now."""

    def still_held(self) -> bool:
        """Whether this process still holds the lock it took (False if it never did)."""

    def release(self) -> None:
        """Give the lock up (no error if not held)."""

    def close(self) -> None:
        """Give the lock up and free what holding it needed (connections, files)."""


class PostgresLeaderLock:
    """A session-level advisory lock held on a dedicated PostgreSQL connection."""

    def __init__(self, url: str, lock_id: int = LEADER_LOCK_ID) -> None:
        self.lock_id = lock_id
        self._engine = sa.create_engine(
            url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={
                "connect_timeout": 5,
                "keepalives": 1,
                "keepalives_idle": 5,
                "keepalives_interval": 2,
                "keepalives_count": 3,
                "application_name": "fairlane-scheduler-leader",
            },
        )
        self._connection: sa.Connection | None = None

    def try_acquire(self) -> bool:
        if self._connection is not None:
            return self.still_held()
        try:
            connection = self._engine.connect()
        except sa.exc.SQLAlchemyError as error:
            logger.warning("event=leader_lock_unavailable error=%s", type(error).__name__)
            return False
        try:
            taken = bool(
                connection.execute(sa.text("SELECT pg_try_advisory_lock(:id)"), {"id": self.lock_id}).scalar()
            )
        except sa.exc.SQLAlchemyError as error:
            logger.warning("event=leader_lock_unavailable error=%s", type(error).__name__)
            connection.close()
            return False
        if not taken:
            connection.close()
            return False
        self._connection = connection
        return True

    def still_held(self) -> bool:
        if self._connection is None:
            return False
        try:
            # A session-level advisory lock lasts as long as its session: a live session holds it.
            self._connection.execute(sa.text("SELECT 1")).scalar()
        except sa.exc.SQLAlchemyError as error:
            logger.warning("event=leader_lock_lost reason='connection failed' error=%s", type(error).__name__)
            self._drop()
            return False
        return True

    def release(self) -> None:
        if self._connection is None:
            return
        with contextlib.suppress(sa.exc.SQLAlchemyError):  # if the session is gone, so is the lock
            self._connection.execute(sa.text("SELECT pg_advisory_unlock(:id)"), {"id": self.lock_id})
        self._drop()

    def close(self) -> None:
        """Release the lock and dispose of the dedicated engine."""
        self.release()
        self._engine.dispose()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except sa.exc.SQLAlchemyError:
                connection.invalidate()


class FileLeaderLock:
    """An exclusive ``flock`` on a file: the leader lock of schedulers sharing one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def try_acquire(self) -> bool:
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return True

    def still_held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def close(self) -> None:
        """Release the lock."""
        self.release()


def leader_lock_for(settings: Settings) -> PostgresLeaderLock | FileLeaderLock:
    """The leader lock for ``settings``' ledger."""
    if settings.is_sqlite:
        path = settings.leader_lock_path
        if path is None:
            path = Path(settings.database_url.removeprefix("sqlite:///") + ".scheduler.lock")
        return FileLeaderLock(path)
    return PostgresLeaderLock(settings.sqlalchemy_url)


__all__ = ["LEADER_LOCK_ID", "FileLeaderLock", "LeaderLock", "PostgresLeaderLock", "leader_lock_for"]
