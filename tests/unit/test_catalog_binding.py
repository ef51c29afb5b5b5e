"""Which arguments fit an actor: decided by their shape, the same for a declared actor and a catalog entry."""

from __future__ import annotations

from typing import Any

import pytest

from fairlane.ledger.actors import CatalogEntry


def export(store_id: int, full: bool = False, *, region: str = "eu") -> None:
    pass


def anything(first: int, *rest: Any, **named: Any) -> None:
    pass


def entry(fn: Any) -> CatalogEntry:
    return CatalogEntry.describe(fn.__name__, "default", fn, {})


@pytest.mark.parametrize(
    ("positional", "keywords", "problem"),
    [
        (1, (), None),
        (2, ("region",), None),
        (0, ("store_id", "full"), None),
        (0, (), "missing a required argument: 'store_id'"),
        (3, (), "too many positional arguments"),
        (1, ("colour",), "got an unexpected keyword argument 'colour'"),
        (1, ("store_id",), "multiple values for argument 'store_id'"),
    ],
)
def test_arguments_fit_by_their_shape(
    positional: int, keywords: tuple[str, ...], problem: str | None
) -> None:
    # Given the catalog entry of an actor with a default and a keyword-only parameter
    # When a shape of arguments is checked twice (the second answer comes from the cache)
    answers = [entry(export).binding_problem(positional, keywords) for _ in range(2)]

    # Then both answers say the same: fits, or why not
    assert answers[0] == answers[1]
    if problem is None:
        assert answers[0] is None
    else:
        assert answers[0] is not None and problem in answers[0]


def test_variadic_parameters_take_any_extra_arguments() -> None:
    assert entry(anything).binding_problem(5, ("a", "b")) is None
    assert entry(anything).binding_problem(0, ("a",)) == "missing a required argument: 'first'"


def test_an_actor_without_a_signature_takes_anything() -> None:
    # Given an entry without parameters (a callable inspect cannot describe, such as a builtin)
    described = CatalogEntry("builtin", "default", None, {})

    # Then any shape fits
    assert described.binding_problem(7, ("x",)) is None
