"""What a bench run reports: one line per finished bench job, and where the run came from.

The bench actor modules call :func:`report`: each worker process opens ``BENCH_REPORT`` with
``O_APPEND`` once; a line is written with a single ``os.write`` (atomic for short lines), so any
number of processes can share the file. Line format: ``tag sent start end pid`` (times from ``time.time()``).

The bench scripts print :func:`command_line` and :func:`source_version` at the top of their
output, so a table can be traced to the run and the code that made it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

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


def command_line() -> str:
    """This run's command line, as it could be typed again."""
    return shlex.join(["python", *sys.argv])


def source_version() -> str:
    """The git commit of the working tree (with ``+changes`` when it differs from it)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty.stdout.strip() else "")
