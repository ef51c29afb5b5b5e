"""Dramatiq's contract on fairlane's broker: code written for plain Dramatiq runs unchanged.

Each test is one thing a Dramatiq user relies on: ``join`` and queue counts, pipeline and
group results, the retry contract, default middleware, skipped messages, sends to actors
declared elsewhere, encoders, message equality, a plain ``dramatiq.Worker``, ``flush``, a
plain sender on the same vhost, and ``broker_priority``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import dramatiq
import pytest
import sqlalchemy as sa
from dramatiq import Message, group, pipeline
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.encoder import JSONEncoder, PickleEncoder
from dramatiq.errors import QueueJoinTimeout, Retry
from dramatiq.middleware import CurrentMessage, Middleware, SkipMessage
from dramatiq.results import Results as ResultBackendMiddleware
from dramatiq.results.backends import StubBackend

import fairlane
from fairlane.app import App
from fairlane.broker import REASON_HEADER
from fairlane.errors import InvalidJob
from fairlane.ledger.actors import ActorCatalog, CatalogEntry
from fairlane.ledger.schema import jobs, workers
from fairlane.middleware.tracking import default_worker_id

from .support import dead_letter_depth, eventually, lane_depth

Worker = Callable[..., AbstractContextManager[dramatiq.Worker]]


def _states(app: App, queue: str) -> list[str]:
    with app.engine.connect() as connection:
        return sorted(connection.scalars(sa.select(jobs.c.state).where(jobs.c.queue == queue)))


# -- join and queue counts ----------------------------------------------------------------------------


def test_join_returns_only_once_every_job_of_the_queue_has_finished(
    app: App, queue: str, worker: Worker
) -> None:
    # Given jobs that take a moment each
    @dramatiq.actor(queue_name=queue)
    def slow(n: int) -> int:
        time.sleep(0.05)
        return n

    with worker(threads=2):
        ids = [slow.send(n).message_id for n in range(6)]

        # When the test joins the queue, Dramatiq style
        app.broker.join(queue, min_successes=2, idle_time=20, timeout=30_000)

        # Then nothing of it is left: every job has already succeeded
        assert [fairlane.jobs.get(job_id).state for job_id in ids] == ["succeeded"] * 6


def test_join_times_out_while_a_job_waits(app: App, queue: str) -> None:
    # Given a job and no worker
    @dramatiq.actor(queue_name=queue)
    def idle() -> None:
        pass

    idle.send()

    # When joining with a timeout, then Dramatiq's QueueJoinTimeout is raised
    with pytest.raises(QueueJoinTimeout):
        app.broker.join(queue, min_successes=1, idle_time=10, timeout=300)


def test_queue_message_counts_say_what_is_left_now_later_and_dead(app: App, queue: str) -> None:
    # Given two jobs due now and one delayed, and no worker
    @dramatiq.actor(queue_name=queue)
    def counted() -> None:
        pass

    counted.send()
    counted.send()
    counted.send_with_options(delay=60_000)

    # Then the counts are Dramatiq's triple: (queue, delayed, dead letters)
    assert app.broker.get_queue_message_counts(queue) == (2, 1, 0)


def test_flush_drops_unstarted_jobs_from_rabbitmq_and_the_ledger(app: App, queue: str) -> None:
    # Given jobs dispatched to RabbitMQ and jobs waiting in the ledger, and no worker
    @dramatiq.actor(queue_name=queue)
    def dropped() -> None:
        pass

    for _ in range(3):
        dropped.send()
    dropped.send_with_options(delay=60_000)

    # When the queue is flushed
    app.broker.flush_all()

    # Then no job will run: all are cancelled, and the lane queue is empty
    assert _states(app, queue) == ["cancelled"] * 4
    assert lane_depth(app, queue) == 0
    assert app.broker.get_queue_message_counts(queue) == (0, 0, 0)


# -- results ------------------------------------------------------------------------------------------


def test_pipeline_and_group_results_are_found(app: App, queue: str, worker: Worker) -> None:
    # Given Dramatiq's Results middleware and an actor that stores its results
    app.broker.add_middleware(ResultBackendMiddleware(backend=StubBackend()))

    @dramatiq.actor(queue_name=queue, store_results=True)
    def add(x: int, y: int = 0) -> int:
        return x + y

    with worker(threads=2):
        # When a pipeline and a group run
        pipe = pipeline([add.message(1, 2), add.message(3)]).run()
        grouped = group([add.message(n, n) for n in range(3)]).run()
        sent = add.send(20, 22)

        # Then their results are found where Dramatiq looks for them
        assert pipe.get_result(block=True, timeout=15_000) == 6
        assert list(grouped.get_results(block=True, timeout=15_000)) == [0, 2, 4]
        assert sent.get_result(block=True, timeout=15_000) == 42


# -- the retry contract -------------------------------------------------------------------------------


def test_retry_with_a_delay_uses_that_delay(make_app: Callable[..., App], queue: str) -> None:
    # Given a backoff far longer than the test waits, and an actor that asks for a short retry
    app = make_app(min_backoff=600_000, max_backoff=600_000)
    attempts: list[int] = []

    @dramatiq.actor(queue_name=queue)
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise Retry(delay=10)
        return "ok"

    with fairlane.worker.running_worker(app, 2, shutdown_timeout=10):
        job = fairlane.jobs.wait(flaky.send().message_id, timeout=20)

    # Then the retry came after the actor's delay, not the backoff
    assert (job.state, job.attempts) == ("succeeded", 2)


def test_retries_due_now_run_at_once_not_at_the_next_sweep(make_app: Callable[..., App], queue: str) -> None:
    # Given no backoff and a sweep far longer than the test waits
    app = make_app(min_backoff=0, admission_interval=60)
    attempts: list[int] = []

    @dramatiq.actor(queue_name=queue, max_retries=10)
    def fails_five_times() -> None:
        attempts.append(1)
        if len(attempts) <= 5:
            raise ValueError("not yet")

    with fairlane.worker.running_worker(app, 2, shutdown_timeout=10):
        job = fairlane.jobs.wait(fails_five_times.send().message_id, timeout=20)

    # Then each retry was admitted as soon as its failure was recorded
    assert (job.state, job.attempts) == ("succeeded", 6)


def test_on_retry_exhausted_is_told_as_the_same_tenant(app: App, queue: str, worker: Worker) -> None:
    # Given an actor that always fails, with an on_retry_exhausted actor
    told: list[tuple[dict[str, Any], dict[str, Any], str]] = []

    @dramatiq.actor(queue_name=queue)
    def exhausted(message_data: dict[str, Any], retry_info: dict[str, Any]) -> None:
        told.append((message_data, retry_info, fairlane.current_job().tenant))

    @dramatiq.actor(queue_name=queue, max_retries=1, on_retry_exhausted=exhausted.actor_name)
    def always_fails() -> None:
        raise ValueError("no")

    with worker(threads=2):
        message = always_fails.send_with_options(tenant="acme")
        job = fairlane.jobs.wait(message.message_id, timeout=20)
        eventually(lambda: bool(told), timeout=20, message="on_retry_exhausted ran")

    # Then the job is dead and the exhausted actor got Dramatiq's arguments, for the same tenant
    assert (job.state, job.attempts) == ("dead", 2)
    message_data, retry_info, tenant = told[0]
    assert message_data["message_id"] == message.message_id
    assert retry_info == {"retries": 1, "max_retries": 1}
    assert tenant == "acme"


def test_retries_option_is_set_as_dramatiq_sets_it(app: App, queue: str, worker: Worker) -> None:
    # Given CurrentMessage, an actor that fails once, and an on_failure callback
    app.broker.add_middleware(CurrentMessage())
    seen: list[Any] = []
    failures: list[dict[str, Any]] = []

    @dramatiq.actor(queue_name=queue)
    def on_failure(message_data: dict[str, Any], exception_data: dict[str, Any]) -> None:
        failures.append(message_data["options"])

    @dramatiq.actor(queue_name=queue, max_retries=1)
    def fails_once_then_for_good() -> None:
        current = CurrentMessage.get_current_message()
        assert current is not None
        seen.append(current.options.get("retries"))
        raise ValueError("no")

    with worker(threads=2):
        fails_once_then_for_good.send_with_options(on_failure=on_failure.actor_name, tenant="acme")
        eventually(lambda: len(failures) == 2, timeout=20, message="on_failure ran after each failure")

    # Then the retried attempt saw retries=1, and the callbacks saw Dramatiq's options
    assert seen == [None, 1]
    assert sorted(options["retries"] for options in failures) == [1, 2]
    assert all("ValueError: no" in options["traceback"] for options in failures)
    assert all(isinstance(options["requeue_timestamp"], int) for options in failures)
    # And the callbacks ran as the failing job's tenant
    assert {job.tenant for job in fairlane.jobs.list(actor=on_failure.actor_name)} == {"acme"}


def test_an_exception_in_throws_is_not_retried_and_logged_as_expected(
    app: App, queue: str, worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an actor whose exception is declared in throws
    @dramatiq.actor(queue_name=queue, max_retries=5, throws=(KeyError,))
    def expected_failure() -> None:
        raise KeyError("gone")

    with caplog.at_level(logging.INFO, logger="fairlane.worker"), worker(threads=2):
        job = fairlane.jobs.wait(expected_failure.send().message_id, timeout=20)

    # Then it ran once, and its end is logged at INFO, as Dramatiq does
    assert (job.state, job.attempts) == ("dead", 1)
    dead = [record for record in caplog.records if "event=job_dead" in record.getMessage()]
    assert [record.levelno for record in dead] == [logging.INFO]


# -- default middleware and skipped messages ----------------------------------------------------------


def test_a_message_older_than_max_age_ends_dead_not_stuck(app: App, queue: str, worker: Worker) -> None:
    # Given an actor with max_age and a message sent a minute ago
    ran: list[int] = []

    @dramatiq.actor(queue_name=queue, max_age=1_000)
    def fresh_only() -> None:
        ran.append(1)

    old = fresh_only.message().copy(message_timestamp=int(time.time() * 1000) - 60_000)
    with worker(threads=2):
        job = fairlane.jobs.wait(app.broker.enqueue(old).message_id, timeout=20)

    # Then it never ran and its row says why
    assert ran == []
    assert job.state == "dead"
    assert job.error is not None and job.error.type == "SkipMessage"


def test_a_job_skipped_by_user_middleware_gets_a_final_state(app: App, queue: str, worker: Worker) -> None:
    # Given a user middleware that skips some messages
    class SkipTheMarked(Middleware):
        def before_process_message(self, broker: Any, message: Any) -> None:
            if message.args == ("skip",):
                raise SkipMessage("marked")

    app.broker.add_middleware(SkipTheMarked())

    @dramatiq.actor(queue_name=queue)
    def echo(text: str) -> str:
        return text

    with worker(threads=2):
        skipped = fairlane.jobs.wait(echo.send("skip").message_id, timeout=20)
        ran = fairlane.jobs.wait(echo.send("run").message_id, timeout=20)

    # Then the skipped job is cancelled (never left running) and the other ran
    assert (skipped.state, ran.state) == ("cancelled", "succeeded")


def test_the_current_message_equals_the_message_sent(app: App, queue: str, worker: Worker) -> None:
    # Given CurrentMessage and an actor that keeps the message it runs
    app.broker.add_middleware(CurrentMessage())
    current: list[Any] = []

    @dramatiq.actor(queue_name=queue)
    def remember() -> None:
        current.append(CurrentMessage.get_current_message())

    with worker(threads=2):
        sent = remember.send()
        fairlane.jobs.wait(sent.message_id, timeout=20)

    # Then it is the message send() returned: same queue name, same options
    assert current[0].asdict() == sent.asdict()
    assert sent.queue_name == queue


def _message(actor_name: str, *args: Any, **kwargs: Any) -> Message[Any]:
    """A message built by name, as a service that does not declare the actor builds one."""
    return Message(queue_name="", actor_name=actor_name, args=args, kwargs=kwargs, options={})


# -- actors declared elsewhere --------------------------------------------------------------------------


def test_workers_publish_their_actors_at_boot(app: App, queue: str, worker: Worker) -> None:
    # Given an actor declared in a worker's code
    @dramatiq.actor(queue_name=queue, max_retries=2, throws=(KeyError,))
    def shipped(order: str, *, express: bool = False) -> None:
        pass

    # When the worker boots
    with worker(threads=1):
        entry = ActorCatalog(app.engine).lookup(shipped.actor_name)

    # Then the catalog has its queue, parameters and plain options (not the exception class)
    assert entry is not None
    assert entry.queue == queue
    assert entry.parameters == (("order", "POSITIONAL_OR_KEYWORD", False), ("express", "KEYWORD_ONLY", True))
    assert entry.options["max_retries"] == 2
    assert "throws" not in entry.options


def test_a_send_to_an_actor_declared_only_by_a_worker_elsewhere_is_validated_against_it(
    app: App, queue: str
) -> None:
    # Given an actor some other service's worker declared (not declared in this process)
    def resize(image: str, width: int = 100) -> None:
        pass

    entry = CatalogEntry.describe("resize_elsewhere", queue, resize, {"max_retries": 1})
    app.broker.catalog.publish([entry], "images-host:1")

    # When this service sends to it by name
    sent = app.broker.enqueue(
        Message(
            queue_name="ignored",
            actor_name="resize_elsewhere",
            args=("a.png",),
            kwargs={"width": 5},
            options={},
        )
    )

    # Then the job is stored on the declared actor's queue
    assert fairlane.jobs.get(sent.message_id).queue == queue
    # And arguments that do not fit, or an actor no worker declared, are refused
    with pytest.raises(InvalidJob, match="do not fit"):
        app.broker.enqueue(
            Message(queue_name="", actor_name="resize_elsewhere", args=(), kwargs={}, options={})
        )
    with pytest.raises(InvalidJob, match="no worker has declared it"):
        app.broker.enqueue(_message("nowhere"))
    assert _states(app, queue) == ["dispatched"]


# -- encoders -------------------------------------------------------------------------------------------


def test_a_pickle_encoder_is_refused_with_a_clear_error(app: App, queue: str) -> None:
    # Given an actor and Dramatiq's pickle encoder configured
    @dramatiq.actor(queue_name=queue)
    def pickled(value: int) -> None:
        pass

    dramatiq.set_encoder(PickleEncoder())
    try:
        # When a job is sent, then it is refused, naming the encoder and the fix
        with pytest.raises(InvalidJob, match=r"^Dramatiq's encoder is PickleEncoder.*JSON"):
            pickled.send(1)
    finally:
        dramatiq.set_encoder(JSONEncoder())

    # And nothing was stored
    assert _states(app, queue) == []


def _stored_message(app: App, message_id: str) -> str:
    with app.engine.connect() as connection:
        return str(connection.scalar(sa.select(jobs.c.message).where(jobs.c.id == message_id)))


def test_the_ledger_stores_the_bytes_the_configured_json_encoder_writes(app: App, queue: str) -> None:
    # Given an actor, arguments that need escaping, and Dramatiq's default encoder
    @dramatiq.actor(queue_name=queue)
    def described(text: str, scores: list[float], extra: dict[str, Any]) -> None:
        pass

    arguments = ('naïve "quoted"\n\ttab 🚀', [0.1, 1e300, -0.0], {"nested": {"none": None, "yes": True}})

    # When it is sent, then the stored message is exactly what that encoder writes of the job's message
    sent = described.send(*arguments)
    assert _stored_message(app, sent.message_id) == JSONEncoder().encode(sent.asdict()).decode()

    # And with a JSON encoder of one's own, its own output is stored
    class SortedJSON(JSONEncoder):
        def encode(self, data: Any) -> bytes:
            return json.dumps(data, sort_keys=True, indent=1).encode("utf-8")

    dramatiq.set_encoder(SortedJSON())
    try:
        custom = described.send(*arguments)
    finally:
        dramatiq.set_encoder(JSONEncoder())
    assert _stored_message(app, custom.message_id) == SortedJSON().encode(custom.asdict()).decode()


# -- a plain Dramatiq worker and a plain Dramatiq sender ----------------------------------------------


def test_a_plain_dramatiq_worker_beats_and_runs_jobs(app: App, queue: str) -> None:
    # Given a plain dramatiq.Worker on fairlane's broker (as the dramatiq command builds one)
    @dramatiq.actor(queue_name=queue)
    def plain(n: int) -> int:
        return n * 2

    plain_worker = dramatiq.Worker(app.broker, worker_threads=3, worker_timeout=100)
    plain_worker.start()
    try:
        # Then it has a heartbeat row (the reaper leaves its jobs alone) and runs jobs
        threads = _worker_threads(app)
        job = fairlane.jobs.wait(plain.send(21).message_id, timeout=20)
    finally:
        plain_worker.stop()
    assert threads == [3]
    assert (job.state, job.result) == ("succeeded", 42)
    # And a clean stop removes its row
    assert _worker_threads(app) == []


def _worker_threads(app: App) -> list[int]:
    """Thread counts in this process's heartbeat rows."""
    query = sa.select(workers.c.threads).where(workers.c.worker_id == default_worker_id())
    with app.engine.connect() as connection:
        return list(connection.scalars(query))


def test_a_plain_dramatiq_sender_on_the_same_vhost_gets_a_dead_letter_with_the_reason(
    app: App, queue: str, broker_url: str, worker: Worker
) -> None:
    # Given fairlane's worker on a queue, and a plain Dramatiq broker on the same vhost
    @dramatiq.actor(queue_name=queue)
    def shared() -> None:
        pass

    plain_broker = RabbitmqBroker(url=broker_url)
    plain_actor = dramatiq.actor(
        shared.fn, actor_name=shared.actor_name, queue_name=queue, broker=plain_broker
    )
    try:
        with worker(threads=1):
            # When the plain broker declares its queues and sends (no 406 from either side)
            plain_actor.send()
            eventually(lambda: dead_letter_depth(app, queue) == 1, timeout=20, message="dead-lettered")
    finally:
        plain_broker.close()

    # Then the message waits in the dead-letter queue saying what to do
    _method, properties, _body = app.broker.channel.basic_get(f"{queue}.XQ", auto_ack=True)
    assert "plain Dramatiq broker" in properties.headers[REASON_HEADER]
    assert "fairlane.get_broker()" in properties.headers[REASON_HEADER]


# -- broker_priority ------------------------------------------------------------------------------------


def test_broker_priority_orders_jobs_dispatched_to_a_lane(make_app: Callable[..., App], queue: str) -> None:
    # Given priority queues, room to dispatch every job at once, and a one-thread worker paused
    app = make_app(max_priority=10, dispatch_budget=32)
    order: list[int] = []
    done = threading.Event()

    @dramatiq.actor(queue_name=queue)
    def prioritized(priority: int) -> None:
        order.append(priority)
        if len(order) == 10:
            done.set()

    app.broker.declare_queue(queue, ensure=True)
    for priority in range(10):
        prioritized.send_with_options(args=(priority,), broker_priority=priority)
    eventually(lambda: lane_depth(app, queue) == 10, message="all dispatched")

    # When a worker with one thread and a prefetch of one takes them
    plain_worker = dramatiq.Worker(app.broker, worker_threads=1, worker_timeout=100)
    plain_worker.queue_prefetch = 1
    plain_worker.start()
    try:
        assert done.wait(20)
    finally:
        plain_worker.stop()

    # Then they ran highest priority first
    assert order == list(reversed(range(10)))


def test_a_bad_broker_priority_is_refused(app: App, queue: str) -> None:
    @dramatiq.actor(queue_name=queue)
    def prioritized() -> None:
        pass

    for bad in (-1, 256, "9", True, 1.5):
        with pytest.raises(InvalidJob, match="broker_priority"):
            prioritized.send_with_options(broker_priority=bad)
    assert _states(app, queue) == []


def test_messages_published_by_the_send_and_by_admission_carry_their_priority(
    make_app: Callable[..., App], queue: str
) -> None:
    # Given priority queues and room for one dispatched job, and no worker
    app = make_app(max_priority=10, dispatch_budget=1)

    @dramatiq.actor(queue_name=queue)
    def waits(n: int) -> None:
        pass

    # When one job is published by its send and the next, once the first is cancelled, by a round
    first = waits.send_with_options(args=(0,), broker_priority=7)
    waits.send_with_options(args=(1,), broker_priority=3)
    eventually(lambda: lane_depth(app, queue) == 1, message="first published")
    _method, first_properties, _body = app.broker.channel.basic_get(f"{queue}.normal", auto_ack=True)
    fairlane.jobs.cancel(first.message_id)
    app.dispatcher.admit(queue)
    _method, second_properties, _body = app.broker.channel.basic_get(f"{queue}.normal", auto_ack=True)

    # Then each carries its priority in RabbitMQ
    assert (first_properties.priority, second_properties.priority) == (7, 3)


def test_a_message_that_fails_to_decode_ends_dead_with_its_message_dead_lettered(
    app: App, queue: str, worker: Worker
) -> None:
    # Given a JSON encoder that fails to decode some messages
    class FailingDecoder(JSONEncoder):
        def decode(self, data: bytes) -> Any:
            if b"xfail" in data:
                raise RuntimeError("xfail")
            return super().decode(data)

    @dramatiq.actor(queue_name=queue, max_retries=0)
    def undecodable(value: str) -> None:
        pass

    dramatiq.set_encoder(FailingDecoder())
    try:
        with worker(threads=1):
            # When such a message reaches a worker
            job = fairlane.jobs.wait(undecodable.send("xfail").message_id, timeout=20)
    finally:
        dramatiq.set_encoder(JSONEncoder())

    # Then its job is dead (not left dispatched) and its message is in the dead-letter queue
    assert job.state == "dead"
    assert job.error is not None and job.error.type == "DecodeError"
    assert app.broker.get_queue_message_counts(queue) == (0, 0, 1)
