"""The SQLite leader lock: one holder at a time, released when the holder releases or dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fairlane.scheduling.leader import FileLeaderLock, PostgresLeaderLock, leader_lock_for
from fairlane.settings import Settings

_HOLD = """
import sys, time
from pathlib import Path
from fairlane.scheduling.leader import FileLeaderLock
lock = FileLeaderLock(Path(sys.argv[1]))
assert lock.try_acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_only_one_file_lock_holder_at_a_time(tmp_path: Path) -> None:
    # Given two schedulers' locks on the same file
    first = FileLeaderLock(tmp_path / "scheduler.lock")
    second = FileLeaderLock(tmp_path / "scheduler.lock")

    # When the first takes it
    assert first.try_acquire()

    # Then the second can't, until the first releases it
    assert not second.try_acquire()
    assert first.still_held() and not second.still_held()
    first.release()
    assert second.try_acquire()
    assert not first.try_acquire()
    second.close()


def test_file_lock_of_a_killed_holder_is_free_at_once(tmp_path: Path) -> None:
    # Given another process holding the lock
    path = tmp_path / "scheduler.lock"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        standby = FileLeaderLock(path)
        assert not standby.try_acquire()

        # When it is killed with SIGKILL
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)

        # Then the standby takes the lock on its next try
        deadline = time.monotonic() + 2
        while not standby.try_acquire():
            assert time.monotonic() < deadline, "lock not free after the holder died"
            time.sleep(0.05)
        standby.close()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_the_lock_kind_follows_the_ledger(tmp_path: Path) -> None:
    # Given settings for SQLite (with and without an explicit lock path) and for PostgreSQL
    sqlite = Settings(database_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    explicit = Settings(
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}", leader_lock_path=tmp_path / "x.lock"
    )
    postgres = Settings(database_url="postgresql://postgres@127.0.0.1:5432/postgres")

    # Then SQLite gets a file lock beside the database (or at leader_lock_path), PostgreSQL an advisory lock
    lock = leader_lock_for(sqlite)
    assert isinstance(lock, FileLeaderLock) and lock.path == Path(f"{tmp_path / 'ledger.db'}.scheduler.lock")
    explicit_lock = leader_lock_for(explicit)
    assert isinstance(explicit_lock, FileLeaderLock) and explicit_lock.path == tmp_path / "x.lock"
    pg_lock = leader_lock_for(postgres)
    assert isinstance(pg_lock, PostgresLeaderLock)
    pg_lock.close()
