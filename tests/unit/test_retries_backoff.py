"""Retry backoff: exponential, jittered, bounded."""

from __future__ import annotations

import itertools
import random

from hypothesis import given
from hypothesis import strategies as st

from fairlane.middleware.retries import backoff_ms


@given(
    retries=st.integers(min_value=0, max_value=200),
    min_backoff=st.integers(min_value=1, max_value=60_000),
    extra=st.integers(min_value=0, max_value=3_600_000),
    seed=st.integers(),
)
def test_backoff_follows_dramatiqs_formula(retries: int, min_backoff: int, extra: int, seed: int) -> None:
    # Given backoff settings and a retry number
    max_backoff = min_backoff + extra
    base = min_backoff * 2 ** min(retries, 32)

    # When a delay is drawn
    delay = backoff_ms(retries, min_backoff, max_backoff, random.Random(seed))

    # Then it is Dramatiq's: the exponential stretched by [1, 2), or within [max / 2, max] once
    # that would exceed max_backoff; never above max_backoff
    assert delay <= max_backoff
    if delay >= base:
        assert delay < 2 * base
    else:
        assert max_backoff // 2 <= delay


def test_a_zero_min_backoff_retries_at_once() -> None:
    assert {backoff_ms(retries, 0, 10_000) for retries in range(5)} == {0}


def test_backoff_grows_exponentially_and_is_jittered() -> None:
    # Given many draws per retry number
    rng = random.Random(7)
    draws = {n: [backoff_ms(n, 1000, 10**9, rng) for _ in range(200)] for n in range(4)}

    # Then each retry's typical delay doubles, and delays are spread out (jitter)
    medians = [sorted(values)[100] for values in draws.values()]
    assert all(1.6 < later / earlier < 2.4 for earlier, later in itertools.pairwise(medians))
    assert all(len(set(values)) > 100 for values in draws.values())
