"""The actors of ``soak.py``, on queue ``BENCH_SOAK_QUEUE``: one job for every kind of the soak's
mix, a rate-limited one, and a cron job.

Worker and scheduler processes import this module with ``FAIRLANE_*`` and ``BENCH_*`` set;
``soak.py`` imports it after configuring its own app, so its sends go through that app.
Every run reports ``kind:attempt:job_id runnable start end pid`` through ``_report``, where
``runnable`` is when the sender made the job runnable (its send time plus any delay), whether
the run succeeded, raised on purpose or was interrupted by a cancel.
"""

from __future__ import annotations

import os
import time

import fairlane
from _report import report

QUEUE = os.environ["BENCH_SOAK_QUEUE"]
#: The shared rate limit of :func:`soak_api_call` (declared by ``soak.py`` in ``FAIRLANE_RATE_LIMITS``).
RATE_LIMIT_KEY = "soak_api"
#: Retries of :func:`soak_job`: a ``flaky`` job succeeds on its second attempt, a ``poison`` job dies
#: after ``MAX_RETRIES + 1``.
MAX_RETRIES = 2
#: How long a ``cancel_running`` job runs unless cancelled (``soak.py`` cancels it once it runs).
LINGER_SECONDS = 60.0
#: How often the cron job fires (a six-field expression: seconds first).
CRON_EVERY_SECONDS = 10


class SoakFailure(Exception):
    """Raised on purpose by ``flaky`` (first attempt) and ``poison`` (every attempt) jobs."""


def _report_run(kind: str, runnable: float, start: float) -> None:
    job = fairlane.current_job()
    report(f"{kind}:{job.attempt}:{job.id}", runnable, start, time.time())


@fairlane.actor(
    actor_name="soak_job", queue_name=QUEUE, max_retries=MAX_RETRIES, min_backoff=200, max_backoff=1000
)
def soak_job(kind: str, runnable: float, ms: int) -> None:
    """Sleep ``ms`` milliseconds (an I/O-bound job), then behave as ``kind`` says.

    ``flaky`` fails its first attempt, ``poison`` every attempt; ``cancel_running`` runs for
    :data:`LINGER_SECONDS` in short sleeps, so a cancel interrupts it; the others succeed.
    """
    start = time.time()
    try:
        if kind == "cancel_running":
            while time.time() < start + LINGER_SECONDS:
                time.sleep(0.05)
        else:
            time.sleep(ms / 1000)
        attempt = fairlane.current_job().attempt
        if kind == "poison" or (kind == "flaky" and attempt == 1):
            raise SoakFailure(f"{kind} job, attempt {attempt}")
    finally:
        _report_run(kind, runnable, start)


@fairlane.actor(actor_name="soak_api_call", queue_name=QUEUE, rate_limit=RATE_LIMIT_KEY, max_retries=0)
def soak_api_call(runnable: float, ms: int) -> None:
    """A call to a rate-limited API: sleep ``ms`` milliseconds (admission spent its request)."""
    start = time.time()
    time.sleep(ms / 1000)
    _report_run("ratelimited", runnable, start)


@fairlane.cron(f"*/{CRON_EVERY_SECONDS} * * * * *", tenant="cron")
@fairlane.actor(actor_name="soak_cron", queue_name=QUEUE)
def soak_cron() -> None:
    """A periodic job the scheduler leader enqueues."""
    start = time.time()
    _report_run("cron", start, start)
