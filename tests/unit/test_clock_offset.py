"""A process's estimate of the ledger's clock (for comparisons it must make locally, e.g. a metric)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fairlane.ledger.clock import ClockOffset
from fairlane.ledger.database import utcnow


def test_a_clock_offset_is_the_ledger_time_against_the_midpoint_of_its_round_trip() -> None:
    # Given a process whose clock is 120 s ahead of the ledger's, and a statement that took 0.2 s
    offset = ClockOffset()
    ledger_time = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    sent_at = ledger_time.timestamp() + 120 - 0.1

    # When the ledger's time that statement returned is measured
    measured = offset.measure(ledger_time, sent_at, sent_at + 0.2)

    # Then the offset is -120 s, and the ledger's time is estimated 120 s behind this clock
    assert measured == pytest.approx(-120.0)
    assert offset.seconds == pytest.approx(-120.0)
    assert offset.ledger_time() == pytest.approx(utcnow().timestamp() - 120.0, abs=0.5)
