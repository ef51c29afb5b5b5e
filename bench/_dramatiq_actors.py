"""The plain-Dramatiq side of ``latency_throughput.py``: one no-op actor on queue ``BENCH_DRAMATIQ_QUEUE``.

``broker`` is a stock ``RabbitmqBroker`` (default middleware, ``confirm_delivery=False``, Dramatiq's
default) on ``BENCH_BROKER_URL``; the Dramatiq CLI is pointed at it:
``python -m dramatiq _dramatiq_actors:broker``. :func:`confirmed_actor` gives the sender the same
actor on a second broker that waits for RabbitMQ's publisher confirm on every send.
"""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from _report import report

QUEUE = os.environ["BENCH_DRAMATIQ_QUEUE"]
broker = RabbitmqBroker(url=os.environ["BENCH_BROKER_URL"])


def _noop(tag: str, sent: float) -> None:
    """Do nothing but report when it started."""
    start = time.time()
    report(tag, sent, start, time.time())


bench_noop = dramatiq.actor(actor_name="bench_noop", queue_name=QUEUE, broker=broker)(_noop)


def confirmed_actor() -> dramatiq.Actor[Any, None]:
    """``bench_noop`` on a new broker with ``confirm_delivery=True``: each ``send()`` returns once
    RabbitMQ has confirmed the message. Same queue and actor name, so the worker started on
    ``broker`` runs these jobs too. For the sender only; close ``actor.broker`` when done."""
    confirmed = RabbitmqBroker(url=os.environ["BENCH_BROKER_URL"], confirm_delivery=True)
    return dramatiq.actor(actor_name="bench_noop", queue_name=QUEUE, broker=confirmed)(_noop)
