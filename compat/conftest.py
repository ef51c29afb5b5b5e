"""Fixtures that run Dramatiq's own tests on a real RabbitMQ broker: plain, or fairlane's.

Copied by ``compat/run.py`` next to the unpacked tests as ``tests/conftest.py``. Choose the
broker with ``--compat-broker=fairlane|rabbitmq`` (or ``COMPAT_BROKER``); every fixture is
the same for both:

* ``stub_broker`` and ``rabbitmq_broker``: a fresh broker per test, on a private vhost
  (``COMPAT_VHOST``, default ``fairlane_compat``, recreated per session with ``rabbitmqctl``).
  ``rabbitmq``: ``RabbitmqBroker(url=..., max_priority=10)`` as in Dramatiq's conftest.
  ``fairlane``: ``fairlane.configure(...)``'s broker (``max_priority=10`` too; short admission
  and cancel-poll intervals), its ledger in a PostgreSQL database
  (``COMPAT_DATABASE``, default ``fairlane_compat``) created fresh per session and emptied
  before every test.
* ``stub_broker`` stands in for Dramatiq's StubBroker, whose ``join`` contract the tests rely
  on: ``join(queue, *, fail_fast=None, timeout=None)`` returns once the queue's messages are
  processed and, with ``fail_fast`` (StubBroker's default: True), raises the exception of a
  message that was dead-lettered (nacked). Here that ``join`` calls the broker's own
  ``join`` (so fairlane's is what gets exercised), then waits for the running workers
  started by these fixtures, repeating while they still did something, then applies
  ``fail_fast``. ``rabbitmq_broker`` keeps the broker's own ``join`` untouched.
* ``stub_worker`` / ``rabbitmq_worker``: a plain ``dramatiq.Worker`` with 32 threads.
* result and rate-limiter backends: ``redis`` (``COMPAT_REDIS_URL``, default database 15,
  flushed per test) and ``stub``; memcached is left out (no pylibmc).

Queues are flushed after each test as Dramatiq's fixtures do, and every queue any test of
the session declared is purged too. With ``COMPAT_REPORT=path`` each test phase's outcome is
appended to ``path`` as a JSON line (the runner's table is built from it).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import dramatiq
import pika
import pika.exceptions
import pytest
import redis
from dramatiq import QueueJoinTimeout, Worker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import dq_name, q_name, xq_name
from dramatiq.middleware import Middleware
from dramatiq.rate_limits import backends as rl_backends
from dramatiq.results import backends as res_backends

from .common import STOP_TIMEOUT_MS, running_workers, track_worker, untrack_worker

logfmt = "[%(asctime)s] [%(threadName)s] [%(name)s] [%(levelname)s] %(message)s"
logging.basicConfig(level=logging.INFO, format=logfmt)
logging.getLogger("pika").setLevel(logging.WARN)

random.seed(1337)

AMQP_SERVER = os.environ.get("COMPAT_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672").rstrip("/")
VHOST = os.environ.get("COMPAT_VHOST", "fairlane_compat")
PG_SERVER = os.environ.get("COMPAT_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = os.environ.get("COMPAT_DATABASE", "fairlane_compat")
REDIS_URL = os.environ.get("COMPAT_REDIS_URL", "redis://127.0.0.1:6379/15")
KEEP = os.environ.get("COMPAT_KEEP") == "1"
BROKERS = ("fairlane", "rabbitmq")


# -- options, selection, report --------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("compat", "fairlane compat run")
    group.addoption(
        "--compat-broker",
        choices=BROKERS,
        default=os.environ.get("COMPAT_BROKER", "fairlane"),
        help="broker behind the broker fixtures (default: $COMPAT_BROKER or fairlane)",
    )
    group.addoption(
        "--compat-timeout",
        type=float,
        default=float(os.environ.get("COMPAT_TIMEOUT", "20")),
        help="per-test timeout in seconds when pytest-timeout is not installed",
    )


def _selection_file() -> Path:
    return Path(__file__).resolve().parent.parent / "selection.json"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests compat/selection.py leaves out (written to selection.json by the runner)."""
    path = _selection_file()
    if not path.exists():
        return
    excluded = set(json.loads(path.read_text())["deselect"])
    kept, dropped = [], []
    for item in items:
        (dropped if item.nodeid.split("[", 1)[0] in excluded else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get("COMPAT_REPORT")
    if not path:
        return
    reason = ""
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        reason = crash.message if crash is not None else str(report.longrepr)
        if "Timeout (>" in reason:
            reason = reason.removeprefix("Failed: ").replace(" from pytest-timeout.", "") + _where(report)
    elif report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
    line = {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "reason": " ".join(reason.split())[:300],
        "duration": round(report.duration, 3),
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


_PLUMBING = ("/pika/", "/threading.py", "/queue.py", "/selectors.py", "/time.py")


def _where(report: pytest.TestReport) -> str:
    """` in func (file:line)`: the innermost frame of a timed-out test outside pika and the stdlib."""
    entries = getattr(getattr(report.longrepr, "reprtraceback", None), "reprentries", [])
    for entry in reversed(entries):
        location = getattr(entry, "reprfileloc", None)
        if location is None or any(part in location.path for part in _PLUMBING):
            continue
        name = location.message.removeprefix("in ").strip()
        return f" in {name} ({Path(location.path).name}:{location.lineno})"
    return ""


# A guard for when pytest-timeout is missing (it is in fairlane's dev extras): SIGALRM in the test call.
class CompatTimeout(Exception):
    """The test ran longer than --compat-timeout."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    seconds = item.config.getoption("--compat-timeout")
    if item.config.pluginmanager.hasplugin("timeout") or not seconds:
        yield
        return

    def _expired(signum: int, frame: Any) -> None:
        raise CompatTimeout(f"Timeout (>{seconds}s) from the compat conftest")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- services: a private vhost and database per session --------------------------------------------


def _rabbitmqctl(*args: str, check: bool = True) -> None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.exit("rabbitmqctl is needed to create the compat vhost", returncode=3)
    subprocess.run([ctl, "-q", *args], check=check, capture_output=True, timeout=60)


def _admin_engine() -> Any:
    import sqlalchemy as sa

    url = PG_SERVER.replace("postgresql://", "postgresql+psycopg://", 1)
    return sa.create_engine(url, isolation_level="AUTOCOMMIT")


class _Session:
    """What the broker fixtures share across one pytest session."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.amqp_url = f"{AMQP_SERVER}/{quote(VHOST, safe='')}"
        self.database_url = PG_SERVER.rsplit("/", 1)[0] + f"/{DATABASE}"
        self.seen_queues: set[str] = set()
        self.ledger_tables: list[str] | None = None

    def purge_seen_queues(self) -> None:
        """Purge every queue a test of this session declared (a missing one is skipped)."""
        if not self.seen_queues:
            return
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        try:
            channel = connection.channel()
            for name in sorted(self.seen_queues):
                try:
                    channel.queue_purge(name)
                except pika.exceptions.ChannelClosedByBroker:
                    channel = connection.channel()
        finally:
            connection.close()


@pytest.fixture(scope="session")
def compat_session(request: pytest.FixtureRequest) -> Iterator[_Session]:
    session = _Session(request.config.getoption("--compat-broker"))
    _rabbitmqctl("delete_vhost", VHOST, check=False)
    _rabbitmqctl("add_vhost", VHOST)
    _rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    admin = None
    if session.kind == "fairlane":
        import sqlalchemy as sa

        admin = _admin_engine()
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
            connection.execute(sa.text(f'CREATE DATABASE "{DATABASE}"'))
    try:
        yield session
    finally:
        if session.kind == "fairlane":
            import fairlane.app

            current = fairlane.app._app
            if current is not None:
                current.close()
        if not KEEP:
            _rabbitmqctl("delete_vhost", VHOST, check=False)
            if admin is not None:
                import sqlalchemy as sa

                with admin.connect() as connection:
                    connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'))
        if admin is not None:
            admin.dispose()


# -- the broker under test -------------------------------------------------------------------------


class _JoinRecorder(Middleware):
    """Counts broker activity and remembers nacked messages, for the StubBroker-style join.

    Only the exception's type, arguments and attributes are kept (not the exception, its
    traceback or the message), so tests that check exceptions are freed still hold; ``join``
    rebuilds an equal exception without calling its ``__init__``.
    """

    def __init__(self) -> None:
        self.events = 0
        self.nacked: list[tuple[str, str, type[BaseException] | None, tuple[Any, ...], dict[str, Any]]] = []
        self._lock = threading.Lock()

    def _tick(self) -> None:
        with self._lock:
            self.events += 1

    def before_nack(self, broker: Any, message: Any) -> None:
        error = getattr(message, "_exception", None)
        with self._lock:
            self.nacked.append(
                (
                    message.actor_name,
                    message.queue_name,
                    type(error) if error is not None else None,
                    tuple(error.args) if error is not None else (),
                    dict(vars(error)) if error is not None else {},
                )
            )

    def after_nack(self, broker: Any, message: Any) -> None:
        self._tick()

    def after_ack(self, broker: Any, message: Any) -> None:
        self._tick()

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        self._tick()

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        self._tick()

    def after_skip_message(self, broker: Any, message: Any) -> None:
        self._tick()


def _stub_style_join(broker: Any, recorder: _JoinRecorder) -> Callable[..., None]:
    broker_join = broker.join  # the broker's own join, bound before it is shadowed

    def join(
        queue_name: str,
        min_successes: int = 10,
        idle_time: int = 100,
        *,
        timeout: int | None = None,
        fail_fast: bool | None = None,
    ) -> None:
        """The broker's join, then the workers' work in progress; raise a nacked message's error."""
        deadline = time.monotonic() + timeout / 1000 if timeout else None
        while True:
            remaining = None
            if deadline is not None:
                remaining = int((deadline - time.monotonic()) * 1000)
                if remaining <= 0:
                    raise QueueJoinTimeout(queue_name)
            broker_join(queue_name, min_successes, idle_time, timeout=remaining)
            before = recorder.events
            for running in running_workers(broker):
                running.join()
            if recorder.events == before:
                break
        if fail_fast is False:
            return
        for actor_name, message_queue, error_type, args, attributes in list(recorder.nacked):
            try:
                actor_queue = broker.get_actor(actor_name).queue_name
            except Exception:
                actor_queue = q_name(message_queue)
            if actor_queue != queue_name:
                continue
            if error_type is None:
                raise Exception("Message failed with unknown error")
            error = error_type.__new__(error_type, *args)
            error.args = args
            error.__dict__.update(attributes)
            raise error

    return join


def _declared_queues(broker: Any, kind: str) -> set[str]:
    names = set()
    for name in broker.queues:
        names.update((name, dq_name(name), xq_name(name)))
    if kind == "fairlane":
        names.update(f"{queue}.XQ" for queue in getattr(broker, "actor_queues", ()))
    return names


def _reset_ledger(session: _Session, engine: Any) -> None:
    """Empty every fairlane table (the schema and its migrations stay)."""
    import sqlalchemy as sa

    if session.ledger_tables is None:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                    "AND tablename <> 'alembic_version'"
                )
            )
            session.ledger_tables = sorted(row[0] for row in rows)
    if session.ledger_tables:
        tables = ", ".join(f'"{name}"' for name in session.ledger_tables)
        with engine.begin() as connection:
            connection.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture
def _broker_under_test(compat_session: _Session, tmp_path: Path) -> Iterator[Any]:
    session = compat_session
    close: Callable[[], None]
    if session.kind == "rabbitmq":
        broker = RabbitmqBroker(url=session.amqp_url, max_priority=10)
        close = broker.close
    else:
        import fairlane

        overrides: dict[str, Any] = {
            "broker_url": session.amqp_url,
            "database_url": session.database_url,
            "results_dir": tmp_path / "results",
            "admission_interval": 0.05,
            "cancel_poll_interval": 0.05,
            "max_priority": 10,  # as the plain broker's
        }
        settings = fairlane.load_settings(**overrides)
        app = fairlane.configure(settings)
        _reset_ledger(session, app.engine)
        broker = app.broker
        close = app.close
    broker.connection  # noqa: B018 -- fail here, not in the test, when RabbitMQ is unreachable
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    try:
        yield broker
        broker.flush_all()
    finally:
        try:
            session.seen_queues |= _declared_queues(broker, session.kind)
            close()
        finally:
            session.purge_seen_queues()


@pytest.fixture
def stub_broker(_broker_under_test: Any) -> Any:
    broker = _broker_under_test
    recorder = _JoinRecorder()
    broker.add_middleware(recorder)
    broker.join = _stub_style_join(broker, recorder)
    return broker


@pytest.fixture
def rabbitmq_broker(_broker_under_test: Any) -> Any:
    return _broker_under_test


def _started_worker(broker: Any, **options: Any) -> Iterator[Worker]:
    worker = Worker(broker, **options)
    worker.start()
    track_worker(worker)
    try:
        yield worker
    finally:
        untrack_worker(worker)
        worker.stop(timeout=STOP_TIMEOUT_MS)


@pytest.fixture
def stub_worker(stub_broker: Any) -> Iterator[Worker]:
    yield from _started_worker(stub_broker, worker_timeout=100, worker_threads=32)


@pytest.fixture
def rabbitmq_worker(rabbitmq_broker: Any) -> Iterator[Worker]:
    yield from _started_worker(rabbitmq_broker, worker_threads=32)


@pytest.fixture
def info_logging() -> Iterator[None]:
    logger = logging.getLogger()
    logger.setLevel(logging.INFO)
    yield
    logger.setLevel(logging.DEBUG)


# -- result and rate-limiter backends (the same for both brokers) ----------------------------------


def _redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    client.flushdb()
    return client


@pytest.fixture
def redis_rate_limiter_backend() -> Any:
    return rl_backends.RedisBackend(client=_redis_client())


@pytest.fixture
def stub_rate_limiter_backend() -> Any:
    return rl_backends.StubBackend()


@pytest.fixture(params=["redis", "stub"])
def rate_limiter_backend(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_rate_limiter_backend")


@pytest.fixture
def redis_result_backend() -> Any:
    return res_backends.RedisBackend(client=_redis_client())


@pytest.fixture
def stub_result_backend() -> Any:
    return res_backends.StubBackend()


@pytest.fixture
def result_backends(redis_result_backend: Any, stub_result_backend: Any) -> dict[str, Any]:
    return {"redis": redis_result_backend, "stub": stub_result_backend}


@pytest.fixture(params=["redis", "stub"])
def result_backend(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_result_backend")
