"""Long jobs: a time limit RabbitMQ's consumer timeout would cut short is refused up front.

The app here says RabbitMQ's consumer timeout is 60 s with 2 messages prefetched per thread,
so the longest time limit a job may have is 30 s.
"""

from __future__ import annotations

from collections.abc import Callable

import dramatiq
import pytest
from dramatiq.errors import ActorNotFound

import fairlane
from fairlane.app import App


@pytest.fixture
def app(make_app: Callable[..., App]) -> App:
    return make_app(consumer_timeout=60_000, prefetch_per_thread=2, time_limit=20_000)


def test_an_actor_whose_time_limit_outlasts_the_consumer_timeout_is_refused(app: App, queue: str) -> None:
    # Given RabbitMQ's consumer timeout of 60 s, and 2 prefetched messages per thread
    # When an actor is declared with a 45 s time limit
    with pytest.raises(fairlane.InvalidActor, match="FAIRLANE_CONSUMER_TIMEOUT=60000") as raised:

        @fairlane.actor(queue_name=queue, time_limit=45_000)
        def transcode(video_id: int) -> None:
            pass

    # Then the error names the actor, its limit and the longest allowed, and it is not declared
    assert "actor transcode: time_limit 45000 ms exceeds 30000 ms" in str(raised.value)
    with pytest.raises(ActorNotFound):
        app.broker.get_actor("transcode")


def test_a_plain_dramatiq_actor_is_checked_too(app: App, queue: str) -> None:
    # Given fairlane's broker as Dramatiq's global broker
    # When a plain Dramatiq actor is declared with too long a time limit
    # Then it is refused the same way
    with pytest.raises(fairlane.InvalidActor, match="exceeds 30000 ms"):

        @dramatiq.actor(queue_name=queue, time_limit=31_000)
        def plain_transcode() -> None:
            pass


def test_an_actor_within_the_consumer_timeout_is_declared(app: App, queue: str) -> None:
    # Given the same broker
    # When an actor is declared with a time limit of exactly the longest allowed
    @fairlane.actor(queue_name=queue, time_limit=30_000)
    def thumbnail(video_id: int) -> None:
        pass

    # Then it is declared and its jobs are accepted
    assert app.broker.get_actor("thumbnail") is thumbnail
    assert thumbnail.send(1).message_id


def test_a_send_asking_for_too_long_a_time_limit_is_refused(app: App, queue: str) -> None:
    # Given an actor within the limit
    @fairlane.actor(queue_name=queue, time_limit=10_000)
    def resize(image_id: int) -> None:
        pass

    # When one job asks for a longer time limit than the consumer timeout allows
    with pytest.raises(fairlane.InvalidJob, match="time_limit 120000 ms exceeds 30000 ms"):
        resize.send_with_options(args=(1,), time_limit=120_000)

    # Then nothing was stored
    assert fairlane.jobs.list(queue=queue) == []


def test_settings_whose_default_time_limit_outlasts_the_consumer_timeout_are_refused(
    make_app: Callable[..., App],
) -> None:
    # Given settings whose default time limit (10 min) exceeds a 15 min consumer timeout / 2
    # When an app is built from them
    # Then the settings are refused, naming the fix
    with pytest.raises(ValueError, match="raise RabbitMQ's consumer_timeout and FAIRLANE_CONSUMER_TIMEOUT"):
        make_app(consumer_timeout=900_000, prefetch_per_thread=2, time_limit=600_000)
