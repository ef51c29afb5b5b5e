"""Tenant settings (weight, cap) and per-tenant load figures from the ledger."""

from __future__ import annotations

import dataclasses
import statistics
from collections import defaultdict
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from fairlane.ledger.clock import ledger_now
from fairlane.ledger.database import as_utc
from fairlane.ledger.schema import BACKLOG_STATES, DISPATCHED, FINAL_STATES, RUNNING, jobs, tenants

#: How far back "recent" waits look.
RECENT = timedelta(minutes=5)


@dataclasses.dataclass(frozen=True)
class TenantStats:
    """One tenant's load: backlog, jobs in flight, weight, cap and recent start waits (ms)."""

    tenant: str
    backlog: int
    running: int
    weight: float
    cap: int | None
    wait_p50_ms: float | None
    wait_p99_ms: float | None


class TenantStore:
    """Tenant rows and per-tenant figures of one ledger."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def configure(self, tenant: str, **values: float | int | None) -> None:
        """Set a tenant's ``weight`` and/or ``max_running`` (creating its row)."""
        statement = self._insert(tenants).values(tenant=tenant, **values)
        with self.engine.begin() as connection:
            connection.execute(
                statement.on_conflict_do_update(index_elements=[tenants.c.tenant], set_=values)
            )

    def stats(self, queue: str | None = None) -> list[TenantStats]:
        """Every tenant with backlog, jobs in flight, settings or recent jobs, busiest first."""
        scope = [jobs.c.queue == queue] if queue is not None else []
        with self.engine.connect() as connection:
            backlog = self._count(connection, BACKLOG_STATES, scope)
            running = self._count(connection, (DISPATCHED, RUNNING), scope)
            configured = {
                row.tenant: (float(row.weight), row.max_running)
                for row in connection.execute(
                    sa.select(tenants.c.tenant, tenants.c.weight, tenants.c.max_running)
                )
            }
            waits: dict[str, list[float]] = defaultdict(list)
            recent = connection.execute(
                sa.select(jobs.c.tenant, jobs.c.started_at, jobs.c.next_run_at).where(
                    jobs.c.state.in_(tuple(FINAL_STATES)),
                    jobs.c.finished_at >= ledger_now(-RECENT.total_seconds()),
                    jobs.c.started_at.is_not(None),
                    *scope,
                )
            )
            for row in recent:
                wait = as_utc(row.started_at) - as_utc(row.next_run_at)  # type: ignore[operator]
                waits[row.tenant].append(max(0.0, wait.total_seconds() * 1000))
        names = set(backlog) | set(running) | set(configured) | set(waits)
        found = [
            TenantStats(
                tenant=name,
                backlog=backlog.get(name, 0),
                running=running.get(name, 0),
                weight=configured.get(name, (1.0, None))[0],
                cap=configured.get(name, (1.0, None))[1],
                wait_p50_ms=statistics.median(waits[name]) if waits[name] else None,
                wait_p99_ms=_percentile(waits[name], 0.99),
            )
            for name in names
        ]
        return sorted(found, key=lambda stats: (-stats.backlog - stats.running, stats.tenant))

    def _count(
        self, connection: sa.Connection, states: tuple[str, ...], scope: list[sa.ColumnElement[bool]]
    ) -> dict[str, int]:
        rows = connection.execute(
            sa.select(jobs.c.tenant, sa.func.count())
            .where(jobs.c.state.in_(states), *scope)
            .group_by(jobs.c.tenant)
        )
        return {row[0]: int(row[1]) for row in rows}


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]
