"""GCRA budgets of shared rate limits: the arithmetic, kept with the ledger state it updates.

A key's budget is a GCRA per dimension (requests, and optionally tokens) with emission
interval ``T = 60 s / (limit - burst - headroom)`` and tolerance ``burst * T``; see
:mod:`fairlane.ratelimit` for why that bound keeps every 60 s window at or under the limit.
"""

from __future__ import annotations

import dataclasses
import math

from fairlane.settings import RateLimit

WINDOW = 60.0
#: Share of a per-minute token limit that one job's estimate may be at most; also the share of
#: the request limit that may go out at once, so late admissions catch up (at most 5 requests).
MAX_JOB_TOKEN_SHARE = 0.01
MAX_REQUEST_BURST = 5.0
#: Share of a per-minute token limit kept back: a job is charged when it is admitted but
#: calls the API later, after a varying wait for a worker thread, and with more tokens than
#: estimated until it settles. In a simulation of the fairness bench's scenario (450,000
#: tokens/min, estimates 1,000, real counts 500-1,500, tests/unit/test_ratelimit.py), calls
#: 0-0.6 s after admission put a 60 s window up to 766 tokens over the limit without it, 0-1 s
#: up to 3,009; with 0.5% the worst window of calls up to 1 s late is 449,696. More would cost
#: the requests of a key whose token limit binds with them (the bench's: 450 requests of 1,000
#: tokens) their share: with 1%, 97.3% of the request limit was used.
TOKEN_HEADROOM_SHARE = 0.005


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One GCRA budget: ``interval`` seconds per unit, ``tolerance`` seconds of burst."""

    interval: float
    tolerance: float

    @classmethod
    def for_limit(cls, per_minute: float, burst: float, headroom: float = 0.0) -> Dimension:
        """The budget that keeps any 60 s window of spending at or under ``per_minute - headroom``
        units, and so under ``per_minute`` for uses that come up to ``headroom`` units late."""
        interval = WINDOW / max(per_minute - burst - headroom, 1e-9)
        return cls(interval=interval, tolerance=burst * interval)

    def next_tat(self, tat: float, now: float, units: float) -> float | None:
        """The new theoretical arrival time after spending ``units`` now, or None if not allowed yet."""
        new_tat = max(tat, now) + units * self.interval
        rounding = 4 * math.ulp(new_tat)  # epoch seconds carry ~1e-7 s of float error
        return new_tat if new_tat - now <= self.tolerance + rounding else None

    def allowed_at(self, tat: float, units: float) -> float:
        """The earliest time spending ``units`` is allowed."""
        return tat + units * self.interval - self.tolerance


@dataclasses.dataclass(frozen=True)
class Budget:
    """The request and token budgets of one rate-limit key."""

    requests: Dimension
    tokens: Dimension | None
    max_job_tokens: float

    @classmethod
    def from_settings(cls, limit: RateLimit) -> Budget:
        """The budget for a key declared in settings."""
        tokens = None
        max_job_tokens = math.inf
        if limit.tokens_per_minute is not None:
            max_job_tokens = max(1.0, limit.tokens_per_minute * MAX_JOB_TOKEN_SHARE)
            headroom = limit.tokens_per_minute * TOKEN_HEADROOM_SHARE
            tokens = Dimension.for_limit(limit.tokens_per_minute, max_job_tokens, headroom)
        request_burst = min(MAX_REQUEST_BURST, max(1.0, limit.requests_per_minute * MAX_JOB_TOKEN_SHARE))
        return cls(Dimension.for_limit(limit.requests_per_minute, request_burst), tokens, max_job_tokens)

    def spend(
        self, state: tuple[float, float], now: float, tokens: float
    ) -> tuple[tuple[float, float] | None, float]:
        """Try to spend one request and ``tokens``: ``(new state or None, earliest retry time)``."""
        requests_tat, tokens_tat = state
        new_requests = self.requests.next_tat(requests_tat, now, 1)
        new_tokens = tokens_tat if self.tokens is None else self.tokens.next_tat(tokens_tat, now, tokens)
        if new_requests is not None and new_tokens is not None:
            return (new_requests, new_tokens), now
        retry_at = self.requests.allowed_at(requests_tat, 1)
        if self.tokens is not None:
            retry_at = max(retry_at, self.tokens.allowed_at(tokens_tat, tokens))
        return None, max(retry_at, now)

    def correct_tokens(self, tokens_tat: float, estimated: float, actual: float) -> float:
        """The token TAT after a job's real token count replaced its estimate."""
        if self.tokens is None:
            return tokens_tat
        return tokens_tat + (actual - estimated) * self.tokens.interval
