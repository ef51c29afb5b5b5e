"""``/v1/jobs``: submit (one or a batch), look up, list, cancel, fetch results, watch events.

Submissions go through the broker's send path (:meth:`FairlaneBroker.enqueue`), so they get
exactly ``send()``'s validation and errors; the tenant is always the key's. A job of another
tenant answers 404 exactly as a missing one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from dramatiq import Message
from fastapi import APIRouter, Header, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from fairlane.api.auth import Caller, tenant_scope, visible
from fairlane.api.cursor import MAX_CURSOR, decode_cursor, encode_cursor
from fairlane.api.models import (
    NO_CONTROL,
    ActorName,
    BatchAccepted,
    BatchSubmission,
    JobEvent,
    JobPage,
    JobSubmission,
    JobView,
    Priority,
    QueueName,
    State,
    TenantId,
)
from fairlane.api.problems import ApiProblem, invalid_job, not_found, problem_responses
from fairlane.api.state import ApiState, Services
from fairlane.errors import InvalidJob
from fairlane.ledger.api_keys import ApiKey
from fairlane.ledger.jobs import Job, JobNotFound, JobSnapshot, list_position

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(400, 401, 429))

#: Seconds a client over its tenant's backlog cap is told to wait: backlogs drain in seconds
#: to minutes, and a shorter hint only turns a full backlog into a busy loop of refusals.
BACKLOG_RETRY_AFTER = 30
#: The ``retry`` an event stream tells clients to wait before reconnecting, in milliseconds.
RECONNECT_MS = 2000

JobId = Annotated[str, PathParam(min_length=1, max_length=64, pattern=NO_CONTROL)]


def visible_job(services: ApiState, key: ApiKey, job_id: str) -> Job:
    """The job ``job_id`` if ``key`` may see it; 404 if it is missing *or* another tenant's."""
    try:
        job = services.app.jobs.get(job_id)
    except JobNotFound:
        raise not_found("job", job_id) from None
    if not visible(key, job.tenant):
        raise not_found("job", job_id)
    return job


def _check_backlog(services: ApiState, tenant: str, adding: int) -> None:
    cap = services.app.settings.api_tenant_max_backlog
    backlog = services.app.jobs.backlog_of(tenant, up_to=cap)
    if backlog + adding > cap:
        counted = f"at least {backlog}" if backlog == cap else str(backlog)
        raise ApiProblem(
            429,
            "backlog-full",
            "Backlog full",
            f"tenant {tenant!r} has {counted} jobs waiting; the cap is {cap} "
            "(FAIRLANE_API_TENANT_MAX_BACKLOG): wait for them to run",
            headers={"Retry-After": str(BACKLOG_RETRY_AFTER)},
        )


def _message(actor: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]) -> Message[Any]:
    # The queue is the actor's, set by the send path; the options carry tenant, lane and cost.
    return Message(queue_name="default", actor_name=actor, args=tuple(args), kwargs=kwargs, options=options)


@router.post(
    "",
    status_code=202,
    summary="Submit a job",
    responses={
        200: {"model": JobView, "description": "The idempotency key was used before: the existing job"},
        **problem_responses(413, 422),
    },
)
def submit_job(body: JobSubmission, key: Caller, services: Services, response: Response) -> JobView:
    """Accept a job for the key's tenant (``202`` and ``Location``), validated as ``send()`` does.

    A repeated ``idempotency_key`` of the tenant answers ``200`` with the job it created (even
    while the tenant's backlog is full: a client retrying a submission gets its job).
    """
    if body.idempotency_key is not None:
        existing = services.app.jobs.with_idempotency_key(key.tenant, body.idempotency_key)
        if existing is not None:
            response.status_code = 200
            return JobView.of(existing)
    _check_backlog(services, key.tenant, 1)
    options: dict[str, Any] = {"tenant": key.tenant, "cost": body.cost}
    if body.priority is not None:
        options["priority"] = body.priority
    if body.idempotency_key is not None:
        options["idempotency_key"] = body.idempotency_key
    message = _message(body.actor, body.args, body.kwargs, options)
    stored = services.app.broker.enqueue(message, delay=body.delay_ms)
    job = services.app.jobs.get(stored.message_id)
    if stored.message_id == message.message_id:
        response.headers["Location"] = f"/v1/jobs/{job.id}"
    else:
        response.status_code = 200
    return JobView.of(job)


@router.post(
    ":batch",
    status_code=202,
    summary="Submit up to 1,000 jobs, all or nothing",
    responses=problem_responses(413, 422),
)
def submit_batch(body: BatchSubmission, key: Caller, services: Services) -> BatchAccepted:
    """Accept every job of the batch for the key's tenant, or none (the first invalid one is named)."""
    _check_backlog(services, key.tenant, len(body.jobs))
    messages = [
        _message(
            item.actor,
            item.args,
            item.kwargs,
            {"tenant": key.tenant, "cost": item.cost}
            | ({"priority": item.priority} if item.priority is not None else {}),
        )
        for item in body.jobs
    ]
    try:
        stored = services.app.broker.enqueue_many(messages)
    except InvalidJob as error:
        raise invalid_job(error) from None
    return BatchAccepted(ids=[message.message_id for message in stored])


@router.get("", summary="List jobs, newest first", responses=problem_responses(400, 403, 422))
def list_jobs(
    key: Caller,
    services: Services,
    state: State | None = None,
    actor: ActorName | None = None,
    queue: QueueName | None = None,
    priority: Priority | None = None,
    tenant: Annotated[TenantId | None, Query(description="admin keys only")] = None,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR, pattern=NO_CONTROL)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> JobPage:
    """Jobs matching every filter given; a tenant key sees its own tenant's only."""
    found = services.app.jobs.list(
        tenant=tenant_scope(key, tenant),
        state=state,
        actor=actor,
        queue=queue,
        priority=priority,
        limit=limit,
        before_position=decode_cursor(cursor) if cursor is not None else None,
    )
    next_cursor = encode_cursor(list_position(found[-1])) if len(found) == limit else None
    return JobPage(jobs=[JobView.of(job) for job in found], next_cursor=next_cursor)


@router.get("/{job_id}", summary="Look up a job", responses=problem_responses(404, 422))
def get_job(job_id: JobId, key: Caller, services: Services) -> JobView:
    """A job's state, attempts, progress, error and timestamps."""
    return JobView.of(visible_job(services, key, job_id))


@router.post("/{job_id}/cancel", summary="Cancel a job", responses=problem_responses(404, 422))
def cancel_job(job_id: JobId, key: Caller, services: Services) -> JobView:
    """Cancel a job: one not started never runs; a running one is interrupted; a finished one stays."""
    visible_job(services, key, job_id)
    return JobView.of(services.app.jobs.cancel(job_id))


@router.get(
    "/{job_id}/result",
    summary="A succeeded job's result",
    response_model=None,
    responses={
        200: {
            "description": "The result as JSON (a file download when it was too large for the ledger row)",
            "content": {"application/json": {"schema": {}}},
        },
        **problem_responses(404, 409, 410, 422),
    },
)
def get_result(job_id: JobId, key: Caller, services: Services) -> Response:
    """The JSON value the job returned; a large one is streamed from the results directory."""
    job = visible_job(services, key, job_id)
    if job.state != "succeeded":
        raise ApiProblem(409, "no-result", "No result", f"job {job_id} is {job.state}, not succeeded")
    if job.result_path is not None:
        if not Path(job.result_path).is_file():
            raise ApiProblem(410, "result-gone", "Result gone", f"job {job_id}'s result file was removed")
        return FileResponse(job.result_path, media_type="application/json", filename=f"{job.id}.json")
    return JSONResponse(job.result)


def event_id(snapshot: JobSnapshot) -> str:
    """The SSE id of a job snapshot: a digest of what an event tells (equal ids: nothing changed).

    ``updated_at`` is left out: a job repeating the same progress report is no news.
    """
    body = json.dumps(
        [snapshot.state, snapshot.attempts, snapshot.progress, snapshot.cancel_requested],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()[:16]


async def _snapshot(services: ApiState, job_id: str) -> JobSnapshot | None:
    found = await anyio.to_thread.run_sync(services.app.jobs.snapshots, [job_id])
    return found.get(job_id)


def _event(snapshot: JobSnapshot, previous: JobSnapshot | None) -> ServerSentEvent:
    kind = "progress" if previous is not None and previous.state == snapshot.state else "state"
    return ServerSentEvent(
        data=JobEvent.of(snapshot).model_dump_json(), event=kind, id=event_id(snapshot), retry=RECONNECT_MS
    )


@router.get(
    "/{job_id}/events",
    summary="Watch a job (Server-Sent Events)",
    response_model=None,
    responses={
        200: {
            "description": (
                "An event stream: `state` events (the job's state changed; the first event too) and "
                "`progress` events, each with the job's live state as JSON, until the job finishes"
            ),
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        204: {"description": "Reconnected after the job's final event: nothing more will come"},
        **problem_responses(404, 422),
    },
)
async def job_events(
    job_id: JobId,
    key: Caller,
    services: Services,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> Response:
    """State and progress changes of a job as they happen, until it finishes.

    On reconnect (``Last-Event-ID``) the current state is sent unless it is the one last seen.
    """
    job = await anyio.to_thread.run_sync(visible_job, services, key, job_id)
    current = await _snapshot(services, job.id)
    if current is None or (current.finished and event_id(current) == last_event_id):
        return Response(status_code=204)

    async def stream(last: JobSnapshot) -> AsyncIterator[ServerSentEvent]:
        subscription = services.events.subscribe(last.id)
        try:
            # Read again once subscribed, so a change just before the subscription is not missed.
            last = await _snapshot(services, last.id) or last
            if event_id(last) != last_event_id:
                yield _event(last, None)
            while not last.finished:
                snapshot = await subscription.next()
                if snapshot is None:  # the job was purged
                    return
                if event_id(snapshot) != event_id(last):
                    yield _event(snapshot, last)
                    last = snapshot
        finally:
            subscription.close()

    return EventSourceResponse(stream(current), ping=15)


__all__ = ["router", "visible_job"]
