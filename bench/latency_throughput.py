"""fairlane vs plain Dramatiq: idle enqueue→start latency and no-op throughput, one table.

    python bench/latency_throughput.py [--jobs N] [--ledger postgresql|sqlite] [--reps R]

Both systems run in the same run, on the same machine, against the same RabbitMQ:

* **fairlane**: ``python -m fairlane.cli worker --processes P --threads 8 _fairlane_actors``,
  ledger in a fresh PostgreSQL database ``fairlane_bench_<random>`` (created here, dropped at
  the end) or, with ``--ledger sqlite``, a temporary SQLite file. Sends go through
  ``FairlaneBroker.enqueue`` (ledger insert, admission, confirmed publish), as in production.
* **Dramatiq**: ``python -m dramatiq _dramatiq_actors:broker --processes P --threads 8``, a stock
  ``RabbitmqBroker`` with Dramatiq's default middleware.

Each system has its own queue named after this run (``flbench_<id>`` / ``dqbench_<id>``);
every RabbitMQ queue the run created is deleted at the end. Workers are real subprocesses,
configured through ``FAIRLANE_*`` / ``BENCH_*`` environment variables. Both systems' workers
run at the same time and the measurements alternate between them (D, F, F, D, …), so drift
on a shared, noisy machine hits both alike; the idle side only polls its queues.

Side channel: the no-op actor (identical for both systems) takes ``(tag, sent)``, where
``sent`` is ``time.time()`` captured by the sender just before ``send()``, and appends one line
``tag sent start end pid`` to a report file (``O_APPEND``, one ``write`` per line) — the same
method for both systems, working across processes.

Method:

1. Warm-up: jobs are sent until every worker process has reported some.
2. Idle latency (1 process x 8 threads): one job at a time — send, wait until it reports,
   let the worker settle 10 ms, repeat — ``--samples`` times per system, alternating
   systems. Latency = actor start - ``sent``. p50 and p99 (nearest rank).
3. Throughput (1 x 8, then 2 x 8): with idle, warmed workers, one sender thread sends N
   (``--jobs``, 5000) no-op jobs as fast as it can, but stops sending after
   ``--max-send-seconds`` (30) so a slow system cannot blow the time budget; throughput =
   jobs sent / (last actor end - first ``sent``), and the table shows how many jobs a run
   held. The median of ``--reps`` (3) repetitions per system, alternating systems. A
   repetition after the first is skipped when it would push the run past ``--budget``
   seconds (330) while leaving room for the later sizes; the table says how many ran.

"Where time goes" rows (medians): how long the sender's ``send()`` call takes (and, for
fairlane, its ledger accept / admission / confirmed-publish steps, timed by wrapping those
methods on the sender's app); how fast the send loop went during the throughput runs
(equal to the throughput when the sender is the bottleneck); CPU time per job of the worker
processes, of the sending thread, of the ledger's PostgreSQL backends and of RabbitMQ
(``beam.smp``; machine-wide, so it includes anyone else's traffic), read from ``/proc``
before and after each repetition. With C cores, C / (total CPU per job) bounds throughput.
The last job's post-processing (ack, ledger ``finished``) is not inside the timed window;
with N jobs that is one job's worth of work.
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
LABEL = {"dramatiq": "Dramatiq", "fairlane": "fairlane"}
FAIRLANE_LANES = ("urgent", "high", "normal", "low")
CLK_TCK = os.sysconf("SC_CLK_TCK")

console = Console(width=max(Console().width, 104))


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


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, or None if it is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by ``root`` and all its descendants."""
    stats = {pid: stat for pid in _all_pids() if (stat := _proc_stat(pid)) is not None}
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _cpu) in stats.items():
        children[ppid].append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo.extend(children[pid])
    return total


def pids_cpu(pids: list[int]) -> float:
    return sum(stat[1] for pid in pids if (stat := _proc_stat(pid)) is not None)


def rabbitmq_pids() -> list[int]:
    found = []
    for pid in _all_pids():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "beam.smp":
                found.append(pid)
    return found


# -- environment: database, queues, workers ---------------------------------------------------------


@dataclasses.dataclass
class Ledger:
    kind: str
    url: str
    database: str | None = None
    version: str = ""

    def backend_pids(self) -> list[int]:
        """PIDs of PostgreSQL backends connected to the bench database (none for SQLite)."""
        if self.database is None:
            return []
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
            rows = connection.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,)
            ).fetchall()
        return [row[0] for row in rows]


@contextlib.contextmanager
def ledger_for(kind: str, run_id: str, workdir: Path) -> Iterator[Ledger]:
    if kind == "sqlite":
        yield Ledger("sqlite", f"sqlite:///{workdir / 'ledger.db'}", version=_sqlite_version())
        return
    database = f"fairlane_bench_{run_id}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        version = " ".join(
            f"{name}={connection.execute(f'SHOW {name}').fetchone()[0]}"  # type: ignore[index]
            for name in ("server_version", "synchronous_commit", "fsync")
        )
        connection.execute(f'CREATE DATABASE "{database}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield Ledger("postgresql", f"{base}/{database}", database, version)
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

    def cpu(self) -> float:
        return tree_cpu(self.popen.pid)

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


def problems_in(worker: WorkerProcess) -> list[str]:
    """Lines of a worker's log that report errors or warnings (shutdown chatter excluded)."""
    lines = worker.log.read_text(errors="replace").splitlines()
    wanted = ("ERROR", "WARNING", "Traceback", "level=error", "level=warning")
    ignored = ("Killing worker process", "Stopping worker process")
    return [
        f"{worker.system} {worker.processes}x{THREADS}: {line[:300]}"
        for line in lines
        if any(word in line for word in wanted) and not any(word in line for word in ignored)
    ]


def summarize(lines: list[str]) -> list[tuple[int, str]]:
    """Distinct log lines (timestamps, numbers and addresses blanked) with counts, most frequent first."""
    counts: dict[str, int] = defaultdict(int)
    for line in lines:
        source, _, text = line.partition(": ")
        text = re.sub(r"\d+", "N", re.sub(r"\d{4}-\d\d-\d\d[ T][\d:,.]+ ?", "", text))
        counts[f"{source}: {text}"[:240]] += 1
    return sorted(((count, line) for line, count in counts.items()), reverse=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_worker(system: str, processes: int, env: dict[str, str], workdir: Path) -> WorkerProcess:
    if system == "fairlane":
        command = [sys.executable, "-m", "fairlane.cli", "worker", "--processes", str(processes)]
        command += ["--threads", str(THREADS), "--shutdown-timeout", "20", "_fairlane_actors"]
    else:
        command = [sys.executable, "-m", "dramatiq", "_dramatiq_actors:broker", "--processes", str(processes)]
        command += ["--threads", str(THREADS), "--path", str(BENCH_DIR), "--worker-shutdown-timeout", "20000"]
    log = workdir / f"worker-{system}-{processes}.log"
    if system == "fairlane":
        # Metrics and health endpoints stay on, as in production, on ports no one else uses.
        env = env | {
            "FAIRLANE_METRICS_PORT": str(_free_port()),
            "FAIRLANE_HEALTH_PORT": str(_free_port()),
            "FAIRLANE_METRICS_DIR": str(workdir / f"metrics-{processes}"),
        }
    with log.open("wb") as output:
        popen = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    return WorkerProcess(system, processes, popen, log)


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
    """Times named steps of the sender's ``send()`` by wrapping methods of live objects.

    Used on the fairlane side only (ledger accept, admission, confirmed publish); nothing
    in ``src/`` changes, and the wrappers cost well under a microsecond per call.
    """

    def __init__(self) -> None:
        self.recording = False
        self.durations: dict[str, list[float]] = defaultdict(list)

    def wrap(self, owner: Any, method: str, phase: str) -> None:
        original = getattr(owner, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.recording:
                return original(*args, **kwargs)
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.durations[phase].append(time.perf_counter() - began)

        setattr(owner, method, timed)


FAIRLANE_PHASES = {
    "accept": "ledger accept (INSERT txn)",
    "admit": "admission (budget lock, UPDATE txn)",
    "publish": "publish + RabbitMQ confirm",
}


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
    results["fairlane"].phases = dict(timer.durations)
    return results


@dataclasses.dataclass
class ThroughputRun:
    jobs: int
    jobs_per_s: float
    send_jobs_per_s: float
    worker_cpu: float
    sender_cpu: float
    ledger_cpu: float
    rabbitmq_cpu: float

    @property
    def total_cpu(self) -> float:
        """CPU per job of workers, sender, ledger and RabbitMQ together."""
        return self.worker_cpu + self.sender_cpu + self.ledger_cpu + self.rabbitmq_cpu


def measure_throughput(
    send: Send,
    reports: Reports,
    worker: WorkerProcess,
    ledger: Ledger | None,
    tag: str,
    jobs: int,
    max_send_seconds: float,
) -> ThroughputRun:
    worker.check_alive()
    ledger_pids = ledger.backend_pids() if ledger else []
    rabbit = rabbitmq_pids()
    cpu_before = worker.cpu(), pids_cpu(ledger_pids), pids_cpu(rabbit)
    sender_before = time.thread_time()
    first = time.time()
    send(tag, first)
    sent, stop_at = 1, first + max_send_seconds
    while sent < jobs:
        now = time.time()
        if now > stop_at:
            break
        send(tag, now)
        sent += 1
    jobs = sent
    sent_all = time.time()
    sender_cpu = time.thread_time() - sender_before
    records = reports.wait(tag, jobs, timeout=60 + jobs / 20, interval=0.005)
    last = max(record.end for record in records)
    worker_cpu, ledger_cpu, rabbit_cpu = (
        after - before
        for after, before in zip(
            (worker.cpu(), pids_cpu(ledger_pids), pids_cpu(rabbit)), cpu_before, strict=True
        )
    )
    return ThroughputRun(
        jobs=jobs,
        jobs_per_s=jobs / (last - first),
        send_jobs_per_s=jobs / (sent_all - first),
        worker_cpu=worker_cpu / jobs,
        sender_cpu=sender_cpu / jobs,
        ledger_cpu=ledger_cpu / jobs,
        rabbitmq_cpu=rabbit_cpu / jobs,
    )


# -- report -----------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _ms(value: float) -> str:
    return f"{value * 1000:.2f}"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _ratio(fairlane: float, dramatiq: float) -> str:
    return f"{fairlane / dramatiq:.2f}x" if dramatiq else "-"


def build_table(
    latency: dict[str, LatencyResult], throughput: dict[tuple[str, int], list[ThroughputRun]], args: Any
) -> Table:
    table = Table(title="fairlane vs Dramatiq (same RabbitMQ, same machine, same run)")
    table.add_column("measure")
    table.add_column("Dramatiq", justify="right")
    table.add_column("fairlane", justify="right")
    table.add_column("fairlane / Dramatiq", justify="right")

    def row(name: str, pick: Callable[[str], float], fmt: Callable[[float], str]) -> None:
        dramatiq, fairlane = pick("dramatiq"), pick("fairlane")
        table.add_row(name, fmt(dramatiq), fmt(fairlane), _ratio(fairlane, dramatiq))

    samples = args.samples
    row(f"idle enqueue→start p50, ms (n={samples})", lambda s: percentile(latency[s].latencies, 0.5), _ms)
    row(f"idle enqueue→start p99, ms (n={samples})", lambda s: percentile(latency[s].latencies, 0.99), _ms)
    for processes in args.process_counts:

        def median_of(field: str, processes: int = processes) -> Callable[[str], float]:
            return lambda s: statistics.median(getattr(run, field) for run in throughput[(s, processes)])

        counts = {len(throughput[(system, processes)]) for system in SYSTEMS}
        reps = "/".join(str(len(throughput[(system, processes)])) for system in SYSTEMS)
        row(
            f"no-op throughput {processes}x{THREADS}, jobs/s, "
            f"median of {counts.pop() if len(counts) == 1 else reps} runs",
            median_of("jobs_per_s"),
            _rate,
        )
        row(
            f"  jobs per {processes}x{THREADS} run (median)", median_of("jobs"), lambda value: f"{value:,.0f}"
        )
    table.add_section()
    table.add_row("[dim]where time goes (medians)[/]", "", "", "")
    row("idle: send() call, ms", lambda s: statistics.median(latency[s].send_calls), _ms)
    for phase, label in FAIRLANE_PHASES.items():
        durations = latency["fairlane"].phases.get(phase)
        if durations:
            table.add_row(f"  fairlane send(): {label}, ms", "", _ms(statistics.median(durations)), "")
    row("idle: send() return → actor start, ms", lambda s: statistics.median(latency[s].pickups), _ms)
    for processes in args.process_counts:

        def median_of(field: str, processes: int = processes) -> Callable[[str], float]:
            return lambda s: statistics.median(getattr(run, field) for run in throughput[(s, processes)])

        name = f"{processes}x{THREADS}"
        row(f"{name}: sender send() rate during the run, jobs/s", median_of("send_jobs_per_s"), _rate)
        row(f"{name}: worker CPU per job, ms", median_of("worker_cpu"), _ms)
        row(f"{name}: sender CPU per job, ms", median_of("sender_cpu"), _ms)
        if args.ledger == "postgresql":
            row(f"{name}: PostgreSQL backends CPU per job, ms", median_of("ledger_cpu"), _ms)
        row(f"{name}: RabbitMQ CPU per job, ms (machine-wide)", median_of("rabbitmq_cpu"), _ms)
        row(f"{name}: all of the above, CPU ms per job", median_of("total_cpu"), _ms)
    return table


# -- main -------------------------------------------------------------------------------------------


def _progress(started: float, text: str) -> None:
    console.print(f"[dim]{time.monotonic() - started:5.0f}s {text}[/]")


def _delete_queues_or_say(names: list[str]) -> None:
    failed = delete_queues(names)
    if failed:
        console.print(f"[yellow]could not delete RabbitMQ queues: {', '.join(failed)}[/]")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=5000, help="no-op jobs per throughput repetition")
    parser.add_argument("--ledger", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument(
        "--reps", type=int, default=3, help="throughput repetitions per system and size (max)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=330.0,
        help="seconds the whole run may take; repetitions beyond the first are skipped when the "
        "projected time would exceed it (the table says how many ran)",
    )
    parser.add_argument(
        "--max-send-seconds",
        type=float,
        default=30.0,
        help="stop a throughput run's send loop after this long even if fewer than --jobs were sent",
    )
    parser.add_argument("--samples", type=int, default=200, help="idle latency samples per system")
    parser.add_argument(
        "--processes", type=int, nargs="+", default=[1, 2], dest="process_counts", help="worker sizes"
    )
    args = parser.parse_args(argv)
    if args.process_counts[0] != 1:
        parser.error("--processes: the first size must be 1 (the latency test runs on it)")
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
        timer.wrap(app.admission, "accept", "accept")
        timer.wrap(app.admission, "admit", "admit")
        timer.wrap(app.broker, "publish", "publish")
        cleanup.callback(app.close)
        cleanup.callback(_dramatiq_actors.broker.close)
        senders: dict[str, Send] = {
            "dramatiq": _dramatiq_actors.bench_noop.send,
            "fairlane": _fairlane_actors.bench_noop.send,
        }
        reports = Reports(workdir / "report.log")

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
            + f" · {args.jobs} jobs per throughput run · {args.reps} reps · "
            f"{args.samples} latency samples · run {run_id}"
        )

        latency: dict[str, LatencyResult] = {}
        throughput: dict[tuple[str, int], list[ThroughputRun]] = defaultdict(list)
        durations: dict[tuple[str, int], list[float]] = defaultdict(list)
        worker_problems: list[str] = []
        for processes in args.process_counts:
            pair = {system: start_worker(system, processes, child_env, workdir) for system in SYSTEMS}
            for worker in pair.values():
                cleanup.callback(worker.stop)
            for system in SYSTEMS:
                warm_up(senders[system], reports, pair[system], f"warm-{system}-{processes}")
            _progress(started, f"workers {processes}x{THREADS} ready")
            if processes == 1:
                latency = measure_latency(senders, reports, args.samples, timer)
                _progress(started, "idle latency done")
            later_sizes = args.process_counts[args.process_counts.index(processes) + 1 :]
            for rep in range(args.reps):
                order = SYSTEMS if rep % 2 == 0 else SYSTEMS[::-1]
                for system in order:
                    if rep > 0:
                        # One more run of this system must leave room for one run of each system
                        # at every later size (plus ~20 s to start and warm their workers).
                        estimate = {s: max(durations[(s, processes)]) for s in SYSTEMS}
                        reserve = len(later_sizes) * (sum(estimate.values()) + 20)
                        if time.monotonic() - started + estimate[system] + reserve > args.budget:
                            _progress(
                                started,
                                f"{processes}x{THREADS} {LABEL[system]}: budget spent, no rep {rep + 1}",
                            )
                            continue
                    time.sleep(1.0)  # let the previous run's last acks and ledger writes settle
                    # One job first, so a sender connection RabbitMQ dropped while this system sat
                    # idle (pika's blocking connection sends no heartbeats when unused) is renewed.
                    senders[system](f"pre-{system}-{processes}-{rep}", time.time())
                    reports.wait(f"pre-{system}-{processes}-{rep}", 1, timeout=60)
                    run_started = time.monotonic()
                    run = measure_throughput(
                        senders[system],
                        reports,
                        pair[system],
                        ledger if system == "fairlane" else None,
                        f"tp-{system}-{processes}-{rep}",
                        args.jobs,
                        args.max_send_seconds,
                    )
                    throughput[(system, processes)].append(run)
                    durations[(system, processes)].append(time.monotonic() - run_started)
                    size = f"{processes}x{THREADS}"
                    _progress(
                        started,
                        f"{size} rep {rep + 1} {LABEL[system]:8} {run.jobs:5} jobs "
                        f"{run.jobs_per_s:7,.0f} jobs/s "
                        f"(send loop {run.send_jobs_per_s:,.0f} jobs/s)",
                    )
            for worker in pair.values():
                worker.stop()
                worker_problems.extend(problems_in(worker))

        console.print(build_table(latency, throughput, args))
        for processes in args.process_counts:
            runs = "; ".join(
                f"{LABEL[s]} " + ", ".join(f"{run.jobs_per_s:,.0f}" for run in throughput[(s, processes)])
                for s in SYSTEMS
            )
            console.print(f"[dim]{processes}x{THREADS} runs, jobs/s: {runs}[/]")
        for count, line in summarize(worker_problems)[:6]:
            console.print(f"worker log, {count}x: {line}", style="yellow", markup=False, highlight=False)
    console.print(f"[dim]total {time.monotonic() - started:.0f}s, cleaned up[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
