"""fairlane soak: a steady mixed load for N minutes; a row per minute of memory, connections,
ledger size, queue depths and start latency; then the first and last minute side by side.

    python bench/soak.py --minutes 30 [--rate 100] [--tenants 20] [--processes 2] [--threads 4]
                         [--retention 60] [--seed 1] [--keep]

The deployment is real and isolated (``tests/deployment.py``): a RabbitMQ vhost and a
PostgreSQL database of the run's own (both removed at the end), ``fairlane worker --processes
P --threads T _soak_actors`` and two ``fairlane scheduler _soak_actors`` replicas (one leads),
each with its metrics and health servers on, as in production; a prober thread scrapes
``/metrics`` and asks ``/livez`` and ``/readyz`` of each every 15 s, as Prometheus and the
kubelet would. The scheduler's retention is short: ``cleanup`` every 10 s deletes succeeded and
cancelled jobs ``--retention`` seconds (60) after they finished and dead ones (with their
dead-letter copies in ``soak.XQ``) after twice that, so the ledger levels off after about
``2 x --retention`` seconds. Reaper, gauges and heartbeats keep their production defaults;
cron fires ``soak_cron`` every 10 s. Where the server's autovacuum is off (this machine's
PostgreSQL has ``autovacuum = off``), the run vacuums its database after each minute's row
(``VACUUM (ANALYZE)``), as autovacuum would: without it the ledger's dead rows are never
reclaimed and its table grows by megabytes a minute whatever fairlane does.

This process is the producer: one thread sends ``--rate`` jobs per second (100) through the
public API, for ``--tenants`` tenants (20) picked at random, in lanes urgent 2% / high 10% /
normal 78% / low 10%. The mix, by share of the jobs sent (see :data:`MIX`): plain jobs of 1-10
ms by ``send()`` (45%) and by ``send_many`` in batches of 20 (25%); jobs that fail their first
attempt and succeed on the retry (8%); poison jobs that fail every attempt and go dead (2%);
jobs delayed 2-20 s (10%); calls of a rate-limited actor (8%, under a shared limit of 1.25x
their rate, so admission paces them); jobs cancelled while pending (sent with a 60 s delay and
cancelled at once, 1.5%) and while running (a job that runs 60 s in short sleeps, cancelled
as soon as the ledger shows it running, 0.5%). Every run of a job is reported (``_report``).
On this machine (2 shared cores) 100 jobs/s keeps the run's processes, PostgreSQL and RabbitMQ
at about three quarters of both cores; at 150 the cores are saturated and the producer falls
behind.

A tracker thread reads the ledger state of every job sent and not yet final every 2 s (so it
sees each final state well before retention deletes the row), cancels the running jobs that
are to be cancelled, and checks each final state against the kind's (succeeded, dead,
cancelled) and its attempts against the kind's (1; 2 for a retried job; 3 for a poison job).

Each minute's row: jobs sent and finished per second; enqueue→start p50 / p99 of the minute's
first attempts of the jobs that are runnable at once (plain, batch, retried, poison and
cancelled-running; start minus the sender's time just before the send call); RSS (MB),
PostgreSQL and RabbitMQ connections of each process (w1, w2: worker processes; sup: their
supervisor; s0, s1: schedulers; self: this process; from ``/proc``: established TCP
connections to port 5432 / 5672); client connections to the run's database in
``pg_stat_activity`` (this process's monitoring connection excluded); ledger rows by state and
the ``fairlane_jobs`` table's size with its indexes; ready messages in the lane queues
(urgent/high/normal/low) and dead letters in ``soak.XQ``; CPU in % of one core of the worker
processes, the database's PostgreSQL backends, RabbitMQ (machine-wide: it includes anyone
else's traffic), the schedulers and this process.

At the end the producer stops, every job sent gets up to 120 s to reach its final state, the
processes are stopped with SIGTERM, and the summary compares the first full minute after
warm-up (minute 5; minute 1 in runs under 10 minutes) with the last, each measure with its
least-squares trend from that minute on: RSS per process (criterion: at most 5% growth),
threads, open files and connections per process, ledger rows and table size and dead letters
(flat), p99 (flat). Then what became of every job sent, by kind: reached the expected final
state, another final state, lost (its row vanished while not final, or never existed), stuck
(not final when the settling time ran out), more attempts than expected; delayed jobs that
started before their time; cron runs; failed probes; non-final rows left in the ledger; how
each process stopped; the statements PostgreSQL spent its time on (``pg_stat_statements``,
this script's own reads apart); and the warnings and errors of the processes' logs, the mix's
deliberate failures counted apart. Leaks are reported, never hidden: nothing here asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
# bench/ is not a package: its modules import each other by name; tests/ is one, from the repository root.
sys.path[:0] = [str(BENCH_DIR), str(BENCH_DIR.parent)]

from tests.deployment import STARTUP, Deployment, private_database, private_vhost, wait_for  # noqa: E402
from tests.integration.support import dead_letter_depth, lane_depth  # noqa: E402

from _report import command_line, source_version  # noqa: E402
from latency_throughput import (  # noqa: E402
    BROKER_URL,
    PG_ADMIN_URL,
    CpuMeter,
    Ledger,
    Reports,
    StatementCounter,
    StatementStats,
    free_port,
    percentile,
    problem_lines,
    proc_stat,
    rabbitmq_version,
    summarize,
)

QUEUE = "soak"
LANES = ("urgent", "high", "normal", "low")
LANE_WEIGHTS = (0.02, 0.10, 0.78, 0.10)
BATCH = 20
#: Seconds between the tracker's reads of the ledger, and between the prober's rounds.
TRACK_INTERVAL = 2.0
PROBE_INTERVAL = 15.0
CLEANUP_INTERVAL = 10
#: Seconds every job sent has to reach its final state once the producer stops.
SETTLE = 120.0
CANCEL_PENDING_DELAY_MS = 60_000
#: Shared rate limit = this x the rate-limited jobs' share of the send rate.
RATE_LIMIT_HEADROOM = 1.25
#: Kinds whose first attempt is runnable at once, so their start delay is the platform's doing.
LATENCY_KINDS = ("ok", "batch", "flaky", "poison", "cancel_running")
SUCCEEDED, DEAD, CANCELLED, RUNNING = "succeeded", "dead", "cancelled", "running"
FINAL = (SUCCEEDED, DEAD, CANCELLED)
#: Whose CPU the rows show: the worker tree, the run's PostgreSQL backends, RabbitMQ, the schedulers,
#: this process.
CPU_KINDS = ("workers", "postgresql", "rabbitmq", "schedulers", "self")
STATE_ORDER = ("pending", "dispatched", "running", "retrying", SUCCEEDED, DEAD, CANCELLED)
#: Log lines of the mix's deliberate failures: flaky and poison jobs raise, cancel_running ones are
#: interrupted (Dramatiq logs each at ERROR, with its traceback).
DELIBERATE = ("soak_job('flaky'", "soak_job('poison'", "soak_job('cancel_running'", "error_type=SoakFailure")
TOP_STATEMENTS = 8
#: Marks this script's own SQL, so pg_stat_statements figures can leave it out.
OWN = "/* soak */ "
RSS_CRITERION = 0.05  # the issue's: RSS may grow at most 5% after warm-up
FLAT = 0.10  # ledger rows, dead letters, threads, files, connections: at most 10% counts as flat
P99_FLAT = 0.25  # start p99 (noisy on shared cores): at most 25%

console = Console(width=max(Console().width, 132))


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of job in the mix: its share of the jobs sent and how it must end."""

    name: str
    share: float
    expected: str
    attempts: int


MIX = (
    Kind("ok", 0.45, SUCCEEDED, 1),
    Kind("batch", 0.25, SUCCEEDED, 1),
    Kind("flaky", 0.08, SUCCEEDED, 2),
    Kind("poison", 0.02, DEAD, 3),
    Kind("delayed", 0.10, SUCCEEDED, 1),
    Kind("ratelimited", 0.08, SUCCEEDED, 1),
    Kind("cancel_pending", 0.015, CANCELLED, 0),
    Kind("cancel_running", 0.005, CANCELLED, 1),
)
KINDS = {kind.name: kind for kind in MIX}


# -- the producer -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Tracked:
    """A job sent and not yet seen final."""

    kind: str
    seen: bool = False
    cancel_sent: bool = False


class SentJobs:
    """The jobs sent, and what the tracker learnt of them; shared by producer and tracker."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outstanding: dict[str, Tracked] = {}
        self.sent: Counter[str] = Counter()
        self.sent_in_minute = 0
        self.done_in_minute: Counter[str] = Counter()
        #: (kind, final state) → jobs; (kind, "lost") for rows that vanished or never existed.
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.extra_attempts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()  # exceptions of the producer's sends and cancels
        self.behind = 0  # jobs the producer could not send in time (dropped, not sent later)

    def add(self, kind: str, job_ids: list[str]) -> None:
        with self.lock:
            for job_id in job_ids:
                self.outstanding[job_id] = Tracked(kind)
            self.sent[kind] += len(job_ids)
            self.sent_in_minute += len(job_ids)

    def take_minute(self) -> tuple[int, Counter[str]]:
        """Jobs sent and jobs finished (by state) since the last call."""
        with self.lock:
            sent, done = self.sent_in_minute, self.done_in_minute
            self.sent_in_minute, self.done_in_minute = 0, Counter()
        return sent, done


class Producer(threading.Thread):
    """Sends the mix at a steady rate until stopped."""

    def __init__(
        self, actors: Any, app: Any, sent_jobs: SentJobs, rate: float, tenants: int, seed: int
    ) -> None:
        super().__init__(name="soak-producer", daemon=True)
        self.actors = actors
        self.app = app
        self.sent_jobs = sent_jobs
        self.rate = rate
        self.tenants = [f"t{index:02d}" for index in range(tenants)]
        self.random = random.Random(seed)
        self._stopping = threading.Event()

    def run(self) -> None:
        kinds = list(MIX)
        weights = [kind.share / (BATCH if kind.name == "batch" else 1) for kind in kinds]
        owed, last = 0.0, time.monotonic()
        while not self._stopping.wait(0.02):
            now = time.monotonic()
            owed += (now - last) * self.rate
            last = now
            if owed > self.rate:  # more than a second behind: drop it rather than burst
                self.sent_jobs.behind += int(owed - self.rate)
                owed = self.rate
            while owed >= 1 and not self._stopping.is_set():
                kind = self.random.choices(kinds, weights)[0]
                owed -= self._send(kind.name)

    def _send(self, kind: str) -> int:
        """Send one job of ``kind`` (a batch: :data:`BATCH` jobs); returns how many were meant."""
        options: dict[str, Any] = {
            "tenant": self.random.choice(self.tenants),
            "priority": self.random.choices(LANES, LANE_WEIGHTS)[0],
        }
        ms = self.random.randint(1, 10)
        try:
            sent = time.time()
            if kind == "batch":
                messages = self.actors.soak_job.send_many([("batch", sent, ms)] * BATCH, **options)
                self.sent_jobs.add(kind, [message.message_id for message in messages])
                return BATCH
            if kind == "ratelimited":
                message = self.actors.soak_api_call.send_with_options(args=(sent, ms), **options)
            elif kind == "delayed":
                delay = self.random.uniform(2.0, 20.0)
                args = (kind, sent + delay, ms)
                message = self.actors.soak_job.send_with_options(
                    args=args, delay=int(delay * 1000), **options
                )
            elif kind == "cancel_pending":
                message = self.actors.soak_job.send_with_options(
                    args=(kind, sent, ms), delay=CANCEL_PENDING_DELAY_MS, **options
                )
            else:
                message = self.actors.soak_job.send_with_options(args=(kind, sent, ms), **options)
            self.sent_jobs.add(kind, [message.message_id])
            if kind == "cancel_pending":
                self.app.jobs.cancel(message.message_id)
        except Exception as error:  # counted and shown (a send that raised stored nothing)
            self.sent_jobs.errors[type(error).__name__] += 1
            time.sleep(0.1)
        return BATCH if kind == "batch" else 1

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=30)


class Tracker(threading.Thread):
    """Follows every job sent to its final state; cancels ``cancel_running`` jobs once they run.

    It reads the ledger on a connection of its own with one ``id = ANY(array)`` lookup: through
    ``JobStore.snapshots`` (an IN list of hundreds of ids, one bound parameter each) a read took
    PostgreSQL 60-200 ms here, a tenth of all its statement time, which would weigh on what is
    measured.
    """

    def __init__(self, app: Any, database_url: str, sent_jobs: SentJobs) -> None:
        super().__init__(name="soak-tracker", daemon=True)
        self.app = app
        self.database_url = database_url
        self.sent_jobs = sent_jobs
        self.errors: Counter[str] = Counter()
        self._stopping = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            while not self._stopping.wait(TRACK_INTERVAL):
                try:
                    self.check(connection)
                except Exception as error:  # shown in the summary; the next round tries again
                    self.errors[type(error).__name__] += 1

    def check(self, connection: psycopg.Connection[Any]) -> None:
        with self.sent_jobs.lock:
            ids = list(self.sent_jobs.outstanding)
        rows = connection.execute(
            f"{OWN}SELECT id, state, attempts FROM fairlane_jobs WHERE id = ANY(%s)", (ids,)
        ).fetchall()
        snapshots = {job_id: (state, attempts) for job_id, state, attempts in rows}
        to_cancel = []
        with self.sent_jobs.lock:
            for job_id in ids:
                tracked = self.sent_jobs.outstanding[job_id]
                if job_id not in snapshots:  # send() commits the row before it returns: gone means lost
                    self.sent_jobs.outcomes[(tracked.kind, "lost")] += 1
                    del self.sent_jobs.outstanding[job_id]
                    continue
                state, attempts = snapshots[job_id]
                if state in FINAL:
                    kind = KINDS[tracked.kind]
                    self.sent_jobs.outcomes[(kind.name, state)] += 1
                    self.sent_jobs.done_in_minute[state] += 1
                    if attempts > kind.attempts:
                        self.sent_jobs.extra_attempts[kind.name] += 1
                    del self.sent_jobs.outstanding[job_id]
                else:
                    tracked.seen = True
                    if tracked.kind == "cancel_running" and state == RUNNING and not tracked.cancel_sent:
                        tracked.cancel_sent = True
                        to_cancel.append(job_id)
        for job_id in to_cancel:
            self.app.jobs.cancel(job_id)

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=30)


class Prober(threading.Thread):
    """Scrapes ``/metrics`` and asks ``/livez`` and ``/readyz`` of each server every 15 s."""

    def __init__(self, servers: dict[str, tuple[int, int]]) -> None:
        super().__init__(name="soak-prober", daemon=True)
        self.servers = servers  # name → (metrics port, health port)
        self.failures: Counter[str] = Counter()
        self.probes = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(PROBE_INTERVAL):
            for name, (metrics, health) in self.servers.items():
                for url in (
                    f"http://127.0.0.1:{metrics}/metrics",
                    f"http://127.0.0.1:{health}/livez",
                    f"http://127.0.0.1:{health}/readyz",
                ):
                    self.probes += 1
                    try:
                        with urllib.request.urlopen(url, timeout=5) as response:
                            response.read()
                    except Exception as error:  # urllib raises for any non-2xx answer too
                        self.failures[f"{name} {url.rsplit('/', 1)[1]}: {error}"[:160]] += 1

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=30)


# -- one minute's sample ----------------------------------------------------------------------------


@dataclasses.dataclass
class ProcessSample:
    """One process as ``/proc`` shows it."""

    rss_mb: float
    threads: int
    files: int
    postgresql: int
    rabbitmq: int
    cpu_seconds: float


@dataclasses.dataclass
class Minute:
    """Everything sampled at the end of one minute."""

    minute: int
    sent: int
    done: Counter[str]
    latencies: list[float]
    processes: dict[str, ProcessSample | None]
    pg_connections: int
    rows: dict[str, int]
    table_mb: float
    dead_tuples: int  # dead row versions in fairlane_jobs (vacuum removes them)
    lanes: dict[str, int]
    dead_letters: int
    cpu: dict[str, float]  # % of a core, by CPU_KINDS
    ratelimited: int  # rate-limited jobs that started

    def p(self, fraction: float) -> float | None:
        """A percentile of the minute's start delays, in ms."""
        return percentile(self.latencies, fraction) * 1000 if self.latencies else None

    @property
    def ledger_rows(self) -> int:
        return sum(self.rows.values())


def _established_peers() -> dict[int, int]:
    """Remote port of every established TCP connection of this host, by socket inode."""
    peers: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01":
                    peers[int(fields[9])] = int(fields[2].rsplit(":", 1)[1], 16)
    return peers


def sample_process(pid: int, peers: dict[int, int]) -> ProcessSample | None:
    """RSS, threads, open files, connections to PostgreSQL (5432) and RabbitMQ (5672) and CPU of ``pid``."""
    stat = proc_stat(pid)
    try:
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
        targets = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    except OSError:
        return None
    if stat is None:
        return None
    ports = Counter(
        peers.get(int(target[8:-1]))
        for target in targets
        if target.startswith("socket:[") and int(target[8:-1]) in peers
    )
    return ProcessSample(
        rss_mb=int(status["VmRSS"].split()[0]) / 1024,
        threads=int(status["Threads"]),
        files=len(targets),
        postgresql=ports[5432],
        rabbitmq=ports[5672],
        cpu_seconds=stat[2],
    )


def children_of(pid: int) -> list[int]:
    """The direct children of ``pid``, oldest first."""
    try:
        return sorted(int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        return []


class Sampler:
    """Takes each minute's :class:`Minute` from ``/proc``, the ledger, RabbitMQ and the report file."""

    def __init__(
        self, deployment: Deployment, app: Any, database_url: str, database: str, reports: Reports
    ) -> None:
        self.deployment = deployment
        self.app = app
        self.reports = reports
        self.monitor = psycopg.connect(database_url, autocommit=True)
        assert deployment.workers is not None
        self.cpu = CpuMeter(deployment.workers.pid, database)
        self.cpu_before = self.cpu_totals(self.processes())
        self.clock_before = time.monotonic()
        self.early_delayed = 0
        self.delayed_lateness: list[float] = []
        self.cron_runs = 0
        #: Whether the server's autovacuum runs; if not, :meth:`take` vacuums the run's database.
        self.autovacuum = self._scalar("SHOW autovacuum") == "on"

    def close(self) -> None:
        self.monitor.close()

    def process_ids(self) -> dict[str, int]:
        """The deployment's processes by column name."""
        assert self.deployment.workers is not None
        supervisor = self.deployment.workers.pid
        named = {f"w{index + 1}": pid for index, pid in enumerate(children_of(supervisor))}
        named["sup"] = supervisor
        named.update({f"s{index}": process.pid for index, process in enumerate(self.deployment.schedulers)})
        named["self"] = os.getpid()
        return named

    def processes(self) -> dict[str, ProcessSample | None]:
        """A sample of each process of :meth:`process_ids`."""
        peers = _established_peers()
        return {name: sample_process(pid, peers) for name, pid in self.process_ids().items()}

    def cpu_totals(self, processes: dict[str, ProcessSample | None]) -> dict[str, float]:
        """CPU seconds so far of each of :data:`CPU_KINDS`."""
        self.cpu.discover()

        def used(names: list[str]) -> float:
            return sum(sample.cpu_seconds for name in names if (sample := processes.get(name)) is not None)

        schedulers = [f"s{index}" for index in range(len(self.deployment.schedulers))]
        return self.cpu.read() | {"schedulers": used(schedulers), "self": used(["self"])}

    def take(self, minute: int, sent_jobs: SentJobs) -> Minute:
        sent, done = sent_jobs.take_minute()
        latencies, ratelimited = self.read_reports()
        # RabbitMQ first: this thread's connection to it then exists when the processes are sampled.
        lanes = {lane: lane_depth(self.app, QUEUE, lane) for lane in LANES}
        dead_letters = dead_letter_depth(self.app, QUEUE)
        processes = self.processes()
        pg_connections = self._scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        rows = dict(
            self.monitor.execute(f"{OWN}SELECT state, count(*) FROM fairlane_jobs GROUP BY state").fetchall()
        )
        table_bytes = self._scalar("SELECT pg_total_relation_size('fairlane_jobs')")
        dead_tuples = self._scalar(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'fairlane_jobs'"
        )
        if not self.autovacuum:
            self.monitor.execute(f"{OWN}VACUUM (ANALYZE)")
        cpu_now, clock_now = self.cpu_totals(processes), time.monotonic()
        seconds = clock_now - self.clock_before
        cpu = {kind: 100 * (cpu_now[kind] - self.cpu_before[kind]) / seconds for kind in CPU_KINDS}
        self.cpu_before, self.clock_before = cpu_now, clock_now
        return Minute(
            minute=minute,
            sent=sent,
            done=done,
            latencies=latencies,
            processes=processes,
            pg_connections=pg_connections,
            rows=rows,
            table_mb=table_bytes / 1e6,
            dead_tuples=dead_tuples,
            lanes=lanes,
            dead_letters=dead_letters,
            cpu=cpu,
            ratelimited=ratelimited,
        )

    def _scalar(self, sql: str) -> Any:
        row = self.monitor.execute(OWN + sql).fetchone()
        assert row is not None
        return row[0]

    def read_reports(self) -> tuple[list[float], int]:
        """The start delays (s) of the first attempts reported since the last call, and how many
        rate-limited jobs started; notes delayed jobs' and cron jobs' runs."""
        self.reports.poll()
        latencies: list[float] = []
        ratelimited = 0
        for tag, records in self.reports.by_tag.items():
            kind, attempt, _job = tag.split(":")
            for record in records:
                delay = record.start - record.sent
                if kind == "cron":
                    self.cron_runs += 1
                elif attempt != "1":
                    continue
                elif kind in LATENCY_KINDS:
                    latencies.append(delay)
                elif kind == "delayed":
                    self.early_delayed += delay < 0
                    self.delayed_lateness.append(delay)
                elif kind == "ratelimited":
                    ratelimited += 1
        self.reports.by_tag.clear()
        return latencies, ratelimited


# -- printing ---------------------------------------------------------------------------------------


def _cell(value: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width},.{digits}f}"


def print_row_header(names: list[str]) -> None:
    per_process = " ".join(f"{name:>14}" for name in names)
    console.print(
        "per process: RSS MB/PostgreSQL/RabbitMQ connections (w: worker processes, sup: their "
        "supervisor, s: schedulers, self: this producer); pg: client connections in pg_stat_activity; "
        "ledger rows by state: pending dispatched running retrying | succeeded dead cancelled, table MB; "
        "ready in lanes u/h/n/l, dead letters; CPU % of a core: workers/PostgreSQL/RabbitMQ/schedulers/self",
        markup=False,
        highlight=False,
    )
    print(
        f"{'min':>3} {'sent/s':>6} {'done/s':>6} {'p50ms':>6} {'p99ms':>7} {per_process} {'pg':>3}  "
        f"{'ledger rows':<44} {'MB':>5}  {'lanes':>11} {'XQ':>4}  cpu",
        flush=True,
    )


def print_row(sample: Minute, names: list[str]) -> None:
    processes = []
    for name in names:
        process = sample.processes.get(name)
        processes.append(
            f"{'gone':>14}"
            if process is None
            else f"{process.rss_mb:>6.1f}/{process.postgresql:>2}/{process.rabbitmq:>2}"
        )
    rows = sample.rows
    active = " ".join(f"{rows.get(state, 0):>5}" for state in STATE_ORDER[:4])
    final = " ".join(f"{rows.get(state, 0):>6}" for state in STATE_ORDER[4:])
    lanes = "/".join(str(sample.lanes[lane]) for lane in LANES)
    cpu = "/".join(f"{sample.cpu[kind]:.0f}" for kind in CPU_KINDS)
    print(
        f"{sample.minute:>3} {sample.sent / 60:>6.1f} {sum(sample.done.values()) / 60:>6.1f} "
        f"{_cell(sample.p(0.50), 6)} {_cell(sample.p(0.99), 7)} {' '.join(processes)} "
        f"{sample.pg_connections:>3}  "
        f"{active} | {final} {sample.table_mb:>5.1f}  {lanes:>11} {sample.dead_letters:>4}  {cpu}",
        flush=True,
    )


def _trend(values: list[float]) -> float | None:
    """Least-squares change over the values' span, as a fraction of their mean (None if undefined)."""
    if len(values) < 2 or not statistics.fmean(values):
        return None
    slope = statistics.linear_regression(range(len(values)), values).slope
    return slope * (len(values) - 1) / statistics.fmean(values)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f}%"


def summary_table(minutes: list[Minute], baseline: Minute, names: list[str]) -> Table:
    """Baseline and last minute side by side, with the change and the trend from the baseline on."""
    last = minutes[-1]
    after = [sample for sample in minutes if sample.minute >= baseline.minute]
    table = Table(title=f"minute {baseline.minute} (after warm-up) and minute {last.minute} (last)")
    for column in (
        "measure",
        f"minute {baseline.minute}",
        f"minute {last.minute}",
        "change",
        "trend",
        "verdict",
    ):
        table.add_column(column, justify="left" if column in ("measure", "verdict") else "right")

    def add(
        label: str, pick: Callable[[Minute], float | None], digits: int, limit: float | None = None
    ) -> None:
        first, final = pick(baseline), pick(last)
        series = [value for value in map(pick, after) if value is not None]
        change = (final - first) / first if first and final is not None else None
        trend = _trend(series)
        verdict = ""
        if limit is not None and change is not None and trend is not None:
            verdict = "ok" if max(change, trend) <= limit else f"GROWS (> {limit * 100:.0f}%)"
        table.add_row(
            label,
            _cell(first, 8, digits),
            _cell(final, 8, digits),
            _percent(change),
            _percent(trend),
            verdict,
        )

    for name in names:
        add(f"{name} RSS MB", _of_process(name, "rss_mb"), 1, RSS_CRITERION)
        add(f"{name} threads", _of_process(name, "threads"), 0, FLAT)
        add(f"{name} open files", _of_process(name, "files"), 0, FLAT)
        add(f"{name} PostgreSQL conns", _of_process(name, "postgresql"), 0, FLAT)
        add(f"{name} RabbitMQ conns", _of_process(name, "rabbitmq"), 0, FLAT)
    add("pg_stat_activity client connections", lambda s: s.pg_connections, 0, FLAT)
    add("ledger rows, all states", lambda s: s.ledger_rows, 0, FLAT)
    for state in STATE_ORDER:
        add(f"  {state}", lambda s, state=state: s.rows.get(state, 0), 0)
    add("fairlane_jobs table + indexes, MB", lambda s: s.table_mb, 1, FLAT)
    add("fairlane_jobs dead row versions", lambda s: s.dead_tuples, 0)
    add("ready in lane queues", lambda s: sum(s.lanes.values()), 0)
    add("dead letters in soak.XQ", lambda s: s.dead_letters, 0, FLAT)
    add("jobs sent / s", lambda s: s.sent / 60, 1)
    add("jobs finished / s", lambda s: sum(s.done.values()) / 60, 1)
    add("rate-limited jobs started / min", lambda s: s.ratelimited, 0)
    add("start p50, ms", lambda s: s.p(0.50), 1)
    add("start p99, ms", lambda s: s.p(0.99), 1, P99_FLAT)
    for kind in CPU_KINDS:
        add(f"CPU {kind}, % of a core", lambda s, kind=kind: s.cpu[kind], 0)
    return table


def _of_process(name: str, field: str) -> Callable[[Minute], float | None]:
    """Reads ``field`` of process ``name``'s sample in a minute (None when the process was gone)."""

    def pick(sample: Minute) -> float | None:
        process = sample.processes.get(name)
        return None if process is None else float(getattr(process, field))

    return pick


def outcome_table(sent_jobs: SentJobs) -> Table:
    """What became of every job sent, by kind."""
    table = Table(title="every job sent: final states (read from the ledger before retention deleted them)")
    for column in (
        "kind",
        "sent",
        "expected",
        "reached it",
        "other final state",
        "lost",
        "stuck",
        "extra attempts",
    ):
        table.add_column(
            column, justify="left" if column in ("kind", "expected", "other final state") else "right"
        )
    stuck = Counter(tracked.kind for tracked in sent_jobs.outstanding.values())
    for kind in MIX:
        others = ", ".join(
            f"{state} {sent_jobs.outcomes[(kind.name, state)]:,}"
            for state in FINAL
            if state != kind.expected and sent_jobs.outcomes[(kind.name, state)]
        )
        table.add_row(
            kind.name,
            f"{sent_jobs.sent[kind.name]:,}",
            kind.expected,
            f"{sent_jobs.outcomes[(kind.name, kind.expected)]:,}",
            others or "0",
            f"{sent_jobs.outcomes[(kind.name, 'lost')]:,}",
            f"{stuck[kind.name]:,}",
            f"{sent_jobs.extra_attempts[kind.name]:,}",
        )
    return table


# -- the run ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=int, default=30, help="how long the load runs (one row per minute)")
    parser.add_argument("--rate", type=float, default=100.0, help="jobs sent per second")
    parser.add_argument("--tenants", type=int, default=20, help="tenants the jobs are sent for")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process")
    parser.add_argument(
        "--retention",
        type=float,
        default=60.0,
        help="seconds succeeded and cancelled jobs are kept after they finished (dead ones: twice that)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the mix's random choices")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (process logs)")
    args = parser.parse_args(argv)
    if min(args.minutes, args.tenants, args.processes, args.threads) < 1 or args.rate <= 0:
        parser.error("--minutes, --rate, --tenants, --processes and --threads must be positive")
    if args.retention < 10 * TRACK_INTERVAL:
        parser.error(
            f"--retention must be at least {10 * TRACK_INTERVAL:.0f} s, so the tracker sees every final state"
        )
    return args


def fairlane_settings(
    args: argparse.Namespace, ledger_url: str, broker_url: str, workdir: Path
) -> dict[str, str]:
    """The ``FAIRLANE_*`` variables of every process of the run, this one included."""
    day = 86_400
    limit = args.rate * KINDS["ratelimited"].share * 60 * RATE_LIMIT_HEADROOM
    return {
        "FAIRLANE_BROKER_URL": broker_url,
        "FAIRLANE_DATABASE_URL": ledger_url,
        "FAIRLANE_RESULTS_DIR": str(workdir / "results"),
        "FAIRLANE_METRICS_DIR": str(workdir / "metrics"),
        "FAIRLANE_RATE_LIMITS": json.dumps({"soak_api": {"requests_per_minute": limit}}),
        "FAIRLANE_CLEANUP_INTERVAL": str(CLEANUP_INTERVAL),
        "FAIRLANE_RETENTION_SUCCEEDED_DAYS": repr(args.retention / day),
        "FAIRLANE_RETENTION_CANCELLED_DAYS": repr(args.retention / day),
        "FAIRLANE_RETENTION_DEAD_DAYS": repr(2 * args.retention / day),
    }


def print_header(args: argparse.Namespace, run_id: str, settings: dict[str, str]) -> None:
    console.print(f"command: {command_line()}", markup=False, highlight=False)
    console.print(
        f"date {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M:%S %Z} · {platform.machine()} · "
        f"{os.cpu_count()} CPUs · loadavg {os.getloadavg()[0]:.2f} · Python {platform.python_version()} · "
        f"RabbitMQ {rabbitmq_version()} · source {source_version()} · run {run_id}"
    )
    limit = json.loads(settings["FAIRLANE_RATE_LIMITS"])["soak_api"]["requests_per_minute"]
    console.print(
        f"{args.minutes} min · {args.rate:g} jobs/s from {args.tenants} tenants · workers "
        f"{args.processes}x{args.threads} · 2 schedulers · retention {args.retention:g} s (dead "
        f"{2 * args.retention:g} s), cleanup every {CLEANUP_INTERVAL} s · rate limit {limit:,.0f} "
        f"requests/min · seed {args.seed}",
        markup=False,
        highlight=False,
    )
    console.print(
        "mix: " + ", ".join(f"{kind.name} {kind.share * 100:g}%" for kind in MIX),
        markup=False,
        highlight=False,
    )


@dataclasses.dataclass
class Ending:
    """How the run ended: the settling, what the ledger still held, the processes' stop."""

    settled_in: float
    left: dict[str, int]
    stuck: list[tuple[Any, ...]]  # ledger rows of up to 10 stuck jobs
    stops: list[str]
    exited: str


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = secrets.token_hex(4)
    workdir = Path(tempfile.mkdtemp(prefix=f"fairlane_soak_{run_id}_"))
    logs = workdir / "logs"
    logs.mkdir()
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:  # runs last-registered first: processes, app, database, vhost
        if args.keep:
            cleanup.callback(console.print, f"[dim]logs kept in {logs}[/]")
        else:
            cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        broker_url = cleanup.enter_context(private_vhost(BROKER_URL, f"fairlane-soak-{run_id}"))
        database = f"fairlane_soak_{run_id}"
        ledger_url = cleanup.enter_context(private_database(PG_ADMIN_URL, database))
        settings = fairlane_settings(args, ledger_url, broker_url, workdir)
        os.environ.update(settings | {"BENCH_SOAK_QUEUE": QUEUE, "BENCH_REPORT": str(workdir / "report.log")})
        print_header(args, run_id, settings)

        import fairlane

        app = fairlane.configure(fairlane.load_settings())  # migrates the ledger before any process starts
        cleanup.callback(app.close)
        import _soak_actors

        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
        }
        deployment = Deployment(env, "_soak_actors", logs)
        cleanup.callback(deployment.close)
        servers = start_deployment(deployment, app, args)

        sent_jobs = SentJobs()
        sampler = Sampler(deployment, app, ledger_url, database, Reports(workdir / "report.log"))
        cleanup.callback(sampler.close)
        producer = Producer(_soak_actors, app, sent_jobs, args.rate, args.tenants, args.seed)
        tracker = Tracker(app, ledger_url, sent_jobs)
        prober = Prober(servers)
        statements = StatementCounter(Ledger("postgresql", ledger_url, database))
        names = list(sampler.process_ids())
        if not sampler.autovacuum:
            console.print(
                "[yellow]autovacuum is off on this PostgreSQL server: this run vacuums its database once a "
                "minute (VACUUM (ANALYZE) after each row), as autovacuum would (its naptime is 1 min)[/]"
            )
        print_row_header(names)
        minutes: list[Minute] = []
        exited = ""
        load_started = time.monotonic()
        statements.reset()
        for thread in (producer, tracker, prober):
            thread.start()
        for minute in range(1, args.minutes + 1):
            while time.monotonic() < load_started + 60 * minute and not exited:
                time.sleep(0.5)
                exited = _exited(deployment)
            if exited:
                console.print(f"[red]{exited}: the run stops here[/]")
                break
            minutes.append(sampler.take(minute, sent_jobs))
            print_row(minutes[-1], names)

        producer.stop()
        ending = finish(deployment, sampler, sent_jobs, exited)
        stats = statements.read(sum(sent_jobs.sent.values()))
        tracker.stop()
        prober.stop()

        console.print()
        if minutes:
            warm = 5 if args.minutes >= 10 else 1
            baseline = next((sample for sample in minutes if sample.minute == warm), minutes[0])
            console.print(summary_table(minutes, baseline, names))
            console.print(
                "[dim]change: last minute vs the baseline; trend: the least-squares line through every "
                "minute from the baseline on, its rise over that span as a share of the mean. Verdict "
                f"ok: both within the criterion (RSS {RSS_CRITERION * 100:.0f}%, p99 {P99_FLAT * 100:.0f}%, "
                f"the rest {FLAT * 100:.0f}%).[/]"
            )
        console.print(outcome_table(sent_jobs))
        print_findings(sent_jobs, tracker, prober, sampler, ending, _soak_actors.CRON_EVERY_SECONDS)
        print_statements(stats, statements.unavailable)
        print_log_problems(logs)
    console.print(f"[dim]total {time.monotonic() - started:.0f}s, cleaned up[/]")
    return 0


def start_deployment(
    deployment: Deployment, app: Any, args: argparse.Namespace
) -> dict[str, tuple[int, int]]:
    """Start two schedulers and the worker tree, each with metrics and health servers; wait until a
    scheduler leads and every worker process heartbeats. Returns the servers' ports by process."""
    from fairlane.ledger.workers import WorkerStore

    servers: dict[str, tuple[int, int]] = {}
    for index in range(2):
        metrics, health = servers[f"s{index}"] = (free_port(), free_port())
        deployment.start_scheduler(METRICS_PORT=str(metrics), HEALTH_PORT=str(health))
    wait_for(lambda: deployment.leader() is not None, STARTUP, "a scheduler leads")
    metrics, health = servers["sup"] = (free_port(), free_port())
    deployment.start_workers(args.processes, args.threads, METRICS_PORT=str(metrics), HEALTH_PORT=str(health))
    workers = WorkerStore(app.engine)
    wait_for(
        lambda: workers.alive_count(app.settings.heartbeat_timeout) >= args.processes,
        STARTUP,
        "every worker process heartbeats",
    )
    return servers


def finish(deployment: Deployment, sampler: Sampler, sent_jobs: SentJobs, exited: str) -> Ending:
    """Let every job sent reach its final state (up to :data:`SETTLE` s), read what the ledger
    still holds, and stop the processes with SIGTERM as Kubernetes would."""
    settle_started = time.monotonic()
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not sent_jobs.outstanding, SETTLE, "every job final")
    settled_in = time.monotonic() - settle_started
    sampler.read_reports()  # the settling's runs: delayed and cron jobs
    left = sampler.monitor.execute(
        f"{OWN}SELECT state, count(*) FROM fairlane_jobs "
        "WHERE state NOT IN ('succeeded', 'dead', 'cancelled') GROUP BY state"
    ).fetchall()
    stuck = sampler.monitor.execute(
        f"{OWN}SELECT id, actor, tenant, lane, state, attempts, worker_id, next_run_at, dispatched_at, "
        "started_at, updated_at FROM fairlane_jobs WHERE id = ANY(%s)",
        (list(sent_jobs.outstanding)[:10],),
    ).fetchall()
    leader = deployment.leader()
    stops = []
    for name, process in _processes(deployment):
        if process is leader:
            name += " (leader)"
        clock = time.monotonic()
        try:
            deployment.kill_tree(process, signal.SIGTERM)
            stops.append(f"{name} exit {process.returncode} in {time.monotonic() - clock:.1f} s")
        except subprocess.TimeoutExpired:
            stops.append(f"{name} still running 60 s after SIGTERM (killed)")
    return Ending(settled_in, dict(left), stuck, stops, exited)


def _processes(deployment: Deployment) -> list[tuple[str, subprocess.Popen[bytes]]]:
    assert deployment.workers is not None
    schedulers = [(f"scheduler s{index}", process) for index, process in enumerate(deployment.schedulers)]
    return [("worker tree", deployment.workers), *schedulers]


def _exited(deployment: Deployment) -> str:
    """Which process of the deployment has exited (empty if none)."""
    for name, process in _processes(deployment):
        if process.poll() is not None:
            return f"{name} exited with {process.returncode}"
    return ""


def print_findings(
    sent_jobs: SentJobs, tracker: Tracker, prober: Prober, sampler: Sampler, ending: Ending, cron_every: int
) -> None:
    """Lost and stuck jobs, refusals, delays, cron, probes, leftovers and the processes' stop."""
    sent = sum(sent_jobs.sent.values())
    lost = sum(count for (_kind, state), count in sent_jobs.outcomes.items() if state == "lost")
    wrong = sum(
        count
        for (kind, state), count in sent_jobs.outcomes.items()
        if state not in ("lost", KINDS[kind].expected)
    )
    stuck = len(sent_jobs.outstanding)
    verdict = "[green]all as expected[/]" if lost + wrong + stuck == 0 else "[red]NOT as expected[/]"
    console.print(
        f"jobs sent {sent:,}: lost {lost:,}, other final state {wrong:,}, stuck {stuck:,} after "
        f"{ending.settled_in:.0f} s of settling · {verdict}"
    )
    if sent_jobs.outstanding:
        stuck_kinds = Counter(
            f"{tracked.kind} ({'seen' if tracked.seen else 'never seen'})"
            for tracked in sent_jobs.outstanding.values()
        )
        console.print(f"stuck: {dict(stuck_kinds)}; ledger rows of up to 10:")
        for row in ending.stuck:
            console.print(f"  {row}", markup=False, highlight=False)
    console.print(
        f"producer errors: {dict(sent_jobs.errors) or 0} · not sent, the producer more than 1 s behind: "
        f"{sent_jobs.behind:,} · tracker errors: {dict(tracker.errors) or 0}"
    )
    lateness = sampler.delayed_lateness
    console.print(
        f"delayed jobs: {sampler.early_delayed} started before their time; start after it p50 / p99 "
        f"{_cell(percentile(lateness, 0.5) * 1000 if lateness else None, 0)} / "
        f"{_cell(percentile(lateness, 0.99) * 1000 if lateness else None, 0)} ms"
    )
    console.print(f"cron runs: {sampler.cron_runs} (one fire every {cron_every} s)")
    console.print(
        f"probes: {prober.probes:,}, failed {sum(prober.failures.values()):,}"
        + "".join(f"\n  {count}x {failure}" for failure, count in prober.failures.most_common(5))
    )
    console.print(f"non-final rows left in the ledger (any job, cron included): {ending.left or 0}")
    console.print(f"stop with SIGTERM: {'; '.join(ending.stops)}")
    if ending.exited:
        console.print(f"[red]{ending.exited} during the run[/]")


def print_statements(stats: StatementStats | None, unavailable: str | None) -> None:
    """The statements PostgreSQL spent the most time executing, from the load's start to the end
    of settling, per job sent."""
    if stats is None:
        console.print(f"PostgreSQL statements: {unavailable}")
        return
    own = StatementStats(
        stats.jobs, [each for each in stats.statements if each.query.startswith(OWN.strip())]
    )
    stats = StatementStats(stats.jobs, [each for each in stats.statements if each not in own.statements])
    total_ms = sum(statement.calls * statement.mean_ms for statement in stats.statements)
    own_ms = sum(statement.calls * statement.mean_ms for statement in own.statements)
    console.print(
        f"PostgreSQL statements of fairlane (pg_stat_statements, load and settling): {stats.calls:,} calls, "
        f"{stats.per_job:.2f} per job sent, {total_ms / 1000:,.1f} s executing (this script's own reads: "
        f"{own.calls:,} calls, {own_ms / 1000:,.1f} s); top {TOP_STATEMENTS} by time:"
    )
    console.print(
        f"  {'time':>5}  {'calls/job':>9}  {'mean ms':>8}  query (first 90 characters)", highlight=False
    )
    by_time = sorted(
        stats.statements, key=lambda statement: statement.calls * statement.mean_ms, reverse=True
    )
    for statement in by_time[:TOP_STATEMENTS]:
        console.print(
            f"  {statement.calls * statement.mean_ms / max(total_ms, 1e-9):5.0%}  "
            f"{statement.calls / max(stats.jobs, 1):9.3f}  {statement.mean_ms:8.3f}  {statement.query[:90]}",
            markup=False,
            highlight=False,
        )


def print_log_problems(logs: Path) -> None:
    """The processes' warnings and errors, the mix's deliberate failures counted apart."""
    deliberate = 0
    others: list[str] = []
    for path in sorted(logs.glob("*.log")):
        previous = ""
        for line in problem_lines(path):
            follows_deliberate = line.startswith("Traceback") and any(mark in previous for mark in DELIBERATE)
            if follows_deliberate or any(mark in line for mark in DELIBERATE):
                deliberate += 1
            else:
                others.append(f"{path.stem}: {line}")
            previous = line
    console.print(
        f"process logs: {deliberate:,} warning, error and traceback lines of the mix's deliberate failures; "
        f"{len(others):,} other warning, error and traceback lines" + (":" if others else "")
    )
    for count, line in summarize(others)[:10]:
        console.print(f"  {count}x {line}", style="yellow", markup=False, highlight=False)


if __name__ == "__main__":
    sys.exit(main())
