"""Shared by the bench actor modules: append one line per finished bench job to a report file.

Each worker process opens ``BENCH_REPORT`` with ``O_APPEND`` once; a line is written with a
single ``os.write`` (atomic for short lines), so any number of processes can share the file.
Line format: ``tag sent start end pid`` (times from ``time.time()``).
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_fd: int | None = None
_fd_pid = 0


def _report_fd() -> int:
    global _fd, _fd_pid
    with _lock:
        if _fd is None or _fd_pid != os.getpid():
            _fd = os.open(os.environ["BENCH_REPORT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            _fd_pid = os.getpid()
        return _fd


def report(tag: str, sent: float, start: float, end: float) -> None:
    """Record one job: its tag, the sender's send time, and the actor's start and end times."""
    os.write(_report_fd(), f"{tag} {sent!r} {start!r} {end!r} {os.getpid()}\n".encode())
