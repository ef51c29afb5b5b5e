"""fairlane vs plain Dramatiq: no-op throughput, send rates, CPU and statements per job, latency; one table.

    python bench/latency_throughput.py [--drain-jobs N] [--jobs N] [--many-jobs N] [--reps R]
                                       [--samples S] [--budget SECONDS] [--ledger postgresql|sqlite]

Both systems run in the same run, on the same machine, against the same RabbitMQ:

* **fairlane**: ``python -m fairlane.cli worker --processes P --threads 8 _fairlane_actors``,
  ledger in a fresh PostgreSQL database ``fairlane_bench_<random>`` (created here, dropped at
  the end) or, with ``--ledger sqlite``, a temporary SQLite file. The sender is this process,
  through the public API: ``send()`` (commits the job's ledger row; if the queue is idle it
  also publishes it with a RabbitMQ confirm, otherwise the worker's dispatcher admits it) and
  ``send_many()``.
* **Dramatiq** 2.x: ``python -m dramatiq _dramatiq_actors:broker --processes P --threads 8``, a
  stock ``RabbitmqBroker`` with Dramatiq's default middleware. Its ``send()`` is measured as
  Dramatiq ships it (``confirm_delivery=False``: returns before RabbitMQ has the message) and
  with publisher confirms (``confirm_delivery=True``: returns once RabbitMQ has it, which is
  what fairlane's ``send()`` guarantees, so that is what the send-rate ratio compares with).

Each system has its own queue named after this run (``flbench_<id>`` / ``dqbench_<id>``);
every RabbitMQ queue the run created is deleted at the end. Workers are real subprocesses,
configured through ``FAIRLANE_*`` / ``BENCH_*`` environment variables.

Side channel: the no-op actor (identical for both systems) takes ``(tag, sent)``, where
``sent`` is ``time.time()`` captured by the sender just before ``send()``, and appends one line
``tag sent start end pid`` to a report file (``O_APPEND``, one ``write`` per line) — the same
method for both systems, working across processes.

Measurements, per worker size (1 x 8, then 2 x 8 processes x threads; the run does 3, 2, 1 in
that order, since both systems' send-loop workers must be gone before a backlog is preloaded):

1. **Drain of a preloaded backlog** (the headline throughput). With no worker running, N
   (``--drain-jobs``, 5000) no-op jobs are submitted for 4 tenants (fairlane: ``send_many`` of
   up to 1,000 jobs with ``tenant=T0..T3``, N/4 per tenant, tenants taking turns chunk by chunk;
   Dramatiq: a plain ``send()`` loop, where a tenant is no more than an argument). Then the
   worker starts; throughput = jobs/s between the 10th and 90th percentile of job completions
   (start-up and tail excluded, as ``bench/fairness.py``'s ``throughput`` scenario). CPU per job
   in the same window: ``/proc`` is sampled every 25 ms while the backlog drains (worker
   process tree, PostgreSQL backends of the bench database, RabbitMQ's ``beam.smp``) and the
   CPU between the first sample after the 10th-percentile completion and the last before the
   90th is divided by the jobs completed between those two samples (when a tiny run leaves
   fewer than two samples in that window: over the whole drain, start-up included). A note
   below the table names 2 x 8 drains where a worker process ran its first job only after the
   10th-percentile completion. The sender is idle while the backlog drains; what submitting
   cost (its rate, and CPU of sender thread, PostgreSQL and RabbitMQ) is shown as "preload",
   and "preload + drain" adds the two per job. At 1 x 8 the fairlane database's
   ``pg_stat_statements`` is reset right before the worker starts and read after it stopped:
   statements per drained job (worker start-up and shutdown included), and the top statements
   by calls are listed below the table; the preload is counted apart.
   Median of ``--reps`` (3), systems alternating (D, F, F, D, ...).
2. **One sender calling send() in a loop**, with idle, warmed workers of both systems running:
   one thread sends N (``--jobs``, 5000) no-op jobs as fast as it can (but stops after
   ``--max-send-seconds``, 30); throughput = jobs sent / (last actor end - first ``sent``); send
   rate = jobs / time the loop took. At 1 x 8 this also runs with Dramatiq's publisher
   confirms. Median of ``--reps``, alternating.
3. **Idle latency** (1 x 8 only): one job at a time — send, wait until it reports, let the worker
   settle 10 ms, repeat — ``--samples`` (200) times per system, alternating systems. Latency =
   actor start - ``sent``; p50 and p99 (nearest rank).

Last, with no worker running: fairlane ``send_many`` of ``--many-jobs`` (10,000) jobs in chunks
of 1,000 (tenant T0..T3 in turn); jobs/s accepted, median of ``--reps``. These jobs stay in the
ledger until its database is dropped.

A repetition after the first is skipped when it would push the run past ``--budget`` seconds
(420) without leaving room for the first repetition of every step still to come; the table says
how many ran. Every first repetition runs.

"Where time goes" rows (medians): the idle ``send()`` call and, for fairlane, its steps, timed by
wrapping methods of this process's app: the ledger accept (one statement) and, when the queue
was idle, the publish with RabbitMQ's confirm; ``send_many``'s steps per call (insert of up to
1,000 rows, the admission round, its publish); how many of a send loop's fairlane sends took
the idle fast path; CPU per job of the send-loop runs: worker processes, the sending thread,
the ledger's PostgreSQL backends and RabbitMQ (``beam.smp``; machine-wide, so it includes
anyone else's traffic), read from ``/proc`` before and after each repetition. With C cores,
C / (total CPU per job) bounds throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import psycopg
from rich.console import Console
from rich.table import Table

BENCH_DIR = Path(__file__).resolve().parent
BROKER_URL = os.environ.get("FAIRLANE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
THREADS = 8
SYSTEMS = ("dramatiq", "fairlane")
#: Senders of the send-loop runs; Dramatiq with publisher confirms runs at 1 x 8 only.
CONFIRMED = "dramatiq-confirm"
LABEL = {"dramatiq": "Dramatiq", CONFIRMED: "Dramatiq+confirms", "fairlane": "fairlane"}
WORKER_OF = {"dramatiq": "dramatiq", CONFIRMED: "dramatiq", "fairlane": "fairlane"}
FAIRLANE_LANES = ("urgent", "high", "normal", "low")
TENANTS = 4
CHUNK = 1000
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Seconds between CPU samples while a backlog drains, and between scans for new processes.
SAMPLE_INTERVAL = 0.025
DISCOVER_INTERVAL = 0.2
#: How many statements to list below the table.
TOP_STATEMENTS = 8
NO_PG_STAT = "n/a (load pg_stat_statements)"

console = Console(width=max(Console().width, 132))


# -- the side channel -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Record:
    """One finished bench job as its actor reported it."""

    sent: float
    start: float
    end: float
    pid: int


class Reports:
    """Reads the append-only report file the bench actors write, grouping lines by tag."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()
        self._offset = 0
        self._partial = b""
        self.by_tag: dict[str, list[Record]] = defaultdict(list)

    def poll(self) -> None:
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            tag, sent, start, end, pid = line.decode().split()
            self.by_tag[tag].append(Record(float(sent), float(start), float(end), int(pid)))

    def wait(self, tag: str, count: int, timeout: float, interval: float = 0.001) -> list[Record]:
        """Wait until ``count`` jobs tagged ``tag`` have reported; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if len(self.by_tag[tag]) >= count:
                return self.by_tag[tag]
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{tag}: {len(self.by_tag[tag])} of {count} jobs reported in {timeout:.0f}s"
                )
            time.sleep(interval)


# -- CPU accounting from /proc ----------------------------------------------------------------------

#: Process kinds whose CPU is counted, in table order.
CPU_KINDS = ("workers", "postgresql", "rabbitmq")


def proc_stat(pid: int) -> tuple[str, int, float] | None:
    """(command name, parent pid, CPU seconds) of a process, or None if it is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    close = text.rindex(")")
    fields = text[close + 2 :].split()
    return text[text.index("(") + 1 : close], int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class CpuMeter:
    """CPU seconds used so far per process kind: a worker's process tree (``workers``), the
    PostgreSQL backends connected to the bench database (``postgresql``, found by their process
    title) and RabbitMQ (``rabbitmq``: ``beam.smp``, machine-wide).

    :meth:`discover` scans all of ``/proc`` (a few ms); :meth:`read` re-reads only the processes
    found so far, cheap enough to call every few tens of ms. A process that exits keeps the CPU it
    had when last read and one found later counts from its start, so every total only grows and
    the difference of two readings is the CPU used in between (to the clock tick).
    """

    def __init__(self, worker_root: int | None, database: str | None) -> None:
        self.worker_root = worker_root
        self.database = database
        self._cpu: dict[str, dict[int, float]] = {kind: {} for kind in CPU_KINDS}
        self.discover()

    def discover(self) -> None:
        stats = {pid: stat for pid in _all_pids() if (stat := proc_stat(pid)) is not None}
        found: dict[str, list[int]] = {kind: [] for kind in CPU_KINDS}
        if self.worker_root is not None:
            children: dict[int, list[int]] = defaultdict(list)
            for pid, (_name, ppid, _cpu) in stats.items():
                children[ppid].append(pid)
            todo = [self.worker_root]
            while todo:
                pid = todo.pop()
                if pid in stats:
                    found["workers"].append(pid)
                    todo.extend(children[pid])
        for pid, (name, _ppid, _cpu) in stats.items():
            if name == "beam.smp":
                found["rabbitmq"].append(pid)
            elif name == "postgres" and self.database and self.database in _cmdline(pid).split():
                found["postgresql"].append(pid)
        for kind, pids in found.items():
            for pid in pids:
                self._cpu[kind][pid] = stats[pid][2]

    def read(self) -> dict[str, float]:
        for cpus in self._cpu.values():
            for pid in cpus:
                if (stat := proc_stat(pid)) is not None:
                    cpus[pid] = stat[2]
        return {kind: sum(cpus.values()) for kind, cpus in self._cpu.items()}


def _cpu_between(before: dict[str, float], after: dict[str, float], jobs: int) -> dict[str, float]:
    """CPU seconds per job per kind between two :meth:`CpuMeter.read` results."""
    return {kind: (after[kind] - before[kind]) / max(jobs, 1) for kind in CPU_KINDS}


# -- environment: database, queues, workers ---------------------------------------------------------


@dataclasses.dataclass
class Ledger:
    kind: str
    url: str
    database: str | None = None
    version: str = ""
    #: Whether the server runs autovacuum (off on some CI machines).
    autovacuum: bool = True

    def vacuum(self) -> None:
        """``VACUUM ANALYZE`` the ledger when the server's autovacuum is off: what autovacuum
        does on any real deployment (fairlane's migrations tune it for the jobs table). Without
        it each drain leaves 20,000+ dead row versions, and the next drain's PostgreSQL CPU per
        job grows (0.12 → 0.30 ms over four 30,000-job drains in one probe)."""
        if self.database is None or self.autovacuum:
            return
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute("VACUUM ANALYZE")


@contextlib.contextmanager
def ledger_for(kind: str, run_id: str, workdir: Path) -> Iterator[Ledger]:
    if kind == "sqlite":
        yield Ledger("sqlite", f"sqlite:///{workdir / 'ledger.db'}", version=_sqlite_version())
        return
    database = f"fairlane_bench_{run_id}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        version = " ".join(
            f"{name}={connection.execute(f'SHOW {name}').fetchone()[0]}"  # type: ignore[index]
            for name in ("server_version", "synchronous_commit", "fsync", "autovacuum")
        )
        connection.execute(f'CREATE DATABASE "{database}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield Ledger("postgresql", f"{base}/{database}", database, version, "autovacuum=off" not in version)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _sqlite_version() -> str:
    import sqlite3

    return sqlite3.sqlite_version


def rabbitmq_version() -> str:
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        version = connection._impl.server_properties.get("version", b"?")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        connection.close()


def delete_queues(names: list[str]) -> list[str]:
    """Delete RabbitMQ queues (missing ones are fine); returns the ones that could not be deleted."""
    failed = []
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        channel = connection.channel()
        for name in names:
            try:
                channel.queue_delete(queue=name)
            except pika.exceptions.ChannelClosedByBroker as error:
                if error.reply_code != 404:
                    failed.append(name)
                channel = connection.channel()
    finally:
        connection.close()
    return failed


@dataclasses.dataclass
class WorkerProcess:
    system: str
    processes: int
    popen: subprocess.Popen[bytes]
    log: Path

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.system} worker exited with {self.popen.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def problem_lines(log: Path) -> list[str]:
    """Lines of a process's log that report errors or warnings (worker shutdown chatter excluded)."""
    lines = log.read_text(errors="replace").splitlines()
    wanted = ("ERROR", "WARNING", "Traceback", "level=error", "level=warning")
    ignored = ("Killing worker process", "Stopping worker process")
    return [
        line[:300]
        for line in lines
        if any(word in line for word in wanted) and not any(word in line for word in ignored)
    ]


def problems_in(worker: WorkerProcess) -> list[str]:
    """Lines of a worker's log that report errors or warnings, each prefixed with the worker."""
    return [f"{worker.system} {worker.processes}x{THREADS}: {line}" for line in problem_lines(worker.log)]


def summarize(lines: list[str]) -> list[tuple[int, str]]:
    """Distinct log lines (timestamps, job ids and numbers blanked) with counts, most frequent first."""
    counts: dict[str, int] = defaultdict(int)
    for line in lines:
        source, _, text = line.partition(": ")
        text = re.sub(r"\d{4}-\d\d-\d\d[ T][\d:,.]+ ?", "", text)
        text = re.sub(r"\d+", "N", re.sub(r"\b[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\b", "ID", text))
        counts[f"{source}: {text}"[:240]] += 1
    return sorted(((count, line) for line, count in counts.items()), reverse=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (as of now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_worker(
    system: str, processes: int, env: dict[str, str], workdir: Path, name: str = "loop"
) -> WorkerProcess:
    """Start a worker of ``system``; ``name`` keeps its log and metrics directory apart from others'."""
    if system == "fairlane":
        command = [sys.executable, "-m", "fairlane.cli", "worker", "--processes", str(processes)]
        command += ["--threads", str(THREADS), "--shutdown-timeout", "20", "_fairlane_actors"]
    else:
        command = [sys.executable, "-m", "dramatiq", "_dramatiq_actors:broker", "--processes", str(processes)]
        command += ["--threads", str(THREADS), "--path", str(BENCH_DIR), "--worker-shutdown-timeout", "20000"]
    log = workdir / f"worker-{system}-{processes}-{name}.log"
    if system == "fairlane":
        # Metrics and health endpoints stay on, as in production, on ports no one else uses.
        env = env | {
            "FAIRLANE_METRICS_PORT": str(free_port()),
            "FAIRLANE_HEALTH_PORT": str(free_port()),
            "FAIRLANE_METRICS_DIR": str(workdir / f"metrics-{processes}-{name}"),
        }
    with log.open("wb") as output:
        popen = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    return WorkerProcess(system, processes, popen, log)


# -- pg_stat_statements -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Statement:
    calls: int
    mean_ms: float
    query: str


@dataclasses.dataclass(frozen=True)
class StatementStats:
    """What ``pg_stat_statements`` counted in the bench database for ``jobs`` jobs."""

    jobs: int
    statements: list[Statement]

    @property
    def calls(self) -> int:
        return sum(statement.calls for statement in self.statements)

    @property
    def per_job(self) -> float:
        return self.calls / max(self.jobs, 1)


class StatementCounter:
    """``pg_stat_statements`` of the fairlane bench database: reset it, later read what ran since.

    Only this database's entries are reset and read (the extension is cluster-wide); this
    counter's own statements are left out. ``unavailable`` says why there is nothing to count
    (SQLite ledger, or the extension not loaded through ``shared_preload_libraries``).
    """

    def __init__(self, ledger: Ledger) -> None:
        self.url = ledger.url
        self.unavailable: str | None = None
        if ledger.database is None:
            self.unavailable = "n/a (SQLite ledger)"
            return
        try:
            with psycopg.connect(self.url, autocommit=True) as connection:
                connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                connection.execute("SELECT 1 FROM pg_stat_statements LIMIT 1")
        except psycopg.Error:
            self.unavailable = NO_PG_STAT

    def reset(self) -> None:
        if self.unavailable:
            return
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(
                "SELECT pg_stat_statements_reset(0, oid, 0) FROM pg_database "
                "WHERE datname = current_database()"
            )

    def read(self, jobs: int) -> StatementStats | None:
        if self.unavailable:
            return None
        with psycopg.connect(self.url, autocommit=True) as connection:
            rows = connection.execute(
                "SELECT calls, mean_exec_time, query FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND query NOT LIKE '%pg_stat_statements%' ORDER BY calls DESC, total_exec_time DESC"
            ).fetchall()
        return StatementStats(
            jobs, [Statement(int(c), float(m), " ".join(str(q).split())) for c, m, q in rows]
        )


# -- measurements -----------------------------------------------------------------------------------

Send = Callable[[str, float], Any]


def warm_up(send: Send, reports: Reports, worker: WorkerProcess, tag: str, timeout: float = 90.0) -> None:
    """Send batches of jobs until every worker process has run some (and a few hundred ran)."""
    deadline = time.monotonic() + timeout
    sent = 0
    while True:
        worker.check_alive()
        for _ in range(4 * THREADS * worker.processes):
            send(tag, time.time())
            sent += 1
        try:
            records = reports.wait(tag, sent, timeout=10)
        except TimeoutError:
            records = reports.by_tag[tag]
        if len({record.pid for record in records}) >= worker.processes and sent >= 200:
            return
        if time.monotonic() > deadline:
            tail = worker.log.read_text(errors="replace")[-3000:]
            raise TimeoutError(f"{worker.system} workers did not all start within {timeout:.0f}s:\n{tail}")
        time.sleep(0.2)


class PhaseTimer:
    """Times named steps of the sender's fairlane calls by wrapping methods of live objects.

    Nothing in ``src/`` changes, and the wrappers cost well under a microsecond per call. Steps
    are recorded only while ``recording`` is set.
    """

    def __init__(self) -> None:
        self.recording = False
        self.durations: dict[str, list[float]] = defaultdict(list)

    def wrap(self, owner: Any, method: str, phase: str) -> bool:
        """Time ``owner.method`` as ``phase``; False (nothing wrapped) if there is no such method."""
        original = getattr(owner, method, None)
        if not callable(original):
            return False

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.recording:
                return original(*args, **kwargs)
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.durations[phase].append(time.perf_counter() - began)

        setattr(owner, method, timed)
        return True

    @contextlib.contextmanager
    def recorded(self) -> Iterator[dict[str, list[float]]]:
        """Record the steps made inside the block into the dict it yields (filled at the end)."""
        into: dict[str, list[float]] = {}
        self.durations = defaultdict(list)
        self.recording = True
        try:
            yield into
        finally:
            self.recording = False
            into.update(self.durations)
            self.durations = defaultdict(list)


#: Steps of fairlane's send() and send_many(), by the name they are recorded under.
FAIRLANE_STEPS = {
    "accept": "ledger accept (one statement)",
    "publish": "publish (no confirm: the committed row is the promise), idle fast path",
    "accept_many": "ledger insert of up to 1,000 jobs",
    "admit": "admission round (ledger)",
    "publish_batch": "publish of the round (AMQP transaction)",
}


def wrap_fairlane_steps(timer: PhaseTimer, app: Any) -> list[str]:
    """Wrap the sender app's step methods; returns the ones missing (not timed)."""
    targets = {
        "accept": (app.admission, "accept"),
        "publish": (app.broker, "_publish_unconfirmed"),
        "accept_many": (app.admission, "accept_many"),
        "admit": (app.admission, "admit"),
        "publish_batch": (app.dispatcher, "publish_batch"),
    }
    return [
        f"{type(owner).__name__}.{method}"
        for step, (owner, method) in targets.items()
        if not timer.wrap(owner, method, step)
    ]


@dataclasses.dataclass
class LatencyResult:
    latencies: list[float] = dataclasses.field(default_factory=list)
    send_calls: list[float] = dataclasses.field(default_factory=list)
    pickups: list[float] = dataclasses.field(default_factory=list)
    phases: dict[str, list[float]] = dataclasses.field(default_factory=dict)


def measure_latency(
    senders: dict[str, Send], reports: Reports, samples: int, timer: PhaseTimer
) -> dict[str, LatencyResult]:
    results = {system: LatencyResult() for system in SYSTEMS}
    with timer.recorded() as phases:
        timer.recording = False  # on only around fairlane's send() calls below
        for index in range(samples):
            order = SYSTEMS if index % 2 == 0 else SYSTEMS[::-1]
            for system in order:
                tag = f"lat-{system}"
                timer.recording = system == "fairlane"
                before = time.time()
                senders[system](tag, before)
                after = time.time()
                timer.recording = False
                record = reports.wait(tag, index + 1, timeout=30)[index]
                results[system].latencies.append(record.start - record.sent)
                results[system].send_calls.append(after - before)
                results[system].pickups.append(record.start - after)
                time.sleep(0.010)
    results["fairlane"].phases = phases
    return results


@dataclasses.dataclass
class ThroughputRun:
    """One send-loop repetition; CPU figures are seconds per job."""

    jobs: int
    jobs_per_s: float
    send_jobs_per_s: float
    worker_cpu: float
    sender_cpu: float
    ledger_cpu: float
    rabbitmq_cpu: float
    #: fairlane: the steps of its sends (see FAIRLANE_STEPS).
    steps: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    @property
    def total_cpu(self) -> float:
        """CPU per job of workers, sender, ledger and RabbitMQ together."""
        return self.worker_cpu + self.sender_cpu + self.ledger_cpu + self.rabbitmq_cpu

    @property
    def fast_path_share(self) -> float:
        """Share of the sends that published their job at once (fairlane's idle fast path)."""
        return len(self.steps.get("publish", [])) / max(self.jobs, 1)


def measure_throughput(
    send: Send,
    reports: Reports,
    worker: WorkerProcess,
    database: str | None,
    tag: str,
    jobs: int,
    max_send_seconds: float,
    timer: PhaseTimer | None = None,
) -> ThroughputRun:
    """One sender thread calls ``send()`` in a loop while the worker runs the jobs."""
    worker.check_alive()
    meter = CpuMeter(worker.popen.pid, database)
    cpu_before = meter.read()
    sender_before = time.thread_time()
    with contextlib.ExitStack() as recording:
        steps = recording.enter_context(timer.recorded()) if timer else {}
        first = time.time()
        send(tag, first)
        sent, stop_at = 1, first + max_send_seconds
        while sent < jobs:
            now = time.time()
            if now > stop_at:
                break
            send(tag, now)
            sent += 1
        sent_all = time.time()
    jobs = sent
    sender_cpu = time.thread_time() - sender_before
    records = reports.wait(tag, jobs, timeout=60 + jobs / 20, interval=0.005)
    last = max(record.end for record in records)
    meter.discover()
    cpu = _cpu_between(cpu_before, meter.read(), jobs)
    return ThroughputRun(
        jobs=jobs,
        jobs_per_s=jobs / (last - first),
        send_jobs_per_s=jobs / (sent_all - first),
        worker_cpu=cpu["workers"],
        sender_cpu=sender_cpu / jobs,
        ledger_cpu=cpu["postgresql"],
        rabbitmq_cpu=cpu["rabbitmq"],
        steps=steps,
    )


@dataclasses.dataclass
class DrainRun:
    """One drain repetition: a backlog preloaded with no worker running, then drained."""

    jobs: int
    #: Jobs/s between the 10th and 90th percentile of completions.
    jobs_per_s: float
    #: CPU seconds per job, per kind, over the same window (the sender is idle then).
    cpu: dict[str, float]
    #: Jobs/s the preload submitted, and its CPU per job (sender thread + PostgreSQL + RabbitMQ).
    preload_jobs_per_s: float
    preload_cpu: float
    #: A worker process ran its first job only after the 10th-percentile completion (or never).
    late_start: bool
    statements: StatementStats | None = None
    preload_statements: StatementStats | None = None

    @property
    def total_cpu(self) -> float:
        return sum(self.cpu.values())


def tenant_chunks(jobs: int) -> list[tuple[str, int]]:
    """N/4 jobs per tenant T0..T3 in chunks of up to 1,000, the tenants taking turns chunk by chunk."""
    left = [jobs // TENANTS + (1 if index < jobs % TENANTS else 0) for index in range(TENANTS)]
    chunks = []
    while any(left):
        for index in range(TENANTS):
            if left[index]:
                count = min(CHUNK, left[index])
                chunks.append((f"T{index}", count))
                left[index] -= count
    return chunks


def preload(system: str, actors: dict[str, Any], tag: str, jobs: int) -> None:
    """Submit the backlog: fairlane ``send_many`` per tenant chunk, Dramatiq a plain ``send()`` loop."""
    if system == "fairlane":
        for tenant, count in tenant_chunks(jobs):
            actors["fairlane"].send_many([(tag, time.time())] * count, tenant=tenant)
    else:
        send = actors["dramatiq"].send
        for _ in range(jobs):
            send(tag, time.time())


def drain_window(ends: list[float]) -> tuple[float, float, float]:
    """(jobs/s, start, end) between the 10th and 90th percentile of completion times."""
    ends = sorted(ends)
    low, high = len(ends) // 10, len(ends) * 9 // 10
    span = ends[high] - ends[low]
    return ((high - low) / span if span > 0 else math.nan), ends[low], ends[high]


def measure_drain(
    system: str,
    processes: int,
    tag: str,
    jobs: int,
    actors: dict[str, Any],
    reports: Reports,
    database: str | None,
    start: Callable[[], WorkerProcess],
    statements: StatementCounter | None,
    problems: list[str],
) -> DrainRun:
    """Preload ``jobs`` with no worker running, start one, sample CPU until the backlog drained.

    With ``statements``, pg_stat_statements counts the preload and, separately, the worker's
    whole life (reset right before it starts, read after it stopped).
    """
    meter = CpuMeter(None, database)
    if statements:
        statements.reset()
    cpu_before, sender_before, began = meter.read(), time.thread_time(), time.perf_counter()
    preload(system, actors, tag, jobs)
    preload_seconds, sender_cpu = time.perf_counter() - began, time.thread_time() - sender_before
    time.sleep(0.5)  # RabbitMQ may still be taking unconfirmed messages in
    meter.discover()
    preload_cpu = (sender_cpu + sum(_cpu_between(cpu_before, meter.read(), 1).values())) / jobs
    preload_statements = statements.read(jobs) if statements else None
    if statements:
        statements.reset()

    worker = start()
    samples: list[tuple[float, dict[str, float]]] = []
    try:
        meter = CpuMeter(worker.popen.pid, database)
        deadline = time.monotonic() + 60 + jobs / 20
        next_discovery = time.monotonic() + DISCOVER_INTERVAL
        while True:
            if time.monotonic() >= next_discovery:
                meter.discover()
                next_discovery = time.monotonic() + DISCOVER_INTERVAL
            samples.append((time.time(), meter.read()))
            reports.poll()
            if len(reports.by_tag[tag]) >= jobs:
                break
            worker.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tag}: {len(reports.by_tag[tag])} of {jobs} jobs drained in time")
            time.sleep(SAMPLE_INTERVAL)
        meter.discover()
        samples.append((time.time(), meter.read()))
    finally:
        worker.stop()
        problems.extend(problems_in(worker))
    drained_statements = statements.read(jobs) if statements else None

    records = reports.by_tag[tag]
    ends = [record.end for record in records]
    rate, low, high = drain_window(ends)
    first_end: dict[int, float] = {}
    for record in records:
        first_end[record.pid] = min(first_end.get(record.pid, math.inf), record.end)
    late = len(first_end) < processes or max(first_end.values()) > low
    # CPU between the first sample after the 10th-percentile completion and the last before the
    # 90th; with too few samples in between (tiny runs), over the whole drain, start-up included.
    inside = [index for index, (at, _cpu) in enumerate(samples) if low <= at <= high] or [0]
    (t_first, cpu_first), (t_last, cpu_last) = samples[inside[0]], samples[inside[-1]]
    window_jobs = sum(1 for end in ends if t_first < end <= t_last)
    if not window_jobs:
        (_, cpu_first), (_, cpu_last), window_jobs = samples[0], samples[-1], jobs
    return DrainRun(
        jobs=jobs,
        jobs_per_s=rate,
        cpu=_cpu_between(cpu_first, cpu_last, window_jobs),
        preload_jobs_per_s=jobs / preload_seconds,
        preload_cpu=preload_cpu,
        late_start=late,
        statements=drained_statements,
        preload_statements=preload_statements,
    )


def measure_send_many(actor: Any, tag: str, jobs: int) -> float:
    """fairlane ``send_many`` of ``jobs`` jobs in chunks of 1,000 (tenants in turn); jobs/s accepted."""
    began = time.perf_counter()
    for index, offset in enumerate(range(0, jobs, CHUNK)):
        count = min(CHUNK, jobs - offset)
        actor.send_many([(tag, time.time())] * count, tenant=f"T{index % TENANTS}")
    return jobs / (time.perf_counter() - began)


# -- the time budget --------------------------------------------------------------------------------

#: (measurement, sender or system, worker processes); processes 0 = no worker.
Step = tuple[str, str, int]


def loop_senders(processes: int) -> tuple[str, ...]:
    return ("dramatiq", CONFIRMED, "fairlane") if processes == 1 else SYSTEMS


class Budget:
    """Decides whether a repetition after the first fits in ``--budget`` seconds.

    Every first repetition runs. A later one runs only if there is still time, after it, for the
    first repetition of every step to come, each estimated from the longest run of the same step
    so far (at this worker size, else at any) or, before any, a guess.
    """

    GUESS = {"start": 20.0, "latency": 15.0, "loop": 15.0, "drain": 30.0, "many": 10.0}

    def __init__(self, seconds: float, started: float, sizes: list[int]) -> None:
        self.seconds = seconds
        self.started = started
        self.sizes = sizes
        self.durations: dict[Step, list[float]] = defaultdict(list)

    def record(self, step: Step, seconds: float) -> None:
        self.durations[step].append(seconds)

    @contextlib.contextmanager
    def timing(self, step: Step) -> Iterator[None]:
        began = time.monotonic()
        yield
        self.record(step, time.monotonic() - began)

    def estimate(self, step: Step) -> float:
        if self.durations.get(step):
            return max(self.durations[step])
        similar = [
            max(runs) for (kind, who, _), runs in self.durations.items() if runs and (kind, who) == step[:2]
        ]
        return max(similar) if similar else self.GUESS[step[0]]

    def steps_after(self, step: Step) -> list[Step]:
        """First repetitions still to come after ``step`` (in run order)."""
        kind, _, processes = step
        later: list[Step] = []
        if kind == "loop":
            later += [("drain", system, processes) for system in SYSTEMS]
        if kind in ("loop", "drain"):
            for size in self.sizes[self.sizes.index(processes) + 1 :]:
                later.append(("start", "workers", size))
                later += [("loop", sender, size) for sender in loop_senders(size)]
                later += [("drain", system, size) for system in SYSTEMS]
        return [*later, ("many", "fairlane", 0)] if kind != "many" else later

    def allows(self, step: Step) -> bool:
        needed = self.estimate(step) + sum(self.estimate(later) for later in self.steps_after(step))
        return time.monotonic() - self.started + needed <= self.seconds


# -- report -----------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _ms(value: float) -> str:
    return f"{value * 1000:.2f}"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _ratio(fairlane: float | None, dramatiq: float | None) -> str:
    if fairlane is None or dramatiq is None or not dramatiq or math.isnan(fairlane) or math.isnan(dramatiq):
        return "-"
    return f"{fairlane / dramatiq:.2f}x"


def _median(values: list[float]) -> float | None:
    values = [value for value in values if not math.isnan(value)]
    return statistics.median(values) if values else None


@dataclasses.dataclass
class Results:
    latency: dict[str, LatencyResult] = dataclasses.field(default_factory=dict)
    loops: dict[tuple[str, int], list[ThroughputRun]] = dataclasses.field(
        default_factory=lambda: defaultdict(list)
    )
    drains: dict[tuple[str, int], list[DrainRun]] = dataclasses.field(
        default_factory=lambda: defaultdict(list)
    )
    many: list[float] = dataclasses.field(default_factory=list)
    many_steps: dict[str, list[float]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    statements_unavailable: str | None = None


def build_table(results: Results, args: Any) -> Table:
    table = Table(
        title="fairlane vs Dramatiq (same RabbitMQ, same machine, same run)",
        caption="drain: jobs/s between the 10th and 90th percentile of completions, CPU over the same "
        "window; medians of the repetitions that ran; RabbitMQ CPU is machine-wide",
    )
    table.add_column("measure")
    table.add_column("Dramatiq", justify="right")
    table.add_column("fairlane", justify="right")
    table.add_column("fairlane / Dramatiq", justify="right")

    def cell(value: float | None, fmt: Callable[[float], str]) -> str:
        return "-" if value is None or math.isnan(value) else fmt(value)

    def row(
        name: str,
        dramatiq: float | None,
        fairlane: float | None,
        fmt: Callable[[float], str],
        *,
        ratio: str | None = None,
        style: str | None = None,
    ) -> None:
        ratio = _ratio(fairlane, dramatiq) if ratio is None else ratio
        table.add_row(name, cell(dramatiq, fmt), cell(fairlane, fmt), ratio, style=style)

    def reps(runs: dict[tuple[str, int], Any], who: tuple[str, ...], processes: int) -> str:
        counts = [len(runs[(system, processes)]) for system in who]
        return str(counts[0]) if len(set(counts)) == 1 else "/".join(map(str, counts))

    def drain(system: str, processes: int, pick: Callable[[DrainRun], float]) -> float | None:
        return _median([pick(run) for run in results.drains[(system, processes)]])

    def loop(sender: str, processes: int, pick: Callable[[ThroughputRun], float]) -> float | None:
        return _median([pick(run) for run in results.loops[(sender, processes)]])

    sizes = args.process_counts
    # 1. The headline: drain of a preloaded backlog, and its CPU per job.
    for processes in sizes:
        size = f"{processes}x{THREADS}"
        row(
            f"drain of a preloaded 4-tenant backlog of no-op jobs, {size}, jobs/s, "
            f"median of {reps(results.drains, SYSTEMS, processes)}",
            drain("dramatiq", processes, lambda run: run.jobs_per_s),
            drain("fairlane", processes, lambda run: run.jobs_per_s),
            _rate,
            style="bold",
        )
    for processes in sizes:
        size = f"{processes}x{THREADS}"
        kinds = {"workers": "workers", "postgresql": "PostgreSQL backends", "rabbitmq": "RabbitMQ"}
        if args.ledger != "postgresql":
            del kinds["postgresql"]
        for kind, label in kinds.items():
            row(
                f"  {size} drain, CPU ms per job: {label}",
                # Dramatiq has no database: its PostgreSQL cell is "-", not 0.
                None
                if kind == "postgresql"
                else drain("dramatiq", processes, lambda run, kind=kind: run.cpu[kind]),  # type: ignore[misc]
                drain("fairlane", processes, lambda run, kind=kind: run.cpu[kind]),  # type: ignore[misc]
                _ms,
            )
        row(
            f"  {size} drain, CPU ms per job: total (the sender is idle)",
            drain("dramatiq", processes, lambda run: run.total_cpu),
            drain("fairlane", processes, lambda run: run.total_cpu),
            _ms,
            style="bold",
        )
        row(
            f"  {size} preload, jobs/s submitted (fairlane send_many, Dramatiq send loop)",
            drain("dramatiq", processes, lambda run: run.preload_jobs_per_s),
            drain("fairlane", processes, lambda run: run.preload_jobs_per_s),
            _rate,
        )
        row(
            f"  {size} preload, CPU ms per job: sender + PostgreSQL + RabbitMQ",
            drain("dramatiq", processes, lambda run: run.preload_cpu),
            drain("fairlane", processes, lambda run: run.preload_cpu),
            _ms,
        )
        row(
            f"  {size} preload + drain, CPU ms per job: all processes, sender included",
            drain("dramatiq", processes, lambda run: run.preload_cpu + run.total_cpu),
            drain("fairlane", processes, lambda run: run.preload_cpu + run.total_cpu),
            _ms,
        )
    drained = [run.statements.per_job for run in results.drains[("fairlane", 1)] if run.statements]
    preloaded = [
        run.preload_statements.per_job for run in results.drains[("fairlane", 1)] if run.preload_statements
    ]
    unavailable = results.statements_unavailable or NO_PG_STAT
    for name, values in (
        (f"PostgreSQL statements per job, 1x{THREADS} drain (worker start to stop)", drained),
        ("  same, during the preload (send_many)", preloaded),
    ):
        value = _median(values)
        table.add_row(name, "-", unavailable if value is None else f"{value:.2f}", "")

    # 2. Sending.
    table.add_section()
    confirmed = loop(CONFIRMED, 1, lambda run: run.send_jobs_per_s)
    unconfirmed = loop("dramatiq", 1, lambda run: run.send_jobs_per_s)
    fairlane_send = loop("fairlane", 1, lambda run: run.send_jobs_per_s)
    row(
        f"send() in a loop from one thread, 1x{THREADS} running, sends/s: Dramatiq with "
        f"confirms, median of {reps(results.loops, (CONFIRMED, 'fairlane'), 1)}",
        confirmed,
        fairlane_send,
        _rate,
        style="bold",
    )
    aside = _ratio(fairlane_send, unconfirmed)
    row(
        "  same, Dramatiq without confirms (confirm_delivery=False, its default)",
        unconfirmed,
        fairlane_send,
        _rate,
        ratio=f"({aside})" if aside != "-" else aside,
    )
    row(
        f"send_many, {args.many_jobs:,} jobs in chunks of 1,000, no worker, jobs/s "
        f"(median of {len(results.many)})",
        None,
        _median(results.many),
        _rate,
        ratio="-",
    )

    # 3. Idle latency and the send-loop throughput.
    table.add_section()
    latency = results.latency
    samples = args.samples
    for label, fraction in (("p50", 0.5), ("p99", 0.99)):
        row(
            f"idle enqueue→start {label}, ms (n={samples})",
            percentile(latency["dramatiq"].latencies, fraction),
            percentile(latency["fairlane"].latencies, fraction),
            _ms,
        )
    for processes in sizes:
        size = f"{processes}x{THREADS}"
        row(
            f"one sender calling send() in a loop: throughput {size}, jobs/s "
            f"(median of {reps(results.loops, SYSTEMS, processes)})",
            loop("dramatiq", processes, lambda run: run.jobs_per_s),
            loop("fairlane", processes, lambda run: run.jobs_per_s),
            _rate,
        )
        if results.loops[(CONFIRMED, processes)]:
            row(
                "  same, Dramatiq with publisher confirms",
                loop(CONFIRMED, processes, lambda run: run.jobs_per_s),
                loop("fairlane", processes, lambda run: run.jobs_per_s),
                _rate,
            )
        row(
            f"  jobs per {size} send-loop run (median)",
            loop("dramatiq", processes, lambda run: run.jobs),
            loop("fairlane", processes, lambda run: run.jobs),
            _count,
        )

    # 4. Where time goes.
    table.add_section()
    table.add_row("[dim]where time goes (medians)[/]", "", "", "")
    row(
        "idle: send() call, ms",
        statistics.median(latency["dramatiq"].send_calls),
        statistics.median(latency["fairlane"].send_calls),
        _ms,
    )
    phases = latency["fairlane"].phases
    for step in ("accept", "publish"):
        durations = phases.get(step)
        if durations:
            note = f" ({len(durations)} of {samples} sends)" if step == "publish" else ""
            table.add_row(
                f"  fairlane send(): {FAIRLANE_STEPS[step]}{note}, ms",
                "",
                _ms(statistics.median(durations)),
                "",
            )
    row(
        "idle: send() return → actor start, ms",
        statistics.median(latency["dramatiq"].pickups),
        statistics.median(latency["fairlane"].pickups),
        _ms,
    )
    for step in ("accept_many", "admit", "publish_batch"):
        durations = results.many_steps.get(step)
        if durations:
            table.add_row(
                f"  fairlane send_many() per call: {FAIRLANE_STEPS[step]}, ms",
                "",
                _ms(statistics.median(durations)),
                "",
            )
    for processes in sizes:
        size = f"{processes}x{THREADS}"

        def both(pick: Callable[[ThroughputRun], float], processes: int = processes) -> tuple[Any, Any]:
            return loop("dramatiq", processes, pick), loop("fairlane", processes, pick)

        if processes != 1:  # the 1x8 send rates are in the sending section
            row(f"{size} send loop: send() rate, sends/s", *both(lambda run: run.send_jobs_per_s), _rate)
        share = loop("fairlane", processes, lambda run: run.fast_path_share)
        accept = _median(
            [
                statistics.median(run.steps["accept"])
                for run in results.loops[("fairlane", processes)]
                if run.steps.get("accept")
            ]
        )
        table.add_row(
            f"{size} send loop: fairlane sends published at once (idle fast path), %",
            "",
            cell(share, lambda value: f"{value * 100:.0f}"),
            "",
        )
        table.add_row(f"{size} send loop: fairlane ledger accept, ms", "", cell(accept, _ms), "")
        row(f"{size} send loop: worker CPU per job, ms", *both(lambda run: run.worker_cpu), _ms)
        row(f"{size} send loop: sender CPU per job, ms", *both(lambda run: run.sender_cpu), _ms)
        if args.ledger == "postgresql":
            fairlane_ledger = loop("fairlane", processes, lambda run: run.ledger_cpu)
            row(f"{size} send loop: PostgreSQL backends CPU per job, ms", None, fairlane_ledger, _ms)
        row(
            f"{size} send loop: RabbitMQ CPU per job, ms (machine-wide)",
            *both(lambda run: run.rabbitmq_cpu),
            _ms,
        )
        row(f"{size} send loop: all of the above, CPU ms per job", *both(lambda run: run.total_cpu), _ms)
    return table


def print_statements(results: Results) -> None:
    """The top statements of the first 1x8 fairlane drain, below the table."""
    runs = [run for run in results.drains[("fairlane", 1)] if run.statements]
    if not runs:
        console.print(
            f"PostgreSQL statements, 1x{THREADS} drain: {results.statements_unavailable or NO_PG_STAT}"
        )
        return
    stats = runs[0].statements
    assert stats is not None
    console.print(
        f"PostgreSQL statements during the first 1x{THREADS} fairlane drain (worker start to stop): "
        f"{stats.calls:,} calls for {stats.jobs:,} jobs = {stats.per_job:.2f} per job; "
        f"top {TOP_STATEMENTS} by calls:"
    )
    console.print(f"  {'calls/job':>9}  {'mean ms':>8}  query (first 90 characters)", highlight=False)
    for statement in stats.statements[:TOP_STATEMENTS]:
        console.print(
            f"  {statement.calls / stats.jobs:9.3f}  {statement.mean_ms:8.3f}  {statement.query[:90]}",
            markup=False,
            highlight=False,
        )


# -- main -------------------------------------------------------------------------------------------


def _progress(started: float, text: str) -> None:
    console.print(f"[dim]{time.monotonic() - started:5.0f}s {text}[/]")


def _delete_queues_or_say(names: list[str]) -> None:
    failed = delete_queues(names)
    if failed:
        console.print(f"[yellow]could not delete RabbitMQ queues: {', '.join(failed)}[/]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--drain-jobs", type=int, default=5000, help="jobs in each preloaded backlog (the headline drain)"
    )
    parser.add_argument("--jobs", type=int, default=5000, help="no-op jobs per send-loop repetition")
    parser.add_argument(
        "--many-jobs", type=int, default=10_000, help="jobs per send_many repetition (chunks of 1,000)"
    )
    parser.add_argument("--ledger", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument(
        "--reps", type=int, default=3, help="repetitions per measurement, system and size (max)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds the whole run may take; repetitions beyond the first are skipped when the "
        "projected time would exceed it (the table says how many ran)",
    )
    parser.add_argument(
        "--max-send-seconds",
        type=float,
        default=30.0,
        help="stop a send-loop run after this long even if fewer than --jobs were sent",
    )
    parser.add_argument("--samples", type=int, default=200, help="idle latency samples per system")
    parser.add_argument(
        "--processes", type=int, nargs="+", default=[1, 2], dest="process_counts", help="worker sizes"
    )
    args = parser.parse_args(argv)
    if args.process_counts[0] != 1:
        parser.error("--processes: the first size must be 1 (latency, confirms and statements run on it)")
    if min(args.drain_jobs, args.jobs, args.many_jobs, args.reps, args.samples) < 1:
        parser.error("--drain-jobs, --jobs, --many-jobs, --reps and --samples must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = secrets.token_hex(4)
    fairlane_queue, dramatiq_queue = f"flbench_{run_id}", f"dqbench_{run_id}"
    queues = [f"{fairlane_queue}.{lane}" for lane in FAIRLANE_LANES] + [f"{fairlane_queue}.XQ"]
    queues += [dramatiq_queue, f"{dramatiq_queue}.DQ", f"{dramatiq_queue}.XQ"]
    workdir = Path(tempfile.mkdtemp(prefix=f"fairlane_bench_{run_id}_"))
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:  # runs last-registered first: workers, app, ledger, queues
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        cleanup.callback(_delete_queues_or_say, queues)
        ledger = cleanup.enter_context(ledger_for(args.ledger, run_id, workdir))
        env = {
            "FAIRLANE_BROKER_URL": BROKER_URL,
            "FAIRLANE_DATABASE_URL": ledger.url,
            "FAIRLANE_RESULTS_DIR": str(workdir / "results"),
            "BENCH_BROKER_URL": BROKER_URL,
            "BENCH_FAIRLANE_QUEUE": fairlane_queue,
            "BENCH_DRAMATIQ_QUEUE": dramatiq_queue,
            "BENCH_REPORT": str(workdir / "report.log"),
        }
        os.environ.update(env)
        sys.path.insert(0, str(BENCH_DIR))
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")])
        )

        import dramatiq

        import _dramatiq_actors
        import _fairlane_actors
        import fairlane

        app = fairlane.get_app()  # builds and migrates the ledger before any worker starts
        timer = PhaseTimer()
        untimed = wrap_fairlane_steps(timer, app)
        cleanup.callback(app.close)
        cleanup.callback(_dramatiq_actors.broker.close)
        confirmed_actor = _dramatiq_actors.confirmed_actor()
        cleanup.callback(confirmed_actor.broker.close)
        actors = {"dramatiq": _dramatiq_actors.bench_noop, "fairlane": _fairlane_actors.bench_noop}
        senders: dict[str, Send] = {
            "dramatiq": _dramatiq_actors.bench_noop.send,
            CONFIRMED: confirmed_actor.send,
            "fairlane": _fairlane_actors.bench_noop.send,
        }
        reports = Reports(workdir / "report.log")
        statements = StatementCounter(ledger)

        console.print(
            f"date {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M:%S %Z} · "
            f"{platform.machine()} · {os.cpu_count()} CPUs · loadavg {os.getloadavg()[0]:.2f} · "
            f"Python {platform.python_version()} · Dramatiq {dramatiq.__version__} · "
            f"fairlane {importlib.metadata.version('fairlane')} · pika {pika.__version__} · "
            f"RabbitMQ {rabbitmq_version()}"
        )
        console.print(
            f"fairlane ledger: {ledger.kind} {ledger.version}"
            + (f" (fresh database {ledger.database})" if ledger.database else " (temporary file)")
            + f" · pg_stat_statements: {statements.unavailable or 'yes'} · run {run_id}"
            + ("" if ledger.autovacuum else " · autovacuum off: VACUUM ANALYZE before each drain")
        )
        console.print(
            f"{args.drain_jobs} jobs per drain · {args.jobs} per send loop · "
            f"{args.many_jobs} per send_many · up to {args.reps} reps · {args.samples} latency samples · "
            f"budget {args.budget:.0f}s"
        )
        if untimed:
            console.print(f"[yellow]not timed (no such method): {', '.join(untimed)}[/]")

        results = Results(statements_unavailable=statements.unavailable)
        budget = Budget(args.budget, started, args.process_counts)
        worker_problems: list[str] = []

        def go_on(step: Step, rep: int) -> bool:
            """Whether to run repetition ``rep`` of ``step`` (says so when the budget is spent)."""
            if rep == 0 or budget.allows(step):
                return True
            _progress(
                started, f"{step[0]} {step[2]}x{THREADS} {LABEL[step[1]]}: budget spent, no rep {rep + 1}"
            )
            return False

        for processes in args.process_counts:
            size = f"{processes}x{THREADS}"
            # -- one sender calling send() in a loop (and idle latency), both systems' workers up --
            with budget.timing(("start", "workers", processes)):
                pair = {system: start_worker(system, processes, child_env, workdir) for system in SYSTEMS}
                for worker in pair.values():
                    cleanup.callback(worker.stop)
                for sender in loop_senders(processes):
                    warm_up(senders[sender], reports, pair[WORKER_OF[sender]], f"warm-{sender}-{processes}")
            _progress(started, f"workers {size} ready")
            if processes == 1:
                with budget.timing(("latency", "both", processes)):
                    results.latency = measure_latency(senders, reports, args.samples, timer)
                _progress(started, "idle latency done")
            for rep in range(args.reps):
                order = loop_senders(processes)
                for sender in order if rep % 2 == 0 else order[::-1]:
                    step: Step = ("loop", sender, processes)
                    if not go_on(step, rep):
                        continue
                    with budget.timing(step):
                        time.sleep(1.0)  # let the previous run's last acks and ledger writes settle
                        # One job first, so a sender connection RabbitMQ dropped while this system sat
                        # idle (pika's blocking connection sends no heartbeats when unused) is renewed.
                        senders[sender](f"pre-{sender}-{processes}-{rep}", time.time())
                        reports.wait(f"pre-{sender}-{processes}-{rep}", 1, timeout=60)
                        run = measure_throughput(
                            senders[sender],
                            reports,
                            pair[WORKER_OF[sender]],
                            ledger.database if sender == "fairlane" else None,
                            f"tp-{sender}-{processes}-{rep}",
                            args.jobs,
                            args.max_send_seconds,
                            timer if sender == "fairlane" else None,
                        )
                    results.loops[(sender, processes)].append(run)
                    _progress(
                        started,
                        f"{size} send loop rep {rep + 1} {LABEL[sender]:17} {run.jobs:5} jobs "
                        f"{run.jobs_per_s:7,.0f} jobs/s (sends {run.send_jobs_per_s:,.0f}/s)",
                    )
            for worker in pair.values():
                worker.stop()
                worker_problems.extend(problems_in(worker))

            # -- drain of a preloaded backlog, one worker at a time --
            for rep in range(args.reps):
                for system in SYSTEMS if rep % 2 == 0 else SYSTEMS[::-1]:
                    step = ("drain", system, processes)
                    if not go_on(step, rep):
                        continue
                    with budget.timing(step):
                        time.sleep(1.0)  # let the previous worker's connections close
                        ledger.vacuum()

                        def start(
                            system: str = system, processes: int = processes, rep: int = rep
                        ) -> WorkerProcess:
                            worker = start_worker(system, processes, child_env, workdir, f"drain{rep}")
                            cleanup.callback(worker.stop)
                            return worker

                        count = processes == 1 and system == "fairlane" and not statements.unavailable
                        drain = measure_drain(
                            system,
                            processes,
                            f"drain-{system}-{processes}-{rep}",
                            args.drain_jobs,
                            actors,
                            reports,
                            ledger.database if system == "fairlane" else None,
                            start,
                            statements if count else None,
                            worker_problems,
                        )
                    results.drains[(system, processes)].append(drain)
                    per_job = f" · {drain.statements.per_job:.2f} statements/job" if drain.statements else ""
                    _progress(
                        started,
                        f"{size} drain rep {rep + 1} {LABEL[system]:8} {drain.jobs:5} jobs "
                        f"{drain.jobs_per_s:7,.0f} jobs/s · {drain.total_cpu * 1000:.2f} CPU ms/job"
                        f"{per_job} (preload {drain.preload_jobs_per_s:,.0f} jobs/s)",
                    )

        # -- send_many with no worker (last: its jobs stay in the ledger) --
        for rep in range(args.reps):
            step = ("many", "fairlane", 0)
            if not go_on(step, rep):
                continue
            with budget.timing(step), timer.recorded() as steps:
                rate = measure_send_many(actors["fairlane"], f"many-{rep}", args.many_jobs)
            results.many.append(rate)
            for name, durations in steps.items():
                results.many_steps[name].extend(durations)
            _progress(started, f"send_many rep {rep + 1}: {args.many_jobs} jobs, {rate:,.0f} jobs/s")

        console.print(build_table(results, args))
        for processes in args.process_counts:
            size = f"{processes}x{THREADS}"
            drains = "; ".join(
                f"{LABEL[s]} " + ", ".join(f"{run.jobs_per_s:,.0f}" for run in results.drains[(s, processes)])
                for s in SYSTEMS
            )
            loops = "; ".join(
                f"{LABEL[s]} " + ", ".join(f"{run.jobs_per_s:,.0f}" for run in results.loops[(s, processes)])
                for s in loop_senders(processes)
            )
            console.print(f"[dim]{size} drain runs, jobs/s: {drains}[/]")
            console.print(f"[dim]{size} send-loop runs, jobs/s: {loops}[/]")
            late = [
                f"{LABEL[s]} rep {index + 1}"
                for s in SYSTEMS
                for index, run in enumerate(results.drains[(s, processes)])
                if run.late_start and processes > 1
            ]
            if late:
                console.print(
                    f"[dim]{size} drains where a worker process ran its first job only after the "
                    f"10th-percentile completion (window includes start-up): {', '.join(late)}[/]"
                )
        print_statements(results)
        for count, line in summarize(worker_problems)[:6]:
            console.print(f"worker log, {count}x: {line}", style="yellow", markup=False, highlight=False)
    console.print(f"[dim]total {time.monotonic() - started:.0f}s, cleaned up[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
