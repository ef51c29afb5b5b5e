"""The start hint a published job message carries: written, read back, and refused when malformed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from fairlane.message_headers import (
    ATTEMPT_HEADER,
    RUNNABLE_SINCE_HEADER,
    StartHint,
    read_start_hint,
    start_headers,
)


def test_a_hint_survives_the_headers_round_trip() -> None:
    # Given a job's third attempt, runnable since a known moment
    since = datetime(2026, 12, 1, 12, 0, 0, 250_000, tzinfo=UTC)

    # When its headers are written and read back
    hint = read_start_hint(start_headers(3, since))

    # Then the attempt and the moment (to the millisecond) come back
    assert hint == StartHint(3, since.timestamp())


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {},
        {ATTEMPT_HEADER: 1},
        {RUNNABLE_SINCE_HEADER: 1},
        {ATTEMPT_HEADER: 0, RUNNABLE_SINCE_HEADER: 1},
        {ATTEMPT_HEADER: True, RUNNABLE_SINCE_HEADER: 1},
        {ATTEMPT_HEADER: "1", RUNNABLE_SINCE_HEADER: 1},
        {ATTEMPT_HEADER: 1, RUNNABLE_SINCE_HEADER: -5},
        {ATTEMPT_HEADER: 1, RUNNABLE_SINCE_HEADER: 1.5},
        {ATTEMPT_HEADER: 1, RUNNABLE_SINCE_HEADER: b"1"},
    ],
)
def test_missing_or_malformed_headers_give_no_hint(headers: Any) -> None:
    # Given headers without a well-formed hint (a message from another publisher, or tampered)
    # Then there is no hint: the worker records the job's start before it runs it
    assert read_start_hint(headers) is None
