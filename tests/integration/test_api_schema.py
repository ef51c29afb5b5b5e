"""The OpenAPI document holds: schemathesis sends generated requests to every operation, with
a tenant key and with an admin key, and checks every answer against the document. Requests
that fit the document (positive) and requests that break it (negative: malformed JSON, wrong
types, out-of-range values) alike must get a documented answer, never a server error."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation.case import Case

from fairlane.api import create_api
from fairlane.app import App
from fairlane.ledger.api_keys import ApiKeyStore

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
#: Examples per operation, key and mode: enough to reach every parameter's edges, few enough to stay quick.
EXAMPLES = {GenerationMode.POSITIVE: 8, GenerationMode.NEGATIVE: 5}


@pytest.mark.parametrize(
    "mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"]
)
@pytest.mark.parametrize("admin", [False, True], ids=["tenant-key", "admin-key"])
def test_every_operation_answers_as_documented(
    make_app: Callable[..., App], admin: bool, mode: GenerationMode
) -> None:
    # Given the API (no request-rate limit in the way) and a key
    app = make_app(api_rate_limit=100_000, api_rate_burst=100_000)
    api = create_api(app)
    headers = {"Authorization": f"Bearer {ApiKeyStore(app.engine).create('fuzz', admin=admin)[1]}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", api)
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses: Counter[int] = Counter()

    # When generated requests are sent to every operation
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES[mode], deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def answers_as_documented(case: Case) -> None:
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            statuses[response.status_code] += 1

        # Then no answer is a server error or contradicts the document
        try:
            answers_as_documented()
        except Unsatisfiable:  # negative mode: an operation without parameters has nothing to break
            assert mode is GenerationMode.NEGATIVE

    assert len(operations) >= 19
    assert not [status for status in statuses if status >= 500]
    print(
        f"\nschemathesis ({'admin' if admin else 'tenant'} key, {mode.value}): {len(operations)} operations, "
        f"{sum(statuses.values())} requests, failures: 0, statuses {dict(sorted(statuses.items()))}"
    )
