"""The API's FastAPI app, built around one fairlane :class:`~fairlane.app.App`.

Routers are mounted by concern; another (a ``/ui/`` page, an ingress status page) is added
with :meth:`FastAPI.include_router` on the app this returns, and reaches the same services
through :func:`fairlane.api.state.api_state`. Middleware, outermost first: request metrics
(so refused bodies and auth failures are counted too), then the body limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from fairlane.api.body_limit import BodyLimit
from fairlane.api.events import JobEventHub
from fairlane.api.metrics import RequestMetrics
from fairlane.api.problems import PROBLEM_MEDIA_TYPE, install_problem_handlers
from fairlane.api.rate_limit import TokenBuckets
from fairlane.api.routes import dead_letters, health, jobs, keys, tenants
from fairlane.api.state import ApiState
from fairlane.api.ui import router as ui_router
from fairlane.app import App
from fairlane.ledger.api_keys import ApiKeyStore

_DESCRIPTION = """\
Submit, watch and manage fairlane jobs over HTTP. Every `/v1` call needs
`Authorization: Bearer <key>` (`fairlane keys create --tenant T`). A tenant key acts on its own
tenant's jobs only; admin keys see every tenant and manage weights, caps, dead letters and keys.
Errors are RFC 9457 problem details (`application/problem+json`).
"""


def create_api(app: App) -> FastAPI:
    """The HTTP API of ``app``: an ASGI application (serve it with uvicorn, test it with TestClient)."""
    settings = app.settings
    services = ApiState(
        app=app,
        keys=ApiKeyStore(app.engine),
        rate_limiter=TokenBuckets(settings.api_rate_limit, settings.api_rate_burst),
        events=JobEventHub(app.jobs, settings.api_events_interval),
    )

    @asynccontextmanager
    async def lifespan(_api: FastAPI) -> AsyncIterator[None]:
        yield
        services.events.close()

    api = FastAPI(
        title="fairlane",
        version="1",
        description=_DESCRIPTION,
        lifespan=lifespan,
    )
    api.state.fairlane = services
    install_problem_handlers(api)
    for router in (jobs.router, dead_letters.router, tenants.router, keys.router, health.router):
        api.include_router(router)
    api.include_router(ui_router)
    api.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    api.add_middleware(RequestMetrics)
    api.openapi = lambda: _openapi(api)  # type: ignore[method-assign]
    return api


def _openapi(api: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with problem bodies under their own media type."""
    if api.openapi_schema is None:
        schema = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
                    if status[0] in "45" and ref.endswith("/Problem"):
                        content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
        api.openapi_schema = schema
    return api.openapi_schema
