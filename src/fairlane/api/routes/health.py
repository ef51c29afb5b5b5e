"""``/healthz`` (the process answers), ``/readyz`` (ledger and broker reachable), ``/metrics``.

None of them needs a key: probes and Prometheus call them, and they reveal no tenant data.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fairlane.api.metrics import scrape_registry
from fairlane.api.models import Health
from fairlane.api.state import Services
from fairlane.app import App

logger = logging.getLogger("fairlane.api")

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
def healthz() -> Health:
    """``ok`` whenever the process can answer at all."""
    return Health(status="ok")


def _ledger_check(app: App) -> str:
    try:
        with app.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except Exception as error:
        logger.warning("event=api_not_ready part=ledger error=%s", type(error).__name__)
        return f"unreachable ({type(error).__name__})"
    return "ok"


def _broker_check(app: App) -> str:
    try:
        # This thread's connection of the broker (opened on first use, as for sends).
        app.broker.connection.process_data_events(time_limit=0)
    except Exception as error:
        logger.warning("event=api_not_ready part=broker error=%s", type(error).__name__)
        try:
            del app.broker.connection  # the next use opens a new one
        except Exception:  # a dead connection may fail to close: it is dropped either way
            logger.debug("event=broker_connection_drop_failed", exc_info=True)
        return f"unreachable ({type(error).__name__})"
    return "ok"


@router.get(
    "/readyz",
    summary="The ledger and the broker are reachable",
    responses={503: {"model": Health, "description": "The ledger or the broker is unreachable"}},
)
def readyz(services: Services) -> JSONResponse:
    """``ok`` (200) when this process reaches the ledger and RabbitMQ, else ``unavailable`` (503)."""
    checks = {"ledger": _ledger_check(services.app), "broker": _broker_check(services.app)}
    ready = all(result == "ok" for result in checks.values())
    health = Health(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(health.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics of this process",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
def metrics(services: Services) -> PlainTextResponse:
    """Request counts and durations by route template, method and status class, and job metrics."""
    registry = scrape_registry(services.app.settings)
    return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
