"""``fairlane api MODULE --port P --workers N``: the real command, serving the API over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from fairlane.app import App
from fairlane.ledger.api_keys import ApiKeyStore

from .process_actors import QUEUE_VARIABLE
from .support import eventually
from .worker_processes import REPO_ROOT, STARTUP, worker_environment


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        return httpx2.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx2.HTTPError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_fairlane_api_serves_the_modules_actors(
    app: App, broker_url: str, ledger_url: str, tmp_path: Path, queue: str, workers: int
) -> None:
    # Given `fairlane api` started with the module declaring the actors, on a port of its own
    port = _free_port()
    env = worker_environment(broker_url, ledger_url, tmp_path, queue)
    assert env[QUEUE_VARIABLE] == queue
    command = [sys.executable, "-m", "fairlane.cli", "api", "tests.integration.process_actors"]
    command += ["--port", str(port), "--workers", str(workers)]
    log = tmp_path / "api.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {ApiKeyStore(app.engine).create('acme-server')[1]}"}
    try:
        eventually(lambda: _answers(url), timeout=STARTUP, message=f"api answering; log: {log}")

        # When a job of the module's actor is submitted, once right and once with wrong arguments
        accepted = httpx2.post(
            f"{url}/v1/jobs", json={"actor": "slow_step", "args": [str(tmp_path), 0]}, headers=headers
        )
        refused = httpx2.post(f"{url}/v1/jobs", json={"actor": "slow_step", "args": []}, headers=headers)

        # Then the first is accepted on the module's queue, the second refused by its signature
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["queue"] == queue
        assert refused.status_code == 422
        assert "slow_step(marker_dir, seconds)" in refused.json()["detail"]
        assert httpx2.get(f"{url}/readyz").status_code == 200

        # When six requests without a key arrive, on connections of their own
        for _ in range(6):
            assert httpx2.get(f"{url}/v1/jobs").status_code == 401

        # Then /metrics counts all six, whichever process served each and whichever serves the scrape
        sample = 'fairlane_api_requests_total{method="GET",route="/v1/jobs",status="4xx"} 6.0'
        for _ in range(4):
            assert sample in httpx2.get(f"{url}/metrics").text.splitlines()
    finally:
        # The API stops on SIGTERM (uvicorn's graceful shutdown), its worker processes with it
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    # (uvicorn re-raises the signal once shut down, so the exit status is the signal's)
    assert process.returncode in (0, -signal.SIGTERM), log.read_text(errors="replace")[-3000:]
