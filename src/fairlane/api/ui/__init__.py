"""``/ui/``: the job browser page, a static page on the JSON API (no build step, nothing from a CDN).

``static/`` holds the whole page: one HTML document, one script and one stylesheet. The
script asks for an API key once, keeps it in the tab's ``sessionStorage`` and sends it as
``Authorization: Bearer`` on each ``fetch`` of the ``/v1`` API, exactly as any other client
does: the page has no privileges of its own, and no cookie, so no request forgery can ride
on it. The key never goes into a URL or a log. Event streams (``/v1/jobs/{id}/events``) are
read with ``fetch`` as well, since ``EventSource`` cannot send that header.

Every response here carries a strict Content-Security-Policy: scripts, styles and requests
from this origin only, no inline script or style, no form submissions (the forms are handled
by the script, so a page whose script failed cannot send a key anywhere), no framing.

``GET /ui/session`` tells the page whose key it holds (tenant, admin or not) and which lanes
and states to offer as filters. None of these routes is in the OpenAPI document: they are the
page's, not the API's.
"""

from __future__ import annotations

from importlib.resources import files
from typing import get_args

from fastapi import APIRouter, Response
from pydantic import BaseModel

from fairlane.api.auth import Caller
from fairlane.api.models import State
from fairlane.api.problems import not_found
from fairlane.api.state import Services

#: The page's files and their media types: only these are served (no path reaches the disk).
_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_STATIC = files(__name__) / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
#: Headers of every /ui/ response. ``no-cache``: browsers revalidate, so an upgrade shows at once.
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

router = APIRouter(prefix="/ui", include_in_schema=False)


class UiSession(BaseModel):
    """Who the page's key is, and the filter values the page offers."""

    key: str
    tenant: str
    admin: bool
    lanes: list[str]
    states: list[str]


@router.get("/session")
def session(key: Caller, services: Services, response: Response) -> UiSession:
    """The key's public prefix, tenant and role (401 for an unknown or revoked key)."""
    response.headers.update(SECURITY_HEADERS)
    return UiSession(
        key=key.prefix,
        tenant=key.tenant,
        admin=key.admin,
        lanes=list(services.app.settings.lanes),
        states=list(get_args(State)),
    )


@router.get("/")
def page() -> Response:
    """The page itself."""
    return asset("index.html")


@router.get("/{name}")
def asset(name: str) -> Response:
    """One of the page's files (404 for any other name)."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise not_found("page file", name)
    body = (_STATIC / name).read_bytes()
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)
