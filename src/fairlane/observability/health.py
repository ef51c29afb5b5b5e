"""The health endpoints of a pod, on the health port (separate from the metrics port).

* ``GET /livez``: 200 while the process's heartbeat is fresh (its heartbeat loop runs and
  reaches the ledger), else 503. Kubernetes restarts a pod whose liveness fails.
* ``GET /readyz``: 200 while every consumer is connected to RabbitMQ, else 503.

The body is one line: ``ok`` or the reason for failing.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger("fairlane.observability")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One check's outcome and, when it failed, why."""

    ok: bool
    reason: str = "ok"


@dataclasses.dataclass(frozen=True)
class HealthChecks:
    """The two checks a health server answers with."""

    live: Callable[[], Verdict]
    ready: Callable[[], Verdict]


class _Handler(BaseHTTPRequestHandler):
    server: _HealthHTTPServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/livez":
            check = self.server.checks.live
        elif path == "/readyz":
            check = self.server.checks.ready
        else:
            self._answer(404, "not found: use /livez or /readyz")
            return
        try:
            verdict = check()
        except Exception as error:  # a check that crashes is a failing check
            verdict = Verdict(False, f"check failed: {type(error).__name__}")
        self._answer(200 if verdict.ok else 503, verdict.reason)

    def _answer(self, status: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes arrive every few seconds; don't log each."""


class _HealthHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], checks: HealthChecks) -> None:
        self.checks = checks
        super().__init__(address, _Handler)


class HealthServer:
    """``/livez`` and ``/readyz`` served from a daemon thread."""

    def __init__(self, port: int, checks: HealthChecks, addr: str = "0.0.0.0") -> None:
        self._server = _HealthHTTPServer((addr, port), checks)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fairlane-health", daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        """Start serving; returns self."""
        self._thread.start()
        logger.info("event=health_server_started port=%d", self.port)
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()


def start_health_server(port: int, checks: HealthChecks) -> HealthServer | None:
    """Serve ``checks`` on ``port`` (0: don't). Returns None, after logging why, if it can't bind."""
    if port == 0:
        return None
    try:
        server = HealthServer(port, checks)
    except OSError as error:
        logger.error("event=health_server_failed port=%d error=%r", port, str(error))
        return None
    return server.start()


__all__ = ["HealthChecks", "HealthServer", "Verdict", "start_health_server"]
