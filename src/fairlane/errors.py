"""Exceptions fairlane raises to its users."""

from __future__ import annotations

from dramatiq.middleware import Interrupt

from fairlane.ledger.database import LedgerOutdated
from fairlane.ledger.jobs import JobNotFound
from fairlane.settings import SettingsError


class InvalidJob(ValueError):
    """A job was refused at send time (bad tenant, priority, arguments, size…); nothing was stored."""


class JobCancelled(Interrupt):
    """Raised inside a running job's thread when the job is cancelled."""


class JobTimeout(TimeoutError):
    """:func:`fairlane.jobs.wait` gave up before the job finished."""


__all__ = ["InvalidJob", "JobCancelled", "JobNotFound", "JobTimeout", "LedgerOutdated", "SettingsError"]
