"""``/ui/`` over HTTP: the page's files with their security headers, nothing else from the
disk, and ``/ui/session`` for the key the page holds (the browser tests use the page itself)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from fairlane.api.ui import CONTENT_SECURITY_POLICY

Keys = Callable[..., dict[str, str]]


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/favicon.svg", "image/svg+xml"),
    ],
)
def test_page_files_are_served_with_a_strict_content_security_policy(
    api: TestClient, path: str, media_type: str
) -> None:
    # When a file of the page is fetched, with no key
    response = api.get(path)

    # Then it is served with its media type, under a policy allowing this origin's files only
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    policy = response.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy
    assert "form-action 'none'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_page_loads_no_inline_script_and_nothing_from_another_origin(api: TestClient) -> None:
    # When the page's HTML is read
    html = api.get("/ui/").text

    # Then its one script is a file of its own, and it names no other host
    assert '<script type="module" src="app.js"></script>' in html
    assert html.count("<script") == 1
    assert "http://" not in html and "https://" not in html
    assert "style=" not in html


def test_only_the_pages_own_files_are_served(api: TestClient) -> None:
    # When paths outside the page's files are asked for under /ui/
    paths = ["/ui/__init__.py", "/ui/static", "/ui/..%2F__init__.py", "/ui/%2e%2e/app.py", "/ui/missing.js"]
    responses = {path: api.get(path) for path in paths}

    # Then each is a 404 problem, and /ui without the slash leads to the page
    for path, response in responses.items():
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json", path
    redirect = api.get("/ui", follow_redirects=False)
    assert redirect.status_code in (307, 308)
    assert redirect.headers["location"].endswith("/ui/")


def test_ui_routes_stay_out_of_the_openapi_document(api: TestClient) -> None:
    # When the API's document is read
    paths = api.get("/openapi.json").json()["paths"]

    # Then it describes the API only: the page is not part of it
    assert not [path for path in paths if path.startswith("/ui")]
    assert "/v1/jobs" in paths


def test_session_tells_the_page_whose_key_it_holds(api: TestClient, key_headers: Keys) -> None:
    # Given a tenant key and an admin key
    tenant, admin = key_headers("acme-ui"), key_headers("ops", admin=True)

    # When the page asks who each key is, and with no key, and with a made-up one
    as_tenant = api.get("/ui/session", headers=tenant)
    as_admin = api.get("/ui/session", headers=admin)
    anonymous = api.get("/ui/session")
    unknown = api.get("/ui/session", headers={"Authorization": "Bearer fl_00000000_not-a-key"})

    # Then it learns the tenant and role (never the key itself), and the filters to offer
    body = as_tenant.json()
    assert body["tenant"] == "acme-ui" and body["admin"] is False
    assert body["key"].startswith("fl_") and body["key"] in tenant["Authorization"]
    assert body["key"] != tenant["Authorization"].removeprefix("Bearer ")
    assert body["lanes"] == ["urgent", "high", "normal", "low"]
    assert "running" in body["states"] and "dead" in body["states"]
    assert as_admin.json()["admin"] is True
    assert as_tenant.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    # And without a live key it is a 401 problem, as for every /v1 call
    assert anonymous.status_code == 401 and unknown.status_code == 401
    assert unknown.headers["content-type"] == "application/problem+json"
