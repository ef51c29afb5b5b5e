"""Rate-limit state in the ledger: GCRA arrival times and pauses per key, shared by all workers."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from fairlane.ledger.budgets import WINDOW, Budget
from fairlane.ledger.schema import jobs, rate_limits
from fairlane.settings import RateLimit


class UnknownRateLimit(KeyError):
    """A rate-limit key that settings don't declare."""


class RateLimits:
    """The shared budgets of every declared key."""

    def __init__(self, engine: sa.Engine, limits: Mapping[str, RateLimit]) -> None:
        self.engine = engine
        self.limits = dict(limits)
        self.budgets = {key: Budget.from_settings(limit) for key, limit in limits.items()}
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def budget(self, key: str) -> Budget:
        """The budget of ``key``; raises :class:`UnknownRateLimit`."""
        try:
            return self.budgets[key]
        except KeyError:
            raise UnknownRateLimit(key) from None

    def try_spend(self, connection: sa.Connection, key: str, tokens: float, now: float) -> float | None:
        """Spend one request and ``tokens`` of ``key`` inside the caller's transaction.

        Returns None when spent, else the earliest time to try again (a pause counts too).
        """
        budget = self.budget(key)
        row = self._lock(connection, key)
        if row.paused_until > now:
            return float(row.paused_until)
        state, retry_at = budget.spend((row.requests_tat, row.tokens_tat), now, tokens)
        if state is None:
            return retry_at
        connection.execute(
            rate_limits.update()
            .where(rate_limits.c.key == key)
            .values(requests_tat=state[0], tokens_tat=state[1])
        )
        return None

    def settle(self, key: str, estimated: float, actual: float) -> None:
        """Replace a job's estimated token charge with its real count."""
        budget = self.budget(key)
        with self.engine.begin() as connection:
            row = self._lock(connection, key)
            connection.execute(
                rate_limits.update()
                .where(rate_limits.c.key == key)
                .values(tokens_tat=budget.correct_tokens(row.tokens_tat, estimated, actual))
            )

    def pause(self, key: str, seconds: float) -> None:
        """Stop spending from ``key`` for ``seconds`` (extends, never shortens, a pause)."""
        self.budget(key)
        until = time.time() + seconds
        with self.engine.begin() as connection:
            row = self._lock(connection, key)
            connection.execute(
                rate_limits.update()
                .where(rate_limits.c.key == key)
                .values(paused_until=max(row.paused_until, until))
            )

    def paused_until(self, key: str) -> float:
        """Epoch seconds until which ``key`` is paused (0 or past: not paused)."""
        with self.engine.connect() as connection:
            value = connection.execute(
                sa.select(rate_limits.c.paused_until).where(rate_limits.c.key == key)
            ).scalar_one_or_none()
        return float(value or 0.0)

    def usage(self, key: str) -> dict[str, tuple[float, float]]:
        """Requests and tokens spent on ``key`` in the last minute, with their limits.

        Counted from the jobs admitted (charged) in the last 60 s, e.g. ``{"requests": (387, 450)}``.
        """
        limit = self.limits[key]
        cutoff = datetime.fromtimestamp(time.time() - WINDOW, UTC)
        with self.engine.connect() as connection:
            count, tokens = connection.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(jobs.c.rate_tokens), 0.0)).where(
                    jobs.c.rate_key == key, jobs.c.dispatched_at >= cutoff
                )
            ).one()
        usage = {"requests": (float(count), limit.requests_per_minute)}
        if limit.tokens_per_minute is not None:
            usage["tokens"] = (float(tokens), limit.tokens_per_minute)
        return usage

    def _lock(self, connection: sa.Connection, key: str) -> Any:
        connection.execute(self._insert(rate_limits).values(key=key).on_conflict_do_nothing())
        return connection.execute(
            sa.select(rate_limits.c.requests_tat, rate_limits.c.tokens_tat, rate_limits.c.paused_until)
            .where(rate_limits.c.key == key)
            .with_for_update()
        ).one()
