"""fairlane vs plain Dramatiq (and Celery): fairness, priorities, rate limits and throughput.

    python bench/fairness.py [--scenario noisy|jain|urgent|ratelimit|throughput ...] [--quick]

Every scenario runs fairlane and its baseline in the same run, on the same machine and the
same RabbitMQ, and prints one table. Workers are real subprocesses, 1 process x 8 threads
unless a row says otherwise:

* fairlane: ``python -m fairlane.cli worker --processes P --threads 8 _fairness_fairlane_actors``;
  each phase has a fresh PostgreSQL database ``fairlane_bench_<run>_<phase>`` (dropped at the
  end; ``--ledger sqlite`` uses a temporary file) and its own queue ``flfair_<run>_<phase>``.
  The sender is this process, through fairlane's public API (``send_with_options``,
  ``send_many`` in chunks of 1,000, ``fairlane.tenants.set_weight``).
* Dramatiq: ``python -m dramatiq _fairness_dramatiq_actors:broker --processes P --threads 8``,
  a stock ``RabbitmqBroker`` (default middleware, prefetch 2 per thread); "tenants" are only
  an argument, so its queue is first-come first-served.
* Celery (throughput only): ``celery -A _fairness_celery_app worker -P threads -c 8``, one such
  worker per process (2 x 8 = two workers), RabbitMQ broker, no result backend.

Every job reports ``tag sent start end pid`` to an append-only file (``_report``); ``sent`` is
``time.time()`` taken by the sender just before the send call, so a start delay includes the
send call itself. Every RabbitMQ queue the run declared is deleted at the end.

Scenarios (``--quick`` divides the sizes by about 10 and shortens the rate-limit run):

1. ``noisy``: workers warmed up; tenant A submits 20,000 (then, in a second run, 100,000) jobs
   of 2 ms (``time.sleep``), in chunks of 1,000 (fairlane ``send_many``; Dramatiq one ``send``
   each); then ten light tenants each send 20 jobs, one every 250 ms (one thread per tenant,
   staggered by 25 ms: 40 jobs/s in all, for 5 s, well inside either system's capacity, so a
   light job's wait is the backlog's doing, not its own tenants'). Light start delay = actor
   start - sent; p50/p99 (nearest rank) and max over the 200 light jobs; drain = last job's
   end - A's first send. A backlog not drained ``--drain-cap`` s after the light and urgent jobs
   ran is reported with its drain time projected from the jobs done so far. Rows "where the
   delay went": the send() call (fairlane: split into its ledger accept and
   publish steps by wrapping those methods in this process) and, from the fairlane ledger,
   enqueued_at → dispatched_at and dispatched_at → started_at (``dispatched_at`` is stamped
   when the admission round that published the job began, before it waited for the queue's
   lock; ``started_at`` when the worker's ledger start transaction ran).
2. ``urgent``: during the 100,000 run of ``noisy`` (after the light tenants' sends; a run of
   its own when ``noisy`` is not selected), tenant A also sends 50 urgent jobs of 2 ms, one
   every 100 ms. fairlane: ``priority="urgent"``. Dramatiq has no lanes; two baselines from the
   same run: the same queue (what a plain Dramatiq user gets: FIFO behind the backlog) and a
   second queue whose actor has ``priority=0`` (the work actor has 100), Dramatiq's own way
   to prioritise.
3. ``jain``: backlogs are submitted while the worker is stopped, then the worker starts.
   Equal weights: 4 tenants submit one batch each, one after another. Completions per tenant
   in 1 s windows while all are backlogged (from the first start + 1 s to the earliest
   tenant's last start); Jain = (sum x)^2 / (n sum x^2); median over windows. Weighted:
   3 tenants with weights 5:3:2 and batches in that ratio; each tenant's share of the
   completions in that period. Dramatiq: the same batches, sequential (FIFO serves one
   tenant at a time) and, for the equal case, also interleaved one message per tenant in
   turn (fair by construction). Dramatiq's sequential batches are 16x larger (interleaved 4x)
   so that its much faster drain still spans a few 1 s windows.
4. ``ratelimit``: a fake API (``_fairness_fake_api``, its own process, 20 ms per call) records
   every request and its tokens. Limit 450 requests/min and 450,000 tokens/min, unscaled; the
   run lasts 150 s (2.5 windows; 75 s with ``--quick``) and 3 tenants submit 600 calls each at
   the start (demand about 1.6x the limit). Each call's real token count is 500-1,500
   (mean 1,000); fairlane estimates 1,000 at admission and settles the real count. Both systems
   run at the same time against separate counters. Max requests/tokens in any 60 s window
   (exact sliding windows), share of the limit used (windows starting every 1 s inside the
   run), requests an API would have refused (arriving when the previous 60 s already held the
   limit), retries spent waiting. Dramatiq: ``WindowRateLimiter`` on Redis (requests only:
   Dramatiq has no weighted limiter for tokens); ``RateLimitExceeded`` makes Dramatiq retry the
   message (min_backoff 1 s, max_backoff 30 s); those retries are counted. fairlane: sum of
   ``attempts - 1`` in the ledger.
5. ``throughput``: N no-op jobs from 4 tenants submitted while the worker is stopped, then the
   worker starts; jobs/s between the 10th and 90th percentile of completions (start-up and
   tail excluded). fairlane with fairness on and off (``FAIRLANE_FAIRNESS=false``), Dramatiq
   and Celery, at 1 x 8 and 2 x 8, median of ``--reps`` runs in alternating order.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import itertools
import json
import math
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pika
from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _report import command_line, source_version  # noqa: E402  (bench/ is not a package)
from latency_throughput import (  # noqa: E402
    BROKER_URL,
    Ledger,
    PhaseTimer,
    Record,
    Reports,
    WorkerProcess,
    delete_queues,
    ledger_for,
    percentile,
    problems_in,
    rabbitmq_version,
    summarize,
)

THREADS = 8
SCENARIOS = ("noisy", "urgent", "jain", "ratelimit", "throughput")
FAIRLANE_LANES = ("urgent", "high", "normal", "low")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
JOB_MS = 2.0
LIGHT_TENANTS, LIGHT_JOBS, LIGHT_INTERVAL, LIGHT_STAGGER = 10, 20, 0.250, 0.025
URGENT_INTERVAL = 0.100
RPM, TPM, API_LATENCY_MS = 450, 450_000, 20.0
#: Dramatiq drains 2 ms jobs far faster, so its share batches are this much larger (several windows).
DRAMATIQ_SCALE = 16

console = Console(width=max(Console().width, 132))


# -- sizes ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sizes:
    noisy: tuple[int, ...] = (20_000, 100_000)
    urgent_backlog: int = 100_000
    urgent_jobs: int = 50
    jain_batch: int = 500  # per tenant (fairlane); Dramatiq x DRAMATIQ_SCALE
    weighted_unit: int = 200  # x 5 / 3 / 2 per tenant (fairlane); Dramatiq x DRAMATIQ_SCALE
    ratelimit_seconds: float = 150.0
    ratelimit_jobs: int = 600  # per tenant, 3 tenants
    throughput_fairlane: int = 1_600
    throughput_other: int = 20_000


QUICK = Sizes(
    noisy=(2_000, 10_000),
    urgent_backlog=10_000,
    urgent_jobs=20,
    jain_batch=150,
    weighted_unit=60,
    ratelimit_seconds=75.0,
    ratelimit_jobs=300,
    throughput_fairlane=800,
    throughput_other=5_000,
)


# -- run context ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """What every phase of one bench run shares."""

    args: argparse.Namespace
    sizes: Sizes
    run_id: str
    workdir: Path
    reports: Reports
    base_env: dict[str, str]
    started: float = dataclasses.field(default_factory=time.monotonic)
    queues: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def progress(self, text: str) -> None:
        console.print(f"[dim]{time.monotonic() - self.started:5.0f}s {text}[/]")


@dataclasses.dataclass
class Phase:
    """One system's queue (and, for fairlane, ledger) for one measurement."""

    system: str
    name: str
    queue: str
    env: dict[str, str]
    actors: dict[str, Any]
    ledger: Ledger | None = None
    app: Any = None
    #: fairlane: times the steps of this process's send() calls while ``recording``.
    timer: PhaseTimer | None = None

    @contextlib.contextmanager
    def timing(self, into: dict[str, list[float]]) -> Iterator[None]:
        """Record the send() steps made in the block (fairlane only) into ``into``."""
        if self.timer is None:
            yield
            return
        self.timer.durations.clear()
        self.timer.recording = True
        try:
            yield
        finally:
            self.timer.recording = False
            for step, label in SEND_STEPS.items():
                into[label] = list(self.timer.durations.get(step, []))


@contextlib.contextmanager
def fairlane_phase(
    run: Run, name: str, *, fairness: bool = True, rate_limits: dict[str, Any] | None = None, api: str = ""
) -> Iterator[Phase]:
    """A fresh ledger, this process's fairlane app on it, and the worker environment to match."""
    import _fairness_fairlane_actors
    import fairlane

    queue = f"flfair_{run.run_id}_{name}"
    for actor_queue in [queue] + ([f"{queue}_api"] if api else []):
        run.queues += [f"{actor_queue}.{lane}" for lane in FAIRLANE_LANES] + [f"{actor_queue}.XQ"]
    ledger_dir = run.workdir / f"ledger-{name}"
    ledger_dir.mkdir()
    with ledger_for(run.args.ledger, f"{run.run_id}_{name}", ledger_dir) as ledger:
        overrides: dict[str, Any] = {
            "database_url": ledger.url,
            "fairness": fairness,
            "rate_limits": rate_limits or {},
        }
        env = {
            **run.base_env,
            "FAIRLANE_DATABASE_URL": ledger.url,
            "FAIRLANE_FAIRNESS": "true" if fairness else "false",
            "FAIRLANE_RATE_LIMITS": json.dumps(rate_limits or {}),
            "FAIRLANE_METRICS_DIR": str(run.workdir / f"metrics-{name}"),
            "BENCH_FAIR_QUEUE": queue,
            "BENCH_API_URL": api,
        }
        app = fairlane.configure(fairlane.load_settings(**overrides))
        timer = PhaseTimer()
        timer.wrap(app.admission, "accept", "accept")
        timer.wrap(app.broker, "_publish_unconfirmed", "publish")
        try:
            actors = _fairness_fairlane_actors.declare(queue, api or None)
            yield Phase("fairlane", name, queue, env, actors, ledger, app, timer)
        finally:
            app.close()


@contextlib.contextmanager
def dramatiq_phase(run: Run, name: str, *, urgent: bool = False, api: str = "") -> Iterator[Phase]:
    """A stock RabbitmqBroker in this process, the actors on a queue of this phase, the worker env."""
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    import _fairness_dramatiq_actors

    queue = f"dqfair_{run.run_id}_{name}"
    for actor_queue in [queue] + ([f"{queue}_urgent"] if urgent else []) + ([f"{queue}_api"] if api else []):
        run.queues += [actor_queue, f"{actor_queue}.DQ", f"{actor_queue}.XQ"]
    limiter_key = f"fairness-bench-{run.run_id}-{name}"
    env = {
        **run.base_env,
        "BENCH_DQ_QUEUE": queue,
        "BENCH_DQ_URGENT": "1" if urgent else "",
        "BENCH_API_URL": api,
        "BENCH_REDIS_URL": REDIS_URL,
        "BENCH_LIMITER_KEY": limiter_key,
        "BENCH_DQ_RPM": str(RPM),
    }
    broker = RabbitmqBroker(url=BROKER_URL)
    actors = _fairness_dramatiq_actors.declare(
        broker,
        queue,
        urgent=urgent,
        api_url=api or None,
        redis_url=REDIS_URL,
        limiter_key=limiter_key,
        requests_per_minute=RPM,
    )
    try:
        yield Phase("dramatiq", name, queue, env, actors)
    finally:
        broker.close()
        if api:
            _delete_redis_keys(f"{limiter_key}*")


@contextlib.contextmanager
def celery_phase(run: Run, name: str) -> Iterator[Phase]:
    import _fairness_celery_app

    queue = f"cefair_{run.run_id}_{name}"
    run.queues.append(queue)
    app = _fairness_celery_app.make_app(queue)
    try:
        yield Phase("celery", name, queue, {**run.base_env, "BENCH_CELERY_QUEUE": queue}, {"app": app})
    finally:
        app.close()


def _delete_redis_keys(pattern: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# -- workers ----------------------------------------------------------------------------------------


def start_workers(run: Run, phase: Phase, processes: int) -> list[WorkerProcess]:
    """Start the phase's worker(s): P processes x 8 threads (Celery: P workers of 8 threads)."""
    commands: list[list[str]] = []
    python, threads = sys.executable, str(THREADS)
    if phase.system == "fairlane":
        module = "_fairness_fairlane_actors"
        options = ["--processes", str(processes), "--threads", threads, "--shutdown-timeout", "20"]
        commands.append([python, "-m", "fairlane.cli", "worker", *options, module])
    elif phase.system == "dramatiq":
        options = ["--processes", str(processes), "--threads", threads, "--path", str(BENCH_DIR)]
        commands.append([python, "-m", "dramatiq", "_fairness_dramatiq_actors:broker", *options])
        commands[-1] += ["--worker-shutdown-timeout", "20000"]
    else:
        quiet = ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"]
        for index in range(processes):
            node = f"bench{index}-{phase.queue}@%h"
            options = ["-P", "threads", "-c", threads, "-Q", phase.queue, "-n", node, *quiet]
            commands.append([python, "-m", "celery", "-A", "_fairness_celery_app", "worker", *options])
    workers = []
    for index, command in enumerate(commands):
        log = run.workdir / f"worker-{phase.name}-{phase.system}-{processes}-{index}.log"
        with log.open("ab") as output:
            popen = subprocess.Popen(
                command,
                cwd=run.workdir,
                env=phase.env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        workers.append(WorkerProcess(phase.system, processes, popen, log))
    return workers


def stop_workers(run: Run, workers: list[WorkerProcess]) -> None:
    for worker in workers:
        worker.stop()
    for worker in workers:
        run.problems.extend(f"{worker.log.stem}: {line}" for line in problems_in(worker))


@contextlib.contextmanager
def running(run: Run, phase: Phase, processes: int = 1) -> Iterator[list[WorkerProcess]]:
    workers = start_workers(run, phase, processes)
    try:
        yield workers
    finally:
        stop_workers(run, workers)


def send_one(phase: Phase, tag: str, ms: float, *, tenant: str = "warm", priority: str | None = None) -> None:
    """Send one job with ``sent`` taken just before the send call."""
    if phase.system == "fairlane":
        phase.actors["fair_work"].send_with_options(
            args=(tag, time.time(), ms), tenant=tenant, priority=priority
        )
    elif phase.system == "dramatiq":
        phase.actors["dq_urgent" if priority == "urgent" else "dq_work"].send(tag, time.time(), ms)
    else:
        phase.actors["app"].tasks["celery_noop"].apply_async((tag, time.time()))


def send_batch(phase: Phase, tag: str, count: int, *, tenant: str, ms: float = JOB_MS) -> None:
    """Submit ``count`` jobs of one tenant as fast as the system's client allows."""
    if phase.system == "fairlane":
        for start in range(0, count, 1000):
            chunk = min(1000, count - start)
            phase.actors["fair_work"].send_many([(tag, time.time(), ms)] * chunk, tenant=tenant)
    elif phase.system == "dramatiq":
        actor = phase.actors["dq_work"]
        for _ in range(count):
            actor.send(tag, time.time(), ms)
    else:
        app = phase.actors["app"]
        task = app.tasks["celery_noop"]
        with app.producer_or_acquire() as producer:
            for _ in range(count):
                task.apply_async((tag, time.time()), producer=producer)


def send_interleaved(phase: Phase, tags: dict[str, str], count: int, ms: float = JOB_MS) -> None:
    """Dramatiq only: one message per tenant in turn, ``count`` rounds."""
    actor = phase.actors["dq_work"]
    for _ in range(count):
        for tag in tags.values():
            actor.send(tag, time.time(), ms)


def warm_up(
    run: Run, phase: Phase, workers: list[WorkerProcess], processes: int, timeout: float = 90
) -> None:
    """Send no-op jobs until every worker process has run some."""
    tag = f"{phase.name}-{phase.system}-warm"
    deadline = time.monotonic() + timeout
    sent = 0
    while True:
        for worker in workers:
            worker.check_alive()
        for _ in range(4 * THREADS * processes):
            send_one(phase, tag, 0.0)
            sent += 1
        with contextlib.suppress(TimeoutError):
            records = run.reports.wait(tag, sent, timeout=30, interval=0.01)
            if len({record.pid for record in records}) >= processes:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{phase.system} {phase.name}: workers did not all start in {timeout:.0f}s")


def wait_for(
    run: Run, wanted: dict[str, int], timeout: float, workers: Sequence[WorkerProcess], label: str
) -> bool:
    """Wait until each tag has reported its count; False (after saying so) on timeout."""
    deadline = time.monotonic() + timeout
    next_note = time.monotonic() + 60
    while True:
        run.reports.poll()
        missing = {tag: count - len(run.reports.by_tag[tag]) for tag, count in wanted.items()}
        if all(left <= 0 for left in missing.values()):
            return True
        for worker in workers:
            worker.check_alive()
        now = time.monotonic()
        if now > deadline:
            run.progress(
                f"{label}: gave up after {timeout:.0f}s, still missing {sum(missing.values()):,} jobs"
            )
            return False
        if now > next_note:
            run.progress(f"{label}: {sum(max(0, v) for v in missing.values()):,} jobs to go")
            next_note = now + 60
        time.sleep(0.2)


# -- scenario 1 and 2: noisy neighbour, urgent jobs behind a backlog --------------------------------


@dataclasses.dataclass
class FloodResult:
    size: int
    light_delays: list[float] = dataclasses.field(default_factory=list)
    drain: float | None = None
    drained: int = 0
    #: When the backlog did not drain within ``--drain-cap``: (seconds waited, jobs done by then).
    partial_drain: tuple[float, int] | None = None
    flood_send_seconds: float = 0.0
    urgent: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    backlog_at_urgent: int | None = None
    #: Where a light / urgent job's start delay went: step -> seconds per job (fairlane: from the ledger).
    light_steps: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    urgent_steps: dict[str, list[float]] = dataclasses.field(default_factory=dict)


def flood_run(run: Run, system: str, size: int, *, lights: bool, urgent: int) -> FloodResult:
    """Tenant A floods; light tenants and/or urgent jobs follow. See the module docstring."""
    name = f"flood{size // 1000}k"
    result = FloodResult(size)
    phase_cm = (
        fairlane_phase(run, name) if system == "fairlane" else dramatiq_phase(run, name, urgent=bool(urgent))
    )
    with phase_cm as phase, running(run, phase) as workers:
        warm_up(run, phase, workers, 1)
        flood_tag = f"{name}-{system}-A"
        first_send = time.time()
        send_batch(phase, flood_tag, size, tenant="A")
        result.flood_send_seconds = time.time() - first_send
        run.progress(f"{name} {system}: A's {size:,} jobs submitted in {result.flood_send_seconds:.1f}s")
        wanted = {flood_tag: size} if lights else {}
        light_tags = [f"{name}-{system}-L{index}" for index in range(LIGHT_TENANTS)]
        if lights:
            with phase.timing(result.light_steps):
                result.light_steps["send() call"] = _send_lights(phase, light_tags)
            wanted.update({tag: LIGHT_JOBS for tag in light_tags})
        urgent_tags: dict[str, str] = {}
        if urgent:
            time.sleep(0.5)
            run.reports.poll()
            result.backlog_at_urgent = size - len(run.reports.by_tag[flood_tag])
            with phase.timing(result.urgent_steps):
                urgent_tags, result.urgent_steps["send() call"] = _send_urgent(phase, name, urgent)
            wanted.update({tag: urgent for tag in urgent_tags.values()})
        # Urgent and light jobs first (fairlane's finish long before the backlog), then the drain.
        quick_tags = {tag: count for tag, count in wanted.items() if tag != flood_tag}
        cap = run.args.drain_timeout
        wait_for(run, quick_tags, cap, workers, f"{name} {system} light/urgent jobs")
        if lights:
            drain_cap = run.args.drain_cap
            drained = wait_for(run, {flood_tag: size}, drain_cap, workers, f"{name} {system} drain")
            records = [r for tag in [flood_tag, *light_tags] for r in run.reports.by_tag[tag]]
            result.drained = len(run.reports.by_tag[flood_tag])
            if drained:
                result.drain = max(record.end for record in records) - first_send
            else:
                result.partial_drain = (time.time() - first_send, len(records))
            result.light_delays = [r.start - r.sent for tag in light_tags for r in run.reports.by_tag[tag]]
        for kind, tag in urgent_tags.items():
            result.urgent[kind] = [r.start - r.sent for r in run.reports.by_tag[tag]]
        if system == "fairlane":
            import fairlane.ledger.schema as schema

            light_tenants = [f"light{index}" for index in range(LIGHT_TENANTS)]
            result.light_steps.update(_ledger_steps(phase, schema.jobs.c.tenant.in_(light_tenants)))
            result.urgent_steps.update(_ledger_steps(phase, schema.jobs.c.lane == "urgent"))
        run.progress(f"{name} {system}: done")
    return result


def _send_lights(phase: Phase, tags: list[str]) -> list[float]:
    """Each light tenant's thread sends its jobs at its pace; returns how long each send() call took."""
    begin = time.time() + 0.05
    calls: list[float] = []

    def tenant(index: int) -> None:
        for job in range(LIGHT_JOBS):
            delay = begin + index * LIGHT_STAGGER + job * LIGHT_INTERVAL - time.time()
            if delay > 0:
                time.sleep(delay)
            before = time.time()
            send_one(phase, tags[index], JOB_MS, tenant=f"light{index}")
            calls.append(time.time() - before)

    threads = [threading.Thread(target=tenant, args=(index,)) for index in range(len(tags))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return calls


def _ledger_steps(phase: Phase, where: Any) -> dict[str, list[float]]:
    """From a fairlane ledger: accepted → dispatched (admission) and dispatched → started, per job."""
    import sqlalchemy as sa

    from fairlane.ledger.schema import jobs

    with phase.app.engine.connect() as connection:
        rows = connection.execute(
            sa.select(jobs.c.enqueued_at, jobs.c.dispatched_at, jobs.c.started_at).where(where)
        ).all()
    rows = [row for row in rows if row.dispatched_at is not None and row.started_at is not None]
    return {
        "ledger enqueued_at → dispatched_at": [
            (row.dispatched_at - row.enqueued_at).total_seconds() for row in rows
        ],
        "ledger dispatched_at → started_at": [
            (row.started_at - row.dispatched_at).total_seconds() for row in rows
        ],
    }


def _send_urgent(phase: Phase, name: str, count: int) -> tuple[dict[str, str], list[float]]:
    """Send ``count`` urgent jobs one every 100 ms; returns {baseline kind: tag} and send() durations."""
    if phase.system == "fairlane":
        kinds = {"fairlane": f"{name}-fairlane-U"}
    else:
        kinds = {"same queue": f"{name}-dramatiq-Usame", "own queue": f"{name}-dramatiq-Uown"}
    begin = time.time()
    calls = []
    for index in range(count):
        delay = begin + index * URGENT_INTERVAL - time.time()
        if delay > 0:
            time.sleep(delay)
        before = time.time()
        if phase.system == "fairlane":
            send_one(phase, kinds["fairlane"], JOB_MS, tenant="A", priority="urgent")
        else:
            send_one(phase, kinds["own queue"], JOB_MS, priority="urgent")
        calls.append(time.time() - before)
        if phase.system == "dramatiq":
            send_one(phase, kinds["same queue"], JOB_MS)
    return kinds, calls


# -- scenario 3: Jain's index and weighted shares ---------------------------------------------------


@dataclasses.dataclass
class ShareResult:
    label: str
    jain: list[float]
    shares: dict[str, float]
    period: float


def backlogged_period(by_tenant: dict[str, list[Record]], skip: float = 1.0) -> tuple[float, float]:
    """From the first start (+ ``skip`` s of ramp-up) to the earliest tenant's last start."""
    first = min(r.start for records in by_tenant.values() for r in records)
    last = min(max(r.start for r in records) for records in by_tenant.values())
    begin = first + skip if last - first - skip >= 1.0 else first
    return begin, last


def jain_index(values: Sequence[float]) -> float:
    total, squares = sum(values), sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 0.0


def share_result(label: str, by_tenant: dict[str, list[Record]]) -> ShareResult:
    begin, end = backlogged_period(by_tenant)
    windows = int((end - begin) // 1.0)
    counts = [Counter[str]() for _ in range(windows)]
    totals: Counter[str] = Counter()
    for tenant, records in by_tenant.items():
        for record in records:
            if begin <= record.end < end:
                totals[tenant] += 1
            slot = math.floor(record.end - begin)
            if 0 <= slot < windows:
                counts[slot][tenant] += 1
    jain = [jain_index([window[tenant] for tenant in by_tenant]) for window in counts]
    whole = sum(totals.values()) or 1
    return ShareResult(label, jain, {tenant: totals[tenant] / whole for tenant in by_tenant}, end - begin)


def preloaded_run(
    run: Run, phase: Phase, label: str, batches: dict[str, int], *, interleaved: bool = False
) -> ShareResult:
    """Submit the batches with no worker running, start the worker, wait for all, measure shares."""
    tags = {tenant: f"{phase.name}-{phase.system}-{label}-{tenant}" for tenant in batches}
    if interleaved:
        send_interleaved(phase, tags, next(iter(batches.values())))
    else:
        for tenant, count in batches.items():
            send_batch(phase, tags[tenant], count, tenant=tenant)
    with running(run, phase) as workers:
        wait_for(run, {tags[t]: n for t, n in batches.items()}, run.args.drain_timeout, workers, label)
    by_tenant = {tenant: run.reports.by_tag[tag] for tenant, tag in tags.items()}
    return share_result(label, by_tenant)


WEIGHTS = {"W5": 5, "W3": 3, "W2": 2}


def jain_runs(run: Run) -> dict[str, ShareResult]:
    sizes, results = run.sizes, {}
    equal = {f"E{index}": sizes.jain_batch for index in range(1, 5)}
    weighted = {tenant: sizes.weighted_unit * weight for tenant, weight in WEIGHTS.items()}
    with fairlane_phase(run, "jain") as phase:
        import fairlane

        for tenant, weight in WEIGHTS.items():
            fairlane.tenants.set_weight(tenant, weight)
        results["fairlane equal"] = preloaded_run(run, phase, "equal", equal)
        run.progress(f"jain fairlane equal: median Jain {_median(results['fairlane equal'].jain)}")
        results["fairlane weighted"] = preloaded_run(run, phase, "weighted", weighted)
        run.progress("jain fairlane weighted done")
    scale = DRAMATIQ_SCALE
    with dramatiq_phase(run, "jain") as phase:
        big = {tenant: count * scale for tenant, count in equal.items()}
        results["dramatiq sequential"] = preloaded_run(run, phase, "seq", big)
        small = {tenant: count * 4 for tenant, count in equal.items()}  # fair by construction
        results["dramatiq interleaved"] = preloaded_run(run, phase, "inter", small, interleaved=True)
        results["dramatiq weighted"] = preloaded_run(
            run, phase, "weighted", {tenant: count * scale for tenant, count in weighted.items()}
        )
        run.progress("jain dramatiq done")
    return results


def _median(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.3f}" if values else "-"


# -- scenario 4: rate limits against a fake API -----------------------------------------------------


@dataclasses.dataclass
class RateResult:
    requests: list[tuple[float, float]]
    retries_waiting: int
    completed: int
    tenant_requests: dict[str, int]
    seconds: float
    end: float


def ratelimit_runs(run: Run) -> dict[str, RateResult]:
    from _fairness_fake_api import fetch_log

    log = run.workdir / "fake-api.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "_fairness_fake_api.py"), "--latency-ms", str(API_LATENCY_MS)],
            stdout=subprocess.PIPE,
            stderr=output,
        )
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{int(server.stdout.readline())}"
        limits = {"api": {"requests_per_minute": RPM, "tokens_per_minute": TPM}}
        tenants = [f"R{index}" for index in range(1, 4)]
        per_tenant = run.sizes.ratelimit_jobs
        seconds = run.sizes.ratelimit_seconds
        with (
            fairlane_phase(run, "ratelimit", rate_limits=limits, api=f"{base}/fairlane") as fl,
            dramatiq_phase(run, "ratelimit", api=f"{base}/dramatiq") as dq,
            running(run, fl) as fl_workers,
            running(run, dq) as dq_workers,
        ):
            warm_up(run, fl, fl_workers, 1)
            warm_up(run, dq, dq_workers, 1)
            begin = time.time()
            for tenant in tenants:
                tag = f"rl-fairlane-{tenant}"
                calls = [(tag, time.time(), _tokens(index)) for index in range(per_tenant)]
                fl.actors["fair_api_call"].send_many(calls, tenant=tenant)
                for index in range(per_tenant):
                    dq.actors["dq_api_call"].send(f"rl-dramatiq-{tenant}", time.time(), _tokens(index))
            run.progress(
                f"ratelimit: {2 * len(tenants) * per_tenant:,} calls submitted, running {seconds:.0f}s"
            )
            time.sleep(max(0.0, begin + seconds - time.time()))
            end = begin + seconds
            run.reports.poll()
            results = {}
            for system, phase in (("fairlane", fl), ("dramatiq", dq)):
                requests = [call for call in fetch_log(base, system) if call[0] < end]
                done = {
                    t: sum(1 for r in run.reports.by_tag[f"rl-{system}-{t}"] if r.end < end) for t in tenants
                }
                waits = sum(
                    1 for t in tenants for r in run.reports.by_tag[f"rl-{system}-{t}-wait"] if r.start < end
                )
                if system == "fairlane":
                    waits = _fairlane_retries(phase, "fair_api_call")
                results[system] = RateResult(requests, waits, sum(done.values()), done, seconds, end)
    finally:
        server.terminate()
        server.wait()
    return results


def _tokens(index: int) -> int:
    """A call's real token count: 500-1,500, mean 1,000, the same sequence for every tenant."""
    return 500 + (index * 7919) % 1001


def _fairlane_retries(phase: Phase, actor: str) -> int:
    import sqlalchemy as sa

    from fairlane.ledger.schema import jobs

    with phase.app.engine.connect() as connection:
        spent = connection.execute(
            sa.select(sa.func.coalesce(sa.func.sum(jobs.c.attempts - 1), 0)).where(
                jobs.c.actor == actor, jobs.c.attempts > 1
            )
        ).scalar_one()
    return int(spent)


def window_stats(calls: list[tuple[float, float]], limit: float, end: float) -> dict[str, float]:
    """Max requests/tokens in any 60 s window, refused-by-a-real-API count, used share of the limit."""
    times = [at for at, _ in calls]
    tokens = [value for _, value in calls]
    max_requests = max_tokens = over = 0.0
    right = 0
    running_tokens = 0.0
    for left, at in enumerate(times):  # windows [t_i, t_i + 60)
        while right < len(times) and times[right] < at + 60:
            running_tokens += tokens[right]
            right += 1
        max_requests = max(max_requests, right - left)
        max_tokens = max(max_tokens, running_tokens)
        running_tokens -= tokens[left]
    left = 0
    for index, at in enumerate(times):  # how many arrived when the last 60 s already held the limit
        while times[left] <= at - 60:
            left += 1
        if index - left >= limit:
            over += 1
    used = []  # windows starting every second from the first request, ending by the end of the run
    window_start = times[0] if times else end
    while window_start + 60 <= end:
        used.append(sum(1 for at in times if window_start <= at < window_start + 60) / limit)
        window_start += 1.0
    return {
        "max_requests": max_requests,
        "max_tokens": max_tokens,
        "over": over,
        "used_median": statistics.median(used) if used else math.nan,
        "used_min": min(used) if used else math.nan,
        "windows": len(used),
    }


# -- scenario 5: throughput ------------------------------------------------------------------------

SEND_STEPS = {
    "accept": "send(): ledger accept (one statement)",
    "publish": "send(): publish, idle fast path (no confirm)",
}
THROUGHPUT_SYSTEMS = ("fairlane", "fairlane-nofair", "dramatiq", "celery")
THROUGHPUT_LABEL = {
    "fairlane": "fairlane, fairness on",
    "fairlane-nofair": "fairlane, fairness off",
    "dramatiq": "Dramatiq",
    "celery": "Celery",
}


def throughput_once(run: Run, system: str, processes: int, rep: int) -> float:
    name = f"tp{processes}r{rep}{'nf' if system == 'fairlane-nofair' else ''}"
    if system.startswith("fairlane"):
        count = run.sizes.throughput_fairlane
        phase_cm = fairlane_phase(run, name, fairness=system == "fairlane")
    elif system == "dramatiq":
        count, phase_cm = run.sizes.throughput_other, dramatiq_phase(run, name)
    else:
        count, phase_cm = run.sizes.throughput_other, celery_phase(run, name)
    with phase_cm as phase:
        tags = [f"{name}-{system}-T{index}" for index in range(4)]
        for index, tag in enumerate(tags):
            send_batch(phase, tag, count // 4, tenant=f"T{index}", ms=0.0)
        with running(run, phase, processes) as workers:
            wait_for(run, {tag: count // 4 for tag in tags}, run.args.drain_timeout, workers, name)
    ends = sorted(r.end for tag in tags for r in run.reports.by_tag[tag])
    low, high = len(ends) // 10, len(ends) * 9 // 10
    rate = (high - low) / (ends[high] - ends[low])
    run.progress(f"throughput {processes}x{THREADS} {THROUGHPUT_LABEL[system]}: {rate:,.0f} jobs/s")
    return rate


def throughput_runs(run: Run) -> dict[tuple[str, int], list[float]]:
    rates: dict[tuple[str, int], list[float]] = defaultdict(list)
    for processes in (1, 2):
        for rep in range(run.args.reps):
            order = THROUGHPUT_SYSTEMS if rep % 2 == 0 else THROUGHPUT_SYSTEMS[::-1]
            for system in order:
                rates[(system, processes)].append(throughput_once(run, system, processes, rep))
    return rates


# -- report -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    name: str
    measured: str
    met: bool | None
    limit: str = ""


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:,.1f}"


def _met(ok: bool | None) -> str:
    return "-" if ok is None else ("[green]met[/]" if ok else "[red]not met[/]")


def _step_rows(
    table: Table, prefix: str, dramatiq: dict[str, list[float]], fairlane: dict[str, list[float]], blanks: int
) -> None:
    """Rows "where the start delay went": p50 / p99 of each step, in ms."""

    def cell(values: list[float] | None) -> str:
        if not values:
            return "-"
        return f"{percentile(values, 0.5) * 1000:,.1f} / {percentile(values, 0.99) * 1000:,.1f}"

    for step in fairlane:
        filler = [""] * (blanks - 1)
        row = [cell(dramatiq.get(step)), *filler, cell(fairlane[step]), "", "-"]
        table.add_row(f"{prefix} {step}, p50 / p99 ms", *row)


def _delay_stats(delays: list[float]) -> tuple[float, float, float] | None:
    if not delays:
        return None
    return percentile(delays, 0.5), percentile(delays, 0.99), max(delays)


def noisy_table(results: dict[tuple[str, int], FloodResult], sizes: Sizes, targets: list[Target]) -> Table:
    table = Table(
        title="1. noisy neighbour: A floods N x 2 ms jobs, then 10 light tenants send 20 each (1x8)"
    )
    for column in ("measure", "Dramatiq", "fairlane", "target (fairlane)", "fairlane"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    p99s = {}
    for size in sizes.noisy:
        stats = {
            system: _delay_stats(results[(system, size)].light_delays) for system in ("dramatiq", "fairlane")
        }
        for index, label in enumerate(("p50", "p99", "max")):
            cells = [_ms(stats[s][index]) if stats[s] else "-" for s in ("dramatiq", "fairlane")]
            target, ok = "", None
            if label == "p99" and stats["fairlane"]:
                p99s[size] = stats["fairlane"][1]
                target, ok = "≤ 50 ms", stats["fairlane"][1] <= 0.050
                targets.append(Target(f"light p99 ≤ 50 ms at {size:,}", f"{_ms(p99s[size])} ms", ok))
            table.add_row(f"N={size:,}: light start delay {label}, ms", *cells, target, _met(ok))
        cells = []
        for system in ("dramatiq", "fairlane"):
            flood = results[(system, size)]
            if flood.drain is not None:
                cells.append(f"{flood.drain:,.1f}")
            elif flood.partial_drain is not None:
                waited, done = flood.partial_drain
                projected = waited * (size + LIGHT_TENANTS * LIGHT_JOBS) / max(done, 1)
                cells.append(f"≈ {projected:,.0f} projected ({done:,} done in {waited:,.0f})")
            else:
                cells.append("-")
        table.add_row(f"N={size:,}: total drain, s (first send → last end)", *cells, "", "-")
        table.add_row(
            f"N={size:,}: A's submission took, s",
            *(f"{results[(s, size)].flood_send_seconds:,.1f}" for s in ("dramatiq", "fairlane")),
            "",
            "-",
        )
        steps = (results[("dramatiq", size)].light_steps, results[("fairlane", size)].light_steps)
        _step_rows(table, f"N={size:,}: light", *steps, 1)
        table.add_section()
    if len(p99s) == 2:
        small, large = (p99s[size] for size in sizes.noisy)
        ratio = large / small if small else math.inf
        ok = 0.8 <= ratio <= 1.2
        table.add_row(
            f"light p99 at {sizes.noisy[1]:,} / at {sizes.noisy[0]:,}",
            "",
            f"{ratio:.2f}",
            "0.8-1.2",
            _met(ok),
        )
        targets.append(Target("light p99 flat within ±20% across backlogs", f"ratio {ratio:.2f}", ok))
    return table


def urgent_table(result_dq: FloodResult, result_fl: FloodResult, count: int, targets: list[Target]) -> Table:
    table = Table(
        title=f"2. urgent: {count} urgent 2 ms jobs, one every 100 ms, behind a "
        f"{result_fl.size:,}-job normal backlog (1x8)"
    )
    columns = ("measure", "Dramatiq, same queue", "Dramatiq, own queue + priority=0", "fairlane urgent lane")
    for column in (*columns, "target", "fairlane"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    series = [result_dq.urgent.get("same queue", []), result_dq.urgent.get("own queue", [])]
    series.append(result_fl.urgent.get("fairlane", []))
    for label, fraction in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        cells = [_ms(percentile(values, fraction)) if values else "-" for values in series]
        target, ok = "", None
        if label == "p99" and series[2]:
            value = percentile(series[2], 0.99)
            target, ok = "≤ 20 ms", value <= 0.020
            targets.append(Target("urgent p99 ≤ 20 ms", f"{_ms(value)} ms", ok))
        table.add_row(f"urgent start delay {label}, ms", *cells, target, _met(ok))
    _step_rows(table, "urgent", result_dq.urgent_steps, result_fl.urgent_steps, 2)
    table.add_row(
        "normal backlog left when urgent sends began",
        f"{result_dq.backlog_at_urgent:,}" if result_dq.backlog_at_urgent is not None else "-",
        "(same run)",
        f"{result_fl.backlog_at_urgent:,}" if result_fl.backlog_at_urgent is not None else "-",
        "",
        "-",
    )
    return table


def jain_table(results: dict[str, ShareResult], sizes: Sizes, targets: list[Target]) -> Table:
    table = Table(
        title="3. fair shares with backlogged tenants (2 ms jobs, 1x8): 4 equal tenants x "
        f"{sizes.jain_batch:,} (Dramatiq {DRAMATIQ_SCALE * sizes.jain_batch:,}); weights 5:3:2"
    )
    columns = ("measure", "Dramatiq, sequential", "Dramatiq, interleaved", "fairlane", "target", "fairlane")
    for column in columns:
        table.add_column(column, justify="left" if column == "measure" else "right")

    def jain_cell(result: ShareResult | None) -> str:
        if result is None or not result.jain:
            return "-"
        return (
            f"{statistics.median(result.jain):.3f} (min {min(result.jain):.3f}, {len(result.jain)} windows)"
        )

    fl = results["fairlane equal"]
    ok = bool(fl.jain) and statistics.median(fl.jain) >= 0.95
    table.add_row(
        "Jain's index, 1 s windows, median",
        jain_cell(results["dramatiq sequential"]),
        jain_cell(results["dramatiq interleaved"]),
        jain_cell(fl),
        "≥ 0.95",
        _met(ok),
    )
    targets.append(Target("Jain ≥ 0.95", _median(fl.jain), ok))
    weighted_fl, weighted_dq = results["fairlane weighted"], results["dramatiq weighted"]
    worst = 0.0
    for tenant, weight in WEIGHTS.items():
        expected = weight / sum(WEIGHTS.values())
        share = weighted_fl.shares[tenant]
        deviation = (share - expected) / expected
        worst = max(worst, abs(deviation))
        table.add_row(
            f"weight {weight} tenant's share of completions",
            f"{weighted_dq.shares[tenant]:.1%}",
            "",
            f"{share:.1%} ({deviation:+.1%} rel.)",
            f"{expected:.0%} ± 5%",
            _met(abs(deviation) <= 0.05),
        )
    targets.append(Target("weighted shares within ±5% (relative)", f"worst {worst:.1%} off", worst <= 0.05))
    table.add_row(
        "measured period (all tenants backlogged), s",
        f"{results['dramatiq sequential'].period:.1f} / {weighted_dq.period:.1f}",
        f"{results['dramatiq interleaved'].period:.1f}",
        f"{fl.period:.1f} / {weighted_fl.period:.1f}",
        "",
        "-",
    )
    return table


def ratelimit_table(results: dict[str, RateResult], targets: list[Target]) -> Table:
    seconds = results["fairlane"].seconds
    table = Table(
        title=f"4. rate limit {RPM} requests + {TPM:,} tokens per 60 s against a fake API, "
        f"demand ~1.6x the limit, {seconds:.0f} s run (1x8)"
    )
    for column in ("measure", "Dramatiq + WindowRateLimiter (Redis)", "fairlane", "target", "fairlane"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    stats = {system: window_stats(result.requests, RPM, result.end) for system, result in results.items()}
    fl, dq = stats["fairlane"], stats["dramatiq"]
    ok = fl["max_requests"] <= RPM and fl["max_tokens"] <= TPM
    table.add_row(
        "max requests in any 60 s window",
        f"{dq['max_requests']:.0f}",
        f"{fl['max_requests']:.0f}",
        f"≤ {RPM}",
        _met(fl["max_requests"] <= RPM),
    )
    table.add_row(
        "max tokens in any 60 s window",
        f"{dq['max_tokens']:,.0f}",
        f"{fl['max_tokens']:,.0f}",
        f"≤ {TPM:,}",
        _met(fl["max_tokens"] <= TPM),
    )
    table.add_row(
        "requests an API would have refused (429)",
        f"{dq['over']:.0f}",
        f"{fl['over']:.0f}",
        "0",
        _met(fl["over"] == 0),
    )
    targets.append(
        Target(
            "rate limit never exceeded",
            f"max {fl['max_requests']:.0f} req / {fl['max_tokens']:,.0f} tokens per 60 s",
            ok,
        )
    )
    used_ok = fl["used_median"] >= 0.98
    table.add_row(
        f"share of request limit used, median (min) of {fl['windows']:.0f} windows",
        f"{dq['used_median']:.1%} ({dq['used_min']:.1%})",
        f"{fl['used_median']:.1%} ({fl['used_min']:.1%})",
        "≥ 98%",
        _met(used_ok),
    )
    targets.append(Target("≥ 98% of the limit used", f"{fl['used_median']:.1%} (median window)", used_ok))
    retries_ok = results["fairlane"].retries_waiting == 0
    table.add_row(
        "retries spent waiting",
        f"{results['dramatiq'].retries_waiting:,}",
        f"{results['fairlane'].retries_waiting:,}",
        "0",
        _met(retries_ok),
    )
    targets.append(Target("0 retries spent waiting", str(results["fairlane"].retries_waiting), retries_ok))
    table.add_row(
        "calls completed in the run",
        *(f"{results[s].completed:,}" for s in ("dramatiq", "fairlane")),
        "",
        "-",
    )

    def shares(result: RateResult) -> str:
        total = sum(result.tenant_requests.values()) or 1
        return " / ".join(f"{count / total:.0%}" for count in result.tenant_requests.values())

    gaps = {system: _gaps(result.requests) for system, result in results.items()}
    table.add_row(
        f"gap between requests, median / mean ms (GCRA interval {60_000 / (RPM - 1):.1f})",
        gaps["dramatiq"],
        gaps["fairlane"],
        "",
        "-",
    )
    table.add_row(
        "tenants R1/R2/R3 share of completed calls",
        shares(results["dramatiq"]),
        shares(results["fairlane"]),
        "",
        "-",
    )
    return table


def _gaps(calls: list[tuple[float, float]]) -> str:
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(calls)]
    return f"{statistics.median(gaps) * 1000:,.1f} / {statistics.mean(gaps) * 1000:,.1f}" if gaps else "-"


def throughput_table(rates: dict[tuple[str, int], list[float]], targets: list[Target]) -> Table:
    table = Table(
        title="5. no-op throughput, jobs/s (10th-90th percentile of completions of a pre-loaded backlog)"
    )
    table.add_column("system")
    for processes in (1, 2):
        table.add_column(f"{processes}x{THREADS}", justify="right")

    def median(system: str, processes: int) -> float:
        return statistics.median(rates[(system, processes)])

    for system in THROUGHPUT_SYSTEMS:
        cells = []
        for processes in (1, 2):
            runs = rates[(system, processes)]
            cells.append(f"{median(system, processes):,.0f}" + (f" (n={len(runs)})" if len(runs) > 1 else ""))
        table.add_row(THROUGHPUT_LABEL[system], *cells)
    table.add_section()
    for label, top, bottom in (
        ("fairness on / off (target ≥ 0.90)", "fairlane", "fairlane-nofair"),
        ("fairlane / Dramatiq", "fairlane", "dramatiq"),
        ("fairlane / Celery", "fairlane", "celery"),
        ("Dramatiq / Celery", "dramatiq", "celery"),
    ):
        table.add_row(label, *(f"{median(top, p) / median(bottom, p):.2f}" for p in (1, 2)))
    ratios = [median("fairlane", p) / median("fairlane-nofair", p) for p in (1, 2)]
    worst = min(ratios)
    targets.append(
        Target(
            "fairness costs ≤ 10% throughput",
            " / ".join(f"{ratio:.2f}" for ratio in ratios) + " (on/off, 1x8 / 2x8)",
            worst >= 0.90,
        )
    )
    return table


def targets_table(targets: list[Target]) -> Table:
    table = Table(title="targets (fairlane, this run)")
    table.add_column("target")
    table.add_column("measured", justify="right")
    table.add_column("", justify="right")
    for target in targets:
        table.add_row(target.name, target.measured, _met(target.met))
    return table


# -- main -------------------------------------------------------------------------------------------


def _versions() -> str:
    import dramatiq
    import redis

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "-"

    try:
        client = redis.Redis.from_url(REDIS_URL)
        redis_server = client.info()["redis_version"]
        client.close()
    except redis.RedisError:
        redis_server = "unreachable"
    return (
        f"Python {platform.python_version()} · fairlane {version('fairlane')} · "
        f"Dramatiq {dramatiq.__version__} · "
        f"Celery {version('celery')} (kombu {version('kombu')}) · pika {pika.__version__} · "
        f"RabbitMQ {rabbitmq_version()} · Redis {redis_server}"
    )


def print_header(run: Run) -> None:
    console.print(f"command: {command_line()}", markup=False, highlight=False)
    console.print(
        f"date {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M:%S %Z} · {platform.machine()} · "
        f"{os.cpu_count()} CPUs · loadavg {os.getloadavg()[0]:.2f} · run {run.run_id}"
        + (" · --quick" if run.args.quick else "")
    )
    console.print(_versions())
    ledger = (
        "PostgreSQL (a fresh database per phase, dropped at the end)"
        if run.args.ledger == "postgresql"
        else "SQLite (a temporary file per phase)"
    )
    from fairlane.settings import load_settings

    settings = load_settings()
    budget = settings.dispatch_budget or "4 x worker threads"
    console.print(
        f"fairlane ledger: {ledger}; dispatch budget {budget}, "
        f"prefetch {settings.prefetch_per_thread} per thread; source {source_version()}; "
        f"scenarios: {', '.join(run.args.scenario)}"
    )
    for line in (
        "baselines: Dramatiq = stock RabbitmqBroker, default middleware, prefetch 2/thread, FIFO queue, "
        "'tenant' only an argument;",
        "  urgent: Dramatiq same queue (FIFO) and own queue with actor priority=0; rate limit: Dramatiq "
        "WindowRateLimiter on Redis (requests only) + Retries (backoff 1-30 s);",
        "  Celery: RabbitMQ, no result backend, -P threads -c 8, acks_late, default prefetch x4; "
        "2x8 = two such workers.",
    ):
        console.print(line)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scenario", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="about a tenth of the sizes, for a fast check")
    parser.add_argument("--ledger", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (worker logs)")
    parser.add_argument("--reps", type=int, default=None, help="throughput repetitions (default 2, quick 1)")
    parser.add_argument(
        "--drain-cap",
        type=float,
        default=150.0,
        help="noisy: seconds to wait for A's backlog to drain after the light/urgent jobs ran; a backlog "
        "not drained by then is reported with its drain time projected from the jobs done so far",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=900.0,
        help="seconds to wait for any one backlog to drain before reporting it as not drained",
    )
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = secrets.token_hex(4)
    workdir = Path(tempfile.mkdtemp(prefix=f"fairlane_fairness_{run_id}_"))
    base_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")])),
        "FAIRLANE_BROKER_URL": BROKER_URL,
        "FAIRLANE_METRICS_PORT": "0",
        "FAIRLANE_HEALTH_PORT": "0",
        "FAIRLANE_RESULTS_DIR": str(workdir / "results"),
        "BENCH_BROKER_URL": BROKER_URL,
        "BENCH_REPORT": str(workdir / "report.log"),
    }
    os.environ.update(
        {key: base_env[key] for key in ("FAIRLANE_BROKER_URL", "BENCH_BROKER_URL", "BENCH_REPORT")}
    )
    run = Run(
        args, QUICK if args.quick else Sizes(), run_id, workdir, Reports(workdir / "report.log"), base_env
    )
    targets: list[Target] = []
    tables: list[Table] = []
    with contextlib.ExitStack() as cleanup:
        if args.keep:
            cleanup.callback(console.print, f"[dim]worker logs kept in {workdir}[/]")
        else:
            cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        cleanup.callback(_delete_queues_or_say, run.queues)
        print_header(run)
        selected = set(args.scenario)
        if selected & {"noisy", "urgent"}:
            floods: dict[tuple[str, int], FloodResult] = {}
            sizes = run.sizes.noisy if "noisy" in selected else ()
            urgent_size = run.sizes.noisy[-1] if "noisy" in selected else run.sizes.urgent_backlog
            plan = [(size, True) for size in sizes]
            if "urgent" in selected and urgent_size not in sizes:
                plan.append((urgent_size, False))
            for index, (size, lights) in enumerate(plan):
                urgent = run.sizes.urgent_jobs if "urgent" in selected and size == urgent_size else 0
                order = ("dramatiq", "fairlane") if index % 2 == 0 else ("fairlane", "dramatiq")
                for system in order:
                    floods[(system, size)] = flood_run(run, system, size, lights=lights, urgent=urgent)
            if "noisy" in selected:
                tables.append(noisy_table(floods, run.sizes, targets))
                console.print(tables[-1])
            if "urgent" in selected:
                tables.append(
                    urgent_table(
                        floods[("dramatiq", urgent_size)],
                        floods[("fairlane", urgent_size)],
                        run.sizes.urgent_jobs,
                        targets,
                    )
                )
                console.print(tables[-1])
        if "jain" in selected:
            tables.append(jain_table(jain_runs(run), run.sizes, targets))
            console.print(tables[-1])
        if "ratelimit" in selected:
            tables.append(ratelimit_table(ratelimit_runs(run), targets))
            console.print(tables[-1])
        if "throughput" in selected:
            tables.append(throughput_table(throughput_runs(run), targets))
            console.print(tables[-1])
        console.print()
        console.print(f"[bold]all tables of run {run_id}[/]")
        for table in tables:
            console.print(table)
        console.print(targets_table(targets))
        for count, line in summarize(run.problems)[:8]:
            console.print(f"worker log, {count}x: {line}", style="yellow", markup=False, highlight=False)
    console.print(f"[dim]total {time.monotonic() - run.started:.0f}s, cleaned up[/]")
    return 0


def _delete_queues_or_say(names: list[str]) -> None:
    failed = delete_queues(names)
    if failed:
        console.print(f"[yellow]could not delete RabbitMQ queues: {', '.join(failed)}[/]")


if __name__ == "__main__":
    sys.exit(main())
