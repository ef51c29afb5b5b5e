"""fairlane: a multi-tenant, ledger-first background-job platform on Dramatiq and RabbitMQ.

import fairlane

@fairlane.actor(queue_name="exports", max_retries=3, min_backoff=1000, time_limit=60_000)
def export_catalog(store_id: int) -> dict: ...

msg = export_catalog.send_with_options(args=(42,), tenant="store-42", priority="high")
fairlane.jobs.wait(msg.message_id, timeout=30)
"""

from __future__ import annotations

from fairlane import jobs, ratelimit, tenants
from fairlane.actor import Actor, actor
from fairlane.app import App, configure, get_app
from fairlane.broker import FairlaneBroker
from fairlane.errors import (
    FairlaneError,
    InvalidActor,
    InvalidJob,
    JobCancelled,
    JobNotFound,
    JobTimeout,
    LedgerOutdated,
    LedgerUnavailable,
    SettingsError,
)
from fairlane.ledger.jobs import Job, JobError
from fairlane.middleware.context import CurrentJob, current_job, progress
from fairlane.scheduling.cron import cron
from fairlane.settings import Settings, load_settings


def get_broker() -> FairlaneBroker:
    """This process's fairlane broker (also set as Dramatiq's global broker).

    Call it before declaring plain ``@dramatiq.actor`` actors so they land on fairlane's broker.
    """
    return get_app().broker


__all__ = [
    "Actor",
    "App",
    "CurrentJob",
    "FairlaneBroker",
    "FairlaneError",
    "InvalidActor",
    "InvalidJob",
    "Job",
    "JobCancelled",
    "JobError",
    "JobNotFound",
    "JobTimeout",
    "LedgerOutdated",
    "LedgerUnavailable",
    "Settings",
    "SettingsError",
    "actor",
    "configure",
    "cron",
    "current_job",
    "get_app",
    "get_broker",
    "jobs",
    "load_settings",
    "progress",
    "ratelimit",
    "tenants",
]
