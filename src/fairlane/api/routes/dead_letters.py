"""``/v1/dead-letters``: dead jobs (list, show) for every key; re-drive and purge for admin keys.

The work is :mod:`fairlane.dead_letters`' (ledger rows and their RabbitMQ copies alike).
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from fairlane import dead_letters
from fairlane.api.auth import Admin, Caller, tenant_scope
from fairlane.api.models import (
    ActorName,
    Count,
    DeadLetterFilter,
    DeadLetterView,
    JobView,
    PurgeFilter,
    QueueName,
    RawDeadLetterView,
    TenantId,
)
from fairlane.api.problems import ApiProblem, not_found, problem_responses
from fairlane.api.routes.jobs import JobId, visible_job
from fairlane.api.state import Services
from fairlane.ledger.clock import database_now
from fairlane.ledger.schema import DEAD

router = APIRouter(
    prefix="/v1/dead-letters", tags=["dead letters"], responses=problem_responses(400, 401, 429)
)
_ADMIN_ERRORS = problem_responses(403, 422)


@router.get("", summary="List dead jobs, oldest first", responses=problem_responses(403, 422))
def list_dead_letters(
    key: Caller,
    services: Services,
    actor: ActorName | None = None,
    queue: QueueName | None = None,
    tenant: Annotated[TenantId | None, Query(description="admin keys only")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobView]:
    """Dead jobs with their error; a tenant key sees its own tenant's only."""
    found = dead_letters.dead_jobs(
        services.app, actor=actor, queue=queue, tenant=tenant_scope(key, tenant), limit=limit
    )
    return [JobView.of(job) for job in found]


@router.get(":raw", summary="Dead letters with no ledger row", responses=problem_responses(403, 422))
def list_raw_dead_letters(
    _key: Admin,
    services: Services,
    queue: QueueName | None = None,
) -> list[RawDeadLetterView]:
    """Messages RabbitMQ holds in dead-letter queues that no ledger row describes (undecodable
    bodies, sends from plain Dramatiq), read without removing them; purge removes them by age."""
    app = services.app
    # Only queues the ledger knows: a name from the request never declares a RabbitMQ queue.
    queues = [name for name in app.admission.known_queues() if queue is None or name == queue]
    return [
        RawDeadLetterView(**vars(letter))
        for name in queues
        for letter in dead_letters.raw_dead_letters(app, name)
    ]


@router.get("/{job_id}", summary="A dead job in full", responses=problem_responses(404, 422))
def get_dead_letter(job_id: JobId, key: Caller, services: Services) -> DeadLetterView:
    """A dead job: error, traceback and the message it was sent as."""
    job = visible_job(services, key, job_id)
    if job.state != DEAD:
        raise not_found("dead letter", job_id)
    message = json.loads(services.app.jobs.message_of(job.id))
    return DeadLetterView(**JobView.of(job).model_dump(), message=message)


@router.post("/{job_id}/requeue", summary="Re-drive one dead job", responses=problem_responses(403, 404, 422))
def requeue_dead_letter(job_id: JobId, key: Admin, services: Services) -> Count:
    """Run a dead job again: attempts reset, back through admission."""
    job = visible_job(services, key, job_id)
    if job.state != DEAD:
        raise not_found("dead letter", job_id)
    return Count(count=dead_letters.requeue(services.app, [job]))


@router.post(":requeue", summary="Re-drive dead jobs by filter", responses=_ADMIN_ERRORS)
def requeue_dead_letters(body: DeadLetterFilter, _key: Admin, services: Services) -> Count:
    """Run again every dead job matching all filters given (at least one is required)."""
    if all(value is None for value in (body.actor, body.queue, body.tenant, body.older_than_seconds)):
        raise ApiProblem(
            422, "no-filter", "No filter", "give at least one of actor, queue, tenant, older_than_seconds"
        )
    older_than = (
        database_now(services.app.engine) - timedelta(seconds=body.older_than_seconds)
        if body.older_than_seconds
        else None
    )
    selected = dead_letters.dead_jobs(
        services.app, actor=body.actor, queue=body.queue, tenant=body.tenant, older_than=older_than
    )
    return Count(count=dead_letters.requeue(services.app, selected))


@router.post(":purge", summary="Delete dead jobs by age and filter", responses=_ADMIN_ERRORS)
def purge_dead_letters(body: PurgeFilter, _key: Admin, services: Services) -> Count:
    """Delete dead jobs (rows, result files, RabbitMQ copies) dead for longer than ``older_than_seconds``.

    Without an actor, queue or tenant filter, dead letters RabbitMQ holds with no ledger row
    (undecodable messages) that old go too.
    """
    app = services.app
    cutoff = database_now(app.engine) - timedelta(seconds=body.older_than_seconds)
    selected = dead_letters.dead_jobs(
        app, actor=body.actor, queue=body.queue, tenant=body.tenant, older_than=cutoff
    )
    unfiltered = body.actor is None and body.queue is None and body.tenant is None
    if unfiltered:
        for queue in app.admission.known_queues():
            app.broker.declare_queue(queue)
    return Count(count=dead_letters.purge(app, selected, raw_before=cutoff if unfiltered else None))
