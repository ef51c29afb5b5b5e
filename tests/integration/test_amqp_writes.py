"""Coalesced AMQP writes: an admission round's messages leave in a few socket writes, not three per
message, and every one arrives whole (a body larger than a frame included)."""

from __future__ import annotations

import hashlib
from typing import Any

import fairlane
from fairlane.amqp_writes import JOIN_LIMIT, coalesce_writes
from fairlane.app import App

from .support import eventually, lane_depth


def _count_writes(connection: Any) -> list[int]:
    """The sizes of the socket writes ``connection`` makes from now on."""
    transport = connection._impl._transport
    send = transport._sigint_safe_send
    sizes: list[int] = []

    def counted(sock: Any, data: bytes) -> int:
        sizes.append(len(data))
        return int(send(sock, data))

    transport._sigint_safe_send = counted
    return sizes


def test_a_round_leaves_in_few_writes_and_every_job_runs_with_its_whole_message(
    app: App, queue: str, worker: Any
) -> None:
    # Given an actor that reports what it received, and 16 payloads, one larger than an AMQP frame
    @fairlane.actor(queue_name=queue)
    def digest(index: int, payload: str) -> list[Any]:
        return [index, len(payload), hashlib.sha256(payload.encode()).hexdigest()]

    payloads = [f"{index}-" + "x" * (index * 37) for index in range(15)] + ["y" * 200_000]
    writes = _count_writes(app.broker.connection)

    # When they are sent as a batch with no worker running (one admission round publishes them all)
    messages = digest.send_many([(index, payload) for index, payload in enumerate(payloads)])
    eventually(lambda: lane_depth(app, queue) == len(payloads), message="all 16 published")

    # Then the round went out in far fewer writes than the 48+ frames it is made of
    assert 0 < len(writes) < len(payloads)
    assert sum(writes) > 200_000

    # And a worker runs every job with its whole message
    with worker(threads=4):
        done = [fairlane.jobs.wait(message.message_id, timeout=20) for message in messages]
    assert [job.state for job in done] == ["succeeded"] * len(payloads)
    assert [job.result for job in done] == [
        [index, len(payload), hashlib.sha256(payload.encode()).hexdigest()]
        for index, payload in enumerate(payloads)
    ]
    # And every message was acked (the worker's acks are coalesced too): nothing waits in RabbitMQ
    eventually(lambda: lane_depth(app, queue) == 0, message="lane queue empty")


def test_an_object_that_is_not_a_pika_connection_is_left_alone() -> None:
    class NotPika:
        pass

    assert coalesce_writes(NotPika()) is False


def test_a_round_larger_than_the_join_limit_arrives_whole(app: App, queue: str, worker: Any) -> None:
    # Given 16 payloads of 200 KB: 3.2 MB queued at once, past JOIN_LIMIT, so sent buffer by buffer
    @fairlane.actor(queue_name=queue)
    def digest(index: int, payload: str) -> list[Any]:
        return [index, hashlib.sha256(payload.encode()).hexdigest()]

    payloads = [chr(ord("a") + index) * 200_000 for index in range(16)]
    assert sum(map(len, payloads)) > JOIN_LIMIT
    writes = _count_writes(app.broker.connection)

    # When one admission round publishes them all
    messages = digest.send_many([(index, payload) for index, payload in enumerate(payloads)])
    eventually(lambda: lane_depth(app, queue) == len(payloads), message="all 16 published")
    assert sum(writes) > sum(map(len, payloads))

    # Then a worker runs every job with its whole message
    with worker(threads=4):
        done = [fairlane.jobs.wait(message.message_id, timeout=30) for message in messages]
    assert [job.result for job in done] == [
        [index, hashlib.sha256(payload.encode()).hexdigest()] for index, payload in enumerate(payloads)
    ]
