"""fairlane's HTTP API: jobs, dead letters, tenants and queues over JSON, for any language.

    import fairlane
    from fairlane.api import create_api

    api = create_api(fairlane.get_app())   # an ASGI app; `fairlane api` serves it with uvicorn

Layout: :mod:`~fairlane.api.app` builds the FastAPI app; ``routes/`` holds one router per
concern; :mod:`~fairlane.api.auth` resolves keys; :mod:`~fairlane.api.events` is the shared
poller of the Server-Sent Events streams; errors are RFC 9457 problems
(:mod:`~fairlane.api.problems`).
"""

from __future__ import annotations

from fairlane.api.app import create_api

__all__ = ["create_api"]
