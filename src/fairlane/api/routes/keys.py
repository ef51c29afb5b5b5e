"""``/v1/keys``: API keys, for admin keys (the same store as ``fairlane keys``)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam

from fairlane.api.auth import Admin
from fairlane.api.models import NO_CONTROL, CreatedKey, KeyCreation, KeyView
from fairlane.api.problems import ApiProblem, not_found, problem_responses
from fairlane.api.state import Services
from fairlane.errors import InvalidJob
from fairlane.validation import check_tenant

logger = logging.getLogger("fairlane.api")

KeyId = Annotated[str, PathParam(min_length=1, max_length=32, pattern=NO_CONTROL)]

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=problem_responses(400, 401, 403, 429))


@router.get("", summary="List API keys")
def list_keys(_key: Admin, services: Services) -> list[KeyView]:
    """Every key's record (revoked ones too), oldest first; never the keys themselves."""
    return [KeyView.of(record) for record in services.keys.list()]


@router.post("", status_code=201, summary="Create an API key", responses=problem_responses(422))
def create_key(body: KeyCreation, key: Admin, services: Services) -> CreatedKey:
    """Create a key; the answer holds the key itself, which is not stored and not shown again."""
    try:
        check_tenant(body.tenant)
    except InvalidJob as error:
        raise ApiProblem(422, "invalid-tenant", "Invalid tenant", str(error), field="tenant") from None
    record, secret = services.keys.create(body.tenant, admin=body.admin, name=body.name)
    logger.info(
        "event=api_key_created key=%s tenant=%s admin=%s by=%s",
        record.prefix,
        record.tenant,
        record.admin,
        key.prefix,
    )
    return CreatedKey(key=secret, **KeyView.of(record).model_dump())


@router.post("/{key_id}/revoke", summary="Revoke an API key", responses=problem_responses(404, 422))
def revoke_key(key_id: KeyId, key: Admin, services: Services) -> KeyView:
    """Revoke a key (by its id or ``fl_<id>`` prefix): it never authenticates again."""
    record = services.keys.revoke(key_id)
    if record is None:
        raise not_found("API key", key_id)
    logger.info("event=api_key_revoked key=%s by=%s", record.prefix, key.prefix)
    return KeyView.of(record)
