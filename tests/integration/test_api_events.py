"""``GET /v1/jobs/{id}/events``: Server-Sent Events from a real uvicorn server while a real
worker runs the job, reconnects with ``Last-Event-ID``, and one poller shared by all streams."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import pytest
import uvicorn
from fastapi import FastAPI

import fairlane
from fairlane.api import create_api
from fairlane.app import App
from fairlane.ledger.api_keys import ApiKeyStore

from .support import eventually


@contextmanager
def serving(api: FastAPI) -> Iterator[str]:
    """Serve ``api`` with uvicorn on a free loopback port; yields its base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        eventually(lambda: server.started, message="uvicorn started")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


def read_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Parse an event stream into ``{"event", "id", "data"}`` dicts (comments and pings skipped)."""
    event: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "data" in event:
                yield event
            event = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        event[name] = json.loads(value) if name == "data" else value


@pytest.fixture
def tenant() -> str:
    return f"acme-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def server(app: App) -> Iterator[tuple[str, FastAPI]]:
    """This test's API on a real uvicorn server: ``(base URL, ASGI app)``."""
    api = create_api(app)
    with serving(api) as url:
        yield url, api


def _bearer(app: App, tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ApiKeyStore(app.engine).create(tenant)[1]}"}


def test_stream_follows_a_job_reporting_progress_until_it_finishes(
    app: App, server: tuple[str, FastAPI], queue: str, worker: Callable[..., Any], tenant: str
) -> None:
    # Given an actor that reports step 1 and 2 of 3, each until the test has seen it
    seen = [threading.Event(), threading.Event()]

    @fairlane.actor(queue_name=queue)
    def ingest_batch() -> dict[str, int]:
        for step, gate in enumerate(seen, start=1):
            while not gate.wait(0.05):
                fairlane.progress(step, 3, message=f"record {step}")
        fairlane.progress(3, 3)
        return {"stored": 3}

    url, _api = server
    headers = _bearer(app, tenant)
    with httpx2.Client(base_url=url, headers=headers, timeout=30) as client:
        job_id = client.post("/v1/jobs", json={"actor": "ingest_batch"}).json()["id"]

        # When its event stream is followed while a worker runs it
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            followed = read_events(stream.iter_lines())
            events = [next(followed)]  # the state before any worker runs
            with worker(threads=2):
                for event in followed:
                    events.append(event)
                    done = (event["data"]["progress"] or {}).get("done", 0)
                    for step in range(min(done, 2)):
                        seen[step].set()

    # Then it began with the job's state, told each progress step in order, and ended succeeded
    assert events[0]["event"] == "state"
    assert events[0]["data"]["state"] in ("pending", "dispatched")
    assert [event["data"]["state"] for event in events if event["event"] == "state"][-1] == "succeeded"
    assert "running" in [event["data"]["state"] for event in events]
    told = [event["data"]["progress"]["done"] for event in events if event["data"]["progress"]]
    assert [step for step, _ in itertools.groupby(told)] == [1, 2, 3]  # every step, in order
    assert "progress" in [event["event"] for event in events]
    assert events[-1]["data"]["progress"] == {"done": 3, "total": 3, "percent": 100.0}
    assert all(event["data"]["id"] == job_id and event["id"] for event in events)
    assert len({event["id"] for event in events}) == len(events)

    # When a client reconnects with the last event's id, or with an earlier one
    with httpx2.Client(base_url=url, headers=headers, timeout=30) as client:
        after_last = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": events[-1]["id"]})
        after_first = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": events[0]["id"]})

    # Then the first learns there is nothing more (204: do not reconnect); the second gets the
    # job's current state once
    assert after_last.status_code == 204
    replay = list(read_events(iter(after_first.text.splitlines())))
    assert [(event["event"], event["data"]["state"]) for event in replay] == [("state", "succeeded")]


def test_every_stream_is_fed_by_one_poller(
    app: App, server: tuple[str, FastAPI], queue: str, tenant: str
) -> None:
    # Given two waiting jobs, each watched by an open stream
    @fairlane.actor(queue_name=queue)
    def export() -> None: ...

    url, api = server
    hub = api.state.fairlane.events
    with httpx2.Client(base_url=url, headers=_bearer(app, tenant), timeout=30) as client:
        ids = [
            client.post("/v1/jobs", json={"actor": "export", "delay_ms": 60_000}).json()["id"] for _ in "ab"
        ]
        with (
            client.stream("GET", f"/v1/jobs/{ids[0]}/events") as first,
            client.stream("GET", f"/v1/jobs/{ids[1]}/events") as second,
        ):
            streams = [read_events(first.iter_lines()), read_events(second.iter_lines())]
            assert [next(stream)["data"]["state"] for stream in streams] == ["pending", "pending"]

            # Then one poller thread watches both jobs
            eventually(lambda: hub.watched() == 2, message="both jobs watched")
            pollers = [thread for thread in threading.enumerate() if thread.name == "fairlane-api-events"]
            assert len(pollers) == 1

            # When both jobs are cancelled
            for job_id in ids:
                client.post(f"/v1/jobs/{job_id}/cancel")

            # Then each stream tells it and ends, and the poller stops watching them
            for stream in streams:
                assert [(event["event"], event["data"]["state"]) for event in stream] == [
                    ("state", "cancelled")
                ]
    eventually(lambda: hub.watched() == 0, message="streams unwatched")


def test_a_finished_job_streams_its_final_state_and_ends(app: App, queue: str, tenant: str) -> None:
    # Given a job cancelled before it ran, and an in-process client
    from fastapi.testclient import TestClient

    @fairlane.actor(queue_name=queue)
    def export() -> None: ...

    headers = _bearer(app, tenant)
    with TestClient(create_api(app)) as api:
        job_id = api.post("/v1/jobs", json={"actor": "export", "delay_ms": 60_000}, headers=headers).json()[
            "id"
        ]
        api.post(f"/v1/jobs/{job_id}/cancel", headers=headers)

        # When its events are requested, and those of a job that does not exist
        response = api.get(f"/v1/jobs/{job_id}/events", headers=headers)
        missing = api.get(f"/v1/jobs/{uuid.uuid4()}/events", headers=headers)

    # Then the stream holds the final state alone; the missing job is a 404 problem
    events = list(read_events(iter(response.text.splitlines())))
    assert [(event["event"], event["data"]["state"]) for event in events] == [("state", "cancelled")]
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
