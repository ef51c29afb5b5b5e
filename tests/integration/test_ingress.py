"""The AMQP ingress against real RabbitMQ and both ledgers: jobs in, refusals dead-lettered with
their reason, redeliveries deduplicated, and nothing lost while the ledger is down.

The ingress queues have fixed names in the test run's vhost, so each test starts them empty.
Messages are published as RabbitMQ's ``guest`` (the tests' user): RabbitMQ accepts a
``user_id`` property only if it names the connection's user, so the tenant map maps ``guest``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest

import fairlane
from fairlane.app import App
from fairlane.broker import REASON_HEADER
from fairlane.ingress import (
    INGRESS_DEAD_LETTER_QUEUE,
    INGRESS_EXCHANGE,
    INGRESS_QUEUE,
    USER_HEADER,
    Ingress,
    ingress_job_id,
)
from fairlane.ledger.actors import CatalogEntry
from fairlane.worker import running_worker

from .support import eventually, lane_depth
from .worker_processes import REPO_ROOT, STARTUP, worker_environment

USER = "guest"


@pytest.fixture
def tenant() -> str:
    """A tenant no other test submits for (the PostgreSQL ledger is shared by the test run)."""
    return f"billing-{uuid.uuid4().hex[:8]}"


def _ingress_app(
    make_app: Callable[..., App], broker_url: str, tenants: dict[str, str], **settings: Any
) -> App:
    """An app whose ingress maps RabbitMQ users by ``tenants``, with the ingress queues declared and empty."""
    app = make_app(ingress_tenants=tenants, **settings)
    with _channel(broker_url) as channel:
        Ingress(app).declare(channel)
        channel.queue_purge(INGRESS_QUEUE)
        channel.queue_purge(INGRESS_DEAD_LETTER_QUEUE)
    return app


def _declare_export_catalog(queue: str) -> Any:
    @fairlane.actor(queue_name=queue)
    def export_catalog(store_id: int, full: bool = False) -> int:
        return store_id * 2

    return export_catalog


@pytest.fixture
def ingress_app(make_app: Callable[..., App], tenant: str, broker_url: str) -> App:
    """An app whose ingress maps ``guest`` to ``tenant``."""
    return _ingress_app(make_app, broker_url, {USER: tenant})


@pytest.fixture
def export_catalog(ingress_app: App, queue: str) -> Any:
    return _declare_export_catalog(queue)


@contextlib.contextmanager
def _channel(broker_url: str) -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def _publish(broker_url: str, body: bytes | dict[str, Any], **properties: Any) -> str:
    """Publish one message to the ingress exchange as ``guest``; returns its message id."""
    values: dict[str, Any] = {
        "content_type": "application/json",
        "delivery_mode": 2,
        "message_id": str(uuid.uuid4()),
        "user_id": USER,
    }
    values.update(properties)
    payload = json.dumps(body).encode() if isinstance(body, dict) else body
    with _channel(broker_url) as channel:
        channel.basic_publish(INGRESS_EXCHANGE, "", payload, pika.BasicProperties(**values))
    return str(values["message_id"])


def _depth(broker_url: str, name: str) -> int:
    """Ready (unacked excluded) messages in ``name``."""
    with _channel(broker_url) as channel:
        return int(channel.queue_declare(name, passive=True).method.message_count)


def _dead_letters(broker_url: str) -> list[tuple[bytes, Any]]:
    """Bodies and properties of the ingress dead letters, taken off the queue."""
    found = []
    with _channel(broker_url) as channel:
        while True:
            method, properties, body = channel.basic_get(INGRESS_DEAD_LETTER_QUEUE, auto_ack=True)
            if method is None:
                return found
            found.append((body, properties))


@contextlib.contextmanager
def _running(ingress: Ingress) -> Iterator[None]:
    """The ingress consuming in a thread; on exit it stops and returns what it holds unacked."""
    stop = threading.Event()
    thread = threading.Thread(target=ingress.run, args=(stop,), name="ingress")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the ingress did not stop"


def test_valid_message_becomes_a_job_of_the_mapped_tenant_and_runs(
    ingress_app: App, export_catalog: Any, queue: str, tenant: str, broker_url: str
) -> None:
    # Given a running ingress and a worker
    with _running(Ingress(ingress_app)), running_worker(ingress_app, threads=2, shutdown_timeout=10):
        # When guest publishes a job with a priority and keyword arguments
        message_id = _publish(
            broker_url,
            {"actor": "export_catalog", "args": [21], "kwargs": {"full": True}, "priority": "high"},
        )

        # Then it becomes a job of guest's tenant, in the high lane, which runs to its result
        job_id = ingress_job_id(tenant, message_id)
        eventually(lambda: fairlane.jobs.list(tenant=tenant) != [], message="ingress job stored")
        job = fairlane.jobs.wait(job_id, timeout=30)
        assert (job.tenant, job.priority, job.queue, job.state) == (tenant, "high", queue, "succeeded")
        assert job.result == 42

    # And the message was acked, and nothing was dead-lettered
    assert _depth(broker_url, INGRESS_QUEUE) == 0
    assert _dead_letters(broker_url) == []


def test_body_tenant_equal_to_the_mapped_one_and_a_delay_are_accepted(
    ingress_app: App, export_catalog: Any, tenant: str, broker_url: str
) -> None:
    # Given a running ingress
    with _running(Ingress(ingress_app)):
        # When a message names its own tenant, an idempotency key and a delay
        body = {
            "actor": "export_catalog",
            "args": [1],
            "tenant": tenant,
            "idempotency_key": "k1",
            "delay_ms": 60_000,
        }
        message_id = _publish(broker_url, body)

        # Then the job waits for its delay with the key it was given
        eventually(lambda: fairlane.jobs.list(tenant=tenant) != [], message="ingress job stored")
    job = fairlane.jobs.get(ingress_job_id(tenant, message_id))
    assert (job.state, job.idempotency_key) == ("pending", "k1")
    assert job.next_run_at is not None and job.enqueued_at is not None
    assert (job.next_run_at - job.enqueued_at).total_seconds() >= 59


def test_actor_declared_only_by_a_worker_elsewhere_is_validated_against_the_catalog(
    ingress_app: App, queue: str, tenant: str, broker_url: str
) -> None:
    # Given an actor another service's worker declared (this process does not declare it)
    def resize(image: str, width: int = 100) -> None:
        pass

    name = f"resize_{uuid.uuid4().hex[:8]}"
    ingress_app.broker.catalog.publish([CatalogEntry.describe(name, queue, resize, {})], "images-host:1")

    with _running(Ingress(ingress_app)):
        # When one message fits its signature and one does not
        fits = _publish(broker_url, {"actor": name, "args": ["a.png"], "kwargs": {"width": 5}})
        _publish(broker_url, {"actor": name, "kwargs": {"height": 5}})
        eventually(lambda: _depth(broker_url, INGRESS_DEAD_LETTER_QUEUE) == 1, message="misfit dead-lettered")
        eventually(lambda: fairlane.jobs.list(tenant=tenant) != [], message="fitting job stored")

    # Then the fitting one is a job on the declared actor's queue, and the other was refused
    [job] = fairlane.jobs.list(tenant=tenant)
    assert (job.id, job.queue) == (ingress_job_id(tenant, fits), queue)
    [(_body, dead_properties)] = _dead_letters(broker_url)
    assert "do not fit" in dead_properties.headers[REASON_HEADER]


BIG = {"actor": "export_catalog", "args": ["y" * 300_000]}


@pytest.mark.parametrize(
    ("body", "properties", "tenants", "reason"),
    [
        (b"not json{", {}, None, "body is not JSON"),
        (b"[1, 2]", {}, None, "body must be a JSON object"),
        (json.dumps(BIG).encode(), {}, None, "FAIRLANE_INGRESS_MAX_BYTES"),
        ({"actor": "export_catalog", "args": [1]}, {"content_type": "text/plain"}, None, "content_type"),
        ({"actor": "no_such_actor"}, {}, None, "unknown actor 'no_such_actor'"),
        ({"actor": "export_catalog"}, {}, None, "missing a required argument: 'store_id'"),
        ({"actor": "export_catalog", "args": [1], "kwargs": {"colour": 1}}, {}, None, "unexpected keyword"),
        ({"actor": "export_catalog", "args": {"store_id": 1}}, {}, None, "args must be a JSON array"),
        ({"actor": "export_catalog", "args": [1], "prio": "high"}, {}, None, "unknown fields ['prio']"),
        ({"actor": "export_catalog", "args": [1], "priority": "critical"}, {}, None, "unknown priority"),
        ({"actor": "export_catalog", "args": [1], "priority": 3}, {}, None, "priority must be a lane name"),
        ({"actor": "export_catalog", "args": [1], "delay_ms": -1}, {}, None, "delay must be a non-negative"),
        ({"actor": "export_catalog", "args": [1], "idempotency_key": ""}, {}, None, "idempotency_key must"),
        ({"actor": "export_catalog", "args": [1]}, {"user_id": None}, None, "no user_id property"),
        (
            {"actor": "export_catalog", "args": [1]},
            {},
            {"svc-other": "other"},
            "RabbitMQ user 'guest' has no",
        ),
        ({"actor": "export_catalog", "args": [1], "tenant": "other"}, {}, None, "tenant 'other' is not"),
        ({"actor": "export_catalog", "args": [1]}, {"message_id": None}, None, "no message_id property"),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "too-big",
        "not-json-content-type",
        "unknown-actor",
        "missing-argument",
        "unexpected-keyword",
        "args-not-a-list",
        "unknown-field",
        "unknown-priority",
        "priority-not-a-string",
        "negative-delay",
        "empty-idempotency-key",
        "missing-user-id",
        "unmapped-user",
        "tenant-mismatch",
        "missing-message-id",
    ],
)
def test_invalid_message_is_dead_lettered_with_its_reason_and_nothing_is_stored(
    make_app: Callable[..., App],
    queue: str,
    tenant: str,
    broker_url: str,
    body: bytes | dict[str, Any],
    properties: dict[str, Any],
    tenants: dict[str, str] | None,
    reason: str,
) -> None:
    # Given a running ingress (for "unmapped-user", one whose map lacks guest)
    app = _ingress_app(make_app, broker_url, {USER: tenant} if tenants is None else tenants)
    _declare_export_catalog(queue)
    with _running(Ingress(app)):
        # When a message breaks one rule
        message_id = _publish(broker_url, body, **properties)

        # Then it lands in the ingress dead-letter queue
        eventually(
            lambda: _depth(broker_url, INGRESS_DEAD_LETTER_QUEUE) == 1, message="message dead-lettered"
        )

    # With the reason, the publisher and the body as published
    [(dead_body, dead_properties)] = _dead_letters(broker_url)
    assert reason in dead_properties.headers[REASON_HEADER]
    assert dead_properties.headers.get(USER_HEADER) == properties.get("user_id", USER)
    assert dead_properties.message_id == properties.get("message_id", message_id)
    assert dead_body == (json.dumps(body).encode() if isinstance(body, dict) else body)
    # And it was acked, and no job was stored or published
    assert _depth(broker_url, INGRESS_QUEUE) == 0
    assert fairlane.jobs.list(tenant=tenant) == [] and fairlane.jobs.list(queue=queue) == []
    assert all(lane_depth(app, queue, lane) == 0 for lane in app.settings.lanes)


@pytest.mark.parametrize("mapped", ["bad tenant", ""])
def test_tenant_map_with_an_invalid_tenant_stops_the_ingress_at_start(
    make_app: Callable[..., App], mapped: str
) -> None:
    # Given a tenant map whose tenant id send() would refuse
    app = make_app(ingress_tenants={USER: mapped})

    # When an ingress is built, then it refuses to start and names the setting and the user
    with pytest.raises(fairlane.SettingsError, match="FAIRLANE_INGRESS_TENANTS: RabbitMQ user 'guest'"):
        Ingress(app)


def test_crash_between_commit_and_ack_does_not_create_a_second_job(
    ingress_app: App, export_catalog: Any, queue: str, tenant: str, broker_url: str
) -> None:
    # Given a published job message
    message_id = _publish(broker_url, {"actor": "export_catalog", "args": [7]})
    ingress = Ingress(ingress_app)

    # When an ingress takes it, commits its job and dies before the ack (its channel closes)
    with _channel(broker_url) as channel:
        method, properties, body = channel.basic_get(INGRESS_QUEUE, auto_ack=False)
        assert method is not None and not method.redelivered
        first = ingress.accept(properties, body)
    assert first.message_id == ingress_job_id(tenant, message_id)
    assert _depth(broker_url, INGRESS_QUEUE) == 1  # RabbitMQ delivers it again

    # And a running ingress then gets the redelivery
    with _running(ingress):
        eventually(lambda: _depth(broker_url, INGRESS_QUEUE) == 0, message="redelivery taken")

    # Then there is still one job, the first one, published once, and the message is acked
    assert [job.id for job in fairlane.jobs.list(tenant=tenant)] == [first.message_id]
    assert lane_depth(ingress_app, queue, "normal") == 1
    assert _depth(broker_url, INGRESS_QUEUE) == 0
    assert _dead_letters(broker_url) == []


def test_same_message_id_published_twice_is_one_job_but_other_tenants_ids_do_not_collide(
    make_app: Callable[..., App], ingress_app: App, export_catalog: Any, tenant: str, broker_url: str
) -> None:
    # Given a running ingress
    with _running(Ingress(ingress_app)):
        # When the same message id is published twice (a publisher retrying after a lost confirm)
        message_id = _publish(broker_url, {"actor": "export_catalog", "args": [1]})
        _publish(broker_url, {"actor": "export_catalog", "args": [1]}, message_id=message_id)
        eventually(lambda: _depth(broker_url, INGRESS_QUEUE) == 0, message="both taken")

    # Then it is one job
    eventually(lambda: len(fairlane.jobs.list(tenant=tenant)) == 1, message="one job")
    assert _dead_letters(broker_url) == []
    # And the same message id from another tenant names another job
    assert ingress_job_id("someone-else", message_id) != ingress_job_id(tenant, message_id)


class _PostgresOutage:
    """A TCP proxy to the PostgreSQL ledger that the test can cut (dropping every connection)."""

    def __init__(self, ledger_url: str) -> None:
        server = urlsplit(ledger_url)
        self.target = (server.hostname or "127.0.0.1", server.port or 5432)
        self.listener = socket.create_server(("127.0.0.1", 0))
        port = self.listener.getsockname()[1]
        #: The ledger URL through the proxy.
        self.url = ledger_url.replace(f"{server.hostname}:{server.port}", f"127.0.0.1:{port}")
        self.up = threading.Event()
        self.up.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            if not self.up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self, _app: App) -> None:
        """Refuse new connections and drop the open ones: the database is gone."""
        self.up.clear()
        with self._lock:
            for end in self._sockets:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
            self._sockets.clear()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.up.clear()
        self.listener.close()


class _SqliteOutage:
    """The SQLite ledger's directory, which the test can take away as if its volume were unmounted."""

    def __init__(self, tmp_path: Path) -> None:
        self.volume = tmp_path / "volume"
        self.away = tmp_path / "volume.away"
        #: The ledger URL, a file on the volume.
        self.url = f"sqlite:///{self.volume / 'ledger.db'}"

    def cut(self, app: App) -> None:
        """Close the pooled connections and take the directory away: no connection can open."""
        app.engine.dispose()
        self.volume.rename(self.away)

    def restore(self) -> None:
        self.away.rename(self.volume)

    def close(self) -> None:
        if self.away.exists():
            self.restore()


def test_ledger_outage_leaves_the_message_in_rabbitmq_until_the_ledger_is_back(
    make_app: Callable[..., App],
    ledger_url: str,
    tenant: str,
    queue: str,
    broker_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an ingress whose ledger the test can take away: PostgreSQL behind a proxy it controls,
    # or SQLite on a directory it can remove
    outage = _SqliteOutage(tmp_path) if ledger_url.startswith("sqlite") else _PostgresOutage(ledger_url)
    app = _ingress_app(make_app, broker_url, {USER: tenant}, database_url=outage.url)
    _declare_export_catalog(queue)
    ingress = Ingress(app)
    try:
        # When the ledger goes away and a valid message arrives
        outage.cut(app)
        caplog.set_level("WARNING", logger="fairlane.ingress")
        with _running(ingress):
            message_id = _publish(broker_url, {"actor": "export_catalog", "args": [1]})
            eventually(lambda: "event=ingress_ledger_unavailable" in caplog.text, message="accept failed")

        # Then the stopped ingress left the message in RabbitMQ, not dead-lettered
        assert _depth(broker_url, INGRESS_QUEUE) == 1
        assert _depth(broker_url, INGRESS_DEAD_LETTER_QUEUE) == 0

        # And once the ledger is back, the message becomes its job, once
        outage.restore()
        assert fairlane.jobs.list(tenant=tenant) == []
        with _running(ingress):
            eventually(lambda: _depth(broker_url, INGRESS_QUEUE) == 0, message="message taken")
            eventually(lambda: fairlane.jobs.list(tenant=tenant) != [], message="job stored")
        assert [job.id for job in fairlane.jobs.list(tenant=tenant)] == [ingress_job_id(tenant, message_id)]
        assert _depth(broker_url, INGRESS_DEAD_LETTER_QUEUE) == 0
    finally:
        outage.close()


@pytest.fixture
def postgres_app(broker_url: str, postgres_url: str, tmp_path: Path) -> Iterator[App]:
    """This test's app on the PostgreSQL ledger only (as worker processes are tested)."""
    app = fairlane.configure(
        fairlane.Settings(broker_url=broker_url, database_url=postgres_url, results_dir=tmp_path / "results")
    )
    try:
        yield app
    finally:
        app.close()


def test_ingress_process_turns_messages_into_jobs_and_stops_on_sigterm(
    postgres_app: App, postgres_url: str, tenant: str, broker_url: str, tmp_path: Path
) -> None:
    # Given a `fairlane ingress` process with the actors of a module, on the PostgreSQL ledger
    queue = f"ingress_{uuid.uuid4().hex[:12]}"
    with _channel(broker_url) as channel:
        Ingress(postgres_app).declare(channel)
        channel.queue_purge(INGRESS_QUEUE)
        channel.queue_purge(INGRESS_DEAD_LETTER_QUEUE)
    env = worker_environment(
        broker_url, postgres_url, tmp_path, queue, INGRESS_TENANTS=json.dumps({USER: tenant})
    )
    log = tmp_path / "ingress.log"
    command = [sys.executable, "-m", "fairlane.cli", "ingress", "tests.integration.process_actors"]
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        # When a service publishes a job for one of them
        message_id = _publish(broker_url, {"actor": "slow_step", "args": [str(tmp_path), 0]})

        # Then the process stores it
        eventually(
            lambda: fairlane.jobs.list(tenant=tenant) != [],
            timeout=STARTUP,
            message="job stored by the process",
        )
        assert fairlane.jobs.get(ingress_job_id(tenant, message_id)).queue == queue

        # And on SIGTERM it stops consuming and exits cleanly
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "event=ingress_stopped" in log.read_text()
        assert _depth(broker_url, INGRESS_QUEUE) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        print(f"ingress log:\n{log.read_text(errors='replace')[-5000:]}")
