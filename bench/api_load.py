"""Request latency and throughput of the HTTP API: ``POST /v1/jobs`` and ``GET /v1/jobs/{id}``.

    python bench/api_load.py [--ledger postgresql|sqlite] [--workers 2] [--concurrency 16] [--requests 4000]

It starts the real ``fairlane api _fairlane_actors --workers W`` (uvicorn) on a fresh ledger
(a PostgreSQL database ``fairlane_bench_api_<run>`` at ``FAIRLANE_DATABASE_URL``'s server,
dropped at the end, or a temporary SQLite file) and the RabbitMQ at ``FAIRLANE_BROKER_URL``,
creates a tenant key, then keeps ``--concurrency`` requests in flight (one keep-alive
connection each) until ``--requests`` are answered: first submissions of the no-op
``bench_noop`` actor (no worker runs: they stay queued, as a service's jobs do while workers are
busy; the tenant's backlog cap is lifted), then lookups of those jobs by id. It prints one table:
requests per second and latency p50/p99 (nearest rank) as the client sees it, on this machine.
The per-key request limit is lifted too: the bench measures the API, not its quota.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pika
import sqlalchemy as sa

from fairlane.ledger.api_keys import ApiKeyStore

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BROKER_URL = os.environ.get("FAIRLANE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
PG_URL = os.environ.get("FAIRLANE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def ledger(kind: str, run_id: str, workdir: Path) -> Iterator[str]:
    """A fresh ledger URL, removed afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'ledger.db'}"
        return
    name = f"fairlane_bench_api_{run_id}"
    admin = sa.create_engine(
        PG_URL.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def api_server(database_url: str, queue: str, workers: int, workdir: Path) -> Iterator[str]:
    """``fairlane api`` in a process group of its own; yields its base URL."""
    port = _free_port()
    env = {
        **os.environ,
        "FAIRLANE_DATABASE_URL": database_url,
        "FAIRLANE_BROKER_URL": BROKER_URL,
        "FAIRLANE_RESULTS_DIR": str(workdir / "results"),
        "FAIRLANE_METRICS_DIR": str(workdir / "metrics"),
        "FAIRLANE_API_RATE_LIMIT": "100000",
        "FAIRLANE_API_RATE_BURST": "1000000",
        "FAIRLANE_API_TENANT_MAX_BACKLOG": str(10**9),
        "BENCH_FAIRLANE_QUEUE": queue,
        "BENCH_REPORT": str(workdir / "report.txt"),
        "PYTHONPATH": os.pathsep.join([str(BENCH_DIR), str(REPO_ROOT / "src")]),
    }
    command = [sys.executable, "-m", "fairlane.cli", "api", "_fairlane_actors"]
    command += ["--port", str(port), "--workers", str(workers)]
    log = workdir / "api.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx2.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"fairlane api did not start; log:\n{log.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


async def load(
    url: str,
    headers: dict[str, str],
    concurrency: int,
    requests: int,
    call: Callable[[httpx2.AsyncClient, int], Awaitable[httpx2.Response]],
) -> tuple[float, list[float], int]:
    """Keep ``concurrency`` calls in flight until ``requests`` are answered: (seconds, latencies, errors)."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:

        async def caller() -> None:
            nonlocal issued, errors
            while issued < requests:
                index = issued
                issued += 1
                started = time.perf_counter()
                response = await call(client, index)
                latencies.append(time.perf_counter() - started)
                if response.status_code >= 300:
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return time.perf_counter() - began, latencies, errors


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def delete_queues(queue: str, lanes: tuple[str, ...] = ("urgent", "high", "normal", "low")) -> None:
    """Delete the RabbitMQ queues the run declared."""
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        channel = connection.channel()
        for name in [queue, f"{queue}.DQ", f"{queue}.XQ", *(f"{queue}.{lane}" for lane in lanes)]:
            channel.queue_delete(name)
    finally:
        connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledger", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn processes of fairlane api")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=4000, help="per endpoint")
    args = parser.parse_args()
    run_id = uuid.uuid4().hex[:8]
    queue = f"flapi_{run_id}"
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="fairlane-bench-api-") as tmp,
        ledger(args.ledger, run_id, Path(tmp)) as url,
    ):
        try:
            with api_server(url, queue, args.workers, Path(tmp)) as base:
                engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
                headers = {"Authorization": f"Bearer {ApiKeyStore(engine).create('bench')[1]}"}
                engine.dispose()
                ids: list[str] = []

                async def submit(client: httpx2.AsyncClient, index: int) -> httpx2.Response:
                    body = {"actor": "bench_noop", "args": [f"api-{index}", time.time()]}
                    response = await client.post("/v1/jobs", json=body)
                    if response.status_code == 202:
                        ids.append(response.json()["id"])
                    return response

                async def lookup(client: httpx2.AsyncClient, index: int) -> httpx2.Response:
                    return await client.get(f"/v1/jobs/{ids[index % len(ids)]}")

                for name, call in (("POST /v1/jobs", submit), ("GET /v1/jobs/{id}", lookup)):
                    seconds, latencies, errors = asyncio.run(
                        load(base, headers, args.concurrency, args.requests, call)
                    )
                    rows.append((name, len(latencies), errors, len(latencies) / seconds, latencies))
        finally:
            delete_queues(queue)
    print(
        f"\nfairlane api: {args.workers} uvicorn process(es), {args.ledger} ledger, "
        f"{args.concurrency} requests in flight, {args.requests} requests per endpoint, one tenant key"
    )
    print(f"{'endpoint':<20} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for name, count, errors, rate, latencies in rows:
        print(
            f"{name:<20} {count:>8} {errors:>6} {rate:>8.0f} "
            f"{_percentile(latencies, 0.50) * 1000:>8.1f} {_percentile(latencies, 0.99) * 1000:>8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
