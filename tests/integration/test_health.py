"""Health: the /livez and /readyz server, and a worker's heartbeat row and verdicts."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import fairlane
from fairlane.app import App
from fairlane.ledger.workers import WorkerStore
from fairlane.middleware.tracking import default_worker_id
from fairlane.observability.health import HealthChecks, HealthServer, Verdict
from fairlane.observability.heartbeat import WorkerHeartbeat

from .support import eventually


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_health_server_answers_each_probe_from_its_check() -> None:
    # Given a health server whose checks the test controls
    state = {"live": Verdict(True), "ready": Verdict(False, "consumers not connected: q.normal")}

    def crash() -> Verdict:
        raise RuntimeError("boom")

    server = HealthServer(0, HealthChecks(live=lambda: state["live"], ready=lambda: state["ready"])).start()
    try:
        # Then each path answers with its own check, with the reason when failing
        assert _get(server.port, "/livez") == (200, "ok\n")
        assert _get(server.port, "/readyz") == (503, "consumers not connected: q.normal\n")
        assert _get(server.port, "/metrics")[0] == 404

        # When the checks change, so do the answers
        state["live"], state["ready"] = Verdict(False, "heartbeat is 90 s old"), Verdict(True)
        assert _get(server.port, "/livez") == (503, "heartbeat is 90 s old\n")
        assert _get(server.port, "/readyz?verbose=1") == (200, "ok\n")
    finally:
        server.close()

    # And a check that raises counts as failing
    failing = HealthServer(0, HealthChecks(live=crash, ready=crash)).start()
    try:
        assert _get(failing.port, "/livez") == (503, "check failed: RuntimeError\n")
    finally:
        failing.close()


def test_worker_heartbeat_row_and_verdicts_follow_the_worker(app: App, queue: str, worker: Any) -> None:
    # Given an actor, and a clock the test moves
    @fairlane.actor(queue_name=queue)
    def noop() -> None:
        pass

    now = [1000.0]
    store = WorkerStore(app.engine)

    # When a worker runs
    with worker(threads=2) as running:
        heartbeat = WorkerHeartbeat(app.broker, running, clock=lambda: now[0])
        assert not heartbeat.live().ok  # no heartbeat written yet
        assert heartbeat.beat()

        # Then its row is in the ledger with its queues, and it is live and (once its
        # consumers connect) ready
        rows = {row.worker_id: row for row in store.list()}
        assert queue in rows[default_worker_id()].queues
        assert heartbeat.live().ok
        eventually(lambda: heartbeat.ready().ok, message="consumers connected")

        # When its heartbeat gets older than heartbeat_timeout, it is no longer live
        now[0] += app.settings.heartbeat_timeout + 1
        verdict = heartbeat.live()
        assert not verdict.ok and "heartbeat is" in verdict.reason

    # When the worker has stopped, it is not ready, and its row is gone (a clean stop)
    verdict = heartbeat.ready()
    assert not verdict.ok and "not connected" in verdict.reason
    assert default_worker_id() not in {row.worker_id for row in store.list()}
