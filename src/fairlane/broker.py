"""The RabbitMQ broker: lane and dead-letter topology, and admission through the ledger.

Per actor queue ``Q`` there is one durable RabbitMQ queue per priority lane (``Q.urgent``,
``Q.high``, ``Q.normal``, ``Q.low``) and one dead-letter queue ``Q.XQ``. Dramatiq's delay
queues are never declared: delays and retry backoffs wait in the ledger.

:meth:`FairlaneBroker.enqueue` is the admission point. It validates the message and commits
its ledger row. If the queue is idle (a free dispatch slot, nothing due before it) the row is
committed ``dispatched`` and the sender publishes it at once; otherwise the job waits in the
ledger backlog and the queue's :class:`~fairlane.dispatch.Dispatcher` admits it in fair order.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import (
    MAX_DECLARE_ATTEMPTS,
    _RabbitmqConsumer,
    _RabbitmqMessage,
)
from dramatiq.common import dq_name
from dramatiq.encoder import Encoder, JSONEncoder
from dramatiq.errors import ActorNotFound, ConnectionClosed, DecodeError
from dramatiq.message import Message, get_encoder
from dramatiq.middleware import Middleware

from fairlane.amqp_frames import ack_all, publish_persistent
from fairlane.amqp_writes import coalesce_writes
from fairlane.dispatch import Dispatcher
from fairlane.errors import InvalidActor, InvalidJob
from fairlane.ledger.actors import ActorCatalog, CatalogEntry
from fairlane.ledger.admission import Accepted, Admission, AdmittedJob, NewJob
from fairlane.ledger.jobs import JobError, JobStore
from fairlane.ledger.lost_sends import SendGuard
from fairlane.ledger.schema import DISPATCHED
from fairlane.message_headers import attach_start_hint, read_start_hint, start_headers
from fairlane.middleware.context import running_tenant
from fairlane.middleware_signals import SignalEmitter
from fairlane.notifications import CancelledJobs
from fairlane.observability.catalog import JOBS_ENQUEUED
from fairlane.publisher_connections import FreshConnectionBroker
from fairlane.rabbitmq_outages import CONNECTION_ERRORS, RabbitmqOutages, quiet_consumer_thread
from fairlane.settings import Settings, time_limit_problem
from fairlane.validation import check_idempotency_key, check_tenant

logger = logging.getLogger("fairlane.broker")

#: Header carrying why a message was dead-lettered without a ledger row to say it.
REASON_HEADER = "x-fairlane-reason"
_PERSISTENT = pika.BasicProperties(delivery_mode=2)
_PRECONDITION_FAILED = 406


def dead_letter_queue_name(queue: str) -> str:
    """The dead-letter queue of an actor queue."""
    return f"{queue}.XQ"


class FairlaneBroker(SignalEmitter, FreshConnectionBroker):
    """A Dramatiq RabbitMQ broker whose ``enqueue`` admits jobs through the ledger (whose idle
    publishing connections are replaced before use: see :mod:`fairlane.publisher_connections`;
    and whose signals reach only the middleware that handle them: :mod:`fairlane.middleware_signals`)."""

    def __init__(
        self,
        settings: Settings,
        admission: Admission,
        jobs: JobStore,
        middleware: list[Middleware],
        cancelled: CancelledJobs | None = None,
    ) -> None:
        self.settings = settings
        self.lane_ranks = {lane: rank for rank, lane in enumerate(settings.lanes)}
        self.actor_queues: set[str] = set()
        super().__init__(
            url=settings.broker_url,
            confirm_delivery=True,
            max_priority=settings.max_priority,
            middleware=middleware,
        )
        self.admission = admission
        self.jobs = jobs
        self.catalog = ActorCatalog(admission.engine)
        #: Settles or explains a send whose ledger connection fails (see fairlane.ledger.lost_sends).
        self.send_guard = SendGuard(admission.engine)
        #: This process's components' RabbitMQ outages, each logged once (see fairlane.rabbitmq_outages).
        self.outages = RabbitmqOutages()
        self.dispatcher = Dispatcher(
            admission, settings, self.publish_batch, cancelled, outage=self.outages.dispatcher
        )

    @property
    def consumer_class(self) -> type[_RabbitmqConsumer]:
        return _FairlaneConsumer

    # -- topology ------------------------------------------------------------------------------------

    def lane_queue_name(self, queue: str, lane: str) -> str:
        """The RabbitMQ queue holding ``queue``'s dispatched jobs of ``lane``."""
        return f"{queue}.{lane}"

    def is_lane_queue(self, queue_name: str) -> bool:
        """Whether ``queue_name`` is one of fairlane's lane queues (``Q.normal`` …)."""
        head, _, tail = queue_name.rpartition(".")
        return bool(head) and tail in self.lane_ranks

    def actor_queue_of(self, queue_name: str) -> str:
        """The actor queue a lane, delay or dead-letter queue belongs to (identity for actor queues)."""
        head, _, tail = queue_name.rpartition(".")
        if head and (tail in self.lane_ranks or tail in ("DQ", "XQ")):
            return head
        return queue_name

    def declare_actor(self, actor: Any) -> None:
        """Declare an actor, refusing a ``time_limit`` RabbitMQ's consumer timeout would cut short
        (it would deliver the job again while it runs; see ``Settings.consumer_timeout``)."""
        time_limit = actor.options.get("time_limit")
        problem = None if time_limit is None else time_limit_problem(time_limit, self.settings)
        if problem is not None:
            raise InvalidActor(f"actor {actor.actor_name}: {problem}")
        super().declare_actor(actor)

    def declare_queue(self, queue_name: str, *, ensure: bool = False) -> None:
        """Declare an actor queue (or, given a lane queue's name, the actor queue it belongs to).

        As with plain Dramatiq, the worker learns of it through ``after_declare_queue`` and
        consumes it (all its lanes: see :class:`_FairlaneConsumer`), and of its delay queue
        ``Q.DQ`` through ``after_declare_delay_queue``.
        """
        queue = self.actor_queue_of(queue_name)
        if queue not in self.actor_queues:
            self.actor_queues.add(queue)
            self.queues_pending.add(queue)
            self.emit_before("declare_queue", queue)
            self.queues.add(queue)
            self.emit_after("declare_queue", queue)
            self.emit_after("declare_delay_queue", dq_name(queue))
        if ensure:
            self._ensure_topology(queue)

    def _ensure_topology(self, queue: str) -> None:
        """Declare ``queue``'s RabbitMQ queues if not done yet, retrying a lost connection once
        (``MAX_DECLARE_ATTEMPTS``, as Dramatiq does)."""
        attempts = 0
        while queue in self.queues_pending:
            try:
                # Dramatiq's own names first, declared with the arguments plain Dramatiq gives them,
                # so a plain Dramatiq process on the same vhost never meets a 406 (what becomes of
                # a message a plain sender publishes to them: see _FairlaneConsumer).
                self._declare_queue(queue)
                self._declare_dq_queue(queue)
                self._declare_xq_queue(queue)
                for lane in self.settings.lanes:
                    self._declare(self.lane_queue_name(queue, lane), self._lane_arguments(queue))
                self.queues_pending.discard(queue)
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as error:
                del self.connection
                attempts += 1
                if attempts >= MAX_DECLARE_ATTEMPTS:
                    raise ConnectionClosed(error) from None

    def _declare_queue(self, queue_name: str) -> Any:
        return self._declare(queue_name, self._build_queue_arguments(queue_name))

    def _declare_dq_queue(self, queue_name: str) -> Any:
        return self._declare(dq_name(queue_name), self._build_queue_arguments(queue_name))

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return self._declare(dead_letter_queue_name(queue_name), self._dead_letter_arguments())

    def _declare(self, name: str, arguments: dict[str, Any]) -> Any:
        """Declare a durable queue; if it exists with other arguments, keep using it and say so."""
        try:
            return self.channel.queue_declare(queue=name, durable=True, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code != _PRECONDITION_FAILED:
                raise
            del self.channel
            declared = self.channel.queue_declare(queue=name, passive=True)
            logger.warning(
                "event=queue_arguments_differ queue=%s wanted=%s detail=%r "
                "action='using the existing queue; delete or migrate it to apply the new arguments'",
                name,
                arguments,
                error.reply_text,
            )
            return declared

    def _lane_arguments(self, queue: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "x-queue-type": self.settings.queue_type,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_letter_queue_name(queue),
        }
        if self.settings.max_priority is not None:
            arguments["x-max-priority"] = self.settings.max_priority
        return arguments

    def _dead_letter_arguments(self) -> dict[str, Any]:
        return {"x-message-ttl": self.settings.dead_letter_ttl_days * 86_400_000}

    # -- Dramatiq's test helpers, answered from the ledger ----------------------------------------

    def get_queue_message_counts(self, queue_name: str) -> tuple[int, int, int]:
        """``(now, delayed, dead)`` for an actor queue (or one of its lane queues).

        ``now`` counts its jobs left to run now: waiting and due, dispatched, or running (a
        running job is not done until its finish is in the ledger); ``delayed``, those waiting
        for a delay or a retry backoff; ``dead``, the messages in its dead-letter queue. So
        Dramatiq's :meth:`join`, which waits for the first two to stay 0, returns only once
        nothing of the queue is left to run.
        """
        queue = self.actor_queue_of(queue_name)
        now, delayed = self.admission.backlog_counts(queue)
        return now, delayed, self._message_count(dead_letter_queue_name(queue))

    def _message_count(self, name: str) -> int:
        try:
            return int(self.channel.queue_declare(queue=name, passive=True).method.message_count)
        except pika.exceptions.ChannelClosedByBroker:  # no such queue yet
            del self.channel
            return 0

    def flush(self, queue_name: str) -> None:
        """Drop every job of an actor queue that has not started: cancelled in the ledger, then
        purged from its lane, Dramatiq and dead-letter queues. Running jobs finish."""
        queue = self.actor_queue_of(queue_name)
        self.admission.drop_backlog(queue)
        names = [self.lane_queue_name(queue, lane) for lane in self.settings.lanes]
        for name in (*names, queue, dq_name(queue), dead_letter_queue_name(queue)):
            try:
                self.channel.queue_purge(name)
            except pika.exceptions.ChannelClosedByBroker:  # never declared
                del self.channel

    def flush_all(self) -> None:
        """:meth:`flush` every actor queue this broker declared."""
        for queue in sorted(self.actor_queues):
            self.flush(queue)

    def get_declared_delay_queues(self) -> set[str]:
        """``Q.DQ`` of each actor queue, consumed only to dead-letter what plain Dramatiq senders
        publish there: fairlane's delays and backoffs wait in the ledger."""
        return {dq_name(queue) for queue in self.actor_queues}

    # -- admission -----------------------------------------------------------------------------------

    def enqueue(self, message: Message[Any], *, delay: int | timedelta | None = None) -> Message[Any]:
        """Validate ``message``, record it in the ledger and admit its queue's backlog.

        Returns the message as stored. If the tenant already submitted a job with the same
        ``idempotency_key``, nothing new is stored and the returned message carries the
        existing job's id.

        Raises:
          InvalidJob: the message cannot be accepted; nothing was stored.
          LedgerUnavailable: the ledger could not be reached; it says whether the job was stored.
        """
        with self.send_guard.nothing_written([message.message_id]):
            job, stored = self._prepare(message, delay)
            budget = self.dispatcher.budget(job.queue)
        accepted = self.send_guard.write(
            [job.id],
            lambda: self.admission.accept(job, budget),
            lambda states: Accepted(job.id, created=True, dispatched=states[job.id] == DISPATCHED),
        )
        if accepted.created:
            JOBS_ENQUEUED.labels(queue=job.queue, actor=job.actor, lane=job.lane).inc()
            if accepted.dispatched:
                self._publish_accepted(job, stored, accepted)
            else:
                self.dispatcher.request([job.queue])
        if accepted.job_id == stored.message_id:
            return stored
        return stored.copy(message_id=accepted.job_id)

    def _publish_accepted(self, job: NewJob, stored: Message[Any], accepted: Accepted) -> None:
        """Publish a job its accept dispatched; if RabbitMQ refuses, the job waits in the backlog.

        The send has succeeded either way: its committed row is the promise that the job runs.
        So the publish does not wait for a confirm: a message RabbitMQ loses in a crash leaves
        its job dispatched, and the reaper publishes it again after ``dispatch_timeout``.
        The message carries its start hint when the accept's reply said since when the job is
        runnable (a reply lost to a dropped connection did not: the worker then waits for its start).
        """
        headers = None if accepted.runnable_since is None else start_headers(1, accepted.runnable_since)
        try:
            properties = _properties(stored.options.get("broker_priority"), headers)
            self._publish_unconfirmed(job.queue, job.lane, job.message.encode(), properties)
        except (ConnectionClosed, pika.exceptions.AMQPError) as error:
            if isinstance(error, CONNECTION_ERRORS):
                self.outages.sender.lost(error)
            else:
                logger.warning(
                    "event=publish_failed queue=%s jobs=1 error=%s action='the job waits in the ledger'",
                    job.queue,
                    type(error).__name__,
                )
            try:
                self.admission.unadmit([job.id])
            except Exception:  # the reaper publishes a stale dispatch again; the send succeeded
                logger.exception("event=unadmit_failed job=%s", job.id)
            self.dispatcher.request([job.queue])
            return
        self.outages.sender.restored()

    def enqueue_many(self, messages: Sequence[Message[Any]]) -> list[Message[Any]]:
        """Validate and accept many messages in one ledger transaction per 1,000, then admit their queues.

        All or nothing: if any message is invalid, :class:`InvalidJob` names it and none is stored.
        Idempotency keys and delays are not supported here; use :meth:`enqueue` for those.
        If the ledger fails, :class:`~fairlane.ledger.lost_sends.LedgerUnavailable` names the
        jobs stored (earlier chunks) and not stored.
        """
        prepared = []
        ids = [message.message_id for message in messages]
        with self.send_guard.nothing_written(ids):
            for index, message in enumerate(messages):
                if message.options.get("idempotency_key") is not None:
                    raise InvalidJob(f"message {index}: idempotency keys need enqueue(), not enqueue_many()")
                try:
                    prepared.append(self._prepare(message, None))
                except InvalidJob as error:
                    raise InvalidJob(f"message {index}: {error}") from None
        for start in range(0, len(prepared), 1000):
            chunk = [job for job, _ in prepared[start : start + 1000]]
            self.send_guard.write(
                ids[start : start + 1000],
                functools.partial(self.admission.accept_many, chunk),
                lambda _states: None,
                stored_before=ids[:start],
                sent_after=ids[start + 1000 :],
            )
        counts = Counter((job.queue, job.actor, job.lane) for job, _ in prepared)
        for (queue, actor, lane), count in counts.items():
            JOBS_ENQUEUED.labels(queue=queue, actor=actor, lane=lane).inc(count)
        for queue in sorted({job.queue for job, _ in prepared}):
            # One round here fills an idle queue's free slots now; a busy queue's dispatchers were
            # notified by the accept and take the rest in fair order.
            try:
                admitted = self.dispatcher.admit(queue, wait=False)
            except Exception:  # the jobs are stored: the sweep admits them; the send succeeded
                logger.exception("event=admission_failed queue=%s", queue)
                admitted = None
            if admitted is None:
                self.dispatcher.request([queue])
        return [stored for _, stored in prepared]

    def _publish_unconfirmed(
        self, queue: str, lane: str, body: bytes, properties: pika.BasicProperties
    ) -> None:
        """Publish one persistent message to a lane queue without waiting for RabbitMQ."""
        self.declare_queue(queue, ensure=True)
        for attempt in range(2):  # a connection that died while idle is replaced once
            channel = getattr(self.state, "plain_channel", None)
            try:
                if channel is None or not channel.is_open or channel.connection is not self.connection:
                    channel = self.state.plain_channel = self.connection.channel()
                channel.basic_publish(
                    exchange="",
                    routing_key=self.lane_queue_name(queue, lane),
                    body=body,
                    properties=properties,
                )
                return
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as error:
                del self.connection
                if attempt:
                    raise ConnectionClosed(error) from None

    def publish_batch(self, queue: str, admitted: Sequence[AdmittedJob]) -> None:
        """Publish an admission round in one AMQP transaction: one broker round trip for all.

        The commit returns once RabbitMQ has taken every message (persistent, durable queues),
        the guarantee a publisher confirm gives, without waiting once per message. A connection
        that died while idle is replaced once (should the lost one have committed after all, a
        job's second copy is skipped at its start).
        """
        self.declare_queue(queue, ensure=True)
        messages = [
            (self.lane_queue_name(queue, job.lane), job.message.encode(), *self._stored_properties(job))
            for job in admitted
        ]
        for attempt in range(2):
            try:
                channel = self._transaction_channel()
                # Only queues the frames (marshalled in one pass): the commit writes them all at
                # once. (The blocking channel's own basic_publish flushes its socket per message.)
                publish_persistent(channel._impl, messages)
                channel.tx_commit()
                return
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as error:
                del self.connection
                if attempt:
                    raise ConnectionClosed(error) from None

    def _stored_properties(self, job: AdmittedJob) -> tuple[int | None, dict[str, int] | None]:
        """The broker priority and headers of an admitted job's stored message: its
        ``broker_priority`` and, when known, its start hint (:mod:`fairlane.message_headers`)."""
        headers = None
        if job.attempt is not None and job.runnable_since is not None:
            headers = start_headers(job.attempt, job.runnable_since)
        if self.settings.max_priority is None:
            return None, headers
        return json.loads(job.message).get("options", {}).get("broker_priority"), headers

    def _transaction_channel(self) -> Any:
        """This thread's channel in AMQP transaction mode (on its publishing connection)."""
        channel = getattr(self.state, "transaction_channel", None)
        if channel is None or not channel.is_open or channel.connection is not self.connection:
            channel = self.connection.channel()
            channel.tx_select()
            self.state.transaction_channel = channel
        return channel

    def dead_letter_raw(self, queue_name: str, body: bytes, reason: str) -> None:
        """Put a message that has no usable ledger row in its dead-letter queue, with the reason."""
        self.declare_queue(queue_name, ensure=True)
        self.channel.basic_publish(
            exchange="",
            routing_key=dead_letter_queue_name(self.actor_queue_of(queue_name)),
            body=body,
            properties=pika.BasicProperties(
                delivery_mode=2, timestamp=int(time.time()), headers={REASON_HEADER: reason[:1000]}
            ),
        )

    def _target(self, actor_name: str) -> CatalogEntry:
        """What a send to ``actor_name`` is validated against: the actor declared here, or else
        the one a worker declared (see :mod:`fairlane.ledger.actors`)."""
        try:
            actor = self.get_actor(actor_name)
        except ActorNotFound:
            entry = self.catalog.lookup(actor_name)
            if entry is None:
                raise InvalidJob(
                    f"unknown actor {actor_name!r}: it is not declared here and no worker has declared it"
                ) from None
            return entry
        return _local_entry(actor)

    def _prepare(self, message: Message[Any], delay: int | timedelta | None) -> tuple[NewJob, Message[Any]]:
        actor = self._target(message.actor_name)
        options = dict(message.options)
        # A job sent from inside a running job (a callback, a pipeline's next step, a sub-job)
        # belongs to that job's tenant unless it names one: tenant data stays with its tenant.
        tenant = options.get("tenant")
        if tenant is None:
            tenant = running_tenant() or self.settings.default_tenant
        tenant = check_tenant(tenant)
        lane = options.get("priority") or self.settings.default_lane
        if lane not in self.lane_ranks:
            raise InvalidJob(f"unknown priority {lane!r}; expected one of {', '.join(self.settings.lanes)}")
        key = options.get("idempotency_key")
        if key is not None:
            key = check_idempotency_key(key)
        broker_priority = options.get("broker_priority")
        if broker_priority is not None and (
            isinstance(broker_priority, bool)
            or not isinstance(broker_priority, int)
            or not 0 <= broker_priority <= 255
        ):
            raise InvalidJob(f"broker_priority must be an integer in [0, 255], not {broker_priority!r}")
        cost = options.get("cost", 1)
        if isinstance(cost, bool) or not isinstance(cost, int | float) or not 0 < cost <= 1_000_000:
            raise InvalidJob(f"cost must be a number in (0, 1000000], not {cost!r}")
        if isinstance(delay, timedelta):
            delay = int(delay.total_seconds() * 1000)
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int) or delay < 0):
            raise InvalidJob(f"delay must be a non-negative number of milliseconds, not {delay!r}")
        _check_signature(actor, message)
        time_limit = options.get("time_limit")
        if time_limit is not None and (problem := time_limit_problem(time_limit, self.settings)):
            raise InvalidJob(problem)
        rate_key, rate_tokens = self._rate_limit_of(actor, message)
        options.update(tenant=tenant, priority=lane, cost=cost)
        if rate_key is not None:
            options.update(rate_limit=rate_key, tokens=rate_tokens)
        if key is None:
            options.pop("idempotency_key", None)
        else:
            options["idempotency_key"] = key
        queue = actor.queue
        # The message keeps its actor's queue name, as in Dramatiq (result keys, equality); its
        # lane decides only which RabbitMQ queue carries it.
        stored = _with_queue_and_options(message, queue, options)
        try:
            encoded = _encoded(stored)
        except InvalidJob:  # a non-JSON encoder: its own message says so
            raise
        except (TypeError, ValueError) as error:
            raise InvalidJob(f"arguments and options must be JSON-serialisable: {error}") from None
        if len(encoded) > self.settings.max_payload_bytes:
            raise InvalidJob(
                f"message is {len(encoded)} bytes; the limit is {self.settings.max_payload_bytes} "
                "(FAIRLANE_MAX_PAYLOAD_BYTES): pass a reference to large data instead"
            )
        job = NewJob(
            id=stored.message_id,
            actor=actor.name,
            queue=queue,
            tenant=tenant,
            lane=lane,
            lane_rank=self.lane_ranks[lane],
            cost=float(cost),
            message=encoded.decode(),
            idempotency_key=key,
            delay=(delay or 0) / 1000,
            rate_key=rate_key,
            rate_tokens=rate_tokens,
        )
        return job, stored

    def _rate_limit_of(self, actor: CatalogEntry, message: Message[Any]) -> tuple[str | None, float | None]:
        """The actor's rate-limit key and this job's estimated tokens, checked against the budget."""
        key = actor.options.get("rate_limit")
        if key is None:
            return None, None
        if key not in self.settings.rate_limits:
            raise InvalidJob(f"actor {actor.name} names rate limit {key!r}, which FAIRLANE_RATE_LIMITS lacks")
        estimate = actor.options.get("tokens", 0)
        if callable(estimate):
            estimate = estimate(*message.args, **message.kwargs)
        if isinstance(estimate, bool) or not isinstance(estimate, int | float) or estimate < 0:
            raise InvalidJob(f"estimated tokens must be a non-negative number, not {estimate!r}")
        ceiling = self.admission.rate_limits.budget(key).max_job_tokens
        if estimate > ceiling:
            raise InvalidJob(
                f"estimated {estimate} tokens exceed the {ceiling:.0f} one job may use under {key!r}"
            )
        return key, float(estimate)


def _with_queue_and_options(message: Message[Any], queue: str, options: dict[str, Any]) -> Message[Any]:
    return Message(
        queue_name=queue,
        actor_name=message.actor_name,
        args=message.args,
        kwargs=message.kwargs,
        options=options,
        message_id=message.message_id,
        message_timestamp=message.message_timestamp,
    )


def _properties(broker_priority: int | None, headers: dict[str, int] | None = None) -> pika.BasicProperties:
    if broker_priority is None and headers is None:
        return _PERSISTENT
    return pika.BasicProperties(delivery_mode=2, priority=broker_priority, headers=headers)


#: Dramatiq's JSONEncoder writes ``json.dumps(data, separators=(",", ":"))``, building a JSON
#: encoder per message; this one is built once and writes the same bytes.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def _encoded(message: Message[Any]) -> bytes:
    """The message as Dramatiq's encoder writes it, refused unless that encoder writes JSON (the
    ledger stores messages as JSON text)."""
    encoder = get_encoder()
    if type(encoder) is JSONEncoder:
        return _COMPACT_JSON.encode(
            {
                "queue_name": message.queue_name,
                "actor_name": message.actor_name,
                "args": message.args,
                "kwargs": message.kwargs,
                "options": message.options,
                "message_id": message.message_id,
                "message_timestamp": message.message_timestamp,
            }
        ).encode()
    if not _encodes_json(encoder):
        raise InvalidJob(
            f"Dramatiq's encoder is {type(encoder).__name__}, which does not write JSON: fairlane stores "
            "and sends messages as JSON only (never pickle); use dramatiq.set_encoder(dramatiq.JSONEncoder())"
        )
    return message.encode()


@functools.lru_cache(maxsize=16)
def _encodes_json(encoder: Encoder) -> bool:
    """Whether ``encoder`` writes UTF-8 JSON (probed once per encoder)."""
    probe = {"probe": [1, "é"]}
    try:
        return bool(json.loads(encoder.encode(probe).decode("utf-8")) == probe)
    except Exception:  # any failure means: not a JSON encoder
        return False


@functools.lru_cache(maxsize=4096)
def _local_entry(actor: Any) -> CatalogEntry:
    """The catalog entry of an actor declared in this process (built once per actor)."""
    return CatalogEntry.describe(actor.actor_name, actor.queue_name, actor.fn, actor.options)


def _check_signature(actor: CatalogEntry, message: Message[Any]) -> None:
    problem = actor.binding_problem(len(message.args), tuple(message.kwargs))
    if problem is not None:
        raise InvalidJob(f"arguments do not fit {message.actor_name}{actor.signature}: {problem}")


class _FairlaneConsumer(_RabbitmqConsumer):
    """Dramatiq's consumer of one actor queue ``Q``, reading its lane queues on one channel.

    The worker has one consumer per actor queue, as with plain Dramatiq (so ``message.queue_name``
    routes acks, ``--queues Q`` whitelists it and ``broker.consume(Q)`` works); each lane is a
    RabbitMQ consumer of its own with ``prefetch`` unacked messages, and the worker's
    :class:`~fairlane.work_queue.LaneWorkQueue` runs what they bring in lane order.

    It also reads ``Q`` itself (and, as the worker's delay consumer, ``Q.DQ``), where only a plain
    Dramatiq sender publishes: such a message is moved to the dead-letter queue with the reason,
    as is an undecodable one, instead of being left there or rejected without one.

    A message is acked or rejected only through the consumer (connection) that delivered it: after
    a lost connection, Dramatiq would ack a job that was running through the consumer that
    replaced it, where the delivery tag names another message. RabbitMQ delivers it again instead.

    Acks are sent in batches: worker threads queue their delivery tags, and the consumer thread
    writes every queued ack in one socket write, woken once per batch. (Dramatiq wakes the
    consumer thread and flushes its socket once per ack: a quarter of that thread's time.) An
    ack still queued when the connection is lost is dropped, as an unsent one always was:
    RabbitMQ delivers that message again.
    """

    broker: FairlaneBroker

    def __init__(self, broker: FairlaneBroker, queue_name: str, prefetch: int, timeout: int) -> None:
        # Created in its Dramatiq consumer thread: a lost connection is logged once per outage for
        # the worker (fairlane.rabbitmq_outages), not by that thread per retry.
        quiet_consumer_thread(threading.current_thread())
        self.broker = broker
        self.queue_name = queue_name
        self.logger = logging.getLogger("dramatiq.brokers.rabbitmq._FairlaneConsumer")
        self.known_tags: set[int] = set()
        self._timeout = timeout / 1000
        self._ready: collections.deque[tuple[Any, Any, bytes, bool]] = collections.deque()
        #: Delivery tags whose acks the consumer thread has yet to send; whether it was woken for them.
        self._acks: list[int] = []
        self._acks_lock = threading.Lock()
        self._acks_woken = False
        if broker.is_lane_queue(queue_name) or queue_name.endswith(".DQ"):
            names = [queue_name]
        else:
            names = [broker.lane_queue_name(queue_name, lane) for lane in broker.settings.lanes]
            names.append(queue_name)
        try:
            self.connection = pika.BlockingConnection(parameters=broker.parameters)
            coalesce_writes(self.connection)  # a batch of acks leaves in one write
            self.channel = self.connection.channel()
            self.channel.basic_qos(prefetch_count=prefetch)
            for name in names:
                plain = not broker.is_lane_queue(name)
                self.channel.basic_consume(name, functools.partial(self._received, plain=plain))
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as error:
            if getattr(error, "reply_code", None) == 404:  # a queue went away: declare it again
                broker.queues_pending.add(broker.actor_queue_of(queue_name))
            elif isinstance(error, CONNECTION_ERRORS):
                broker.outages.worker.lost(error, queue_name)
            raise ConnectionClosed(error) from None
        broker.outages.worker.restored(queue_name)

    def _received(self, _channel: Any, method: Any, properties: Any, body: bytes, *, plain: bool) -> None:
        self._ready.append((method, properties, body, plain))

    def __next__(self) -> Any:
        try:
            if not self._ready:
                self.connection.process_data_events(time_limit=self._timeout)
        except (
            AssertionError,
            pika.exceptions.AMQPConnectionError,
            pika.exceptions.AMQPChannelError,
        ) as error:
            if getattr(error, "reply_code", None) == 404:
                self.broker.queues_pending.add(self.broker.actor_queue_of(self.queue_name))
            elif isinstance(error, CONNECTION_ERRORS):
                self.broker.outages.worker.lost(error, self.queue_name)
            raise ConnectionClosed(error) from None
        if not self._ready:
            return None
        method, properties, body, plain = self._ready.popleft()
        if plain:
            self._dead_letter(method, body, _PLAIN_SENDER.format(queue=method.routing_key))
            return None
        try:
            message = Message.decode(body)
        except DecodeError as error:
            reason = f"undecodable message: {error.__cause__ or error}"
            self._dead_letter(method, body, reason)
            job_id = _job_id_of(body)
            if job_id is not None:  # its row would otherwise stay dispatched
                self.broker.jobs.kill(job_id, JobError("DecodeError", reason))
            return None
        if message.queue_name != self.queue_name:
            # Dramatiq's worker routes the ack by the message's queue name: a message that names
            # another (a lane queue, as messages sent by earlier fairlane versions do) is acked through us.
            message = message.copy(queue_name=self.queue_name)
        self.known_tags.add(method.delivery_tag)
        received = _RabbitmqMessage(method.redelivered, method.delivery_tag, message)
        attach_start_hint(received, read_start_hint(properties.headers))
        setattr(received, _DELIVERED_BY, self)
        return received

    def ack(self, message: Any) -> None:
        if not self._settles(message, "ack"):
            return
        self.known_tags.discard(message._tag)
        with self._acks_lock:
            self._acks.append(message._tag)
            if self._acks_woken:
                return  # the consumer thread sends it with the others
            self._acks_woken = True
        try:
            self.connection.add_callback_threadsafe(self._send_acks)
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as error:
            raise ConnectionClosed(error) from None

    def _send_acks(self) -> None:
        """Send every queued ack (on the consumer thread): the frames are buffered here and leave in
        one write when its I/O loop next runs."""
        with self._acks_lock:
            tags, self._acks, self._acks_woken = self._acks, [], False
        ack_all(self.channel._impl, tags)

    def nack(self, message: Any) -> None:
        if self._settles(message, "nack"):
            super().nack(message)

    def _settles(self, message: Any, action: str) -> bool:
        """Whether this consumer can ack or reject ``message``: it delivered it and has not tried
        to before. Dramatiq acks a job that ran while the connection was lost again and again
        (through this consumer, then through the one that replaced it, where its delivery tag
        names another message or none): those acks are dropped, and RabbitMQ delivers it again."""
        if getattr(message, _DELIVERED_BY, self) is self and message._tag in self.known_tags:
            return True
        logger.debug(
            "event=%s_dropped job=%s queue=%s reason='delivered on a connection lost since'",
            action,
            message.message_id,
            self.queue_name,
        )
        return False

    def _dead_letter(self, method: Any, body: bytes, reason: str) -> None:
        logger.error("event=message_dead_lettered queue=%s reason=%r", self.queue_name, reason)
        self.broker.dead_letter_raw(self.queue_name, body, reason)
        self.channel.basic_ack(method.delivery_tag)


#: The attribute of a received message (its proxy) naming the consumer that delivered it.
_DELIVERED_BY = "_fairlane_delivered_by"


def _job_id_of(body: bytes) -> str | None:
    """The message id in an undecodable message's body, if it is JSON that names one."""
    try:
        decoded = json.loads(body)
    except ValueError:
        return None
    job_id = decoded.get("message_id") if isinstance(decoded, dict) else None
    return job_id if isinstance(job_id, str) and 0 < len(job_id) <= 255 else None


_PLAIN_SENDER = (
    "published to {queue} by a plain Dramatiq broker, where no fairlane worker runs it: send "
    "through fairlane's broker (fairlane.get_broker()), which records the job in the ledger"
)


__all__ = ["REASON_HEADER", "FairlaneBroker", "dead_letter_queue_name"]
