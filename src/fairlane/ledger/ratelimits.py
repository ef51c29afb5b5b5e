"""Rate-limit state in the ledger: GCRA arrival times and pauses per key, shared by all workers.

Arrival times and pauses are epoch seconds on the ledger's clock (:mod:`fairlane.ledger.clock`),
read with the key's row: workers whose clocks disagree spend one budget alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from fairlane.ledger.budgets import WINDOW, Budget
from fairlane.ledger.clock import ledger_epoch, ledger_now
from fairlane.ledger.schema import jobs, rate_limits
from fairlane.settings import RateLimit


class UnknownRateLimit(KeyError):
    """A rate-limit key that settings don't declare."""


@dataclasses.dataclass(frozen=True)
class Pause:
    """A key's pause as the ledger's clock saw it when read."""

    #: Epoch seconds on the ledger's clock at which the pause ends (0 or past: not paused).
    until: float
    #: Seconds it had left when read (0: not paused).
    remaining: float


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

    def try_spend(
        self, connection: sa.Connection, key: str, tokens: float, now: float | None = None
    ) -> float | None:
        """Spend one request and ``tokens`` of ``key`` inside the caller's transaction.

        Returns None when spent, else in how many seconds to try again (a pause counts too).
        ``now`` is epoch seconds on the ledger's clock, read with the key's row when not given.
        """
        budget = self.budget(key)
        row = self._lock(connection, key)
        moment = float(row.now) if now is None else now
        if row.paused_until > moment:
            return float(row.paused_until) - moment
        state, retry_at = budget.spend((row.requests_tat, row.tokens_tat), moment, tokens)
        if state is None:
            return retry_at - moment
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
        with self.engine.begin() as connection:
            row = self._lock(connection, key)
            connection.execute(
                rate_limits.update()
                .where(rate_limits.c.key == key)
                .values(paused_until=max(row.paused_until, row.now + seconds))
            )

    def pause_of(self, key: str) -> Pause:
        """The pause of ``key`` as of now."""
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(rate_limits.c.paused_until, ledger_epoch()).where(rate_limits.c.key == key)
            ).first()
        if row is None:
            return Pause(0.0, 0.0)
        until, now = float(row[0] or 0.0), float(row[1])
        return Pause(until, max(0.0, until - now))

    def usage(self, key: str) -> dict[str, tuple[float, float]]:
        """Requests and tokens spent on ``key`` in the last minute, with their limits.

        Counted from the jobs admitted (charged) in the last 60 s, e.g. ``{"requests": (387, 450)}``.
        """
        limit = self.limits[key]
        with self.engine.connect() as connection:
            count, tokens = connection.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(jobs.c.rate_tokens), 0.0)).where(
                    jobs.c.rate_key == key, jobs.c.dispatched_at >= ledger_now(-WINDOW)
                )
            ).one()
        usage = {"requests": (float(count), limit.requests_per_minute)}
        if limit.tokens_per_minute is not None:
            usage["tokens"] = (float(tokens), limit.tokens_per_minute)
        return usage

    def _lock(self, connection: sa.Connection, key: str) -> Any:
        """Lock the key's row (creating it): its state, and ``now`` on the ledger's clock."""
        connection.execute(self._insert(rate_limits).values(key=key).on_conflict_do_nothing())
        return connection.execute(
            sa.select(
                rate_limits.c.requests_tat,
                rate_limits.c.tokens_tat,
                rate_limits.c.paused_until,
                ledger_epoch().label("now"),
            )
            .where(rate_limits.c.key == key)
            .with_for_update()
        ).one()
