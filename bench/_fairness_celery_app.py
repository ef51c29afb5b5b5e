"""The Celery side of ``fairness.py``'s throughput scenario: one no-op task.

``app`` is what the Celery CLI runs: ``celery -A _fairness_celery_app worker -P threads -c 8
-Q <BENCH_CELERY_QUEUE>``. RabbitMQ broker (``BENCH_BROKER_URL``), no result backend, JSON,
acks after the task ran (``task_acks_late``, as Dramatiq and fairlane do), Celery's default
prefetch (4 per slot), no remote control, gossip, mingle or events.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from _report import report


def make_app(queue: str) -> Celery:
    """A Celery app whose tasks go to ``queue`` on the bench's RabbitMQ."""
    app = Celery(
        "fairness_bench", broker=os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    )
    app.conf.update(
        task_default_queue=queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="celery_noop")
    def celery_noop(tag: str, sent: float) -> None:
        start = time.time()
        report(tag, sent, start, time.time())

    return app


app = make_app(os.environ.get("BENCH_CELERY_QUEUE", "fairness_bench"))
