"""Shared rate limits for external APIs: GCRA budgets kept in the ledger, spent at admission.

A key (say ``openai``) is declared in settings with ``requests_per_minute`` and optionally
``tokens_per_minute``. An actor names its key and an estimated token cost::

    @fairlane.actor(queue_name="llm", rate_limit="openai", tokens=lambda prompt: len(prompt) // 3)
    def complete(prompt: str) -> str:
        reply = client.complete(prompt)
        fairlane.ratelimit.settle(reply.usage.total_tokens)
        return reply.text

Admission charges a job's request and estimated tokens when it publishes the job, in fair
order across tenants; a job the budget can't afford stays pending in the ledger (no worker
slot, no retry spent) until it can. :func:`settle` corrects the token charge once the real
count is known; :func:`pause` stops a key for every worker (an API's 429 with Retry-After).

The budget is a GCRA per dimension with emission interval ``T = 60 s / (limit - burst -
headroom)`` and tolerance ``burst * T``, where ``burst`` is 1% of the per-minute limit
(requests: at least 1, at most 5; tokens: also the largest estimate one job may carry). That
bound makes the sum charged over any 60 s window at most ``limit - headroom``, whatever the
timing, while the burst lets an admission that came late catch up. Tokens keep 0.5% of the
limit as headroom: a job calls the API a little after it was charged, and may use more than
its estimate until it settles; the headroom keeps the real counts under the limit for calls
up to about 1 s after their admission. Requests use at least 99% of their budget (450/min:
445.5), tokens 98.5%.
"""

from __future__ import annotations

from fairlane.ledger.budgets import MAX_JOB_TOKEN_SHARE, MAX_REQUEST_BURST, WINDOW, Budget, Dimension


def settle(actual_tokens: float) -> None:
    """Correct the running job's token charge with the real count (call after the API call)."""
    from fairlane.app import get_app
    from fairlane.middleware.context import current_job

    if isinstance(actual_tokens, bool) or not isinstance(actual_tokens, int | float) or actual_tokens < 0:
        raise ValueError(f"actual_tokens must be a non-negative number, not {actual_tokens!r}")
    job = current_job()
    if job.rate_limit is None:
        raise RuntimeError(f"actor {job.actor} declares no rate_limit, so there is nothing to settle")
    get_app().rate_limits.settle(job.rate_limit, job.tokens, float(actual_tokens))
    job.tokens = float(actual_tokens)


def pause(key: str, seconds: float) -> None:
    """Stop admitting and starting jobs of ``key`` on every worker for ``seconds`` (e.g. Retry-After)."""
    from fairlane.app import get_app

    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 86_400:
        raise ValueError(f"seconds must be in (0, 86400], not {seconds!r}")
    get_app().rate_limits.pause(key, float(seconds))


__all__ = ["MAX_JOB_TOKEN_SHARE", "MAX_REQUEST_BURST", "WINDOW", "Budget", "Dimension", "pause", "settle"]
