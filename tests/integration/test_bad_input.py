"""Bad input at send time: a clear InvalidJob, and nothing stored or published."""

from __future__ import annotations

from typing import Any

import pytest
from dramatiq.message import Message

import fairlane

from .support import lane_depth

LONG = "x" * 129


@pytest.fixture
def export_catalog(app: Any, queue: str) -> Any:
    @fairlane.actor(queue_name=queue)
    def export_catalog(store_id: int, full: bool = False) -> None:
        pass

    return export_catalog


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"args": (1,), "priority": "critical"}, "unknown priority 'critical'"),
        ({"args": (1,), "tenant": ""}, "tenant must be a non-empty string"),
        ({"args": (1,), "tenant": LONG}, "the limit is 128"),
        ({"args": (1,), "tenant": "store 42; DROP"}, "may hold only"),
        ({"args": ()}, "missing a required argument: 'store_id'"),
        ({"args": (1, True, "extra")}, "too many positional arguments"),
        ({"args": (1,), "kwargs": {"colour": "red"}}, "unexpected keyword argument 'colour'"),
        ({"args": (1,), "kwargs": {"store_id": 2}}, "multiple values for argument 'store_id'"),
        ({"args": (object(),)}, "JSON-serialisable"),
        ({"args": ("y" * 300_000,)}, "FAIRLANE_MAX_PAYLOAD_BYTES"),
        ({"args": (1,), "idempotency_key": ""}, "idempotency_key must be a non-empty string"),
        ({"args": (1,), "idempotency_key": "k" * 256}, "the limit is 255"),
        ({"args": (1,), "cost": 0}, "cost must be a number"),
        ({"args": (1,), "cost": "heavy"}, "cost must be a number"),
        ({"args": (1,), "delay": -5}, "delay must be a non-negative"),
    ],
)
def test_invalid_send_is_refused_and_nothing_is_enqueued(
    app: Any, queue: str, export_catalog: Any, options: dict[str, Any], expected: str
) -> None:
    # Given an actor and an empty queue
    # When a send breaks one rule
    with pytest.raises(fairlane.InvalidJob, match=expected):
        export_catalog.send_with_options(**options)

    # Then no job row exists and RabbitMQ got nothing
    assert fairlane.jobs.list(queue=queue) == []
    assert all(lane_depth(app, queue, lane) == 0 for lane in app.settings.lanes)


def test_unknown_actor_is_refused(app: Any, queue: str, export_catalog: Any) -> None:
    # Given a message addressed to an actor nobody declared
    message = Message(queue_name=queue, actor_name="no_such_actor", args=(), kwargs={}, options={})

    # When it is enqueued, then it is refused by name
    with pytest.raises(fairlane.InvalidJob, match="unknown actor 'no_such_actor'"):
        app.broker.enqueue(message)
    assert fairlane.jobs.list(queue=queue) == []


def test_valid_send_after_refusals_still_works(app: Any, queue: str, export_catalog: Any) -> None:
    # Given a refused send
    with pytest.raises(fairlane.InvalidJob):
        export_catalog.send_with_options(args=(1,), priority="nope")

    # When a valid one follows, then it is accepted normally
    message = export_catalog.send_with_options(args=(1,), kwargs={"full": True}, tenant="store-1")
    assert fairlane.jobs.get(message.message_id).state == "dispatched"
