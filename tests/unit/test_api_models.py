"""The API's models stay in step with the ledger they describe."""

from __future__ import annotations

from typing import get_args

from fairlane.api.models import State
from fairlane.ledger.schema import STATES


def test_the_documented_job_states_are_the_ledgers() -> None:
    # Given the job states the OpenAPI document lists and the ledger's own
    # Then they are the same, in the same order
    assert get_args(State) == STATES
