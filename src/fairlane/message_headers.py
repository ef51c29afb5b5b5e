"""The AMQP headers fairlane puts on the job messages it publishes, and how a worker reads them.

A message published by an admission round (or by a send that took an idle queue's free slot)
says which attempt of its job it is and since when the job has been runnable. With those, a
worker on a PostgreSQL ledger runs the job at once and records its start in the next batched
flush, instead of waiting for that flush (see :mod:`fairlane.middleware.tracking`). A message
without them (re-published by the reaper, or by an older fairlane) is started the careful way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

#: The attempt the message's start will be (1 for a job's first run).
ATTEMPT_HEADER = "x-fairlane-attempt"
#: Since when the job has been runnable (accepted, or its delay or backoff over), epoch milliseconds.
RUNNABLE_SINCE_HEADER = "x-fairlane-runnable-ms"
#: The attribute of a received message (its proxy) that holds its :class:`StartHint`.
_HINT_ATTRIBUTE = "_fairlane_start_hint"


@dataclasses.dataclass(frozen=True)
class StartHint:
    """What the publisher knew of a job's next start: which attempt, and since when it is runnable."""

    attempt: int
    #: Epoch seconds.
    runnable_since: float


def start_headers(attempt: int, runnable_since: datetime) -> dict[str, int]:
    """The headers that carry a job's :class:`StartHint`."""
    return {ATTEMPT_HEADER: attempt, RUNNABLE_SINCE_HEADER: int(runnable_since.timestamp() * 1000)}


def read_start_hint(headers: Mapping[str, Any] | None) -> StartHint | None:
    """The hint in a received message's headers, or None if they carry none (or a malformed one)."""
    if not headers:
        return None
    attempt, since = headers.get(ATTEMPT_HEADER), headers.get(RUNNABLE_SINCE_HEADER)
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        return None
    if not isinstance(since, int) or isinstance(since, bool) or since < 0:
        return None
    return StartHint(attempt, since / 1000)


def attach_start_hint(message: Any, hint: StartHint | None) -> None:
    """Keep ``hint`` on a received message (its proxy) for the worker's middleware."""
    if hint is not None:
        setattr(message, _HINT_ATTRIBUTE, hint)


def start_hint_of(message: Any) -> StartHint | None:
    """The hint a received message arrived with, if any."""
    return getattr(message, _HINT_ATTRIBUTE, None)


__all__ = [
    "ATTEMPT_HEADER",
    "RUNNABLE_SINCE_HEADER",
    "StartHint",
    "attach_start_hint",
    "read_start_hint",
    "start_headers",
    "start_hint_of",
]
