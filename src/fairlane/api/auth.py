"""Who is calling: ``Authorization: Bearer <key>`` resolved to an API key, and its request budget.

Every ``/v1`` route depends on :func:`caller` (or :func:`admin`). A tenant key acts on its own
tenant only; an admin key on every tenant, and it alone manages weights, caps, dead letters
and keys. Keys are never logged: only their public id (``fl_<id>``).

Each key's request rate is limited by :class:`fairlane.api.rate_limit.TokenBuckets`.
"""

from __future__ import annotations

import logging
import math
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fairlane.api.problems import ApiProblem
from fairlane.api.state import ApiState, api_state
from fairlane.ledger.api_keys import ApiKey

logger = logging.getLogger("fairlane.api")

_bearer = HTTPBearer(auto_error=False, description="An API key from `fairlane keys create`.")
#: Longest Authorization value looked at (keys are ~55 characters).
_MAX_KEY_LENGTH = 200


def _unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(
        401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="fairlane"'}
    )


def caller(
    request: Request,
    state: Annotated[ApiState, Depends(api_state)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """The live API key of this request (401 without one, 429 over its request rate)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("send an API key as `Authorization: Bearer <key>`")
    key = credentials.credentials
    found = state.keys.authenticate(key) if len(key) <= _MAX_KEY_LENGTH else None
    if found is None:
        logger.info("event=api_auth_refused path=%s", request.url.path)
        raise _unauthorized("the API key is unknown or revoked")
    wait = state.rate_limiter.take(found.id)
    if wait > 0:
        raise ApiProblem(
            429,
            "rate-limited",
            "Too many requests",
            f"key {found.prefix} is over {state.rate_limiter.rate:g} requests per second",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return found


def admin(key: Annotated[ApiKey, Depends(caller)]) -> ApiKey:
    """The caller's key, which must be an admin key (403 otherwise)."""
    if not key.admin:
        raise ApiProblem(403, "admin-only", "Forbidden", "this needs an admin key")
    return key


Caller = Annotated[ApiKey, Depends(caller)]
Admin = Annotated[ApiKey, Depends(admin)]


def tenant_scope(key: ApiKey, requested: str | None) -> str | None:
    """The tenant a listing is limited to: a tenant key's own; for an admin, ``requested`` (or all)."""
    if key.admin:
        return requested
    if requested is not None and requested != key.tenant:
        raise ApiProblem(
            403, "tenant-filter", "Forbidden", "a tenant key lists its own tenant only", field="tenant"
        )
    return key.tenant


def visible(key: ApiKey, tenant: str) -> bool:
    """Whether ``key`` may see a resource of ``tenant``."""
    return key.admin or key.tenant == tenant
