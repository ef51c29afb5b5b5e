"""The fairlane side of ``latency_throughput.py``: one no-op actor on queue ``BENCH_FAIRLANE_QUEUE``.

The app (broker, ledger) comes from ``FAIRLANE_*`` variables, as in production.
"""

from __future__ import annotations

import os
import time

import fairlane
from _report import report

QUEUE = os.environ["BENCH_FAIRLANE_QUEUE"]


@fairlane.actor(actor_name="bench_noop", queue_name=QUEUE)
def bench_noop(tag: str, sent: float) -> None:
    """Do nothing but report when it started."""
    start = time.time()
    report(tag, sent, start, time.time())
