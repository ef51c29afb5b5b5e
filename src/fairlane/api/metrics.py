"""Request metrics of the API, and the ``/metrics`` text they are served in.

Labels are bounded: the route *template* (``/v1/jobs/{job_id}``, never an id; ``unmatched``
for paths no route has), the method (the common ones, else ``OTHER``) and the status class
(``2xx``…``5xx``). The process's job metrics (``fairlane_jobs_enqueued_total`` of submissions)
are on the same default registry and served alongside.

``fairlane api --workers N`` (N > 1) runs prometheus_client's multiprocess mode in
:func:`api_metrics_dir`, so every process serves the sum over all of them, whichever one a
scrape reaches.
"""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fairlane.observability.catalog import worker_registry_for_scrape
from fairlane.settings import Settings

REQUESTS = Counter(
    "fairlane_api_requests_total", "HTTP requests answered by the API.", ["route", "method", "status"]
)
REQUEST_DURATION = Histogram(
    "fairlane_api_request_duration_seconds",
    "Time to answer an HTTP request (to the end of the body; streams: their whole life).",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """ASGI middleware counting and timing every HTTP request by route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def _send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            REQUESTS.labels(route=route, method=method, status=f"{status // 100}xx").inc()
            REQUEST_DURATION.labels(route=route, method=method).observe(time.perf_counter() - started)


def api_metrics_dir(settings: Settings) -> Path:
    """The multiprocess metrics directory of ``fairlane api`` processes."""
    return settings.metrics_dir / "api"


def scrape_registry(settings: Settings) -> CollectorRegistry:
    """What ``/metrics`` serves: every API process's metrics merged, or this process's own."""
    if settings.api_workers > 1:
        return worker_registry_for_scrape(api_metrics_dir(settings))
    return REGISTRY
