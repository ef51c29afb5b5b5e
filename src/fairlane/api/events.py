"""Job events for Server-Sent Events streams: one poller per API process, shared by every stream.

A stream subscribes to its job's id. Every ``api_events_interval`` seconds one thread reads
the live part of every watched job (:meth:`~fairlane.ledger.jobs.JobStore.snapshots`: one
query per 1,000 watched jobs, however many streams watch each) and hands each changed
snapshot to the streams of that job, on their own event loops. While nothing is watched it sleeps, so an
idle API costs the ledger nothing. A stream gets ``None`` when its job is gone (purged).

If the ledger cannot be read the poller logs it and tries again at the next tick: streams
stay open and miss nothing but time, since each snapshot is the job's whole live state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

from fairlane.ledger.jobs import JobSnapshot, JobStore

logger = logging.getLogger("fairlane.api")

#: Job ids per ledger read (well under SQLite's and PostgreSQL's bound-parameter limits).
_IDS_PER_QUERY = 1000


class Subscription:
    """A stream's inbox: a queue on the stream's event loop, filled from the poller thread."""

    def __init__(self, hub: JobEventHub, job_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.hub = hub
        self.job_id = job_id
        self.loop = loop
        self.queue: asyncio.Queue[JobSnapshot | None] = asyncio.Queue()

    async def next(self) -> JobSnapshot | None:
        """The job's next changed snapshot (None: the job is gone)."""
        return await self.queue.get()

    def deliver(self, snapshot: JobSnapshot | None) -> None:
        """Queue ``snapshot`` for the stream (from any thread)."""
        with contextlib.suppress(RuntimeError):  # the stream's loop has closed: the stream is gone
            self.loop.call_soon_threadsafe(self.queue.put_nowait, snapshot)

    def close(self) -> None:
        """Stop receiving (idempotent)."""
        self.hub._unsubscribe(self)


class JobEventHub:
    """Watches jobs for the API's event streams with one poller thread."""

    def __init__(self, jobs: JobStore, interval: float) -> None:
        self.jobs = jobs
        self.interval = interval
        self._subscribers: dict[str, set[Subscription]] = {}
        self._last: dict[str, JobSnapshot | None] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, job_id: str) -> Subscription:
        """Start receiving ``job_id``'s changed snapshots (call it on the stream's event loop)."""
        subscription = Subscription(self, job_id, asyncio.get_running_loop())
        with self._lock:
            self._subscribers.setdefault(job_id, set()).add(subscription)
            self._start()
        self._wake.set()
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            watchers = self._subscribers.get(subscription.job_id, set())
            watchers.discard(subscription)
            if not watchers:
                self._subscribers.pop(subscription.job_id, None)
                self._last.pop(subscription.job_id, None)

    def watched(self) -> int:
        """How many jobs have at least one stream."""
        with self._lock:
            return len(self._subscribers)

    def close(self) -> None:
        """Stop the poller (streams still open get nothing more)."""
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="fairlane-api-events", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                ids = list(self._subscribers)
            if not ids:
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                self._poll(ids)
            except Exception:  # the ledger is unreachable: streams wait for the next tick
                logger.exception("event=api_events_poll_failed jobs=%d", len(ids))
            self._closed.wait(self.interval)

    def _poll(self, ids: list[str]) -> None:
        snapshots: dict[str, JobSnapshot] = {}
        for start in range(0, len(ids), _IDS_PER_QUERY):
            snapshots.update(self.jobs.snapshots(ids[start : start + _IDS_PER_QUERY]))
        with self._lock:
            for job_id in ids:
                if job_id not in self._subscribers:  # its last stream ended meanwhile
                    continue
                snapshot = snapshots.get(job_id)
                if job_id in self._last and self._last[job_id] == snapshot:
                    continue
                self._last[job_id] = snapshot
                for subscriber in self._subscribers.get(job_id, ()):
                    subscriber.deliver(snapshot)
