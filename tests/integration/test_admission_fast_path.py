"""The idle fast path of a send, and the dispatch budget that decides it.

A send finds its queue idle when fewer than the budget's jobs are dispatched and nothing is
due at its lane or above (a job that overtakes a lower lane's backlog gets half a budget more):
then its row is committed ``dispatched`` and published at once, without charging its tenant's
stride pass. Otherwise it waits for an admission round.
No worker runs in these tests unless they say so, so dispatched jobs stay dispatched.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import fairlane
from fairlane.app import App
from fairlane.dispatch import BUDGET_PER_THREAD, DEFAULT_BUDGET
from fairlane.ledger.schema import DISPATCHED, PENDING
from fairlane.ledger.workers import WorkerBeat
from fairlane.worker import running_worker

from .support import eventually, lane_depth


def _states(job_ids: list[str]) -> list[str]:
    return [fairlane.jobs.get(job_id).state for job_id in job_ids]


def _start(app: App, job_ids: list[str]) -> None:
    """A worker took these dispatched jobs: they leave the dispatch budget (they are now running)."""
    for job_id in job_ids:
        assert app.jobs.start(job_id, "test-host:1").decision.value == "run"


def test_sends_to_an_idle_queue_are_dispatched_at_once_until_the_budget_is_full(
    make_app: Any, queue: str
) -> None:
    # Given a queue with a dispatch budget of 2 and no worker
    app = make_app(dispatch_budget=2)

    @fairlane.actor(queue_name=queue)
    def task() -> None:
        pass

    # When three jobs are sent
    ids = [task.send().message_id for _ in range(3)]

    # Then the first two took the free slots at once and are in RabbitMQ; the third waits
    assert _states(ids) == [DISPATCHED, DISPATCHED, PENDING]
    eventually(lambda: lane_depth(app, queue) == 2, message="published")  # unconfirmed publishes


def test_only_backlog_at_the_same_or_a_higher_lane_blocks_the_fast_path(make_app: Any, queue: str) -> None:
    # Given a budget of 2, two dispatched jobs and one normal job waiting behind them
    app = make_app(dispatch_budget=2)

    @fairlane.actor(queue_name=queue)
    def task() -> None:
        pass

    dispatched = [task.send().message_id for _ in range(2)]
    waiting = task.send().message_id
    assert _states([*dispatched, waiting]) == [DISPATCHED, DISPATCHED, PENDING]

    # When a worker starts one dispatched job (a slot is free) and an urgent job is sent
    _start(app, dispatched[:1])
    urgent = task.send_with_options(priority="urgent").message_id

    # Then the urgent job takes the free slot at once: the normal backlog is below its lane
    assert fairlane.jobs.get(urgent).state == DISPATCHED
    eventually(lambda: lane_depth(app, queue, "urgent") == 1, message="urgent published")
    assert fairlane.jobs.get(waiting).state == PENDING

    # When another slot frees and a normal and a low job are sent
    _start(app, [urgent])
    normal = task.send().message_id
    low = task.send_with_options(priority="low").message_id

    # Then both wait: the normal backlog is at the normal lane and above the low one
    assert _states([normal, low]) == [PENDING, PENDING]
    assert lane_depth(app, queue, "low") == 0

    # And the next round admits the waiting normal jobs in order, ahead of the low one
    assert app.dispatcher.admit(queue) == 1
    assert _states([waiting, normal, low]) == [DISPATCHED, PENDING, PENDING]


def test_a_job_overtaking_a_lower_lanes_backlog_has_half_a_budget_of_headroom(
    make_app: Any, queue: str
) -> None:
    # Given a budget of 2, full, with a normal job waiting behind it
    make_app(dispatch_budget=2)

    @fairlane.actor(queue_name=queue)
    def task() -> None:
        pass

    ids = [task.send().message_id for _ in range(3)]
    assert _states(ids) == [DISPATCHED, DISPATCHED, PENDING]

    # When two urgent jobs are sent
    urgent = [task.send_with_options(priority="urgent").message_id for _ in range(2)]

    # Then the first goes out at once (2 + 1 slots for overtaking jobs), the second waits
    assert _states(urgent) == [DISPATCHED, PENDING]
    # And a normal job never overtakes its own lane's backlog, whatever the headroom
    assert _states([task.send().message_id]) == [PENDING]


def test_fast_path_jobs_do_not_advance_their_tenants_stride_pass(make_app: Any, queue: str) -> None:
    # Given a budget of 2 and no worker; tenant "a" sends two jobs to the idle queue (fast path)
    app = make_app(dispatch_budget=2)

    @fairlane.actor(queue_name=queue)
    def task() -> None:
        pass

    fast = [task.send_with_options(tenant="a").message_id for _ in range(2)]
    assert _states(fast) == [DISPATCHED, DISPATCHED]

    # When, with the budget full, "a" sends a backlog of three and then "b" sends three
    tenant_of = {task.send_with_options(tenant="a").message_id: "a" for _ in range(3)}
    tenant_of |= {task.send_with_options(tenant="b").message_id: "b" for _ in range(3)}
    assert set(_states(list(tenant_of))) == {PENDING}

    # And the backlog is admitted two at a time as workers start what was dispatched
    rounds: list[Counter[str]] = []
    dispatched = fast
    while len(rounds) < 3:
        _start(app, dispatched)
        assert app.dispatcher.admit(queue) == 2
        dispatched = [job_id for job_id in tenant_of if fairlane.jobs.get(job_id).state == DISPATCHED]
        rounds.append(Counter(tenant_of[job_id] for job_id in dispatched))

    # Then "b" is not behind "a"'s fast-path jobs: each round admits one job of each tenant
    assert rounds == [Counter(a=1, b=1)] * 3


def test_budget_follows_the_threads_of_live_workers(app: App, queue: str, worker: Any) -> None:
    # Given no dispatch_budget setting and no worker consuming the queue
    @fairlane.actor(queue_name=queue)
    def task() -> None:
        pass

    assert app.settings.dispatch_budget is None
    assert app.dispatcher.budget(queue) == DEFAULT_BUDGET

    # When a worker with 3 threads runs (its heartbeat names the queue)
    with worker(threads=3):
        # Then the queue's budget becomes BUDGET_PER_THREAD slots per thread
        eventually(
            lambda: app.dispatcher.budget(queue) == BUDGET_PER_THREAD * 3,
            message=f"budget of {BUDGET_PER_THREAD * 3}",
        )

    # And once it stopped (its heartbeat row is gone), the budget is the default again
    eventually(lambda: app.dispatcher.budget(queue) == DEFAULT_BUDGET, message="default budget")


@contextlib.contextmanager
def _another_worker_on(app: App, queue: str, threads: int) -> Iterator[None]:
    """Another process's worker consuming ``queue`` with ``threads`` threads (its heartbeat row),
    with an actor declared on the queue here."""

    @fairlane.actor(queue_name=queue)
    def task() -> None:
        pass

    other = WorkerBeat(
        worker_id=f"other-host:{threads}",
        hostname="other-host",
        pid=threads,
        queues=[queue],
        processed=0,
        in_progress=0,
        threads=threads,
    )
    app.dispatcher.workers.beat(other)
    try:
        yield
    finally:
        app.dispatcher.workers.remove(other.worker_id)


def test_a_worker_sharing_a_queue_refills_after_half_of_its_own_share_of_the_budget(
    app: App, queue: str, worker: Any, monkeypatch: Any
) -> None:
    # Given a worker here with 3 threads and another process's worker with 5, both on the queue
    with _another_worker_on(app, queue, threads=5), worker(threads=3):
        # Then the queue's budget counts all 8 threads, and this process's share is its 3
        eventually(lambda: app.dispatcher.budget(queue) == BUDGET_PER_THREAD * 8, message="budget of 32")
        assert app.dispatcher.local_share(queue) == BUDGET_PER_THREAD * 3
        requested: list[list[str]] = []
        monkeypatch.setattr(app.dispatcher, "request", lambda queues: requested.append(list(queues)))

        # When this process's starts free 5 slots, it waits (the other worker frees its own)
        app.dispatcher.slots_freed({queue: 5})
        assert requested == []
        # And at 6, half of its share, it asks for a round (not at 16, half of the whole budget)
        app.dispatcher.slots_freed({queue: 1})
        assert requested == [[queue]]


def test_with_a_fixed_dispatch_budget_a_worker_sharing_the_queue_still_counts_its_own_share(
    make_app: Callable[..., App], queue: str
) -> None:
    # Given dispatch_budget=40, a worker here with 2 threads and another process's with 6
    app = make_app(dispatch_budget=40)
    with _another_worker_on(app, queue, threads=6), running_worker(app, 2, shutdown_timeout=10):
        # Then the budget is the setting's, and this process's share is a quarter of it
        assert app.dispatcher.budget(queue) == 40
        eventually(lambda: app.dispatcher.local_share(queue) == 10, message="a share of 10")


@contextlib.contextmanager
def _turn_held(app: App, queue: str) -> Iterator[Callable[[], None]]:
    """Another process's round of ``queue`` under way: its turn (row lock) held until released."""
    with app.engine.connect() as other:
        transaction = other.begin()
        other.execute(sa.text("SELECT name FROM fairlane_queues WHERE name = :q FOR UPDATE"), {"q": queue})
        yield transaction.commit
        if transaction.is_active:
            transaction.commit()


def _two_pending_with_room(make_app: Any, queue: str) -> tuple[App, list[str]]:
    """An app whose ``queue`` (budget 2) has two backlog jobs and two free slots, and those jobs."""
    app = make_app(dispatch_budget=2)

    @fairlane.actor(queue_name=queue)
    def task() -> None:
        pass

    ids = [task.send().message_id for _ in range(4)]
    assert _states(ids) == [DISPATCHED, DISPATCHED, PENDING, PENDING]
    _start(app, ids[:2])
    return app, ids[2:]


@pytest.mark.parametrize("ledger_url", ["postgresql"], indirect=True)
def test_a_round_waits_for_another_rounds_turn_and_then_fills_the_room_left(
    make_app: Any, queue: str
) -> None:
    # Given two backlog jobs with room for them, while another round holds the queue's turn
    app, pending = _two_pending_with_room(make_app, queue)
    with _turn_held(app, queue) as release:
        # When a round is asked for, willing to wait up to 30 s for the turn, and the other round ends
        timer = threading.Timer(0.2, release)
        timer.start()
        admitted = app.dispatcher.admit(queue, turn_timeout=30)
        timer.join()

    # Then it waited for the turn and admitted both (it did not give up on the busy turn)
    assert admitted == 2
    assert _states(pending) == [DISPATCHED, DISPATCHED]


@pytest.mark.parametrize("ledger_url", ["postgresql"], indirect=True)
def test_a_round_that_does_not_get_the_turn_in_time_gives_up_and_admits_nothing(
    make_app: Any, queue: str
) -> None:
    # Given two backlog jobs with room for them, while another round holds the queue's turn
    app, pending = _two_pending_with_room(make_app, queue)
    with _turn_held(app, queue):
        # When a round waits at most 0.1 s for the turn
        admitted = app.dispatcher.admit(queue, turn_timeout=0.1)
        # Then it gave up (None: try again later) and dispatched nothing
        assert admitted is None
        assert _states(pending) == [PENDING, PENDING]
    # And once the turn is free, a round admits them
    assert app.dispatcher.admit(queue, turn_timeout=0.1) == 2
    assert _states(pending) == [DISPATCHED, DISPATCHED]
