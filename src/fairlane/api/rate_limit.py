"""The per-key request limit: a token bucket per API key, in this process's memory.

With several API processes (``--workers``, replicas) each one allows ``api_rate_limit`` per
key, so a key's ceiling is that times the number of processes. The limit guards a process
against one noisy key; it is not a billing quota (that would need a counter shared by all
processes, e.g. in the ledger, and a write per request).
"""

from __future__ import annotations

import threading
import time


class TokenBuckets:
    """One token bucket per key: ``rate`` tokens a second, up to ``burst``; a request takes one."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str) -> float:
        """Take a token for ``key_id``: 0 if granted, else the seconds until one is free."""
        now = time.monotonic()
        with self._lock:
            tokens, since = self._buckets.get(key_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - since) * self.rate)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1 - tokens) / self.rate
