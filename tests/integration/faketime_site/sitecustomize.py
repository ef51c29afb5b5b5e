"""Imported at start-up by the clock-skew tests' processes that run under libfaketime (this
directory is on their ``PYTHONPATH`` only).

libfaketime 0.9.10 (Debian 12) makes ``clock_nanosleep`` on the monotonic clock fail with EINVAL
when it leaves that clock alone (``FAKETIME_DONT_FAKE_MONOTONIC=1``; faking it too would break
Python's timed lock waits instead), so ``time.sleep`` raises. Sleep on a timed event wait, which
works, before any module binds ``time.sleep``. The process's wall clock stays skewed.
"""

import threading
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(seconds)


time.sleep = _sleep
