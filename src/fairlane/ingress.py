"""The AMQP ingress: jobs that services publish to RabbitMQ instead of calling ``send()``.

``fairlane ingress [MODULE…]`` declares, all durable:

* the exchange ``fairlane.ingress``, **fanout**: services publish there with any routing key
  (it is ignored, so no key can be mistyped into a silently dropped message);
* the queue ``fairlane.ingress``, bound to it, which the ingress consumes one message at a time;
* the queue ``fairlane.ingress.XQ``: refused messages, with their body and properties as
  published and the reason in the header ``x-fairlane-reason`` (the publisher's RabbitMQ user
  in ``x-fairlane-user-id``), kept for ``dead_letter_ttl_days``.

**A message** is a JSON object ``{actor, args, kwargs, tenant, priority, idempotency_key,
delay_ms}`` (only ``actor`` is required; any other field is refused), with ``content_type``
``application/json`` or none, a body of at most ``ingress_max_bytes``, and two properties:

* ``message_id`` (required): the job's id is derived from it and the tenant, so a message
  redelivered or published twice never becomes a second job;
* ``user_id`` (required): RabbitMQ refuses a publish whose ``user_id`` is not the connection's
  own user, so it names the publisher for certain; ``ingress_tenants`` maps it to the tenant.
  A body ``tenant`` must be that tenant or absent: a service cannot submit as another tenant.

**Handling, and what a crash at each step means.** (1) The message is validated exactly as
``send()`` validates (it goes through :meth:`FairlaneBroker.enqueue`: unknown actor, arguments
that do not fit, tenant, priority, size). (2) ``enqueue`` commits the job's ledger row. (3) The
message is acked. A refused message is published to the dead-letter queue (confirmed by
RabbitMQ) before it is acked. A crash before the ack makes RabbitMQ deliver the message again;
its commit, if done, is then found by the job id and nothing new is stored.

**A ledger outage** (the database refuses connections or statements) neither loses nor
dead-letters a message: it goes back to the queue (nack, requeue) and the ingress waits,
0.5 s doubling up to 30 s, before it takes a message again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import pika
import pika.exceptions
import psycopg
import sqlalchemy as sa
from dramatiq.message import Message

from fairlane.app import App, get_app
from fairlane.broker import REASON_HEADER
from fairlane.errors import InvalidJob, LedgerUnavailable
from fairlane.settings import SettingsError
from fairlane.validation import check_idempotency_key, check_tenant
from fairlane.worker import import_actor_modules, stop_on_signals

logger = logging.getLogger("fairlane.ingress")

#: The exchange services publish jobs to (fanout: routing keys are ignored).
INGRESS_EXCHANGE = "fairlane.ingress"
#: The queue the ingress consumes.
INGRESS_QUEUE = "fairlane.ingress"
#: Where refused messages go, with the reason in :data:`~fairlane.broker.REASON_HEADER`.
INGRESS_DEAD_LETTER_QUEUE = "fairlane.ingress.XQ"
#: Header of a dead letter naming the RabbitMQ user that published it.
USER_HEADER = "x-fairlane-user-id"
#: Fields a message body may hold.
FIELDS = frozenset({"actor", "args", "kwargs", "tenant", "priority", "idempotency_key", "delay_ms"})

#: Job ids of ingress messages: uuid5 of tenant and message id in this namespace.
_JOB_ID_NAMESPACE = uuid.UUID("5f0c6f5e-3f0e-4a57-9f39-6c0e8b1f4a21")
_FIRST_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
#: Seconds the consumer waits for a message before it looks at the stop flag again.
_POLL_SECONDS = 0.2
_LOGGED_REASON_CHARS = 300
#: Errors that mean the ledger cannot be reached or is not answering, not that a message is bad.
_LEDGER_UNAVAILABLE = (
    LedgerUnavailable,  # what the send path raises (its job, if stored, is found again by its id)
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sa.exc.TimeoutError,
    sa.exc.DisconnectionError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    sqlite3.OperationalError,
)
_CONNECTION_ERRORS = (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError)


def ingress_job_id(tenant: str, message_id: str) -> str:
    """The id of the job an ingress message with ``message_id`` becomes for ``tenant``.

    Deterministic, so a redelivered message names the job its first delivery committed; the
    tenant is part of it, so one tenant's message ids never meet another tenant's jobs.
    """
    return str(uuid.uuid5(_JOB_ID_NAMESPACE, f"{tenant}\n{message_id}"))


class Ingress:
    """Consumes ``fairlane.ingress`` and turns each valid message into a job of ``app``."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.settings = app.settings
        self.tenants = _checked_tenant_map(app.settings.ingress_tenants)
        self._backoff = _FIRST_BACKOFF

    # -- one message -------------------------------------------------------------------------------

    def accept(self, properties: pika.BasicProperties, body: bytes) -> Message[Any]:
        """Validate one ingress message and commit its job; returns the stored message.

        The returned ``message_id`` is the job id. A message whose job already exists (a
        redelivery, or a body ``idempotency_key`` the tenant used before) returns that job.

        Raises:
          InvalidJob: the message is refused (the reason says why); nothing was stored.
          Any error of the ledger when it is unavailable: nothing was stored; try again later.
        """
        limit = self.settings.ingress_max_bytes
        if len(body) > limit:
            raise InvalidJob(
                f"message body is {len(body)} bytes; the limit is {limit} (FAIRLANE_INGRESS_MAX_BYTES): "
                "pass a reference to large data instead"
            )
        content_type = properties.content_type
        if content_type is not None and content_type.split(";")[0].strip().lower() != "application/json":
            raise InvalidJob(f"content_type is {content_type!r}: publish JSON as application/json")
        message_id = _message_id(properties.message_id)
        tenant = self._tenant_of(properties.user_id)
        fields = _decode(body)
        if fields.get("tenant") is not None and fields["tenant"] != tenant:
            raise InvalidJob(
                f"tenant {fields['tenant']!r} is not {tenant!r}, the tenant of RabbitMQ user "
                f"{properties.user_id!r}: leave tenant out or set it to {tenant!r}"
            )
        options: dict[str, Any] = {"tenant": tenant}
        for name in ("priority", "idempotency_key"):
            if fields.get(name) is not None:
                options[name] = fields[name]
        message: Message[Any] = Message(
            queue_name="",  # enqueue puts the actor's queue here
            actor_name=fields["actor"],
            args=tuple(fields.get("args", ())),
            kwargs=fields.get("kwargs", {}),
            options=options,
            message_id=ingress_job_id(tenant, message_id),
        )
        return self.app.broker.enqueue(message, delay=fields.get("delay_ms"))

    def _tenant_of(self, user_id: str | None) -> str:
        if not user_id:
            raise InvalidJob(
                "no user_id property: publish with user_id set to your RabbitMQ user name (RabbitMQ "
                "checks it), which FAIRLANE_INGRESS_TENANTS maps to your tenant"
            )
        tenant = self.tenants.get(user_id)
        if tenant is None:
            raise InvalidJob(
                f"RabbitMQ user {user_id!r} has no tenant: map it in FAIRLANE_INGRESS_TENANTS to submit jobs"
            )
        return tenant

    # -- consuming ---------------------------------------------------------------------------------

    def declare(self, channel: Any) -> None:
        """Declare the ingress exchange, its queue and the dead-letter queue (idempotent)."""
        channel.exchange_declare(INGRESS_EXCHANGE, exchange_type="fanout", durable=True)
        channel.queue_declare(
            INGRESS_QUEUE, durable=True, arguments={"x-queue-type": self.settings.queue_type}
        )
        channel.queue_bind(INGRESS_QUEUE, INGRESS_EXCHANGE)
        channel.queue_declare(
            INGRESS_DEAD_LETTER_QUEUE,
            durable=True,
            arguments={"x-message-ttl": self.settings.dead_letter_ttl_days * 86_400_000},
        )

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; the message in hand is finished first.

        A lost RabbitMQ connection is opened again (with the outage backoff); a message it
        held unacked is delivered again by RabbitMQ and finds its job if it was committed.
        """
        logger.info("event=ingress_started queue=%s tenants=%d", INGRESS_QUEUE, len(self.tenants))
        if not self.tenants:
            logger.warning(
                "event=ingress_no_tenants action='every message is refused: set FAIRLANE_INGRESS_TENANTS'"
            )
        while not stop.is_set():
            connection = None
            try:
                connection = pika.BlockingConnection(self.app.broker.parameters)
                self._consume(connection, stop)
            except _CONNECTION_ERRORS as error:
                logger.warning(
                    "event=ingress_connection_lost error=%s action='connecting again in %.1f s'",
                    type(error).__name__,
                    self._backoff,
                )
                stop.wait(self._next_backoff())
            finally:
                if connection is not None and connection.is_open:
                    connection.close()
        logger.info("event=ingress_stopped")

    def _consume(self, connection: Any, stop: threading.Event) -> None:
        channel = connection.channel()
        self.declare(channel)
        dead_letters = connection.channel()
        dead_letters.confirm_delivery()
        channel.basic_qos(prefetch_count=1)
        for method, properties, body in channel.consume(INGRESS_QUEUE, inactivity_timeout=_POLL_SECONDS):
            if method is not None:
                self._handle(connection, channel, dead_letters, method, properties, body, stop)
            if stop.is_set():
                break
        channel.cancel()  # returns anything delivered but not taken to the queue

    def _handle(
        self,
        connection: Any,
        channel: Any,
        dead_letters: Any,
        method: Any,
        properties: pika.BasicProperties,
        body: bytes,
        stop: threading.Event,
    ) -> None:
        try:
            stored = self.accept(properties, body)
        except InvalidJob as error:
            self._refuse(dead_letters, properties, body, str(error))
        except _LEDGER_UNAVAILABLE as error:
            channel.basic_nack(method.delivery_tag, requeue=True)
            logger.warning(
                "event=ingress_ledger_unavailable message_id=%r error=%s "
                "action='message returned to the queue; retrying in %.1f s'",
                properties.message_id,
                type(error).__name__,
                self._backoff,
            )
            _pause(connection, stop, self._next_backoff())
            return
        except Exception as error:  # a message-specific failure must not block every tenant's messages
            logger.exception("event=ingress_accept_failed message_id=%r", properties.message_id)
            self._refuse(
                dead_letters, properties, body, f"could not be accepted: {type(error).__name__}: {error}"
            )
        else:
            logger.debug(
                "event=ingress_accepted job=%s tenant=%s actor=%s message_id=%r redelivered=%s",
                stored.message_id,
                stored.options["tenant"],
                stored.actor_name,
                properties.message_id,
                method.redelivered,
            )
        channel.basic_ack(method.delivery_tag)
        self._backoff = _FIRST_BACKOFF

    def _refuse(self, dead_letters: Any, properties: pika.BasicProperties, body: bytes, reason: str) -> None:
        """Publish a refused message to the dead-letter queue and wait for RabbitMQ to confirm it."""
        logger.warning(
            "event=ingress_message_refused message_id=%r user=%r bytes=%d reason=%r",
            properties.message_id,
            properties.user_id,
            len(body),
            reason[:_LOGGED_REASON_CHARS],
        )
        headers = dict(properties.headers or {})
        headers[REASON_HEADER] = reason[:1000]
        if properties.user_id is not None:
            headers[USER_HEADER] = properties.user_id
        dead_letters.basic_publish(
            exchange="",
            routing_key=INGRESS_DEAD_LETTER_QUEUE,
            body=body,
            properties=pika.BasicProperties(
                content_type=properties.content_type,
                content_encoding=properties.content_encoding,
                headers=headers,
                delivery_mode=2,
                correlation_id=properties.correlation_id,
                message_id=properties.message_id,
                timestamp=properties.timestamp,
                type=properties.type,
                app_id=properties.app_id,
            ),
        )

    def _next_backoff(self) -> float:
        backoff = self._backoff
        self._backoff = min(backoff * 2, _MAX_BACKOFF)
        return backoff


def _pause(connection: Any, stop: threading.Event, seconds: float) -> None:
    """Wait ``seconds`` (less if ``stop`` is set) while keeping the RabbitMQ connection alive."""
    remaining = seconds
    while remaining > 0 and not stop.is_set():
        connection.sleep(min(remaining, _POLL_SECONDS))
        remaining -= _POLL_SECONDS


def _checked_tenant_map(tenants: dict[str, str]) -> dict[str, str]:
    for user, tenant in tenants.items():
        try:
            check_tenant(tenant)
        except InvalidJob as error:
            raise SettingsError(f"FAIRLANE_INGRESS_TENANTS: RabbitMQ user {user!r}: {error}") from None
    return dict(tenants)


def _message_id(message_id: str | None) -> str:
    if not message_id:
        raise InvalidJob(
            "no message_id property: publish each job with a unique message_id, which makes a "
            "redelivered or repeated message return its job instead of creating another"
        )
    try:
        return check_idempotency_key(message_id)
    except InvalidJob as error:
        raise InvalidJob(str(error).replace("idempotency_key", "message_id")) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode(body: bytes) -> dict[str, Any]:
    """The fields of a message body, checked for shape; ``enqueue`` checks their values."""
    try:
        fields = json.loads(body, parse_constant=_refuse_constant)
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError included
        raise InvalidJob(f"body is not JSON: {error}") from None
    if not isinstance(fields, dict):
        raise InvalidJob(f"body must be a JSON object, not {type(fields).__name__}")
    unknown = sorted(set(fields) - FIELDS)
    if unknown:
        raise InvalidJob(f"unknown fields {unknown}; a message may hold {sorted(FIELDS)}")
    actor = fields.get("actor")
    if not isinstance(actor, str) or not actor:
        raise InvalidJob(f"actor must be a non-empty string, not {actor!r}")
    if not isinstance(fields.get("args", []), list):
        raise InvalidJob(f"args must be a JSON array, not {type(fields['args']).__name__}")
    if not isinstance(fields.get("kwargs", {}), dict):
        raise InvalidJob(f"kwargs must be a JSON object, not {type(fields['kwargs']).__name__}")
    priority = fields.get("priority")
    if priority is not None and not isinstance(priority, str):
        raise InvalidJob(f"priority must be a lane name (a string), not {priority!r}")
    return fields


def run_ingress(modules: Sequence[str]) -> int:
    """Run the ingress process until SIGTERM or SIGINT (``fairlane ingress``); returns the exit code.

    ``modules`` declare actors to validate against; actors only workers declare are looked up
    in the ledger's actor catalog.
    """
    app = get_app()
    import_actor_modules(modules)
    ingress = Ingress(app)
    stop = threading.Event()
    stop_on_signals(stop, logger)
    try:
        ingress.run(stop)
    finally:
        app.close()
    return 0


__all__ = [
    "FIELDS",
    "INGRESS_DEAD_LETTER_QUEUE",
    "INGRESS_EXCHANGE",
    "INGRESS_QUEUE",
    "USER_HEADER",
    "Ingress",
    "ingress_job_id",
    "run_ingress",
]
