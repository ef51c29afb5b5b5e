"""Fixtures for tests against real RabbitMQ and a real ledger (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from fastapi.testclient import TestClient

import fairlane
from fairlane.api import create_api
from fairlane.app import App
from fairlane.ledger.api_keys import ApiKeyStore
from fairlane.worker import running_worker


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test runs once on the embedded SQLite ledger and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def make_app(broker_url: str, ledger_url: str, tmp_path: Path) -> Iterator[Callable[..., App]]:
    """Build this test's fairlane app (settings overridable), closed at the end."""
    built: list[App] = []

    def _make(**overrides: Any) -> App:
        values: dict[str, Any] = {
            "broker_url": broker_url,
            "database_url": ledger_url,
            "results_dir": tmp_path / "results",
            "admission_interval": 0.05,
            "cancel_poll_interval": 0.05,
            "min_backoff": 20,
            "max_backoff": 200,
            "api_events_interval": 0.05,
        }
        values.update(overrides)
        app = fairlane.configure(fairlane.Settings(**values))
        built.append(app)
        return app

    yield _make
    for app in built:
        app.close()


@pytest.fixture
def app(make_app: Callable[..., App]) -> App:
    """This test's fairlane app with test-friendly defaults."""
    return make_app()


@pytest.fixture
def queue() -> str:
    """An actor queue name no other test uses."""
    return f"q_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def worker(app: App) -> Callable[..., AbstractContextManager[dramatiq.Worker]]:
    """Start an embedded worker on this test's app: ``with worker(threads=2): …``."""

    def _start(threads: int = 4) -> AbstractContextManager[dramatiq.Worker]:
        return running_worker(app, threads, shutdown_timeout=10)

    return _start


@pytest.fixture
def api(app: App) -> Iterator[TestClient]:
    """An HTTP client of this test's app's API (in-process, lifespan included)."""
    with TestClient(create_api(app)) as client:
        yield client


@pytest.fixture
def key_headers(app: App) -> Callable[..., dict[str, str]]:
    """Create an API key in this test's ledger and return its request headers:
    ``key_headers("acme")``, ``key_headers("ops", admin=True)``."""

    def _create(tenant: str, *, admin: bool = False) -> dict[str, str]:
        _record, key = ApiKeyStore(app.engine).create(tenant, admin=admin)
        return {"Authorization": f"Bearer {key}"}

    return _create
