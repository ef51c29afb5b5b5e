"""Exceptions fairlane raises to its users, all under :class:`FairlaneError`.

``JobCancelled`` is the exception: it interrupts a running job's thread (a Dramatiq
``Interrupt``) and is not meant to be caught by callers.
"""

from __future__ import annotations

from dramatiq.middleware import Interrupt

from fairlane.fairlane_error import FairlaneError
from fairlane.ledger.database import LedgerOutdated
from fairlane.ledger.jobs import JobNotFound
from fairlane.ledger.lost_sends import LedgerUnavailable
from fairlane.settings import SettingsError


class InvalidJob(FairlaneError, ValueError):
    """A job was refused at send time (bad tenant, priority, arguments, size…); nothing was stored."""


class InvalidActor(FairlaneError, ValueError):
    """An actor was refused at declaration (e.g. a time limit RabbitMQ's consumer timeout would cut short)."""


class JobCancelled(Interrupt):
    """Raised inside a running job's thread when the job is cancelled."""


class JobTimeout(FairlaneError, TimeoutError):
    """:func:`fairlane.jobs.wait` gave up before the job finished."""


__all__ = [
    "FairlaneError",
    "InvalidActor",
    "InvalidJob",
    "JobCancelled",
    "JobNotFound",
    "JobTimeout",
    "LedgerOutdated",
    "LedgerUnavailable",
    "SettingsError",
]
