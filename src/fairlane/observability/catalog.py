"""The fairlane metrics catalog: every metric name, its labels and its unit, in one place.

Units are base units (seconds, jobs). Labels are bounded: ``queue`` (Dramatiq queue name),
``actor``, ``lane`` (urgent/high/normal/low), ``reason`` (why a job was deferred, e.g.
``ratelimit``, ``concurrency``, ``delay``), ``key`` and ``dimension`` (a configured rate
limiter and what it counts, e.g. ``requests_per_minute`` or ``tokens_per_minute``) and
``task`` (a scheduler task such as ``cleanup`` or ``reaper``). Never a tenant id, a job id
or error text: fairness is observed through ``fairlane_tenants_with_backlog`` and the wait
percentiles per lane, not through a tenant label.

There are two kinds of metrics.

Process metrics (counters, histograms, ``fairlane_jobs_in_progress``,
``fairlane_oldest_running_job_age_seconds``, ``fairlane_ratelimit_*``) are registered on
prometheus_client's default registry at import and are updated by whichever process runs
the code: worker processes, and api pods or services for ``fairlane_jobs_enqueued_total``.
A pod that runs several processes uses prometheus_client's multiprocess mode:

* ``PROMETHEUS_MULTIPROC_DIR`` must be in the environment of the whole process group
  *before* Python starts (prometheus_client reads it once, at its own import; the pod spec
  or the process that forks the workers sets it, this module never reads the environment).
* The directory must be wiped when the process group starts (:func:`prepare_multiprocess_dir`),
  or counters of a previous run are added to this one.
* When a worker process exits, the parent calls :func:`mark_process_dead` so its ``live*``
  gauges stop counting.
* One scrape endpoint per pod serves :func:`worker_registry_for_scrape`, which merges every
  process's file: counters and histograms are summed, in-progress is summed over live
  processes, ages and rate-limit usage are the maximum over live processes; there is no
  ``pid`` label in the output.

Leader metrics (``fairlane_backlog_jobs`` … ``fairlane_scheduler_last_success_timestamp_seconds``)
describe the whole system and are computed by the scheduler leader from the ledger and the
broker. They live on :data:`LEADER_REGISTRY` as :class:`LeaderGauge` objects that keep their
values in memory (never in the multiprocess directory), so workers never export them and a
scheduler sharing a pod's multiprocess directory can't leak them into the worker scrape. The
scheduler serves :data:`LEADER_REGISTRY`; a non-leader sets ``fairlane_scheduler_is_leader``
to 0 and clears the other leader gauges.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

__all__ = [
    "ALL_METRIC_NAMES",
    "BACKLOG_JOBS",
    "DEAD_LETTERS",
    "DURATION_BUCKETS",
    "JOBS_CANCELLED",
    "JOBS_DEAD",
    "JOBS_DEFERRED",
    "JOBS_ENQUEUED",
    "JOBS_FAILED",
    "JOBS_IN_PROGRESS",
    "JOBS_RETRIED",
    "JOBS_STARTED",
    "JOBS_SUCCEEDED",
    "JOB_DURATION_SECONDS",
    "JOB_LABELS",
    "JOB_QUEUE_WAIT_SECONDS",
    "LANE_CONSUMERS",
    "LANE_QUEUE_DEPTH",
    "LEADER_REGISTRY",
    "OLDEST_PENDING_AGE_SECONDS",
    "OLDEST_RUNNING_JOB_AGE_SECONDS",
    "RATELIMIT_LIMIT",
    "RATELIMIT_USED",
    "SCHEDULER_IS_LEADER",
    "SCHEDULER_LAST_SUCCESS_TIMESTAMP_SECONDS",
    "TENANTS_WITH_BACKLOG",
    "WORKERS",
    "LeaderGauge",
    "mark_process_dead",
    "prepare_multiprocess_dir",
    "worker_registry_for_scrape",
]

#: Labels of every per-job metric.
JOB_LABELS: tuple[str, str, str] = ("queue", "actor", "lane")

#: Histogram buckets in seconds, 1 ms .. 1 h, for queue wait and run time.
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
)  # fmt: skip

# --- process metrics (default registry; multiprocess-safe) -----------------------------------

#: Jobs accepted by admission (counted where they are sent: api pods, services).
JOBS_ENQUEUED = Counter("fairlane_jobs_enqueued", "Jobs accepted by admission.", JOB_LABELS)
#: Job attempts that began running on a worker.
JOBS_STARTED = Counter("fairlane_jobs_started", "Job attempts that began running.", JOB_LABELS)
#: Job attempts that finished successfully.
JOBS_SUCCEEDED = Counter("fairlane_jobs_succeeded", "Job attempts that succeeded.", JOB_LABELS)
#: Job attempts that raised; each failed attempt counts, whether it is retried or dead-lettered.
JOBS_FAILED = Counter(
    "fairlane_jobs_failed", "Job attempts that raised (retried or dead-lettered).", JOB_LABELS
)
#: Failed attempts that were scheduled for another attempt.
JOBS_RETRIED = Counter("fairlane_jobs_retried", "Failed attempts scheduled for a retry.", JOB_LABELS)
#: Jobs that exhausted their retries and were dead-lettered.
JOBS_DEAD = Counter("fairlane_jobs_dead", "Jobs dead-lettered after their last attempt.", JOB_LABELS)
#: Jobs cancelled before or while running.
JOBS_CANCELLED = Counter("fairlane_jobs_cancelled", "Jobs cancelled.", JOB_LABELS)
#: Jobs put back to wait without spending a retry (``reason``: ratelimit, concurrency, delay ...).
JOBS_DEFERRED = Counter(
    "fairlane_jobs_deferred",
    "Jobs deferred without spending a retry, by reason (ratelimit, concurrency, delay).",
    (*JOB_LABELS, "reason"),
)
#: Seconds from the moment a job became runnable (accepted, delay or backoff over) to its start.
JOB_QUEUE_WAIT_SECONDS = Histogram(
    "fairlane_job_queue_wait_seconds",
    "Seconds from the moment a job became runnable to the start of the attempt.",
    JOB_LABELS,
    buckets=DURATION_BUCKETS,
)
#: Seconds an attempt ran, whatever its outcome.
JOB_DURATION_SECONDS = Histogram(
    "fairlane_job_duration_seconds",
    "Seconds an attempt ran, whatever its outcome.",
    JOB_LABELS,
    buckets=DURATION_BUCKETS,
)
#: Attempts running now (summed over live processes).
JOBS_IN_PROGRESS = Gauge(
    "fairlane_jobs_in_progress",
    "Job attempts running now.",
    JOB_LABELS,
    multiprocess_mode="livesum",
)
#: Age in seconds of the oldest attempt running in this process (0 when idle). Refreshed by the
#: worker periodically, as a gauge is a value at the time it was set.
OLDEST_RUNNING_JOB_AGE_SECONDS = Gauge(
    "fairlane_oldest_running_job_age_seconds",
    "Age in seconds of the oldest running attempt (0 when idle).",
    ("queue",),
    multiprocess_mode="livemax",
)
#: Units used in the current window of a configured rate limiter (shared, as the worker sees it).
RATELIMIT_USED = Gauge(
    "fairlane_ratelimit_used",
    "Units used in the current window of a rate limiter, per key and dimension.",
    ("key", "dimension"),
    multiprocess_mode="livemax",
)
#: The configured limit of a rate limiter per window.
RATELIMIT_LIMIT = Gauge(
    "fairlane_ratelimit_limit",
    "Configured units per window of a rate limiter, per key and dimension.",
    ("key", "dimension"),
    multiprocess_mode="livemax",
)

# --- leader metrics (LEADER_REGISTRY; in memory only) ---------------------------------------

#: The registry the scheduler serves; workers never serve it.
LEADER_REGISTRY = CollectorRegistry(auto_describe=True)


class LeaderGauge:
    """A gauge kept in this process's memory and exported only through its registry.

    Unlike :class:`prometheus_client.Gauge` it never writes to the multiprocess directory, so
    it is safe in a process that has ``PROMETHEUS_MULTIPROC_DIR`` set. Label values are passed
    as keyword arguments and must name exactly the gauge's labels. Thread-safe.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry | None = LEADER_REGISTRY,
    ) -> None:
        """Create the gauge and register it on ``registry`` (``None``: don't register)."""
        self.name = name
        self.documentation = documentation
        self.labelnames: tuple[str, ...] = tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def set(self, value: float, **labels: str) -> None:
        """Set the sample for ``labels`` to ``value``."""
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def set_to_current_time(self, **labels: str) -> None:
        """Set the sample for ``labels`` to the current Unix time in seconds."""
        self.set(time.time(), **labels)

    def get(self, **labels: str) -> float | None:
        """Return the sample for ``labels``, or ``None`` if it is not set."""
        key = self._key(labels)
        with self._lock:
            return self._values.get(key)

    def replace(self, samples: Mapping[tuple[str, ...], float]) -> None:
        """Replace every sample at once; keys are label values in ``labelnames`` order.

        Use it for a complete snapshot (e.g. backlog per queue and lane), so a queue or lane
        that disappeared stops being exported.
        """
        fresh: dict[tuple[str, ...], float] = {}
        for key, value in samples.items():
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected label values for {self.labelnames}, got {key!r}")
            fresh[tuple(str(part) for part in key)] = float(value)
        with self._lock:
            self._values = fresh

    def remove(self, **labels: str) -> None:
        """Stop exporting the sample for ``labels`` (no error if it is not set)."""
        key = self._key(labels)
        with self._lock:
            self._values.pop(key, None)

    def clear(self) -> None:
        """Stop exporting every sample (e.g. when this scheduler loses leadership)."""
        with self._lock:
            self._values = {}

    def describe(self) -> Iterable[Metric]:
        """Return the metric family without samples (used by the registry at registration)."""
        return [GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        """Return the metric family with the current samples."""
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            snapshot = sorted(self._values.items())
        for key, value in snapshot:
            family.add_metric(list(key), value)
        return [family]

    def _key(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[name]) for name in self.labelnames)


#: Jobs pending in the ledger backlog (accepted, not yet published), per queue and lane.
BACKLOG_JOBS = LeaderGauge("fairlane_backlog_jobs", "Jobs pending in the ledger backlog.", ("queue", "lane"))
#: Seconds the oldest runnable pending job has waited, per queue and lane (0 when none).
OLDEST_PENDING_AGE_SECONDS = LeaderGauge(
    "fairlane_oldest_pending_age_seconds",
    "Seconds the oldest runnable pending job has waited (0 when none).",
    ("queue", "lane"),
)
#: Dead letters stored in the ledger, per queue.
DEAD_LETTERS = LeaderGauge("fairlane_dead_letters", "Dead letters stored in the ledger.", ("queue",))
#: Distinct tenants with at least one pending job, per queue.
TENANTS_WITH_BACKLOG = LeaderGauge(
    "fairlane_tenants_with_backlog", "Tenants with at least one pending job.", ("queue",)
)
#: Messages ready in a lane's RabbitMQ queue (kept short by admission).
LANE_QUEUE_DEPTH = LeaderGauge(
    "fairlane_lane_queue_depth", "Messages ready in the lane's RabbitMQ queue.", ("queue", "lane")
)
#: Consumers attached to a lane's RabbitMQ queue.
LANE_CONSUMERS = LeaderGauge(
    "fairlane_lane_consumers", "Consumers attached to the lane's RabbitMQ queue.", ("queue", "lane")
)
#: Worker processes alive by heartbeat.
WORKERS = LeaderGauge("fairlane_workers", "Workers alive by heartbeat.")
#: 1 in the scheduler that holds the leader lock, 0 in the others.
SCHEDULER_IS_LEADER = LeaderGauge(
    "fairlane_scheduler_is_leader", "1 if this scheduler holds the leader lock, else 0."
)
#: Unix time of the last successful run of a scheduler task. The label is ``task``, not ``job``:
#: Prometheus attaches its own ``job`` target label and would rename ours to ``exported_job``.
SCHEDULER_LAST_SUCCESS_TIMESTAMP_SECONDS = LeaderGauge(
    "fairlane_scheduler_last_success_timestamp_seconds",
    "Unix time of the last successful run of a scheduler task.",
    ("task",),
)


def _sample_names(family: Metric) -> set[str]:
    if family.type == "counter":
        return {f"{family.name}_total"}
    if family.type == "histogram":
        return {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return {family.name}


_ALL_COLLECTORS: tuple[Counter | Histogram | Gauge | LeaderGauge, ...] = (
    JOBS_ENQUEUED, JOBS_STARTED, JOBS_SUCCEEDED, JOBS_FAILED, JOBS_RETRIED, JOBS_DEAD,
    JOBS_CANCELLED, JOBS_DEFERRED, JOB_QUEUE_WAIT_SECONDS, JOB_DURATION_SECONDS, JOBS_IN_PROGRESS,
    OLDEST_RUNNING_JOB_AGE_SECONDS, RATELIMIT_USED, RATELIMIT_LIMIT,
    BACKLOG_JOBS, OLDEST_PENDING_AGE_SECONDS, DEAD_LETTERS, TENANTS_WITH_BACKLOG, LANE_QUEUE_DEPTH,
    LANE_CONSUMERS, WORKERS, SCHEDULER_IS_LEADER, SCHEDULER_LAST_SUCCESS_TIMESTAMP_SECONDS,
)  # fmt: skip

#: Every sample name fairlane exports (counters as ``_total``, histograms as
#: ``_bucket``/``_sum``/``_count``); dashboards and alert rules may use only these.
ALL_METRIC_NAMES: frozenset[str] = frozenset(
    name for collector in _ALL_COLLECTORS for family in collector.describe() for name in _sample_names(family)
)


# --- multiprocess plumbing --------------------------------------------------------------------

# prometheus_client's multiprocess module is untyped; these aliases give its calls a type.
_mark_dead: Callable[[int, str | None], None] = _multiprocess.mark_process_dead
_merge_into: Callable[[CollectorRegistry, str], object] = _multiprocess.MultiProcessCollector


def prepare_multiprocess_dir(path: Path) -> None:
    """Create ``path`` if needed and delete the metric files (``*.db``) of a previous run.

    Call it once when the process group starts, before any worker process is forked. Only
    ``*.db`` files are removed (the only files prometheus_client reads), so a mistaken path
    loses nothing else.
    """
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)


def mark_process_dead(pid: int, path: Path | None = None) -> None:
    """Drop the ``live*`` gauge files of the exited process ``pid``.

    ``path`` is the multiprocess directory; ``None`` lets prometheus_client use
    ``PROMETHEUS_MULTIPROC_DIR`` from the environment.
    """
    _mark_dead(pid, None if path is None else str(path))


def worker_registry_for_scrape(path: Path) -> CollectorRegistry:
    """Return a fresh registry that merges every process's metrics found in ``path``.

    Serve it from one endpoint per pod; build it per scrape or once, both see current files.
    """
    registry = CollectorRegistry()
    _merge_into(registry, str(path))
    return registry
