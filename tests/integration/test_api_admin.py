"""Dead letters, tenants and queues over HTTP, and the health and metrics endpoints."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import fairlane
from fairlane.api import create_api
from fairlane.app import App

Keys = Callable[..., dict[str, str]]


@pytest.fixture
def acme() -> str:
    """A tenant no other test uses (the PostgreSQL ledger is shared by the test run)."""
    return f"acme-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def globex() -> str:
    """Another tenant of its own."""
    return f"globex-{uuid.uuid4().hex[:8]}"


class Flaky:
    """An actor that fails without retries until ``healthy`` is set."""

    def __init__(self, queue: str) -> None:
        self.healthy = threading.Event()

        @fairlane.actor(queue_name=queue, max_retries=0)
        def charge(order: int) -> dict[str, int]:
            if not self.healthy.is_set():
                raise RuntimeError(f"card declined for order {order}")
            return {"order": order}

        self.charge = charge


def test_dead_letters_listed_shown_requeued_and_purged(
    api: TestClient, key_headers: Keys, queue: str, worker: Callable[..., Any], acme: str, globex: str
) -> None:
    # Given two dead jobs of one tenant and one of another
    flaky = Flaky(queue)
    as_acme, as_globex, ops = key_headers(acme), key_headers(globex), key_headers("ops", admin=True)
    submit = {"actor": "charge"}
    acme_ids = [
        api.post("/v1/jobs", json={**submit, "args": [n]}, headers=as_acme).json()["id"] for n in (1, 2)
    ]
    globex_id = api.post("/v1/jobs", json={**submit, "args": [3]}, headers=as_globex).json()["id"]
    with worker(threads=2):
        for job_id in [*acme_ids, globex_id]:
            fairlane.jobs.wait(job_id, timeout=10)

        # When each tenant lists and opens dead letters
        acme_list = api.get("/v1/dead-letters", headers=as_acme).json()
        shown = api.get(f"/v1/dead-letters/{acme_ids[0]}", headers=as_acme)
        theirs = api.get(f"/v1/dead-letters/{globex_id}", headers=as_acme)

        # Then each sees its own only, with the error and the message it was sent as
        assert sorted(job["id"] for job in acme_list) == sorted(acme_ids)
        assert shown.status_code == 200
        assert shown.json()["error"]["message"] == "card declined for order 1"
        assert shown.json()["message"]["args"] == [1]
        assert shown.json()["message"]["options"]["tenant"] == acme
        assert theirs.status_code == 404
        assert [job["id"] for job in api.get("/v1/dead-letters", headers=as_globex).json()] == [globex_id]

        # And the admin sees every tenant's, or one tenant's
        listed = api.get("/v1/dead-letters", params={"queue": queue}, headers=ops).json()
        assert {job["id"] for job in listed} == {*acme_ids, globex_id}
        one = api.get("/v1/dead-letters", params={"queue": queue, "tenant": globex}, headers=ops).json()
        assert [job["id"] for job in one] == [globex_id]

        # When the admin re-drives one by id once the actor is healthy, and the tenant's others by filter
        flaky.healthy.set()
        single = api.post(f"/v1/dead-letters/{acme_ids[0]}/requeue", headers=ops)
        no_filter = api.post("/v1/dead-letters:requeue", json={}, headers=ops)
        by_filter = api.post("/v1/dead-letters:requeue", json={"tenant": acme, "queue": queue}, headers=ops)

        # Then they run again and succeed; a re-drive without a filter is refused
        assert single.json() == {"count": 1}
        assert no_filter.status_code == 422
        assert by_filter.json() == {"count": 1}
        for job_id in acme_ids:
            assert fairlane.jobs.wait(job_id, timeout=10).state == "succeeded"
        assert api.get(f"/v1/dead-letters/{acme_ids[0]}", headers=as_acme).status_code == 404
        assert api.post(f"/v1/dead-letters/{acme_ids[0]}/requeue", headers=ops).status_code == 404

    # When the admin purges the other tenant's dead letters
    purged = api.post("/v1/dead-letters:purge", json={"older_than_seconds": 0, "tenant": globex}, headers=ops)

    # Then its job is gone, the other tenant's jobs stay
    assert purged.json() == {"count": 1}
    assert api.get(f"/v1/jobs/{globex_id}", headers=ops).status_code == 404
    assert api.get(f"/v1/jobs/{acme_ids[1]}", headers=as_acme).json()["state"] == "succeeded"


def test_dead_letters_without_a_ledger_row_are_listed_and_purged(
    app: App, api: TestClient, key_headers: Keys, queue: str, acme: str
) -> None:
    # Given a queue the ledger knows, and an undecodable message in its dead-letter queue
    @fairlane.actor(queue_name=queue)
    def export() -> None: ...

    ops = key_headers("ops", admin=True)
    api.post("/v1/jobs", json={"actor": "export", "delay_ms": 60_000}, headers=key_headers(acme))
    app.broker.dead_letter_raw(queue, b"\x00not json", "undecodable message: test")

    # When the admin lists raw dead letters of that queue, and a tenant key tries
    listed = api.get("/v1/dead-letters:raw", params={"queue": queue}, headers=ops)
    unknown = api.get("/v1/dead-letters:raw", params={"queue": f"{queue}-never-used"}, headers=ops)
    forbidden = api.get("/v1/dead-letters:raw", headers=key_headers(acme))

    # Then the admin sees it with its reason; an unknown queue has none; tenants may not look
    assert [(row["queue"], row["reason"]) for row in listed.json()] == [(queue, "undecodable message: test")]
    assert unknown.json() == []
    assert forbidden.status_code == 403

    # When every dead letter older than now is purged
    api.post("/v1/dead-letters:purge", json={"older_than_seconds": 0}, headers=ops)

    # Then the raw one is gone too (it stays until then: listing does not remove it)
    assert api.get("/v1/dead-letters:raw", params={"queue": queue}, headers=ops).json() == []


def test_admin_sets_tenant_weight_and_cap(api: TestClient, key_headers: Keys, acme: str) -> None:
    # Given an admin key
    ops = key_headers("ops", admin=True)

    # When it sets a tenant's weight and cap, then clears the cap
    set_both = api.patch(f"/v1/tenants/{acme}", json={"weight": 5, "cap": 2}, headers=ops)
    cleared = api.patch(f"/v1/tenants/{acme}", json={"cap": None}, headers=ops)

    # Then the tenant shows them, and the admin's listing has it
    assert set_both.status_code == 200
    assert (set_both.json()["weight"], set_both.json()["cap"]) == (5.0, 2)
    assert (cleared.json()["weight"], cleared.json()["cap"]) == (5.0, None)
    listed = {row["tenant"]: row for row in api.get("/v1/tenants", headers=ops).json()}
    assert listed[acme]["weight"] == 5.0
    assert fairlane.tenants.stats() and any(
        row.tenant == acme and row.weight == 5.0 for row in fairlane.tenants.stats()
    )

    # And bad changes are refused with a problem naming the field
    bad = [
        api.patch(f"/v1/tenants/{acme}", json={}, headers=ops),
        api.patch(f"/v1/tenants/{acme}", json={"weight": 0}, headers=ops),
        api.patch(f"/v1/tenants/{acme}", json={"weight": None}, headers=ops),
        api.patch(f"/v1/tenants/{acme}", json={"cap": 0}, headers=ops),
        api.patch(f"/v1/tenants/{acme}", json={"weight": 1, "priority": "high"}, headers=ops),
        api.patch("/v1/tenants/not a tenant", json={"weight": 1}, headers=ops),
    ]
    assert [answer.status_code for answer in bad] == [422] * 6
    assert [answer.json().get("field") for answer in bad[1:]] == [
        "weight",
        "weight",
        "cap",
        "priority",
        "tenant",
    ]


def test_queues_show_backlog_and_rates_per_lane(
    api: TestClient, key_headers: Keys, queue: str, worker: Callable[..., Any], acme: str
) -> None:
    # Given one job run to success and two waiting urgent ones in a queue
    @fairlane.actor(queue_name=queue)
    def export() -> None: ...

    as_acme, ops = key_headers(acme), key_headers("ops", admin=True)
    done = api.post("/v1/jobs", json={"actor": "export"}, headers=as_acme).json()["id"]
    with worker(threads=1):
        fairlane.jobs.wait(done, timeout=10)
    for _ in range(2):
        api.post(
            "/v1/jobs", json={"actor": "export", "priority": "urgent", "delay_ms": 60_000}, headers=as_acme
        )

    # When the admin asks for the queues
    lanes = {(row["queue"], row["lane"]): row for row in api.get("/v1/queues", headers=ops).json()}

    # Then the urgent lane shows its backlog and the normal lane its recent finish
    assert lanes[(queue, "urgent")]["pending"] == 2
    assert lanes[(queue, "normal")]["succeeded_per_minute"] > 0
    assert lanes[(queue, "normal")]["pending"] == 0


def test_health_readiness_and_metrics(api: TestClient, key_headers: Keys, acme: str) -> None:
    # Given a few requests, one of them for a job id
    headers = key_headers(acme)
    job_id = str(uuid.uuid4())
    api.get(f"/v1/jobs/{job_id}", headers=headers)
    api.get("/v1/jobs", headers=headers)
    api.get("/no/such/path")

    # When the probes and the metrics are read (no key needed)
    healthz = api.get("/healthz")
    readyz = api.get("/readyz")
    metrics = api.get("/metrics")

    # Then the process is live and ready (ledger and broker reachable)
    assert healthz.json() == {"status": "ok", "checks": {}}
    assert readyz.status_code == 200
    assert readyz.json() == {"status": "ok", "checks": {"ledger": "ok", "broker": "ok"}}

    # And requests are counted by route template, method and status class, never by id
    text = metrics.text
    assert 'fairlane_api_requests_total{method="GET",route="/v1/jobs/{job_id}",status="4xx"}' in text
    assert 'fairlane_api_requests_total{method="GET",route="/v1/jobs",status="2xx"}' in text
    assert 'route="unmatched"' in text
    assert job_id not in text and acme not in text


def test_readiness_fails_when_the_broker_is_unreachable(make_app: Callable[..., App]) -> None:
    # Given an app whose broker URL points at a closed port
    app = make_app(broker_url="amqp://guest:guest@127.0.0.1:1/%2F")

    # When readiness is asked
    with TestClient(create_api(app)) as api:
        readyz = api.get("/readyz")
        healthz = api.get("/healthz")

    # Then it is 503, naming the broker; liveness is unaffected
    assert readyz.status_code == 503
    assert readyz.json()["status"] == "unavailable"
    assert readyz.json()["checks"]["ledger"] == "ok"
    assert readyz.json()["checks"]["broker"].startswith("unreachable")
    assert healthz.status_code == 200


def test_a_lost_ledger_answers_503_with_a_problem(
    make_app: Callable[..., App], sqlite_url: str, acme: str
) -> None:
    # Given an API on an embedded ledger, and a key
    from fairlane.ledger.api_keys import ApiKeyStore

    app = make_app(database_url=sqlite_url)
    headers = {"Authorization": f"Bearer {ApiKeyStore(app.engine).create(acme)[1]}"}
    with TestClient(create_api(app)) as api:
        assert api.get("/v1/jobs", headers=headers).status_code == 200

        # When the ledger's files disappear under it
        for path in Path(sqlite_url.removeprefix("sqlite:///")).parent.glob("ledger.db*"):
            path.unlink()
        app.engine.dispose()
        answer = api.get("/v1/jobs", headers=headers)

    # Then requests get a 503 problem with Retry-After
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == "urn:fairlane:problem:ledger-unavailable"
    assert int(answer.headers["retry-after"]) > 0
