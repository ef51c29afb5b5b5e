"""The Dispatcher: the one owner of admission in a process.

It owns the admission requests (queues whose slots were freed), the rate-limit hints (when a
job held back by a budget may be affordable), the dispatch budget of each queue, its
thread, the admit step (a round in the ledger) and the publish step (one AMQP transaction
per round, committed before the round's ledger transaction, so a crash between the two never
leaves a job dispatched without a message).

**When rounds run.** A worker's job starts free dispatch slots: the ledger writer reports them
after each flush, and once half of a queue's budget is free (at least one slot) the
dispatcher runs a round that refills them all. (With several worker processes on a queue,
each counts its own starts against its threads' share of the budget.) Requests that arrive
during a round are served together by the next, so rounds batch themselves under load. A
send whose job had to wait (its queue was busy) wakes every dispatcher of the queue through
PostgreSQL's ``NOTIFY fairlane_admission``. Every ``admission_interval`` seconds (sooner
when a rate-limited job becomes affordable) the dispatcher also sweeps every queue it
serves, for jobs whose delay or retry backoff ended and jobs left pending by a failed
publish. When another process's round holds a queue, the round waits for it to end (up to
:data:`TURN_WAIT`; before, each try that found the turn taken was a wasted round trip, 800 of
1,400 rounds in a 2x8 drain) and then fills what room is left; past the wait, the request is
kept and retried a few milliseconds later.

**The budget** of a queue is how many of its jobs may sit published but not started: four
times the worker threads consuming it, from the live workers' heartbeats (so 2x8 and 8x8 pools
are not starved), or ``dispatch_budget`` when that is set. With no live worker it is
:data:`DEFAULT_BUDGET`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

import pika.exceptions
import sqlalchemy as sa
from dramatiq.errors import ConnectionClosed

from fairlane.ledger.admission import Admission, AdmittedJob
from fairlane.ledger.workers import WorkerStore
from fairlane.notifications import CancelledJobs, LedgerListener
from fairlane.observability.catalog import JOBS_DEFERRED
from fairlane.rabbitmq_outages import CONNECTION_ERRORS, Outage, RabbitmqOutages
from fairlane.settings import Settings

logger = logging.getLogger("fairlane.dispatch")

#: Seconds a round waits for the turn while another process's round of the queue is under way
#: (it then runs on the room that round left).
TURN_WAIT = 0.1
#: Seconds before a round that did not get the turn in time tries again.
BUSY_RETRY = 0.005
#: Budget of a queue no live worker consumes (jobs wait in RabbitMQ for the first one).
DEFAULT_BUDGET = 16
#: Budget per consuming worker thread: enough that a refill of half of it arrives before the
#: other half is started, so rounds stay few and large while no thread idles.
BUDGET_PER_THREAD = 4
#: A round refills a queue once 1/REFILL_FRACTION of its budget was freed by starts.
REFILL_FRACTION = 2
#: Seconds a process trusts its reading of the worker heartbeats for budgets.
BUDGET_CACHE_SECONDS = 2.0

#: Publishes one admission round's jobs of a queue to their lane queues.
PublishBatch = Callable[[str, Sequence[AdmittedJob]], None]


class Dispatcher:
    """Runs admission rounds for the queues this process serves, and publishes what they admit."""

    def __init__(
        self,
        admission: Admission,
        settings: Settings,
        publish_batch: PublishBatch,
        cancelled: CancelledJobs | None = None,
        outage: Outage | None = None,
    ) -> None:
        self.admission = admission
        self.settings = settings
        self.publish_batch = publish_batch
        #: Reports losing RabbitMQ, and getting it back, once per outage.
        self.outage = outage or RabbitmqOutages().dispatcher
        self.workers = WorkerStore(admission.engine)
        #: Jobs cancelled before they started, as heard on the listener (see fairlane.notifications).
        self.cancelled = cancelled if cancelled is not None else CancelledJobs()
        self.listener = LedgerListener(admission.engine, self.cancelled)
        self._queues: set[str] = set()
        self._requested: set[str] = set()
        #: Slots freed by starts per queue since its last round.
        self._freed: Counter[str] = Counter()
        #: Per queue, when a job held back by a rate limit, a retry's backoff or a busy turn may be
        #: admitted (this process's monotonic clock: a local timer, the ledger's clock decides).
        self._hints: dict[str, float] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: When the live workers' threads per queue were last read, and what was read.
        self._threads_read: tuple[float, Counter[str]] = (0.0, Counter())
        #: Worker threads of this process (0 where no worker runs, e.g. a sender).
        self.consuming_threads = 0

    # -- requests ------------------------------------------------------------------------------------

    def serve(self, queues: Iterable[str]) -> None:
        """Add queues this process's sweeps cover (a worker serves the queues it consumes)."""
        with self._lock:
            self._queues.update(queues)

    def request(self, queues: Iterable[str]) -> None:
        """Ask for an admission round of ``queues`` soon (their slots were freed)."""
        with self._lock:
            self._requested.update(queues)
        self._wake()

    def slots_freed(self, started: Mapping[str, int]) -> None:
        """Jobs of these queues started here: refill once this process's starts freed half of
        its share of a queue's budget."""
        shares = {queue: self.local_share(queue) for queue in started}
        due = []
        with self._lock:
            for queue, count in started.items():
                self._freed[queue] += count
                if self._freed[queue] * REFILL_FRACTION >= shares[queue]:
                    due.append(queue)
        if due:
            self.request(due)

    def retries_due(self, due: Mapping[str, float]) -> None:
        """Retries of these queues were scheduled: run a round for each when its first is due
        (``due``: per queue, in how many seconds)."""
        with self._lock:
            for queue, delay in due.items():
                self._hint(queue, delay)
        self._wake()

    def _hint(self, queue: str, delay: float) -> None:
        """Run a round of ``queue`` in ``delay`` seconds, unless one is due sooner (under the lock)."""
        when = time.monotonic() + delay
        self._hints[queue] = min(self._hints.get(queue, when), when)

    def _wake(self) -> None:
        # A full pipe means a wake-up is pending anyway; a closed one, that nobody listens any more.
        with self._lock, contextlib.suppress(OSError):
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")

    # -- budget --------------------------------------------------------------------------------------

    def budget(self, queue: str) -> int:
        """How many jobs of ``queue`` may be dispatched (published, not started) at once."""
        if self.settings.dispatch_budget is not None:
            return self.settings.dispatch_budget
        threads = self._live_threads()[queue]
        return BUDGET_PER_THREAD * threads if threads else DEFAULT_BUDGET

    def local_share(self, queue: str) -> float:
        """The part of ``queue``'s budget this process's worker threads start: all of it unless
        other live workers consume the queue too.

        Each process counts only the starts it makes, so with two workers of 8 threads a process
        that waited for half the budget (32 of 64) to be freed by its own starts would refill
        only once the whole budget was started, its threads idle in the meantime.
        """
        budget = self.budget(queue)
        if not self.consuming_threads:
            return budget
        total = self._live_threads()[queue]
        if total <= self.consuming_threads:
            return budget
        return budget * self.consuming_threads / total

    def _live_threads(self) -> Counter[str]:
        """Worker threads consuming each queue, from the live workers' heartbeats (read again
        once the last reading is ``BUDGET_CACHE_SECONDS`` old)."""
        read_at, threads = self._threads_read
        if time.monotonic() - read_at > BUDGET_CACHE_SECONDS:
            try:
                threads = self.workers.threads_per_queue(self.settings.heartbeat_timeout)
            except sa.exc.SQLAlchemyError:
                logger.warning("event=budget_read_failed action='keeping the last budgets'")
            self._threads_read = (time.monotonic(), threads)
        return threads

    # -- rounds --------------------------------------------------------------------------------------

    def admit(self, queue: str, *, wait: bool = True, turn_timeout: float | None = None) -> int | None:
        """Publish as many backlog jobs of ``queue`` as its budget allows; returns how many.

        With ``wait=False``, returns None instead of waiting for another process's round; with
        ``turn_timeout``, once it waited that many seconds for it.
        """
        with self._lock:
            self._freed.pop(queue, None)
        try:
            round_ = self.admission.admit(
                queue,
                self.budget(queue),
                wait=wait,
                turn_timeout=turn_timeout,
                publish=lambda jobs: self.publish_batch(queue, jobs),
            )
        except (ConnectionClosed, pika.exceptions.AMQPError) as error:
            if isinstance(error, CONNECTION_ERRORS):
                self.outage.lost(error)
            else:
                logger.warning(
                    "event=publish_failed queue=%s error=%s action='jobs stay pending in the ledger'",
                    queue,
                    type(error).__name__,
                )
            return 0
        if round_ is None:
            return None
        if round_.jobs:
            self.outage.restored()
        if round_.retry_in is not None:
            with self._lock:
                self._hint(queue, round_.retry_in)
        for reason, count in round_.deferred.items():
            JOBS_DEFERRED.labels(queue=queue, actor="", lane="", reason=reason).inc(count)
        return len(round_.jobs)

    # -- the thread ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the dispatcher's thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fairlane-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after its current round."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        """Stop the thread and release the wake-up pipe (the dispatcher is done for good).

        Safe to call twice: a descriptor closed twice could close whatever reused its number.
        """
        self.stop()
        with self._lock:
            descriptors, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in descriptors:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def listen(self) -> None:
        """Start listening for wake-ups and cancels now (a worker does, before it consumes)."""
        self.listener.connect()

    def _run(self) -> None:
        listener = self.listener
        next_sweep = time.monotonic()
        try:
            while not self._stop.is_set():
                self._wait(listener, next_sweep)
                queues = self._take_requests(listener)
                if time.monotonic() >= next_sweep:
                    with self._lock:
                        queues |= self._queues
                    next_sweep = time.monotonic() + self.settings.admission_interval
                for queue in sorted(queues):
                    if self._stop.is_set():
                        break
                    self._round(queue)
        finally:
            listener.close()

    def _round(self, queue: str) -> None:
        try:
            if self.admit(queue, turn_timeout=TURN_WAIT) is None:
                with self._lock:
                    self._hint(queue, BUSY_RETRY)
        except Exception:
            logger.exception("event=admission_failed queue=%s", queue)

    def _wait(self, listener: LedgerListener, next_sweep: float) -> None:
        """Until woken, notified, the next sweep, or a hint falls due."""
        timeout = next_sweep - time.monotonic()
        with self._lock:
            if self._requested:
                return
            if self._hints:
                timeout = min(timeout, min(self._hints.values()) - time.monotonic())
        if timeout <= 0:
            return
        readable, _, _ = select.select([self._wake_r, *listener.fds()], [], [], timeout)
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass

    def _take_requests(self, listener: LedgerListener) -> set[str]:
        notified = listener.notified()
        now = time.monotonic()
        with self._lock:
            queues = self._requested | (notified & self._queues)
            self._requested = set()
            due = {queue for queue, moment in self._hints.items() if moment <= now}
            for queue in due:
                del self._hints[queue]
        return queues | due


__all__ = ["BUDGET_PER_THREAD", "DEFAULT_BUDGET", "Dispatcher"]
