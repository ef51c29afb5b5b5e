"""``fairlane demo``: a mixed multi-tenant workload on an embedded worker, watched live.

One noisy tenant floods the ``ingest`` queue while three light tenants send a few ingest
batches and webhooks (some urgent). A local HTTP sink answers the webhooks: most with
200, some with 503 a couple of times (so they retry), one with 404 (so it dead-letters).
The demo ends with a per-tenant table of waits and outcomes, read from the ledger.
"""

from __future__ import annotations

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

from fairlane.app import App, get_app
from fairlane.ledger.database import as_utc
from fairlane.ledger.schema import FINAL_STATES, jobs
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
    try:
        pika.BlockingConnection(parameters).close()
    except pika.exceptions.AMQPError as error:
        return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
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
    records: list[dict[str, Any]] = [{"sku": f"SKU-{batch}-{item}", "qty": item} for item in range(RECORDS_PER_BATCH)]
    if with_errors:
        records[3] = {"qty": 1}  # no "sku": a per-item error, the batch still succeeds
    return records


def _send_workload(sink: str) -> dict[str, list[str]]:
    from fairlane.actors.ingest import ingest
    from fairlane.actors.webhook import webhook

    run = uuid.uuid4().hex[:8]
    sent: dict[str, list[str]] = {tenant: [] for tenant in (NOISY_TENANT, *LIGHT_TENANTS)}

    def batch(tenant: str, number: int, **options: Any) -> None:
        records = _records(number, with_errors=number % 7 == 3)
        message = ingest.send_with_options(args=(records,), kwargs={"key_field": "sku"}, tenant=tenant, **options)
        sent[tenant].append(message.message_id)

    def hook(tenant: str, path: str, **options: Any) -> None:
        payload = {"event": "order.created", "tenant": tenant}
        message = webhook.send_with_options(args=(sink + path, payload), tenant=tenant, **options)
        sent[tenant].append(message.message_id)

    for number in range(NOISY_BATCHES):
        batch(NOISY_TENANT, number)
    for number in range(10):
        for tenant in LIGHT_TENANTS:
            batch(tenant, number, priority="urgent" if tenant == "globex" and number < 3 else "normal")
    for number in range(5):
        hook("globex", "/ok", priority="high")
        hook("initech", f"/flaky/{run}-{number}", idempotency_key=f"demo-{run}-{number}")
    hook("umbrella", "/gone")
    return sent


def _progress_counts(app: App, ids: list[str]) -> tuple[int, Counter[str]]:
    with app.engine.connect() as connection:
        states = Counter(
            dict(connection.execute(sa.select(jobs.c.state, sa.func.count()).where(jobs.c.id.in_(ids)).group_by(jobs.c.state)).all())
        )
    return sum(count for state, count in states.items() if state in FINAL_STATES), states


def _summary(app: App, sent: dict[str, list[str]]) -> Table:
    table = Table(title="fairlane demo: per tenant")
    for column in ("tenant", "jobs", "wait p50", "wait p99", "succeeded", "retried", "dead", "not finished"):
        table.add_column(column, justify="right" if column != "tenant" else "left")
    for tenant, ids in sent.items():
        with app.engine.connect() as connection:
            rows = connection.execute(
                sa.select(jobs.c.state, jobs.c.attempts, jobs.c.started_at, jobs.c.next_run_at).where(jobs.c.id.in_(ids))
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
    app = get_app()
    problem = rabbitmq_problem(app.settings.broker_url)
    if problem is not None:
        console.print(
            f"[red]RabbitMQ is not reachable at {_masked(app.settings.broker_url)} ({problem}).[/]\n"
            "Start one locally with [bold]rabbitmq-server -detached[/] (Debian/Ubuntu: apt install rabbitmq-server),\n"
            "or point FAIRLANE_BROKER_URL at a running broker, then run the demo again."
        )
        return 1
    import_actor_modules(["fairlane.actors"])
    console.print(
        f"[bold]fairlane demo[/]: ledger {app.engine.url.render_as_string(hide_password=True)}, "
        f"broker {_masked(app.settings.broker_url)}\n"
        f"{NOISY_TENANT} floods {NOISY_BATCHES} ingest batches; {', '.join(LIGHT_TENANTS)} send a few batches "
        "and webhooks (some urgent, some flaky, one to a 404)."
    )
    deadline = time.monotonic() + seconds
    with _webhook_sink() as sink, running_worker(app, threads=8, shutdown_timeout=10):
        sent = _send_workload(sink)
        with Progress(TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), console=console) as bars:
            tasks = {tenant: bars.add_task(tenant, total=len(ids)) for tenant, ids in sent.items()}
            while time.monotonic() < deadline:
                remaining = 0
                for tenant, ids in sent.items():
                    finished, _states = _progress_counts(app, ids)
                    bars.update(tasks[tenant], completed=finished)
                    remaining += len(ids) - finished
                if remaining == 0:
                    break
                time.sleep(0.2)
    console.print(_summary(app, sent))
    dead = [job_id for job_id in sent["umbrella"] if app.jobs.get(job_id).state == "dead"]
    console.print(
        "Look closer: [bold]fairlane jobs list --tenant initech[/], "
        + (f"[bold]fairlane dlq show {dead[0]}[/], " if dead else "")
        + "[bold]fairlane dlq list[/]"
    )
    return 0
