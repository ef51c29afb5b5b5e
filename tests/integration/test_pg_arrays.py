"""Array literals reach PostgreSQL as the arrays they were built from, whatever the values hold."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from fairlane.ledger.pg_arrays import bool_array, float_array, int_array, text_array

TEXTS = [
    "",
    "NULL",
    "null",
    'say "hi"',
    "back\\slash\\",
    '\\"',
    "{a,b}",
    "  spaced  ",
    "comma, here",
    "é and 🙂",
    "line\none\ttab",
    '{"result": [1, "two", null]}',
    "x" * 100_000,
]


@pytest.fixture
def connection(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        yield connection


def _read(connection: psycopg.Connection[Any], literal: str, cast: str, prepare: bool) -> Any:
    row = connection.execute(f"SELECT %(a)s::{cast}", {"a": literal}, prepare=prepare).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.parametrize("prepare", [False, True], ids=["plain", "prepared"])
def test_text_arrays_hold_every_value_as_given(connection: psycopg.Connection[Any], prepare: bool) -> None:
    for values in ([], [None], TEXTS, [*TEXTS, None, *TEXTS]):
        assert _read(connection, text_array(values), "text[]", prepare) == values


def test_float_arrays_are_exact_and_keep_special_values(connection: psycopg.Connection[Any]) -> None:
    values = [0.0, -0.0, 0.1, 1 / 3, 1e-300, 5e-324, 1.7976931348623157e308, -2.5, None, math.inf, -math.inf]
    assert _read(connection, float_array(values), "float8[]", True) == values
    [nan] = _read(connection, float_array([math.nan]), "float8[]", False)
    assert math.isnan(nan)
    assert _read(connection, float_array([]), "float8[]", False) == []


def test_int_and_bool_arrays(connection: psycopg.Connection[Any]) -> None:
    assert _read(connection, int_array([0, -1, 7, 2**40]), "bigint[]", True) == [0, -1, 7, 2**40]
    assert _read(connection, int_array([]), "int[]", True) == []
    assert _read(connection, bool_array([True, False, True]), "boolean[]", True) == [True, False, True]
    assert _read(connection, bool_array([]), "boolean[]", True) == []
