"""The opaque cursor of job listings: positions survive the round trip; anything else is a 400."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fairlane.api.cursor import decode_cursor, encode_cursor
from fairlane.api.problems import ApiProblem

positions = st.tuples(
    st.datetimes(timezones=st.just(UTC)),
    st.text(alphabet=st.characters(categories=("L", "N", "Pd")), min_size=1, max_size=64),
)


@given(positions)
def test_a_position_survives_the_cursor(position: tuple[datetime, str]) -> None:
    # Given a job's place in the listing order
    # When it is encoded as a cursor and decoded again
    cursor = encode_cursor(position)

    # Then the same place comes back, from a URL-safe string
    assert decode_cursor(cursor) == position
    assert cursor.replace("-", "").replace("_", "").isalnum()


@given(st.text(max_size=600))
def test_any_other_text_is_a_bad_cursor_never_a_crash(text: str) -> None:
    # Given any text a client may send as a cursor
    try:
        # When it is decoded
        moment, job_id = decode_cursor(text)
    except ApiProblem as problem:
        # Then it is refused as a bad cursor (400, naming the parameter)…
        assert (problem.problem.status, problem.problem.field) == (400, "cursor")
    else:
        # …or it is a well-formed position (a client replaying one we issued)
        assert moment.tzinfo is not None and job_id.isprintable()


@pytest.mark.parametrize("cursor", ["", "bm90IGpzb24", "WzEsMl0", "WyJ5ZXN0ZXJkYXkiLCJhIl0", "x" * 513])
def test_known_bad_cursors_are_refused(cursor: str) -> None:
    # When a cursor is empty, not JSON, not a pair of strings, not a time, or too long
    with pytest.raises(ApiProblem) as refused:
        decode_cursor(cursor)

    # Then it is a 400 problem
    assert refused.value.problem.status == 400
