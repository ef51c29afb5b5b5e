"""The fairlane side of ``fairness.py``: a short job and a rate-limited API call.

Worker processes import this module with ``BENCH_FAIR_QUEUE`` set and get the actors declared
on their app's broker. ``fairness.py`` itself calls :func:`declare` again after each
``fairlane.configure()`` (one fresh ledger per phase), so its sends go through the new broker.
The rate-limited actor is declared only when ``BENCH_API_URL`` names the fake API, so the
other phases run without a rate-limit key.

Every job reports ``tag sent start end pid`` through ``_report`` (the tag carries the phase and
the tenant); the API call also tells the fake API how many tokens it "used".
"""

from __future__ import annotations

import os
import time
from typing import Any

import fairlane
from _fairness_fake_api import call_api
from _report import report

#: Token estimate charged at admission for each API call; the real count is settled afterwards.
ESTIMATED_TOKENS = 1000


def declare(queue: str, api_url: str | None) -> dict[str, Any]:
    """Declare the bench actors on the current fairlane app's broker; returns them by name."""

    @fairlane.actor(actor_name="fair_work", queue_name=queue, max_retries=0)
    def fair_work(tag: str, sent: float, ms: float) -> None:
        """Sleep ``ms`` milliseconds (an I/O-bound job) and report."""
        start = time.time()
        if ms:
            time.sleep(ms / 1000)
        report(tag, sent, start, time.time())

    actors: dict[str, Any] = {"fair_work": fair_work}
    if api_url:

        @fairlane.actor(
            actor_name="fair_api_call",
            queue_name=f"{queue}_api",
            rate_limit="api",
            tokens=ESTIMATED_TOKENS,
            max_retries=3,
        )
        def fair_api_call(tag: str, sent: float, tokens: int) -> None:
            """Call the fake API, which "uses" ``tokens`` tokens, then settle the real count."""
            start = time.time()
            used = call_api(api_url, tag, tokens)
            fairlane.ratelimit.settle(used)
            report(tag, sent, start, time.time())

        actors["fair_api_call"] = fair_api_call
    return actors


if os.environ.get("BENCH_FAIR_QUEUE"):
    globals().update(declare(os.environ["BENCH_FAIR_QUEUE"], os.environ.get("BENCH_API_URL")))
