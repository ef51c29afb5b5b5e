"""``fairlane demo``: a mixed multi-tenant workload on an embedded worker, watched live.

One noisy tenant floods the ``ingest`` queue while three light tenants send a few ingest
batches and webhooks (some urgent). A local HTTP sink answers the webhooks: most with
200, some with 503 a couple of times (so they retry), one with 404 (so it dead-letters).
The demo ends with a per-tenant table of waits and outcomes, read from the ledger.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pika
import pika.exceptions
import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from fairlane.app import App, configure
from fairlane.ledger.database import as_utc
from fairlane.ledger.schema import FINAL_STATES, jobs
from fairlane.settings import load_settings
from fairlane.worker import import_actor_modules, running_worker

NOISY_TENANT = "acme"
LIGHT_TENANTS = ("globex", "initech", "umbrella")
NOISY_BATCHES = 300
RECORDS_PER_BATCH = 20


def rabbitmq_problem(url: str) -> str | None:
    """Why RabbitMQ at ``url`` can't be reached, or None if it can."""
    parameters = pika.URLParameters(url)
    parameters.connection_attempts = 1
    parameters.socket_timeout = 3
    pika_logger = logging.getLogger("pika")
    level = pika_logger.level
    pika_logger.setLevel(logging.CRITICAL)  # the answer below says it plainly; spare the traceback
    try:
        pika.BlockingConnection(parameters).close()
    except pika.exceptions.AMQPError as error:
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    finally:
        pika_logger.setLevel(level)
    return None


def _masked(url: str) -> str:
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':')[0]}:***@{host}" if at else url


class _Sink(BaseHTTPRequestHandler):
    """Webhook receiver: ``/ok`` → 200, ``/flaky/<key>`` → 503 twice then 200, ``/gone`` → 404."""

    hits: Counter[str] = Counter()
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            self.hits[self.path] += 1
            seen = self.hits[self.path]
        status = 200
        if self.path.startswith("/flaky/") and seen <= 2:
            status = 503
        elif self.path == "/gone":
            status = 404
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b'{"received": true}')

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the demo's screen for the progress bars."""


@contextmanager
def _webhook_sink() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def _records(batch: int, *, with_errors: bool) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = [
        {"sku": f"SKU-{batch}-{item}", "qty": item} for item in range(RECORDS_PER_BATCH)
    ]
    if with_errors:
        records[3] = {"qty": 1}  # no "sku": a per-item error, the batch still succeeds
    return records


class _Workload:
    """The demo's sends, recorded per tenant."""

    def __init__(self, sink: str) -> None:
        self.sink = sink
        self.run = uuid.uuid4().hex[:8]
        self.sent: dict[str, list[str]] = {tenant: [] for tenant in (NOISY_TENANT, *LIGHT_TENANTS)}

    def flood(self) -> None:
        """The noisy tenant's backlog, sent before any worker runs."""
        for number in range(NOISY_BATCHES):
            self._batch(NOISY_TENANT, number)

    def light_traffic(self) -> None:
        """The light tenants' batches and webhooks, sent behind the flood."""
        for number in range(10):
            for tenant in LIGHT_TENANTS:
                self._batch(
                    tenant, number, priority="urgent" if tenant == "globex" and number < 3 else "normal"
                )
        for number in range(5):
            self._hook("globex", "/ok", priority="high")
            self._hook("initech", f"/flaky/{self.run}-{number}", idempotency_key=f"demo-{self.run}-{number}")
        self._hook("umbrella", "/gone")

    def _batch(self, tenant: str, number: int, **options: Any) -> None:
        from fairlane.actors.ingest import ingest

        records = _records(number, with_errors=number % 7 == 3)
        message = ingest.send_with_options(
            args=(records,), kwargs={"key_field": "sku"}, tenant=tenant, **options
        )
        self.sent[tenant].append(message.message_id)

    def _hook(self, tenant: str, path: str, **options: Any) -> None:
        from fairlane.actors.webhook import webhook

        payload = {"event": "order.created", "tenant": tenant}
        message = webhook.send_with_options(args=(self.sink + path, payload), tenant=tenant, **options)
        self.sent[tenant].append(message.message_id)


def _finished_count(app: App, ids: list[str]) -> int:
    with app.engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.count()).where(jobs.c.id.in_(ids), jobs.c.state.in_(tuple(FINAL_STATES)))
            ).scalar_one()
        )


def _summary(app: App, sent: dict[str, list[str]]) -> Table:
    table = Table(title="fairlane demo: per tenant")
    for column in ("tenant", "jobs", "wait p50", "wait p99", "ok", "retried", "dead", "left"):
        table.add_column(column, justify="right" if column != "tenant" else "left")
    for tenant, ids in sent.items():
        with app.engine.connect() as connection:
            rows = connection.execute(
                sa.select(jobs.c.state, jobs.c.attempts, jobs.c.started_at, jobs.c.next_run_at).where(
                    jobs.c.id.in_(ids)
                )
            ).all()
        waits = sorted(
            (as_utc(row.started_at) - as_utc(row.next_run_at)).total_seconds() * 1000  # type: ignore[operator]
            for row in rows
            if row.started_at is not None
        )
        p50 = statistics.median(waits) if waits else 0.0
        p99 = waits[min(len(waits) - 1, int(len(waits) * 0.99))] if waits else 0.0
        states = Counter(row.state for row in rows)
        table.add_row(
            tenant,
            str(len(ids)),
            f"{p50:.0f} ms",
            f"{p99:.0f} ms",
            str(states["succeeded"]),
            str(sum(1 for row in rows if row.attempts > 1)),
            str(states["dead"]),
            str(len(ids) - sum(states[state] for state in FINAL_STATES)),
        )
    return table


def run_demo(console: Console, seconds: float = 45.0) -> int:
    """Run the demo; returns the process exit code."""
    settings = load_settings()
    # The demo's webhook sink listens on loopback, which webhooks refuse unless it is allowed.
    allowed = (*settings.webhook_allowed_networks, "127.0.0.1/32")
    app = configure(settings.model_copy(update={"webhook_allowed_networks": allowed}))
    problem = rabbitmq_problem(app.settings.broker_url)
    if problem is not None:
        console.print(
            f"[red]RabbitMQ is not reachable at {_masked(app.settings.broker_url)} ({problem}).[/]\n"
            "Start one locally with [bold]rabbitmq-server -detached[/]"
            " (Debian/Ubuntu: apt install rabbitmq-server),\n"
            "or point FAIRLANE_BROKER_URL at a running broker, then run the demo again."
        )
        return 1
    import_actor_modules(["fairlane.actors"])
    console.print(
        f"[bold]fairlane demo[/]: ledger {app.engine.url.render_as_string(hide_password=True)}, "
        f"broker {_masked(app.settings.broker_url)}\n"
        f"{NOISY_TENANT} floods {NOISY_BATCHES} ingest batches; {', '.join(LIGHT_TENANTS)} "
        "send a few batches and webhooks (some urgent, some flaky, one to a 404)."
    )
    logging.getLogger("fairlane").setLevel(logging.ERROR)  # retries and the dead letter are expected here
    logging.getLogger("dramatiq").setLevel(logging.CRITICAL)  # expected failures would flood the screen
    deadline = time.monotonic() + seconds
    with _webhook_sink() as sink:
        workload = _Workload(sink)
        workload.flood()
        with running_worker(app, threads=8, shutdown_timeout=10):
            workload.light_traffic()
            _watch(console, app, workload.sent, deadline)
    console.print(_summary(app, workload.sent))
    dead = [job_id for job_id in workload.sent["umbrella"] if app.jobs.get(job_id).state == "dead"]
    console.print(
        "Look closer: [bold]fairlane jobs list --tenant initech[/], "
        + (f"[bold]fairlane dlq show {dead[0]}[/], " if dead else "")
        + "[bold]fairlane dlq list[/]"
    )
    return 0


def _watch(console: Console, app: App, sent: dict[str, list[str]], deadline: float) -> None:
    """Live progress bars per tenant until every job finished or the deadline passed."""
    with Progress(
        TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as bars:
        tasks = {tenant: bars.add_task(tenant, total=len(ids)) for tenant, ids in sent.items()}
        while time.monotonic() < deadline:
            remaining = 0
            for tenant, ids in sent.items():
                finished = _finished_count(app, ids)
                bars.update(tasks[tenant], completed=finished)
                remaining += len(ids) - finished
            if remaining == 0:
                break
            time.sleep(0.2)
