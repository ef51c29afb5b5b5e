"""A RabbitMQ outage leaves two log lines per component: one WARNING when it loses RabbitMQ
(saying what it does meanwhile), one INFO when it has it back. No traceback per retry, no
line per message, nothing from pika or Dramatiq's consumer threads.

A sender, a worker (its consumers and its dispatcher) and a leading scheduler run in this
process and reach RabbitMQ through a TCP proxy (:mod:`tests.integration.tcp_proxy`), which
drops every connection and refuses new ones for 5 s: the real RabbitMQ is never touched. The
ledger is this test's own SQLite file, so the scheduler sees no other test's jobs, and its
dispatch timeout is short: a message a send published unconfirmed as the connection dropped
is lost, and the reaper publishes it again (one ``job_republished`` line per such job).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import fairlane
from fairlane.app import App
from fairlane.scheduling.service import Scheduler
from fairlane.worker import running_worker

from .support import eventually
from .tcp_proxy import TcpProxy

COMPONENTS = ("sender", "dispatcher", "worker", "scheduler")
#: Those whose reconnect the test waits for (the sender's waits for its next publish, see below).
RECONNECTING = ("dispatcher", "worker", "scheduler")
OUTAGE_SECONDS = 5.0
RECOVERY = 60.0


@pytest.fixture
def proxy(broker_url: str) -> Iterator[TcpProxy]:
    target = urlsplit(broker_url)
    built = TcpProxy(target.hostname or "127.0.0.1", target.port or 5672)
    yield built
    built.close()


@pytest.fixture
def app(broker_url: str, sqlite_url: str, proxy: TcpProxy, tmp_path: Path) -> Iterator[App]:
    settings = fairlane.Settings(
        broker_url=proxy.url_for(broker_url),
        database_url=sqlite_url,
        results_dir=tmp_path / "results",
        admission_interval=0.05,
        dispatch_timeout=2,
        reaper_interval=0.3,
        gauges_interval=0.3,
        cleanup_interval=0.5,
    )
    built = fairlane.configure(settings)
    yield built
    built.close()


class Sender(threading.Thread):
    """Sends a job every 50 ms until stopped (the sender component)."""

    def __init__(self, actor: fairlane.Actor[None]) -> None:
        super().__init__(name="test-sender", daemon=True)
        self.actor = actor
        self.sent: list[str] = []
        self._stop_sending = threading.Event()

    def run(self) -> None:
        while not self._stop_sending.wait(0.05):
            self.sent.append(self.actor.send().message_id)

    def stop(self) -> None:
        self._stop_sending.set()
        self.join(timeout=10)


def _outage_lines(records: list[logging.LogRecord], event: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for record in records:
        message = record.getMessage()
        if message.startswith(f"event={event} "):
            counts[message.split("component=", 1)[1].split()[0]] += 1
    return counts


def test_a_rabbitmq_outage_is_logged_once_per_component_when_lost_and_once_when_back(
    app: App, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a worker, a leading scheduler and a sender, all busy, all through the proxy
    @fairlane.actor(queue_name=f"outage_{uuid.uuid4().hex[:10]}")
    def noop() -> None:
        pass

    scheduler = Scheduler(app, schedules=[])
    stop_scheduler = threading.Event()
    scheduler_thread = threading.Thread(target=scheduler.run, args=(stop_scheduler,), daemon=True)
    scheduler_thread.start()
    sender = Sender(noop)
    try:
        with running_worker(app, threads=2, shutdown_timeout=10):
            eventually(lambda: scheduler.is_leader, 30, "the scheduler leads")
            sender.start()
            eventually(lambda: len(sender.sent) >= 10, 30, "jobs sent")
            fairlane.jobs.wait(sender.sent[9], timeout=30)
            caplog.clear()
            caplog.set_level(logging.INFO)

            # When RabbitMQ is unreachable for 5 s while jobs keep coming
            proxy.cut()
            time.sleep(OUTAGE_SECONDS)
            proxy.restore()

            # Then every component says once that it has RabbitMQ back, and every job runs. The
            # sender says so at its next publish, which waits for an idle queue: a send's message
            # lost in the cut keeps its job dispatched until the reaper publishes it again.
            eventually(
                lambda: set(_outage_lines(caplog.records, "rabbitmq_reconnected")) >= set(RECONNECTING),
                RECOVERY,
                "every component reconnected",
            )
            sender.stop()
            for job_id in sender.sent:
                assert fairlane.jobs.wait(job_id, timeout=RECOVERY).state == "succeeded"
            records = list(caplog.records)  # not the shutdown's
    finally:
        sender.stop()
        stop_scheduler.set()
        scheduler_thread.join(timeout=30)

    # And each component said once that it lost RabbitMQ, and once that it had it back
    assert _outage_lines(records, "rabbitmq_unreachable") == Counter(dict.fromkeys(COMPONENTS, 1))
    reconnected = _outage_lines(records, "rabbitmq_reconnected")
    assert {component: reconnected[component] for component in RECONNECTING} == dict.fromkeys(RECONNECTING, 1)
    assert reconnected["sender"] <= 1
    # And nothing else warned (but the reaper about jobs whose message was lost): no traceback
    # per retry, no line per message, nothing from pika or Dramatiq
    others = [
        f"{record.levelname} {record.name}: {record.getMessage()[:200]}"
        for record in records
        if record.levelno >= logging.WARNING
        and not record.getMessage().startswith(("event=rabbitmq_unreachable ", "event=job_republished "))
    ]
    assert others == []
