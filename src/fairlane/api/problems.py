"""Problem details (RFC 9457): every error the API answers is ``application/problem+json``.

A problem names what went wrong (``type``, a ``urn:fairlane:problem:…`` URI, and ``title``),
the specifics (``detail``) and, for bad input, the field(s) at fault (``field`` and ``errors``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from fairlane.errors import InvalidJob
from fairlane.ledger.jobs import JobNotFound

logger = logging.getLogger("fairlane.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"


class FieldError(BaseModel):
    """One bad field of a request: where (``a.b.0``) and why."""

    model_config = ConfigDict(extra="forbid")

    field: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem details body."""

    model_config = ConfigDict(extra="forbid")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    field: str | None = None
    errors: list[FieldError] | None = None


class ApiProblem(Exception):
    """An error the API answers with a problem body (and optional headers such as Retry-After)."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str | None = None,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.problem = Problem(
            type=f"urn:fairlane:problem:{slug}", title=title, status=status, detail=detail, field=field
        )
        self.headers = headers or {}


def not_found(what: str, ident: str) -> ApiProblem:
    """The 404 of a missing resource (also of one another tenant owns: no existence leak)."""
    return ApiProblem(404, "not-found", "Not found", f"no {what} with id {ident!r}")


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> JSONResponse:
    """``problem`` as a response."""
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


#: InvalidJob messages start with what they are about (see FairlaneBroker._prepare).
_INVALID_JOB_FIELDS = (
    ("unknown actor", "actor"),
    ("arguments", "args"),
    ("estimated", "args"),
    ("unknown priority", "priority"),
    ("idempotency_key", "idempotency_key"),
    ("cost", "cost"),
    ("delay", "delay_ms"),
    ("tenant", "tenant"),
)
_BATCH_INDEX = re.compile(r"^message (\d+): ")


def invalid_job(error: InvalidJob) -> ApiProblem:
    """The 422 of a job ``send()`` refused, naming the field when the message says which
    (``jobs.<i>.<field>`` for the i-th job of a batch)."""
    detail = str(error)
    index = _BATCH_INDEX.match(detail)
    rest = detail[index.end() :] if index else detail
    field = next((name for start, name in _INVALID_JOB_FIELDS if rest.startswith(start)), None)
    prefix = f"jobs.{index.group(1)}." if index else ""
    return ApiProblem(422, "invalid-job", "Invalid job", detail, field=f"{prefix}{field}" if field else None)


def _field_of(location: tuple[Any, ...]) -> str:
    parts = [str(part) for part in location if part not in ("body",)]
    return ".".join(parts) or "body"


async def _on_api_problem(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiProblem)
    return problem_response(error.problem, error.headers)


async def _on_validation_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    errors = [
        FieldError(field=_field_of(tuple(item.get("loc", ()))), message=str(item.get("msg", "")))
        for item in error.errors()
    ]
    first = errors[0] if errors else None
    problem = Problem(
        type="urn:fairlane:problem:invalid-request",
        title="Invalid request",
        status=422,
        detail=f"{first.field}: {first.message}" if first else None,
        field=first.field if first else None,
        errors=errors,
    )
    return problem_response(problem)


async def _on_http_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    problem = Problem(title=_TITLES.get(error.status_code, "Error"), status=error.status_code)
    if error.detail and error.detail != problem.title:
        problem.detail = str(error.detail)
    return problem_response(problem, dict(error.headers or {}))


async def _on_invalid_job(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, InvalidJob)
    return problem_response(invalid_job(error).problem)


async def _on_job_not_found(_request: Request, error: Exception) -> JSONResponse:
    # A job that vanished between two reads of one request (cleanup, purge): as if never there.
    return problem_response(Problem(type="urn:fairlane:problem:not-found", title="Not found", status=404))


_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    410: "Gone",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Invalid request",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


async def _on_ledger_unavailable(_request: Request, error: Exception) -> JSONResponse:
    logger.error("event=api_ledger_unavailable error=%s", type(error).__name__)
    problem = Problem(
        type="urn:fairlane:problem:ledger-unavailable",
        title="Service unavailable",
        status=503,
        detail="the job ledger cannot be reached; try again shortly",
    )
    return problem_response(problem, {"Retry-After": "5"})


async def _on_unexpected(_request: Request, _error: Exception) -> JSONResponse:
    # Starlette logs the exception (and its traceback) after this answer is sent.
    return problem_response(Problem(title="Internal server error", status=500))


def install_problem_handlers(api: FastAPI) -> None:
    """Answer every error of ``api`` with a problem body (a lost ledger: 503, anything else: 500)."""
    api.add_exception_handler(ApiProblem, _on_api_problem)
    api.add_exception_handler(RequestValidationError, _on_validation_error)
    api.add_exception_handler(StarletteHTTPException, _on_http_error)
    api.add_exception_handler(InvalidJob, _on_invalid_job)
    api.add_exception_handler(JobNotFound, _on_job_not_found)
    api.add_exception_handler(sa.exc.OperationalError, _on_ledger_unavailable)
    api.add_exception_handler(Exception, _on_unexpected)


_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses (problem bodies)."""
    return {
        status: {"model": Problem, "description": _TITLES.get(status, "Error")}
        | ({"headers": _RETRY_AFTER} if status in (429, 503) else {})
        for status in statuses
    }
