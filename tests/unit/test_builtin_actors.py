"""The built-in actors: ``ingest`` against an SQLite ledger, ``webhook`` against a local HTTP server."""

from __future__ import annotations

import importlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import pytest
import sqlalchemy as sa
from dramatiq.broker import MessageProxy

import fairlane
from fairlane.ledger.admission import NewJob
from fairlane.ledger.database import create_ledger_engine, migrate
from fairlane.ledger.schema import ingested_records
from fairlane.middleware.context import JobContext
from fairlane.settings import Settings

BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@dataclass
class BuiltIns:
    """The app the actor modules were imported under, and the modules themselves."""

    app: fairlane.App
    ingest: ModuleType
    webhook: ModuleType


@pytest.fixture(scope="module")
def builtins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltIns]:
    # Importing the actor modules declares actors on the global app, so build one first
    # (configure does not connect to RabbitMQ until something is published).
    database = tmp_path_factory.mktemp("app") / "app.db"
    # The local receiver listens on loopback, which webhooks refuse unless allowed.
    app = fairlane.configure(
        Settings(
            database_url=f"sqlite:///{database}",
            broker_url=BROKER_URL,
            webhook_allowed_networks=("127.0.0.0/8",),
        )
    )
    package = importlib.import_module("fairlane.actors")
    ingest, webhook = package.ingest, package.webhook
    yield BuiltIns(app=app, ingest=ingest, webhook=webhook)
    app.close()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    settings = Settings(database_url="sqlite:///" + str(tmp_path / "l.db"), broker_url=BROKER_URL)
    engine = create_ledger_engine(settings)
    migrate(engine, settings)
    yield engine
    engine.dispose()


def _rows(engine: sa.Engine, job_id: str) -> list[sa.Row[Any]]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.select(ingested_records)
                .where(ingested_records.c.job_id == job_id)
                .order_by(ingested_records.c.item_index)
            )
        )


# -- declarations ---------------------------------------------------------------------------------


def test_importing_the_package_declares_both_actors_with_their_retry_policy(builtins: BuiltIns) -> None:
    # Given the built-ins imported as a worker would import them
    ingest = builtins.ingest.ingest
    webhook = builtins.webhook.webhook

    # Then both actors are on the broker, on their own queues
    assert ingest.broker.get_actor("ingest") is ingest
    assert webhook.broker.get_actor("webhook") is webhook
    assert (ingest.queue_name, webhook.queue_name) == ("ingest", "webhooks")
    # And bad batches / rejected webhooks are never retried, while transient failures are
    assert ingest.options["max_retries"] == 3 and ingest.options["min_backoff"] == 500
    assert ingest.options["throws"] == (builtins.ingest.InvalidBatch,)
    assert webhook.options["max_retries"] == 5 and webhook.options["min_backoff"] == 1000
    assert webhook.options["throws"] == (builtins.webhook.WebhookRejected,)
    assert not issubclass(builtins.webhook.WebhookRetryable, webhook.options["throws"])


# -- ingest ---------------------------------------------------------------------------------------


def test_store_records_stores_valid_records_and_reports_each_bad_one(
    builtins: BuiltIns, engine: sa.Engine
) -> None:
    # Given a batch mixing good records, a non-object, one without the key and one with a null key
    records: list[Any] = [{"sku": "A-1", "qty": 3}, "not an object", {"qty": 1}, {"sku": 7}, {"sku": None}]

    # When it is stored keyed by "sku"
    summary = builtins.ingest.store_records(engine, "job-1", "store-42", records, "sku")

    # Then the good records are stored, with their index, tenant and key
    assert summary.as_result()["stored"] == 2
    rows = _rows(engine, "job-1")
    assert [(row.item_index, row.tenant, row.record_key, row.data) for row in rows] == [
        (0, "store-42", "A-1", {"sku": "A-1", "qty": 3}),
        (3, "store-42", "7", {"sku": 7}),
    ]
    # And each bad record is reported by index with the reason
    assert summary.failed == 3
    assert [error["index"] for error in summary.errors] == [1, 2, 4]
    assert "JSON object" in summary.errors[0]["error"]
    assert "'sku'" in summary.errors[1]["error"] and "'sku'" in summary.errors[2]["error"]


def test_store_records_run_twice_for_one_job_stores_each_record_once(
    builtins: BuiltIns, engine: sa.Engine
) -> None:
    # Given a batch larger than one insert chunk, already stored once (a crashed attempt)
    records = [{"n": n} for n in range(450)]
    builtins.ingest.store_records(engine, "job-2", "t", records[:300])

    # When the retried attempt stores the whole batch
    summary = builtins.ingest.store_records(engine, "job-2", "t", records)

    # Then every record is in the ledger exactly once, and the summary counts all of them
    assert summary.stored == 450 and summary.failed == 0
    rows = _rows(engine, "job-2")
    assert [row.item_index for row in rows] == list(range(450))
    assert [row.data for row in rows] == records
    assert all(row.record_key is None for row in rows)


def test_store_records_rejects_an_oversize_record_but_keeps_the_rest(
    builtins: BuiltIns, engine: sa.Engine
) -> None:
    # Given a record just over 64 KiB encoded between two small ones
    limit = builtins.ingest.MAX_RECORD_BYTES
    records = [{"a": 1}, {"blob": "x" * limit}, {"b": 2}]

    # When the batch is stored
    summary = builtins.ingest.store_records(engine, "job-3", "t", records)

    # Then only the oversize record fails, saying how big it was
    assert (summary.stored, summary.failed) == (2, 1)
    assert summary.errors[0]["index"] == 1
    assert f"limit is {limit}" in summary.errors[0]["error"]
    assert [row.item_index for row in _rows(engine, "job-3")] == [0, 2]


def test_store_records_lists_the_first_hundred_errors_and_counts_all(
    builtins: BuiltIns, engine: sa.Engine
) -> None:
    # Given 150 records that are not objects
    records: list[Any] = list(range(150))

    # When the batch is stored
    summary = builtins.ingest.store_records(engine, "job-4", "t", records)

    # Then all 150 count as failed, but the result lists only the first 100
    assert (summary.stored, summary.failed) == (0, 150)
    assert [error["index"] for error in summary.errors] == list(range(100))


@pytest.mark.parametrize(
    ("records", "key_field", "message"),
    [
        ({"not": "a list"}, None, "must be a list"),
        ([{}] * 10_001, None, "limit is 10000"),
        ([{"a": 1}], "", "key_field"),
        ([{"a": 1}], 5, "key_field"),
    ],
    ids=["not-a-list", "too-many", "empty-key-field", "non-string-key-field"],
)
def test_store_records_refuses_a_bad_batch_and_stores_nothing(
    builtins: BuiltIns, engine: sa.Engine, records: Any, key_field: Any, message: str
) -> None:
    # Given an unusable batch
    # When it is stored
    with pytest.raises(builtins.ingest.InvalidBatch, match=message):
        builtins.ingest.store_records(engine, "job-5", "t", records, key_field)

    # Then the job fails with InvalidBatch and nothing is written
    assert _rows(engine, "job-5") == []


def test_ingest_actor_stores_for_the_running_jobs_tenant_and_reports_progress(builtins: BuiltIns) -> None:
    # Given a running ingest job of tenant store-42, as a worker would start it
    app = builtins.app
    job_id = str(uuid.uuid4())
    app.admission.accept(
        NewJob(
            id=job_id,
            actor="ingest",
            queue="ingest",
            tenant="store-42",
            lane="normal",
            lane_rank=2,
            cost=1.0,
            message="{}",
            idempotency_key=None,
        )
    )
    app.jobs.start(job_id, "worker-1")
    message = dramatiq.Message(
        queue_name="ingest",
        actor_name="ingest",
        args=(),
        kwargs={},
        options={"tenant": "store-42"},
        message_id=job_id,
    )
    context = JobContext(app.jobs)
    context.before_process_message(app.broker, MessageProxy(message))
    records: list[Any] = [{"id": f"r{n}"} for n in range(250)] + [["bad"]]

    # When the actor runs
    try:
        result = builtins.ingest.ingest.fn(records, key_field="id")
    finally:
        context.after_process_message(app.broker, MessageProxy(message))

    # Then it returns the summary as JSON, and the rows belong to this job and tenant
    assert (result["stored"], result["failed"]) == (250, 1)
    assert result["errors"][0]["index"] == 250 and "JSON object" in result["errors"][0]["error"]
    assert json.loads(json.dumps(result)) == result
    rows = _rows(app.engine, job_id)
    assert len(rows) == 250
    assert {row.tenant for row in rows} == {"store-42"}
    assert rows[-1].record_key == "r249"
    # And the job's progress shows the whole batch handled
    progress = app.jobs.get(job_id).progress
    assert progress is not None and (progress["done"], progress["total"]) == (251, 251)


# -- webhook --------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A local HTTP server whose path picks the answer; it remembers what it received."""

    base_url: str
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, dict(self.headers.items()), body))
        answers = {
            "/ok": (200, b'{"accepted": true}'),
            "/big": (200, b"y" * 5000),
            "/fail": (500, b"boom"),
            "/busy": (429, b"slow down"),
            "/missing": (404, b"no such hook"),
            "/moved": (302, b""),
        }
        route = urlsplit(self.path).path
        if route == "/slow":
            time.sleep(1.5)
            answers["/slow"] = (200, b"late")
        status, payload = answers[route]
        try:
            self.send_response(status)
            if status == 302:
                self.send_header("Location", "/ok")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up (timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    received: list[tuple[str, dict[str, str], bytes]] = []
    handler = type("Handler", (_Handler,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Receiver(base_url=f"http://127.0.0.1:{server.server_address[1]}", received=received)
    server.shutdown()
    server.server_close()


@pytest.fixture
def fresh(receiver: Receiver) -> Receiver:
    receiver.received.clear()
    return receiver


def test_webhook_posts_json_and_returns_status_and_body(builtins: BuiltIns, fresh: Receiver) -> None:
    # Given a receiver that accepts the call
    # When a payload is posted with a custom header
    result = builtins.webhook.webhook.fn(
        fresh.base_url + "/ok", {"order": 17, "note": "café"}, headers={"X-Signature": "abc"}, timeout=5
    )

    # Then the caller gets the status and body back
    assert result == {"status": 200, "body": '{"accepted": true}'}
    # And the receiver got the payload as JSON, with the header
    [(path, headers, body)] = fresh.received
    assert path == "/ok"
    assert json.loads(body) == {"order": 17, "note": "café"}
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Signature"] == "abc"


def test_webhook_returns_only_the_first_2_kib_of_the_body(builtins: BuiltIns, fresh: Receiver) -> None:
    # Given a receiver answering with a 5000-byte body
    # When a payload is posted
    result = builtins.webhook.webhook.fn(fresh.base_url + "/big", {})

    # Then the result holds only the first 2048 characters
    assert result == {"status": 200, "body": "y" * 2048}


@pytest.mark.parametrize(("path", "status"), [("/fail", 500), ("/busy", 429)])
def test_webhook_server_errors_and_throttling_are_retryable(
    builtins: BuiltIns, fresh: Receiver, path: str, status: int
) -> None:
    # Given a receiver answering 500 or 429
    # When a payload is posted
    with pytest.raises(builtins.webhook.WebhookRetryable) as raised:
        builtins.webhook.webhook.fn(fresh.base_url + path, {"n": 1})

    # Then the job will be retried, knowing the status; the payload did reach the receiver
    assert raised.value.status == status
    assert [json.loads(body) for _, _, body in fresh.received] == [{"n": 1}]


@pytest.mark.parametrize(("path", "status"), [("/missing", 404), ("/moved", 302)])
def test_webhook_client_errors_and_redirects_are_rejected_without_following(
    builtins: BuiltIns, fresh: Receiver, path: str, status: int
) -> None:
    # Given a receiver answering 404, or redirecting elsewhere
    # When a payload with a credential header is posted
    with pytest.raises(builtins.webhook.WebhookRejected) as raised:
        builtins.webhook.webhook.fn(
            fresh.base_url + path, {"n": 1}, headers={"Authorization": "Bearer s3cret"}
        )

    # Then the job fails for good, and the redirect was not followed (the credential went nowhere else)
    assert raised.value.status == status
    assert [received_path for received_path, _, _ in fresh.received] == [path]


def test_webhook_timeout_is_retryable(builtins: BuiltIns, fresh: Receiver) -> None:
    # Given a receiver slower than the timeout
    # When a payload is posted with a 0.3 s timeout
    started = time.monotonic()
    with pytest.raises(builtins.webhook.WebhookRetryable, match="timed out"):
        builtins.webhook.webhook.fn(fresh.base_url + "/slow", {"n": 1}, timeout=0.3)

    # Then the call gives up at the timeout instead of waiting for the answer
    assert time.monotonic() - started < 1.4


def test_webhook_connection_refused_is_retryable(builtins: BuiltIns) -> None:
    # Given a port nobody listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    # When a payload is posted there
    # Then the job will be retried
    with pytest.raises(builtins.webhook.WebhookRetryable):
        builtins.webhook.webhook.fn(f"http://127.0.0.1:{port}/hook", {"n": 1}, timeout=2)


@pytest.mark.parametrize(
    ("url", "payload", "headers", "timeout", "message"),
    [
        ("file:///etc/passwd", {}, None, 5, "scheme"),
        ("ftp://example.com/x", {}, None, 5, "scheme"),
        ("http:///no-host", {}, None, 5, "no host"),
        ("http://example.com/a b", {}, None, 5, "ASCII"),
        ("http://example.com/", {}, None, 0, "timeout"),
        ("http://example.com/", {}, None, 61, "timeout"),
        ("http://example.com/", {}, {"X-N": 1}, 5, "string value"),
        ("http://example.com/", {}, {"X-A": "a\r\nX-Injected: 1"}, 5, "CR/LF"),
        ("http://example.com/", {}, {"Bad Name": "v"}, 5, "header name"),
        ("http://example.com/", {}, {"Content-Length": "1"}, 5, "set by the HTTP client"),
        ("http://example.com/", {}, {f"X-{n}": "v" for n in range(51)}, 5, "limit is 50"),
        ("http://example.com/", {"x": float("nan")}, None, 5, "not valid JSON"),
    ],
)
def test_webhook_refuses_bad_input_without_sending(
    builtins: BuiltIns, url: str, payload: Any, headers: Any, timeout: Any, message: str
) -> None:
    # Given input the webhook cannot send
    # When the actor runs
    # Then it fails for good with a message naming the problem, before any request is made
    with pytest.raises(builtins.webhook.WebhookRejected, match=message) as raised:
        builtins.webhook.webhook.fn(url, payload, headers=headers, timeout=timeout)
    assert raised.value.status is None


def test_webhook_logs_host_and_status_but_never_header_values_or_path(
    builtins: BuiltIns, fresh: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a call carrying a secret in a header and in the URL path
    caplog.set_level(logging.DEBUG, logger="fairlane")

    # When one call succeeds and one is answered 500
    builtins.webhook.webhook.fn(
        fresh.base_url + "/ok?token=path-secret", {}, headers={"Authorization": "hdr-secret"}
    )
    with pytest.raises(builtins.webhook.WebhookRetryable) as raised:
        builtins.webhook.webhook.fn(fresh.base_url + "/fail", {}, headers={"Authorization": "hdr-secret"})

    # Then the logs name host and status, one key=value line per event
    lines = [record.getMessage() for record in caplog.records if record.name.startswith("fairlane.actors")]
    assert lines == [
        "event=webhook_sent host=127.0.0.1 status=200",
        "event=webhook_failed host=127.0.0.1 status=500 retryable=True",
    ]
    # And no secret reaches the logs or the error stored in the ledger
    assert "secret" not in caplog.text
    assert "secret" not in str(raised.value)


# -- webhook: internal addresses are refused (SSRF) ---------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",  # loopback
        "::1",
        "10.1.2.3",  # private
        "172.16.0.1",
        "192.168.1.1",
        "fd00::1",
        "169.254.169.254",  # link-local: cloud metadata
        "fe80::1%eth0",
        "100.64.0.1",  # shared address space (carrier-grade NAT)
        "224.0.0.1",  # multicast
        "ff02::1",
        "0.0.0.0",  # unspecified
        "240.0.0.1",  # reserved
        "192.0.2.10",  # documentation
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
    ],
)
def test_webhook_refuses_every_non_public_address(builtins: BuiltIns, address: str) -> None:
    assert not builtins.webhook.address_allowed(address)


def test_webhook_allows_public_addresses_and_allowed_networks(builtins: BuiltIns) -> None:
    import ipaddress

    # Given public addresses, and an internal network an operator allowed
    internal = (ipaddress.ip_network("10.20.0.0/16"),)

    # Then public ones pass, and only the allowed internal network passes with the allow-list
    assert builtins.webhook.address_allowed("93.184.216.34")
    assert builtins.webhook.address_allowed("2606:4700:4700::1111")
    assert builtins.webhook.address_allowed("10.20.3.4", internal)
    assert not builtins.webhook.address_allowed("10.21.3.4", internal)


def test_webhook_to_a_hostname_resolving_to_loopback_is_refused_without_sending(
    builtins: BuiltIns, fresh: Receiver
) -> None:
    # Given the local receiver reached through a hostname ("localhost") and no allow-list
    port = urlsplit(fresh.base_url).port
    post_json = builtins.webhook.post_json

    # When posting to it, then the call is refused (not retried), naming the address and the setting
    with pytest.raises(
        builtins.webhook.WebhookAddressRefused, match=r"127\.0\.0\.1.*WEBHOOK_ALLOWED_NETWORKS"
    ):
        post_json(f"http://localhost:{port}/ok", {"x": 1}, allowed=())
    with pytest.raises(builtins.webhook.WebhookRejected):
        post_json("http://169.254.169.254/latest/meta-data", {}, allowed=(), timeout=2)

    # And nothing reached the receiver
    assert fresh.received == []


def test_webhook_connects_only_to_the_checked_address_of_a_mixed_dns_answer(
    builtins: BuiltIns, fresh: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ipaddress

    # Given a hostname whose DNS answer mixes a private address and the (allowed) loopback receiver
    port = urlsplit(fresh.base_url).port
    real_getaddrinfo = socket.getaddrinfo

    def answer(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "hooks.internal.test":
            private = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", port))
            return [private, *real_getaddrinfo("127.0.0.1", *args, **kwargs)]
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", answer)

    # When posting with loopback allowed (and 10/8 not)
    result = builtins.webhook.post_json(
        f"http://hooks.internal.test:{port}/ok", {"x": 1}, allowed=(ipaddress.ip_network("127.0.0.0/8"),)
    )

    # Then the call went to the allowed address only, with the hostname as Host
    assert result["status"] == 200
    assert fresh.received[0][1]["Host"] == f"hooks.internal.test:{port}"
