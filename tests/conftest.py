"""Shared fixtures: a private RabbitMQ vhost and PostgreSQL database per test run.

Tests talk to the real services at ``FAIRLANE_TEST_BROKER_URL`` / ``FAIRLANE_TEST_PG_URL``
(defaults: the loopback RabbitMQ and PostgreSQL). Each run creates its own vhost (with
``rabbitmqctl``) and database, and removes both at the end. When neither service is
reachable but Docker is, testcontainers starts them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.deployment import private_database, private_vhost

BROKER_URL = os.environ.get("FAIRLANE_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
PG_URL = os.environ.get("FAIRLANE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RUN_ID = uuid.uuid4().hex[:10]


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=2):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    return (
        shutil.which("docker") is not None
        and subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
    )


@pytest.fixture(scope="session")
def broker_server_url() -> Iterator[str]:
    """A reachable RabbitMQ (the loopback one, or a testcontainers one)."""
    if _reachable(BROKER_URL):
        yield BROKER_URL
        return
    if not _docker_available():
        pytest.fail(f"RabbitMQ is not reachable at {BROKER_URL} and Docker is not available: start RabbitMQ")
    from testcontainers.rabbitmq import RabbitMqContainer

    with RabbitMqContainer("rabbitmq:3.13") as container:
        yield f"amqp://guest:guest@{container.get_container_host_ip()}:{container.get_exposed_port(5672)}/%2F"


@pytest.fixture(scope="session")
def broker_url(broker_server_url: str) -> Iterator[str]:
    """A private vhost for this test run, removed afterwards."""
    with private_vhost(broker_server_url, f"fairlane-test-{RUN_ID}") as url:
        yield url


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A reachable PostgreSQL (the loopback one, or a testcontainers one)."""
    if _reachable(PG_URL):
        yield PG_URL
        return
    if not _docker_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL} and Docker is not available: start PostgreSQL")
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16", driver=None) as container:
        yield container.get_connection_url()


@pytest.fixture(scope="session")
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A private database for this test run, dropped afterwards."""
    with private_database(postgres_server_url, f"fairlane_test_{RUN_ID}") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh embedded ledger for one test."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"
