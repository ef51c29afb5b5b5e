"""The plain-Dramatiq side of ``fairness.py``: the same jobs on a stock ``RabbitmqBroker``.

``broker`` (default middleware) is what the Dramatiq CLI runs:
``python -m dramatiq _fairness_dramatiq_actors:broker``. With ``BENCH_DQ_QUEUE`` set, importing
the module declares the actors; ``fairness.py`` calls :func:`declare` on its own broker.

* ``dq_work(tag, sent, ms)``: the 2 ms job. "Tenants" are only part of the tag: Dramatiq has
  no notion of them, so the queue is first-come first-served.
* ``dq_urgent(tag, sent, ms)`` (with ``BENCH_DQ_URGENT``): the same job on a second queue
  ``<queue>_urgent`` and actor ``priority=0`` (``dq_work`` has 100), Dramatiq's own answer to
  priorities: the worker consumes both queues and runs prefetched urgent messages first.
* ``dq_api_call(tag, sent, tokens)`` (with ``BENCH_API_URL``): the fake API call behind
  Dramatiq's ``WindowRateLimiter`` (Redis backend, ``BENCH_DQ_RPM`` per 60 s window). When the
  window is full it raises ``RateLimitExceeded`` and Dramatiq's Retries middleware retries the
  message later (``min_backoff`` 1 s, ``max_backoff`` 30 s, up to 1,000 retries); each such
  wait is reported as a job tagged ``<tag>-wait`` so retries spent waiting can be counted.
"""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.rate_limits import RateLimitExceeded, WindowRateLimiter
from dramatiq.rate_limits.backends import RedisBackend

from _fairness_fake_api import call_api
from _report import report

broker = RabbitmqBroker(url=os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))


def declare(
    on: dramatiq.Broker,
    queue: str,
    *,
    urgent: bool = False,
    api_url: str | None = None,
    redis_url: str = "redis://127.0.0.1:6379/0",
    limiter_key: str = "fairness-bench",
    requests_per_minute: int = 450,
) -> dict[str, Any]:
    """Declare the bench actors on ``on``; returns them by name."""

    @dramatiq.actor(actor_name="dq_work", queue_name=queue, broker=on, priority=100, max_retries=0)
    def dq_work(tag: str, sent: float, ms: float) -> None:
        start = time.time()
        if ms:
            time.sleep(ms / 1000)
        report(tag, sent, start, time.time())

    actors: dict[str, Any] = {"dq_work": dq_work}
    if urgent:

        @dramatiq.actor(
            actor_name="dq_urgent", queue_name=f"{queue}_urgent", broker=on, priority=0, max_retries=0
        )
        def dq_urgent(tag: str, sent: float, ms: float) -> None:
            start = time.time()
            if ms:
                time.sleep(ms / 1000)
            report(tag, sent, start, time.time())

        actors["dq_urgent"] = dq_urgent
    if api_url:
        limiter = WindowRateLimiter(
            RedisBackend(url=redis_url), limiter_key, limit=requests_per_minute, window=60
        )

        @dramatiq.actor(
            actor_name="dq_api_call",
            queue_name=f"{queue}_api",
            broker=on,
            max_retries=1000,
            min_backoff=1000,
            max_backoff=30_000,
        )
        def dq_api_call(tag: str, sent: float, tokens: int) -> None:
            start = time.time()
            try:
                with limiter.acquire():
                    call_api(api_url, tag, tokens)
            except RateLimitExceeded:
                report(f"{tag}-wait", sent, start, time.time())
                raise
            report(tag, sent, start, time.time())

        actors["dq_api_call"] = dq_api_call
    return actors


if os.environ.get("BENCH_DQ_QUEUE"):
    globals().update(
        declare(
            broker,
            os.environ["BENCH_DQ_QUEUE"],
            urgent=bool(os.environ.get("BENCH_DQ_URGENT")),
            api_url=os.environ.get("BENCH_API_URL"),
            redis_url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
            limiter_key=os.environ.get("BENCH_LIMITER_KEY", "fairness-bench"),
            requests_per_minute=int(os.environ.get("BENCH_DQ_RPM", "450")),
        )
    )
