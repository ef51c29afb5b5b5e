"""What the API's routes share: the fairlane app, its key store, rate limiter and event hub."""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import Depends, Request

from fairlane.api.events import JobEventHub
from fairlane.api.rate_limit import TokenBuckets
from fairlane.app import App
from fairlane.ledger.api_keys import ApiKeyStore


@dataclasses.dataclass(frozen=True)
class ApiState:
    """One API process's services, built by :func:`fairlane.api.create_api`."""

    app: App
    keys: ApiKeyStore
    rate_limiter: TokenBuckets
    events: JobEventHub


async def api_state(request: Request) -> ApiState:
    """The :class:`ApiState` of the API serving ``request`` (async: no thread hop for an attribute)."""
    state: ApiState = request.app.state.fairlane
    return state


Services = Annotated[ApiState, Depends(api_state)]
