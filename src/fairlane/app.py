"""Builds fairlane's parts from settings: ledger engine, job store, admission, broker, dispatcher,
ledger writer and middleware.

The app is built once per process, on first use (``get_app()``), from ``FAIRLANE_*``
variables; ``configure()`` builds it from explicit settings instead (tests, the demo).
"""

from __future__ import annotations

import dataclasses
import threading

import dramatiq
import sqlalchemy as sa
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, ShutdownNotifications, TimeLimit

from fairlane.broker import FairlaneBroker
from fairlane.dispatch import Dispatcher
from fairlane.ledger.admission import Admission
from fairlane.ledger.clock import ClockOffset
from fairlane.ledger.database import create_ledger_engine, migrate, require_current_schema
from fairlane.ledger.jobs import JobStore
from fairlane.ledger.lost_workers import LostAttempts
from fairlane.ledger.ratelimits import RateLimits
from fairlane.ledger.writer import LedgerWriter
from fairlane.middleware.cancellation import Cancellation
from fairlane.middleware.context import JobContext
from fairlane.middleware.lost_workers import LostWorkers
from fairlane.middleware.metrics import Metrics
from fairlane.middleware.ratelimit import RateLimitPauses
from fairlane.middleware.results import Results
from fairlane.middleware.retries import Retries
from fairlane.middleware.services import WorkerServices
from fairlane.middleware.tracking import Tracking, default_worker_id
from fairlane.notifications import CancelledJobs
from fairlane.rabbitmq_outages import silence_pika
from fairlane.settings import Settings, load_settings


@dataclasses.dataclass(frozen=True)
class App:
    """One process's fairlane: settings, ledger and broker."""

    settings: Settings
    engine: sa.Engine
    jobs: JobStore
    admission: Admission
    rate_limits: RateLimits
    broker: FairlaneBroker
    writer: LedgerWriter
    #: Starts and stops the dispatcher, writer and heartbeat with a worker (a broker middleware).
    services: WorkerServices

    @property
    def dispatcher(self) -> Dispatcher:
        """This process's dispatcher (admission rounds and their publishing)."""
        return self.broker.dispatcher

    def close(self) -> None:
        """Stop the dispatcher and the ledger writer, close broker connections and the ledger's pool."""
        self.dispatcher.close()
        self.writer.stop()
        self.broker.close()
        self.admission.close()
        self.engine.dispose()


def build_app(settings: Settings) -> App:
    """Build a fairlane app for ``settings`` and make its broker Dramatiq's global one.

    The ledger is migrated first, or with ``auto_migrate`` off checked to be current
    (:class:`~fairlane.ledger.database.LedgerOutdated` if not).
    """
    silence_pika()  # lost RabbitMQ connections are logged once per component, not by pika
    engine = create_ledger_engine(settings)
    if settings.auto_migrate:
        migrate(engine, settings)
    else:
        require_current_schema(engine)
    jobs = JobStore(engine)
    rate_limits = RateLimits(engine, settings.rate_limits)
    admission = Admission(engine, settings, rate_limits)
    writer = LedgerWriter(engine, default_worker_id())
    clock_offset = ClockOffset()  # measured by the worker heartbeat, read by Metrics
    cancelled = CancelledJobs()  # filled by the dispatcher's listener, read by Tracking
    cancellation = Cancellation(jobs, writer, settings.cancel_poll_interval)
    # A job that runs before its start is recorded is interrupted if the ledger refuses the start.
    writer.on_refused = cancellation.interrupt
    # Order matters. Dramatiq runs ``before_*`` hooks in this order and ``after_*`` hooks in
    # reverse: Retries (last here, as in Dramatiq's defaults) decides a failure first, so
    # Results, Pipelines and Callbacks see its ``retries`` options and ``message.failed``,
    # Metrics counts the outcome they settled, and all of them run while JobContext still
    # knows the job (follow-up sends keep its tenant). AgeLimit comes first, as in Dramatiq:
    # a job too old to run is never started, and Tracking marks it dead. LostWorkers comes
    # before Tracking: it ends a redelivered job whose worker died on its last attempt, which
    # Tracking's start would otherwise run again. Cancellation comes last, so its hooks run right
    # around the actor: the interrupt it raises in a thread (a cancel, or a start the ledger
    # refused) lands in the job's own code, never in another middleware's (a thread interrupted
    # inside a logging call would leave the handler's lock held for good).
    middleware = [
        AgeLimit(),
        RateLimitPauses(jobs, rate_limits),
        LostWorkers(LostAttempts(engine), settings),
        Tracking(jobs, writer, cancelled),
        Metrics(clock_offset),
        JobContext(jobs),
        TimeLimit(time_limit=settings.time_limit),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Results(writer, settings),
        Retries(writer, settings),
        cancellation,
    ]
    broker = FairlaneBroker(settings, admission, jobs, middleware, cancelled)
    # Starts free dispatch slots: after each flush the writer asks the dispatcher to refill them.
    writer.on_started = broker.dispatcher.slots_freed
    writer.on_retrying = broker.dispatcher.retries_due  # a retry due now runs now, not at the next sweep
    services = WorkerServices(broker.dispatcher, writer, clock_offset)
    broker.add_middleware(services)
    dramatiq.set_broker(broker)
    return App(
        settings=settings,
        engine=engine,
        jobs=jobs,
        admission=admission,
        rate_limits=rate_limits,
        broker=broker,
        writer=writer,
        services=services,
    )


_app: App | None = None
_lock = threading.Lock()


def get_app() -> App:
    """This process's app, built from the environment on first use."""
    global _app
    with _lock:
        if _app is None:
            _app = build_app(load_settings())
        return _app


def configure(settings: Settings) -> App:
    """Replace this process's app with one built from ``settings`` (closing the old one)."""
    global _app
    with _lock:
        if _app is not None:
            _app.close()
        _app = build_app(settings)
        return _app
