"""``fairlane.actor``: Dramatiq actors whose sends carry tenant, priority and idempotency key."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar, overload

import dramatiq
from dramatiq.message import Message

from fairlane.app import get_app

R = TypeVar("R")


class Actor(dramatiq.Actor[Any, R]):
    """A Dramatiq actor with fairlane's send options spelled out."""

    def send_with_options(
        self,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        delay: timedelta | int | None = None,
        tenant: str | None = None,
        priority: str | None = None,
        idempotency_key: str | None = None,
        cost: float | None = None,
        **options: Any,
    ) -> Message[R]:
        """Submit a job. The returned message's ``message_id`` is the job id.

        Parameters:
          tenant: who the job is for (default ``default``); fairness is per tenant.
          priority: the lane, ``urgent`` / ``high`` / ``normal`` (default) / ``low``.
          idempotency_key: a tenant's second submission with the same key returns the first job.
          cost: how much of the tenant's fair share the job uses (default 1).
          delay: run no sooner than this many milliseconds from now.

        Raises:
          fairlane.InvalidJob: the job is refused; nothing was stored or published.
          fairlane.LedgerUnavailable: the ledger could not be reached; it says whether the job was
            stored (``stored`` / ``not_stored`` / ``unknown`` job ids).
        """
        for name, value in (("tenant", tenant), ("priority", priority), ("idempotency_key", idempotency_key)):
            if value is not None:
                options[name] = value
        if cost is not None:
            options["cost"] = cost
        return super().send_with_options(args=args, kwargs=kwargs, delay=delay, **options)

    def send_many(
        self,
        arguments: Iterable[tuple[Any, ...]],
        *,
        tenant: str | None = None,
        priority: str | None = None,
        cost: float | None = None,
        **options: Any,
    ) -> list[Message[R]]:
        """Submit one job per tuple of positional arguments, in one ledger transaction per 1,000.

        Much faster than a loop of sends for a tenant's bulk work; fair order is the same.
        All or nothing: an invalid job raises :class:`fairlane.InvalidJob` and none is stored.
        An unreachable ledger raises :class:`fairlane.LedgerUnavailable`, naming the jobs stored
        (earlier chunks of 1,000) and those not stored.
        """
        for name, value in (("tenant", tenant), ("priority", priority), ("cost", cost)):
            if value is not None:
                options[name] = value
        messages = [self.message_with_options(args=tuple(args), **options) for args in arguments]
        return self.broker.enqueue_many(messages)  # type: ignore[attr-defined]


@overload
def actor(fn: Callable[..., R]) -> Actor[R]: ...


@overload
def actor(
    fn: None = None, *, actor_name: str | None = None, queue_name: str = "default", **options: Any
) -> Callable[[Callable[..., R]], Actor[R]]: ...


def actor(
    fn: Callable[..., R] | None = None,
    *,
    actor_name: str | None = None,
    queue_name: str = "default",
    **options: Any,
) -> Actor[R] | Callable[[Callable[..., R]], Actor[R]]:
    """Declare a fairlane actor on the process's fairlane broker.

    Options: ``max_retries``, ``min_backoff``, ``max_backoff`` (ms), ``retry_when``,
    ``throws``, ``time_limit`` (ms), plus any option of Dramatiq's middleware.
    """

    def decorator(function: Callable[..., R]) -> Actor[R]:
        declare = dramatiq.actor(
            actor_class=Actor,
            actor_name=actor_name,
            queue_name=queue_name,
            broker=get_app().broker,
            **options,
        )
        return declare(function)  # type: ignore[return-value]

    return decorator(fn) if fn is not None else decorator
