"""``fairlane demo`` end to end: a real process, RabbitMQ, and an embedded SQLite ledger."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TENANTS = ("acme", "globex", "initech", "umbrella")
_CELL_BORDERS = re.compile(r"[│┃|]")


def _run_demo(broker_url: str, tmp_path: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FAIRLANE_BROKER_URL": broker_url,
        "FAIRLANE_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "COLUMNS": "160",
        "PYTHONIOENCODING": "utf-8",
    }
    return subprocess.run(
        [sys.executable, "-m", "fairlane.cli", "demo", "--seconds", "50"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        check=False,
    )


def _summary_rows(output: str) -> dict[str, dict[str, str]]:
    """The closing per-tenant table as ``{tenant: {column: cell}}``."""
    rows = [
        [cell.strip() for cell in _CELL_BORDERS.split(line)[1:-1]]
        for line in output.splitlines()
        if len(_CELL_BORDERS.findall(line)) >= 3
    ]
    header = next(row for row in rows if row[:2] == ["tenant", "jobs"])
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows if row[0] in TENANTS}


def test_demo_runs_every_tenants_jobs_to_the_end(broker_url: str, tmp_path: Path) -> None:
    # Given RabbitMQ and an empty directory (the ledger is a SQLite file there)
    # When the demo runs
    demo = _run_demo(broker_url, tmp_path, timeout=90)

    # Then it succeeds and closes with a table of every tenant
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "fairlane demo: per tenant" in demo.stdout, demo.stdout
    table = _summary_rows(demo.stdout)
    assert sorted(table) == sorted(TENANTS), demo.stdout

    # And no job was left unfinished; only umbrella's webhook to a 404 died
    assert {tenant: row["left"] for tenant, row in table.items()} == dict.fromkeys(TENANTS, "0")
    assert {tenant: row["dead"] for tenant, row in table.items()} == {
        "acme": "0",
        "globex": "0",
        "initech": "0",
        "umbrella": "1",
    }
    # And initech's flaky webhooks were retried and still succeeded
    assert int(table["initech"]["retried"]) > 0
    assert table["initech"]["ok"] == table["initech"]["jobs"]

    # And it points at the dead job for a closer look
    assert "fairlane dlq show" in demo.stdout


def test_demo_without_rabbitmq_says_how_to_start_it(tmp_path: Path) -> None:
    # Given no RabbitMQ at the configured address
    # When the demo runs
    demo = _run_demo("amqp://guest:guest@127.0.0.1:1/%2F", tmp_path, timeout=30)

    # Then it fails at once, saying what is wrong and how to fix it
    assert demo.returncode != 0
    assert "RabbitMQ is not reachable" in demo.stdout, demo.stdout
    assert "rabbitmq-server" in demo.stdout
    assert "guest:guest" not in demo.stdout  # the password is masked
