"""The plain-Dramatiq side of ``latency_throughput.py``: one no-op actor on queue ``BENCH_DRAMATIQ_QUEUE``.

``broker`` is a stock ``RabbitmqBroker`` (default middleware) on ``BENCH_BROKER_URL``; the
Dramatiq CLI is pointed at it: ``python -m dramatiq _dramatiq_actors:broker``.
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from _report import report

QUEUE = os.environ["BENCH_DRAMATIQ_QUEUE"]
broker = RabbitmqBroker(url=os.environ["BENCH_BROKER_URL"])


@dramatiq.actor(actor_name="bench_noop", queue_name=QUEUE, broker=broker)
def bench_noop(tag: str, sent: float) -> None:
    """Do nothing but report when it started."""
    start = time.time()
    report(tag, sent, start, time.time())
