"""``/v1/tenants`` (load, weight, cap) and ``/v1/queues`` (backlog and rates per lane).

A tenant key sees its own tenant's figures; admin keys see all and change weights and caps
(as ``fairlane tenants set`` does). Queue figures span every tenant: admin keys only.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam

from fairlane.api.auth import Admin, Caller, tenant_scope
from fairlane.api.models import NO_CONTROL, LaneView, QueueName, TenantUpdate, TenantView
from fairlane.api.problems import ApiProblem, problem_responses
from fairlane.api.state import Services
from fairlane.errors import InvalidJob
from fairlane.ledger.lane_stats import lane_stats
from fairlane.ledger.tenants import TenantStore
from fairlane.validation import MAX_TENANT_LENGTH, check_tenant

router = APIRouter(tags=["tenants and queues"], responses=problem_responses(400, 401, 429))


@router.get("/v1/tenants", summary="Tenants' load and settings", responses=problem_responses(422))
def list_tenants(key: Caller, services: Services, queue: QueueName | None = None) -> list[TenantView]:
    """Backlog, jobs in flight, weight, cap and recent start waits per tenant, busiest first."""
    scope = tenant_scope(key, None)
    rows = TenantStore(services.app.engine).stats(queue)
    return [TenantView.of(row) for row in rows if scope is None or row.tenant == scope]


@router.patch(
    "/v1/tenants/{tenant}", summary="Set a tenant's weight or cap", responses=problem_responses(403, 422)
)
def update_tenant(
    tenant: Annotated[str, PathParam(min_length=1, max_length=MAX_TENANT_LENGTH, pattern=NO_CONTROL)],
    body: TenantUpdate,
    _key: Admin,
    services: Services,
) -> TenantView:
    """Change a tenant's fair-share weight and/or cap (``cap: null``: back to the queue default).

    Workers apply it within seconds.
    """
    try:
        check_tenant(tenant)
    except InvalidJob as error:
        raise ApiProblem(422, "invalid-tenant", "Invalid tenant", str(error), field="tenant") from None
    if "weight" in body.model_fields_set and body.weight is None:
        raise ApiProblem(422, "invalid-weight", "Invalid weight", "weight cannot be null", field="weight")
    values: dict[str, float | int | None] = {}
    if body.weight is not None:
        values["weight"] = body.weight
    if "cap" in body.model_fields_set:
        values["max_running"] = body.cap
    if not values:
        raise ApiProblem(422, "no-change", "Nothing to change", "give weight and/or cap")
    store = TenantStore(services.app.engine)
    store.configure(tenant, **values)
    services.app.admission.forget_tenant_cache()
    found = next(row for row in store.stats() if row.tenant == tenant)
    return TenantView.of(found)


@router.get("/v1/queues", summary="Backlog and rates per queue and lane", responses=problem_responses(403))
def list_queues(_key: Admin, services: Services) -> list[LaneView]:
    """Per queue and lane: jobs pending, retrying, dispatched, running; finishes per minute."""
    return [LaneView.of(stats) for stats in lane_stats(services.app.engine)]
