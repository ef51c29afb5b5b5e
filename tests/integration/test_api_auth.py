"""API keys and what they may do: CLI and HTTP key management, revocation, tenant isolation
both ways, admin-only operations, and the per-key and per-tenant quotas."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

import fairlane
from fairlane import cli
from fairlane.api import create_api
from fairlane.app import App
from fairlane.ledger.api_keys import ApiKeyStore, key_digest
from fairlane.ledger.schema import api_keys

Keys = Callable[..., dict[str, str]]


@pytest.fixture
def acme() -> str:
    """A tenant no other test uses (the PostgreSQL ledger is shared by the test run)."""
    return f"acme-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def globex() -> str:
    """Another tenant of its own."""
    return f"globex-{uuid.uuid4().hex[:8]}"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_cli_creates_lists_and_revokes_keys(
    app: App, api: TestClient, acme: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a key made with `fairlane keys create`
    capsys.readouterr()
    assert cli.main(["keys", "create", "--tenant", acme, "--name", "billing service"]) == 0
    printed = capsys.readouterr().out
    key = re.search(r"^(fl_[0-9a-f]{8}_\S+)$", printed, re.MULTILINE)
    assert key is not None, printed
    prefix = key.group(1)[:11]

    # Then the ledger holds its digest and prefix, never the key
    with app.engine.connect() as connection:
        row = connection.execute(api_keys.select().where(api_keys.c.tenant == acme)).one()
    assert row.key_hash == key_digest(key.group(1)) and key.group(1) not in row
    assert f"fl_{row.id}" == prefix

    # And `keys list` shows it by prefix only; the key works
    assert cli.main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert prefix in listing and key.group(1) not in listing
    assert api.get("/v1/jobs", headers=_bearer(key.group(1))).status_code == 200

    # When it is revoked
    assert cli.main(["keys", "revoke", prefix]) == 0

    # Then it no longer authenticates, and `keys list` leaves it out unless asked
    refused = api.get("/v1/jobs", headers=_bearer(key.group(1)))
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    capsys.readouterr()
    cli.main(["keys", "list"])
    assert prefix not in capsys.readouterr().out
    cli.main(["keys", "list", "--all"])
    assert prefix in capsys.readouterr().out
    assert cli.main(["keys", "revoke", "fl_00000000"]) == 1
    assert cli.main(["keys", "create", "--tenant", "no spaces allowed"]) == 1


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer fl_00000000_guess"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["none", "unknown", "basic"],
)
def test_requests_without_a_valid_key_get_401(api: TestClient, headers: dict[str, str]) -> None:
    # When a /v1 request comes with no key, an unknown key or another scheme
    response = api.get("/v1/jobs", headers=headers)

    # Then it is refused as unauthorized, with a problem body
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


def test_admin_manages_keys_over_http(api: TestClient, key_headers: Keys, acme: str) -> None:
    # Given an admin key and a tenant key
    ops = key_headers("ops", admin=True)

    # When the admin creates a key for a tenant
    created = api.post("/v1/keys", json={"tenant": acme, "name": "ci"}, headers=ops)

    # Then the answer holds the key once; listings show only its prefix
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith(body["prefix"] + "_")
    listed = api.get("/v1/keys", headers=ops).json()
    assert [item["prefix"] for item in listed if item["id"] == body["id"]] == [body["prefix"]]
    assert all("key" not in item for item in listed)

    # And the new key works until the admin revokes it
    new = _bearer(body["key"])
    assert api.get("/v1/jobs", headers=new).status_code == 200
    revoked = api.post(f"/v1/keys/{body['prefix']}/revoke", headers=ops)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert api.get("/v1/jobs", headers=new).status_code == 401
    assert api.post("/v1/keys/00000000/revoke", headers=ops).status_code == 404

    # And a tenant key may do none of it
    tenant = key_headers(acme)
    assert api.get("/v1/keys", headers=tenant).status_code == 403
    assert api.post("/v1/keys", json={"tenant": acme}, headers=tenant).status_code == 403
    assert api.post("/v1/keys", json={"tenant": "bad tenant"}, headers=ops).status_code == 422


def test_tenants_cannot_see_or_touch_each_others_jobs(
    api: TestClient, key_headers: Keys, queue: str, acme: str, globex: str
) -> None:
    # Given a job of each tenant
    @fairlane.actor(queue_name=queue)
    def export() -> None: ...

    as_acme, as_globex = key_headers(acme), key_headers(globex)
    acme_job = api.post("/v1/jobs", json={"actor": "export", "delay_ms": 60_000}, headers=as_acme).json()
    globex_job = api.post("/v1/jobs", json={"actor": "export", "delay_ms": 60_000}, headers=as_globex).json()
    missing = str(uuid.uuid4())

    for mine, theirs, headers in ((acme_job, globex_job, as_acme), (globex_job, acme_job, as_globex)):
        # When a tenant asks for the other's job by id, in every way
        answers = [
            api.get(f"/v1/jobs/{theirs['id']}", headers=headers),
            api.post(f"/v1/jobs/{theirs['id']}/cancel", headers=headers),
            api.get(f"/v1/jobs/{theirs['id']}/result", headers=headers),
            api.get(f"/v1/jobs/{theirs['id']}/events", headers=headers),
            api.get(f"/v1/dead-letters/{theirs['id']}", headers=headers),
        ]
        unknown = api.get(f"/v1/jobs/{missing}", headers=headers)

        # Then each answer is the 404 of a job that does not exist, word for word but the id
        for answer in answers:
            assert answer.status_code == 404
            assert answer.json()["title"] == unknown.json()["title"]
            assert answer.json()["type"] == unknown.json()["type"]

        # And its listings hold its own job only; asking for the other tenant is forbidden
        listed = api.get("/v1/jobs", headers=headers).json()["jobs"]
        assert [job["id"] for job in listed] == [mine["id"]]
        assert api.get("/v1/jobs", params={"tenant": theirs["tenant"]}, headers=headers).status_code == 403
        tenants = api.get("/v1/tenants", headers=headers).json()
        assert [row["tenant"] for row in tenants] == [mine["tenant"]]

    # And neither job was cancelled by the other tenant's attempts
    ops = key_headers("ops", admin=True)
    assert api.get(f"/v1/jobs/{acme_job['id']}", headers=ops).json()["state"] == "pending"
    assert api.get(f"/v1/jobs/{globex_job['id']}", headers=ops).json()["state"] == "pending"

    # And the admin key sees both, and can narrow to one tenant
    both = api.get("/v1/jobs", params={"actor": "export"}, headers=ops).json()["jobs"]
    assert {job["id"] for job in both} >= {acme_job["id"], globex_job["id"]}
    only = api.get("/v1/jobs", params={"tenant": acme}, headers=ops).json()["jobs"]
    assert [job["id"] for job in only] == [acme_job["id"]]


def test_admin_only_operations_refuse_tenant_keys(api: TestClient, key_headers: Keys, acme: str) -> None:
    # Given a tenant key
    headers = key_headers(acme)

    # When it tries what only admin keys may do
    answers = [
        api.patch(f"/v1/tenants/{acme}", json={"weight": 50}, headers=headers),
        api.get("/v1/queues", headers=headers),
        api.post("/v1/dead-letters:requeue", json={"tenant": acme}, headers=headers),
        api.post("/v1/dead-letters:purge", json={"older_than_seconds": 0}, headers=headers),
        api.post(f"/v1/dead-letters/{uuid.uuid4()}/requeue", headers=headers),
    ]

    # Then each is forbidden
    assert [answer.status_code for answer in answers] == [403] * 5
    assert all(answer.json()["type"] == "urn:fairlane:problem:admin-only" for answer in answers)


def test_a_full_backlog_answers_429_with_retry_after(
    make_app: Callable[..., App], queue: str, acme: str, globex: str
) -> None:
    # Given tenants allowed 3 waiting jobs each, and no worker
    app = make_app(api_tenant_max_backlog=3)

    @fairlane.actor(queue_name=queue)
    def export() -> None: ...

    store = ApiKeyStore(app.engine)
    as_acme, as_globex = _bearer(store.create(acme)[1]), _bearer(store.create(globex)[1])
    later: dict[str, Any] = {"actor": "export", "delay_ms": 60_000}
    with TestClient(create_api(app)) as api:
        # When one tenant fills its backlog and submits more, alone and in a batch
        accepted = [api.post("/v1/jobs", json=later, headers=as_acme).status_code for _ in range(3)]
        refused = api.post("/v1/jobs", json=later, headers=as_acme)
        batch = api.post("/v1/jobs:batch", json={"jobs": [{"actor": "export"}]}, headers=as_acme)

        # Then the extra jobs are refused with 429 and a Retry-After, and nothing was stored
        assert accepted == [202, 202, 202]
        for answer in (refused, batch):
            assert answer.status_code == 429
            assert int(answer.headers["retry-after"]) > 0
            assert answer.json()["type"] == "urn:fairlane:problem:backlog-full"
        assert len(api.get("/v1/jobs", headers=as_acme).json()["jobs"]) == 3

        # And another tenant is not held back by it
        assert api.post("/v1/jobs", json=later, headers=as_globex).status_code == 202

        # And a submission repeated with its idempotency key still gets its job, full backlog or not
        keyed = {**later, "idempotency_key": "order-1"}
        first = api.post("/v1/jobs", json=keyed, headers=as_globex)
        api.post("/v1/jobs", json=later, headers=as_globex)
        assert api.post("/v1/jobs", json=later, headers=as_globex).status_code == 429
        repeat = api.post("/v1/jobs", json=keyed, headers=as_globex)
        assert (repeat.status_code, repeat.json()["id"]) == (200, first.json()["id"])


def test_a_key_over_its_request_rate_gets_429_with_retry_after(
    make_app: Callable[..., App], acme: str, globex: str
) -> None:
    # Given an API allowing a burst of 3 requests per key and one per 1,000 s after it
    app = make_app(api_rate_burst=3, api_rate_limit=0.001)
    store = ApiKeyStore(app.engine)
    noisy, quiet = _bearer(store.create(acme)[1]), _bearer(store.create(globex)[1])
    with TestClient(create_api(app)) as api:
        # When one key makes 4 requests at once
        answers = [api.get("/v1/jobs", headers=noisy) for _ in range(4)]

        # Then the 4th is refused with a Retry-After, and another key is unaffected
        assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
        assert int(answers[-1].headers["retry-after"]) > 900
        assert answers[-1].json()["type"] == "urn:fairlane:problem:rate-limited"
        assert api.get("/v1/jobs", headers=quiet).status_code == 200
