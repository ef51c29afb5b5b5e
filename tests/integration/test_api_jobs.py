"""``/v1/jobs`` over HTTP: submit, batch, look up, list, cancel, results, and what is refused."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import fairlane
from fairlane.app import App
from fairlane.worker import running_worker

from .support import eventually

Keys = Callable[..., dict[str, str]]


@pytest.fixture
def acme() -> str:
    """A tenant no other test uses (the PostgreSQL ledger is shared by the test run)."""
    return f"acme-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def globex() -> str:
    """Another tenant of its own."""
    return f"globex-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def declare(queue: str) -> Callable[..., Any]:
    """Declare the test's actors on its own queue."""

    def _declare(**options: Any) -> Any:
        return fairlane.actor(queue_name=queue, **options)

    return _declare


def test_submit_returns_202_location_and_the_job(
    api: TestClient, key_headers: Keys, declare: Any, acme: str
) -> None:
    # Given an actor and a tenant key
    @declare()
    def export_catalog(store_id: int, full: bool = False) -> None: ...

    as_acme = key_headers(acme)

    # When a job is submitted with every option
    response = api.post(
        "/v1/jobs",
        json={
            "actor": "export_catalog",
            "args": [42],
            "kwargs": {"full": True},
            "priority": "high",
            "cost": 2,
            "delay_ms": 60_000,
        },
        headers=as_acme,
    )

    # Then it is accepted for the key's tenant, with a Location to poll
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["actor"], job["tenant"], job["priority"], job["state"]) == (
        "export_catalog",
        acme,
        "high",
        "pending",
    )
    assert job["next_run_at"] > job["enqueued_at"]
    assert api.get(response.headers["location"], headers=as_acme).json()["id"] == job["id"]


def test_tenant_comes_from_the_key_never_the_body(
    api: TestClient, key_headers: Keys, declare: Any, acme: str
) -> None:
    # Given an actor
    @declare()
    def noop() -> None: ...

    # When a body names a tenant
    response = api.post("/v1/jobs", json={"actor": "noop", "tenant": "victim"}, headers=key_headers(acme))

    # Then the field is refused as unknown, naming it
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["field"] == "tenant"


def test_repeated_idempotency_key_returns_the_existing_job_with_200(
    api: TestClient, key_headers: Keys, declare: Any, acme: str, globex: str
) -> None:
    # Given a job submitted with an idempotency key
    @declare()
    def charge(order: int) -> None: ...

    as_acme = key_headers(acme)
    body = {"actor": "charge", "args": [7], "idempotency_key": "order-7"}
    first = api.post("/v1/jobs", json=body, headers=as_acme)

    # When the same key is submitted again, and by another tenant
    again = api.post("/v1/jobs", json=body, headers=as_acme)
    other = api.post("/v1/jobs", json=body, headers=key_headers(globex))

    # Then the repeat answers 200 with the first job; the other tenant's key is its own
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert "location" not in again.headers
    assert other.status_code == 202
    assert other.json()["id"] != first.json()["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"actor": "nobody_declared_this"}, "actor"),
        ({"actor": "charge", "args": []}, "args"),
        ({"actor": "charge", "args": [1], "priority": "asap"}, "priority"),
        ({"actor": "charge", "args": [1], "cost": 0}, "cost"),
        ({"actor": "charge", "args": [1], "delay_ms": -1}, "delay_ms"),
        ({"actor": "charge", "args": [1], "idempotency_key": "x" * 256}, "idempotency_key"),
        ({"actor": "x" * 256}, "actor"),
        ({"args": [1]}, "actor"),
        ({"actor": "charge", "args": [1], "surprise": True}, "surprise"),
    ],
)
def test_bad_submissions_get_a_problem_naming_the_field(
    api: TestClient, key_headers: Keys, declare: Any, body: dict[str, Any], field: str, acme: str
) -> None:
    # Given an actor taking one argument
    @declare()
    def charge(order: int) -> None: ...

    # When a bad submission arrives
    response = api.post("/v1/jobs", json=body, headers=key_headers(acme))

    # Then it is refused with a problem body naming the field, and nothing is stored
    assert response.status_code == 422
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert (
        problem["status"] == 422 and problem["title"] and problem["type"].startswith("urn:fairlane:problem:")
    )
    assert problem["field"] == field
    assert api.get("/v1/jobs", headers=key_headers(acme)).json()["jobs"] == []


def test_non_json_and_oversized_bodies_are_refused(
    make_app: Callable[..., App], declare: Any, acme: str
) -> None:
    # Given an API whose bodies are limited to 2 KiB
    from fairlane.api import create_api
    from fairlane.ledger.api_keys import ApiKeyStore

    app = make_app(api_max_body_bytes=2048)

    @declare()
    def ingest(records: list[str]) -> None: ...

    headers = {"Authorization": f"Bearer {ApiKeyStore(app.engine).create(acme)[1]}"}
    with TestClient(create_api(app)) as api:
        # When a body over the limit, one that is not JSON, and one that is JSON but not an object arrive
        too_big = api.post("/v1/jobs", json={"actor": "ingest", "args": [["x" * 3000]]}, headers=headers)
        not_json = api.post("/v1/jobs", content=b"actor=ingest", headers=headers)
        not_object = api.post("/v1/jobs", json=["ingest"], headers=headers)

    # Then each is refused with a problem: 413 for size, 422 for shape
    assert too_big.status_code == 413
    assert too_big.json()["type"] == "urn:fairlane:problem:body-too-large"
    assert not_json.status_code == 422
    assert not_object.status_code == 422


def test_batch_is_accepted_whole(api: TestClient, key_headers: Keys, declare: Any, acme: str) -> None:
    # Given an actor
    @declare()
    def resize(image: int) -> None: ...

    as_acme = key_headers(acme)

    # When a batch of 3 is submitted
    response = api.post(
        "/v1/jobs:batch", json={"jobs": [{"actor": "resize", "args": [n]} for n in range(3)]}, headers=as_acme
    )

    # Then all three exist for the key's tenant, in order
    assert response.status_code == 202
    ids = response.json()["ids"]
    assert len(ids) == 3
    assert [api.get(f"/v1/jobs/{job_id}", headers=as_acme).json()["tenant"] for job_id in ids] == [acme] * 3


def test_batch_with_one_bad_job_stores_none(
    api: TestClient, key_headers: Keys, declare: Any, acme: str
) -> None:
    # Given an actor
    @declare()
    def resize(image: int) -> None: ...

    as_acme = key_headers(acme)

    # When a batch has one job with wrong arguments, one over the limit, or idempotency keys
    bad_args = api.post(
        "/v1/jobs:batch",
        json={"jobs": [{"actor": "resize", "args": [1]}, {"actor": "resize", "args": []}]},
        headers=as_acme,
    )
    too_many = api.post(
        "/v1/jobs:batch", json={"jobs": [{"actor": "resize", "args": [1]}] * 1001}, headers=as_acme
    )
    keyed = api.post(
        "/v1/jobs:batch",
        json={"jobs": [{"actor": "resize", "args": [1], "idempotency_key": "k"}]},
        headers=as_acme,
    )

    # Then each is refused, the bad job named, and nothing was stored
    assert bad_args.status_code == 422
    assert bad_args.json()["field"] == "jobs.1.args"
    assert too_many.status_code == 422
    assert too_many.json()["field"] == "jobs"
    assert keyed.status_code == 422
    assert api.get("/v1/jobs", headers=as_acme).json()["jobs"] == []


def test_list_filters_and_pages_newest_first(
    api: TestClient, key_headers: Keys, declare: Any, acme: str
) -> None:
    # Given 5 jobs of one actor (2 urgent) and 1 of another
    @declare()
    def render(page: int) -> None: ...

    @declare()
    def other() -> None: ...

    as_acme = key_headers(acme)
    ids = []
    for page in range(5):
        body = {"actor": "render", "args": [page], "priority": "urgent" if page < 2 else "normal"}
        ids.append(api.post("/v1/jobs", json=body, headers=as_acme).json()["id"])
    api.post("/v1/jobs", json={"actor": "other"}, headers=as_acme)

    # When the actor's jobs are listed 2 at a time, following the cursor
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"actor": "render", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/v1/jobs", params=params, headers=as_acme).json()
        seen += [job["id"] for job in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    # Then every job comes once, newest first, in 3 pages
    assert seen == ids[::-1]
    assert pages == 3

    # And the priority and state filters narrow the list
    urgent = api.get("/v1/jobs", params={"priority": "urgent"}, headers=as_acme).json()["jobs"]
    assert sorted(job["id"] for job in urgent) == sorted(ids[:2])
    assert api.get("/v1/jobs", params={"state": "succeeded"}, headers=as_acme).json()["jobs"] == []


def test_bad_list_parameters_are_refused(api: TestClient, key_headers: Keys, acme: str) -> None:
    # Given a tenant key
    as_acme = key_headers(acme)

    # When the cursor is not one a listing returned, the page too large, or the state unknown
    bad_cursor = api.get("/v1/jobs", params={"cursor": "not-a-cursor"}, headers=as_acme)
    too_large = api.get("/v1/jobs", params={"limit": 1001}, headers=as_acme)
    bad_state = api.get("/v1/jobs", params={"state": "exploded"}, headers=as_acme)

    # Then each is a problem naming the parameter
    assert (bad_cursor.status_code, bad_cursor.json()["field"]) == (400, "cursor")
    assert (too_large.status_code, too_large.json()["field"]) == (422, "query.limit")
    assert (bad_state.status_code, bad_state.json()["field"]) == (422, "query.state")


def test_cancel_a_waiting_job(api: TestClient, key_headers: Keys, declare: Any, acme: str) -> None:
    # Given a delayed job
    @declare()
    def later() -> None: ...

    as_acme = key_headers(acme)
    job_id = api.post("/v1/jobs", json={"actor": "later", "delay_ms": 60_000}, headers=as_acme).json()["id"]

    # When it is cancelled, twice
    first = api.post(f"/v1/jobs/{job_id}/cancel", headers=as_acme)
    second = api.post(f"/v1/jobs/{job_id}/cancel", headers=as_acme)

    # Then it is cancelled, and cancelling again changes nothing
    assert first.status_code == 200 and first.json()["state"] == "cancelled"
    assert second.status_code == 200 and second.json()["state"] == "cancelled"
    assert api.get(f"/v1/jobs/{job_id}/result", headers=as_acme).status_code == 409


def test_results_inline_and_as_a_file_download(
    make_app: Callable[..., App], declare: Any, acme: str, tmp_path: Path
) -> None:
    # Given an app keeping results over 1 KiB in files, and an actor returning small or large results
    from fairlane.api import create_api
    from fairlane.ledger.api_keys import ApiKeyStore

    app = make_app(result_inline_bytes=1024)

    @declare()
    def report(rows: int) -> list[dict[str, int]]:
        return [{"row": n} for n in range(rows)]

    headers = {"Authorization": f"Bearer {ApiKeyStore(app.engine).create(acme)[1]}"}
    with TestClient(create_api(app)) as api, running_worker(app, 2, shutdown_timeout=10):
        small = api.post("/v1/jobs", json={"actor": "report", "args": [2]}, headers=headers).json()["id"]
        large = api.post("/v1/jobs", json={"actor": "report", "args": [500]}, headers=headers).json()["id"]
        fairlane.jobs.wait(small, timeout=10)
        fairlane.jobs.wait(large, timeout=10)

        # When both results are fetched
        inline = api.get(f"/v1/jobs/{small}/result", headers=headers)
        download = api.get(f"/v1/jobs/{large}/result", headers=headers)
        job = api.get(f"/v1/jobs/{large}", headers=headers).json()

    # Then the small one is JSON, the large one a JSON file download of the same shape
    assert inline.status_code == 200 and inline.json() == [{"row": 0}, {"row": 1}]
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/json"
    assert f'filename="{large}.json"' in download.headers["content-disposition"]
    assert download.json() == [{"row": n} for n in range(500)]
    assert (job["state"], job["has_result"], job["attempts"]) == ("succeeded", True, 1)

    # And once the result file is removed, the result is gone (410), not a server error
    for path in (tmp_path / "results").glob(f"{large}.*"):
        path.unlink()
    with TestClient(create_api(app)) as api:
        gone = api.get(f"/v1/jobs/{large}/result", headers=headers)
    assert gone.status_code == 410
    assert gone.json()["type"] == "urn:fairlane:problem:result-gone"


def test_failed_job_shows_its_error(
    api: TestClient, key_headers: Keys, declare: Any, worker: Any, acme: str
) -> None:
    # Given an actor that fails without retries
    @declare(max_retries=0)
    def explode() -> None:
        raise RuntimeError("the warehouse is on fire")

    as_acme = key_headers(acme)
    job_id = api.post("/v1/jobs", json={"actor": "explode"}, headers=as_acme).json()["id"]

    # When a worker runs it
    with worker(threads=1):
        fairlane.jobs.wait(job_id, timeout=10)

    # Then the job shows the error type, message and traceback
    job = api.get(f"/v1/jobs/{job_id}", headers=as_acme).json()
    assert job["state"] == "dead"
    assert (job["error"]["type"], job["error"]["message"]) == ("RuntimeError", "the warehouse is on fire")
    assert "Traceback" in job["error"]["traceback"]


def test_cancel_interrupts_a_running_job(
    api: TestClient, key_headers: Keys, declare: Any, worker: Any, acme: str
) -> None:
    # Given a running job that waits to be interrupted
    started = threading.Event()

    @declare(max_retries=0)
    def long_export() -> None:
        started.set()
        for _ in range(600):  # short waits: the interrupt lands between them
            threading.Event().wait(0.05)

    as_acme = key_headers(acme)
    job_id = api.post("/v1/jobs", json={"actor": "long_export"}, headers=as_acme).json()["id"]
    with worker(threads=1):
        assert started.wait(10)

        # When it is cancelled over HTTP
        response = api.post(f"/v1/jobs/{job_id}/cancel", headers=as_acme)

        # Then the cancel is requested at once and the job ends cancelled
        assert response.json()["cancel_requested"] is True
        eventually(
            lambda: api.get(f"/v1/jobs/{job_id}", headers=as_acme).json()["state"] == "cancelled",
            message="cancelled",
        )
