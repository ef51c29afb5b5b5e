"""Worker heartbeats: one ``fairlane_workers`` row per live worker process.

A worker process upserts its row every ``heartbeat_interval`` seconds and deletes it when
it stops cleanly. The scheduler counts rows with a fresh heartbeat as live workers, and its
reaper treats a running job whose worker has no fresh row as abandoned. Heartbeat times are
the ledger's clock (:mod:`fairlane.ledger.clock`), as are the cutoffs they are compared with:
a worker whose own clock is off is neither taken for dead nor kept alive by it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from fairlane.ledger.clock import ledger_now
from fairlane.ledger.database import as_utc
from fairlane.ledger.schema import workers


@dataclasses.dataclass(frozen=True)
class WorkerBeat:
    """What a worker process reports in one heartbeat."""

    worker_id: str
    hostname: str
    pid: int
    queues: Sequence[str]
    processed: int
    in_progress: int
    threads: int = 0


@dataclasses.dataclass(frozen=True)
class WorkerRow:
    """A worker's row as the ledger holds it."""

    worker_id: str
    hostname: str
    pid: int
    queues: list[str]
    #: The ledger's time of its first heartbeat.
    started_at: datetime
    last_heartbeat_at: datetime
    processed: int
    in_progress: int


class WorkerStore:
    """Heartbeat rows of worker processes in one ledger database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def beat(self, beat: WorkerBeat, now: datetime | None = None) -> datetime:
        """Record a heartbeat of ``beat.worker_id`` (creating its row on the first one) at the
        ledger's current time, or at ``now`` when given; returns the time recorded."""
        moment: Any = ledger_now() if now is None else now
        values = {
            "hostname": beat.hostname[:255],
            "pid": beat.pid,
            "queues": sorted(beat.queues),
            "processed": beat.processed,
            "in_progress": beat.in_progress,
            "threads": beat.threads,
            "last_heartbeat_at": moment,
        }
        statement = self._insert(workers).values(worker_id=beat.worker_id, started_at=moment, **values)
        statement = statement.on_conflict_do_update(index_elements=[workers.c.worker_id], set_=values)
        with self.engine.begin() as connection:
            recorded = connection.execute(statement.returning(workers.c.last_heartbeat_at)).scalar_one()
        return as_utc(recorded)  # type: ignore[return-value]

    def remove(self, worker_id: str) -> None:
        """Delete a worker's row (it stopped cleanly; its jobs finished or went back to RabbitMQ)."""
        with self.engine.begin() as connection:
            connection.execute(workers.delete().where(workers.c.worker_id == worker_id))

    def alive_count(self, timeout: float, now: datetime | None = None) -> int:
        """Workers whose last heartbeat is at most ``timeout`` seconds old (as of ``now``, by
        default the ledger's current time)."""
        cutoff: Any = ledger_now(-timeout) if now is None else now - timedelta(seconds=timeout)
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    sa.select(sa.func.count()).where(workers.c.last_heartbeat_at >= cutoff)
                ).scalar_one()
            )

    def threads_per_queue(self, timeout: float) -> Counter[str]:
        """Worker threads consuming each queue, over workers heard from within ``timeout`` seconds."""
        query = sa.select(workers.c.queues, workers.c.threads).where(
            workers.c.last_heartbeat_at >= ledger_now(-timeout)
        )
        threads: Counter[str] = Counter()
        with self.engine.connect() as connection:
            for queues, count in connection.execute(query):
                for queue in queues or ():
                    threads[queue] += int(count)
        return threads

    def list(self) -> list[WorkerRow]:
        """Every worker row, by id."""
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(workers).order_by(workers.c.worker_id)).all()
        return [
            WorkerRow(
                worker_id=row.worker_id,
                hostname=row.hostname,
                pid=row.pid,
                queues=list(row.queues or []),
                started_at=as_utc(row.started_at),  # type: ignore[arg-type]
                last_heartbeat_at=as_utc(row.last_heartbeat_at),  # type: ignore[arg-type]
                processed=int(row.processed),
                in_progress=int(row.in_progress),
            )
            for row in rows
        ]

    def delete_silent_since(self, before: datetime) -> int:
        """Delete rows of workers silent since before ``before`` (crashed long ago); returns how many."""
        with self.engine.begin() as connection:
            return int(
                connection.execute(workers.delete().where(workers.c.last_heartbeat_at < before)).rowcount
            )


__all__ = ["WorkerBeat", "WorkerRow", "WorkerStore"]
