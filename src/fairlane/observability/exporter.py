"""The scrape endpoint: one ``/metrics`` HTTP server per pod.

* A worker pod with several processes: the supervisor serves
  :func:`~fairlane.observability.catalog.worker_registry_for_scrape` (every process's
  multiprocess file merged, no ``pid`` label).
* A worker pod with one process: that process serves its own default registry, or the
  merged directory when ``PROMETHEUS_MULTIPROC_DIR`` is set for it.
* A scheduler: :data:`~fairlane.observability.catalog.LEADER_REGISTRY` beside its own process
  metrics (``fairlane_jobs_enqueued_total`` of cron fires).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, start_http_server, values
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from fairlane.observability.catalog import LEADER_REGISTRY

logger = logging.getLogger("fairlane.observability")


def multiprocess_mode_active() -> bool:
    """True when prometheus_client runs in multiprocess mode in this process.

    prometheus_client decides once, at its import, from ``PROMETHEUS_MULTIPROC_DIR``; this asks
    it rather than reading the environment again.
    """
    return values.ValueClass is not values.MutexValue


class CombinedCollector:
    """Several registries served as one (their metric names must not overlap)."""

    def __init__(self, *collectors: Collector) -> None:
        self.collectors = collectors

    def collect(self) -> Iterable[Metric]:
        """Every metric of every collector, in order."""
        for collector in self.collectors:
            yield from collector.collect()


def scheduler_collector() -> CombinedCollector:
    """What a scheduler serves: the leader gauges and its own process metrics."""
    return CombinedCollector(LEADER_REGISTRY, REGISTRY)


@dataclasses.dataclass
class MetricsServer:
    """A running ``/metrics`` server; :meth:`close` stops it."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server.server_port)

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()


def start_metrics_server(port: int, collector: Collector, addr: str = "0.0.0.0") -> MetricsServer | None:
    """Serve ``collector`` at ``http://addr:port/metrics`` from a daemon thread (``port`` 0: don't).

    Returns None, after logging why, if the port can't be bound.
    """
    if port == 0:
        return None
    try:
        server, thread = start_http_server(port, addr=addr, registry=collector)
    except OSError as error:
        # Metrics are not worth stopping the work for; the scrape's absence alerts instead.
        logger.error("event=metrics_server_failed port=%d error=%r", port, str(error))
        return None
    logger.info("event=metrics_server_started port=%d", port)
    return MetricsServer(server, thread)


__all__ = [
    "CombinedCollector",
    "MetricsServer",
    "multiprocess_mode_active",
    "scheduler_collector",
    "start_metrics_server",
]
