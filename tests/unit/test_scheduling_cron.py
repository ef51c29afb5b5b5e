"""Cron schedules: parsing, the misfire policy, once per slot across restarts, the decorator.

The runner is driven by an explicit clock (``tick(now)``), so slots, restarts and outages
are exact and the tests take no wall time. The enqueue function here plays the ledger:
a set of idempotency keys, as ``broker.enqueue`` dedupes a tenant's keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

import fairlane
from fairlane.errors import InvalidJob
from fairlane.scheduling import cron as cron_module
from fairlane.scheduling.cron import Cron, CronRunner, all_schedules, fire_times, parse_cron
from fairlane.settings import CronSchedule

T0 = datetime(2026, 11, 2, 12, 0, 0, tzinfo=UTC)  # a Monday


class FakeLedger:
    """Idempotent enqueue by key, as the ledger does it; remembers every attempt."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.attempts = 0

    def enqueue(self, schedule: Cron, fire_time: datetime) -> bool:
        self.attempts += 1
        key = schedule.idempotency_key(fire_time)
        if key in self.keys:
            return False
        self.keys.append(key)
        return True


@pytest.fixture(autouse=True)
def _no_declared_schedules() -> Iterator[None]:
    saved = dict(cron_module._declared)
    cron_module._declared.clear()
    yield
    cron_module._declared.clear()
    cron_module._declared.update(saved)


def _at(**delta: float) -> datetime:
    return T0 + timedelta(**delta)


def test_five_field_expression_fires_on_its_minutes_in_utc() -> None:
    # Given "every 5 minutes"
    trigger = parse_cron("*/5 * * * *")

    # When its fire times in a quarter hour are listed
    times = fire_times(trigger, _at(seconds=-1), _at(minutes=15))

    # Then they are :00, :05, :10 and :15, at second 0, in UTC
    assert times == [_at(minutes=minute) for minute in (0, 5, 10, 15)]
    assert all(moment.tzinfo is not None and moment.utcoffset() == timedelta(0) for moment in times)


def test_six_field_expression_has_seconds_first() -> None:
    # Given "every 10 seconds"
    trigger = parse_cron("*/10 * * * * *")

    # Then it fires at :00, :10, :20 within the first 25 seconds
    assert fire_times(trigger, _at(seconds=-1), _at(seconds=25)) == [_at(seconds=s) for s in (0, 10, 20)]


@pytest.mark.parametrize(
    ("weekday", "expected"),
    [
        ("0", {"Sun"}),
        ("7", {"Sun"}),
        ("1-5", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("mon-fri", {"Mon", "Tue", "Wed", "Thu", "Fri"}),
        ("*/2", {"Sun", "Tue", "Thu", "Sat"}),
        ("5-7", {"Fri", "Sat", "Sun"}),
        ("0,6", {"Sat", "Sun"}),
    ],
)
def test_weekday_numbers_follow_crontab_where_sunday_is_0(weekday: str, expected: set[str]) -> None:
    # Given a daily-at-noon schedule restricted to some weekdays, in crontab numbering
    trigger = parse_cron(f"0 12 * * {weekday}")

    # When the fire times of two weeks are listed
    times = fire_times(trigger, T0 - timedelta(days=1), T0 + timedelta(days=13))

    # Then they fall on exactly those days (APScheduler 3 alone would shift numbers by one)
    assert {moment.strftime("%a") for moment in times} == expected


@pytest.mark.parametrize("expression", ["* * * *", "61 * * * *", "* * * * 8", "a b c d e", "1 2 3 4 5 6 7"])
def test_bad_expressions_are_refused_with_the_expression_in_the_message(expression: str) -> None:
    # When a bad expression is parsed, Then a ValueError names it
    with pytest.raises(ValueError, match=r"cron expression|weekday"):
        parse_cron(expression)


def test_each_slot_is_enqueued_once_while_ticking_every_second() -> None:
    # Given a 5-minute schedule, and a runner ticking once a second for 11 minutes
    ledger = FakeLedger()
    schedule = Cron("report", "*/5 * * * *", "make_report")
    runner = CronRunner([schedule], ledger.enqueue)

    # When it ticks (starting half a second after 12:00)
    for second in range(0, 11 * 60):
        runner.tick(_at(seconds=second + 0.5))

    # Then 12:00, 12:05 and 12:10 were each enqueued exactly once
    assert ledger.keys == [
        "cron:report:2026-11-02T12:00:00+00:00",
        "cron:report:2026-11-02T12:05:00+00:00",
        "cron:report:2026-11-02T12:10:00+00:00",
    ]
    assert ledger.attempts == 3


def test_a_restart_and_a_second_scheduler_enqueue_each_slot_once() -> None:
    # Given a per-minute schedule fired by one runner (the first leader)
    ledger = FakeLedger()
    schedule = Cron("sync", "* * * * *", "sync")
    first = CronRunner([schedule], ledger.enqueue)
    first.tick(_at(seconds=0.2))
    first.tick(_at(seconds=30))

    # When it restarts (a new runner, no memory) within the same minute, and again later,
    # while a second scheduler (another runner) ticks too, as in a failover overlap
    restarted = CronRunner([schedule], ledger.enqueue)
    other = CronRunner([schedule], ledger.enqueue)
    restarted.tick(_at(seconds=40))
    other.tick(_at(seconds=41))
    restarted.tick(_at(minutes=1, seconds=0.3))
    other.tick(_at(minutes=1, seconds=0.4))
    CronRunner([schedule], ledger.enqueue).tick(_at(minutes=1, seconds=50))

    # Then 12:00 and 12:01 were enqueued once each (the repeats hit the idempotency key)
    assert ledger.keys == ["cron:sync:2026-11-02T12:00:00+00:00", "cron:sync:2026-11-02T12:01:00+00:00"]
    assert ledger.attempts > 2


def test_a_slot_missed_during_a_short_outage_fires_late_once() -> None:
    # Given a per-minute schedule whose leader ran until 12:00:30 and then died
    ledger = FakeLedger()
    schedule = Cron("sync", "* * * * *", "sync", misfire_grace_time=300)
    CronRunner([schedule], ledger.enqueue).tick(_at(seconds=30))

    # When a new leader starts at 12:01:20 (the 12:01 slot fell during the outage)
    CronRunner([schedule], ledger.enqueue).tick(_at(minutes=1, seconds=20))

    # Then the 12:01 slot is enqueued once, 20 s late
    assert ledger.keys[-1] == "cron:sync:2026-11-02T12:01:00+00:00"
    assert len(ledger.keys) == 2


def test_missed_slots_are_coalesced_into_the_latest_within_the_grace_time() -> None:
    # Given a per-minute schedule with a 5-minute grace time, last checked at 12:00:30
    ledger = FakeLedger()
    schedule = Cron("sync", "* * * * *", "sync", misfire_grace_time=300)
    runner = CronRunner([schedule], ledger.enqueue)
    runner.tick(_at(seconds=30))

    # When the next check happens only at 12:03:10 (slots 12:01, 12:02, 12:03 passed)
    fired = runner.tick(_at(minutes=3, seconds=10))

    # Then only 12:03 is enqueued, reporting two coalesced slots
    assert [fire.fire_time for fire in fired] == [_at(minutes=3)]
    assert fired[0].missed == 2
    assert ledger.keys[-1].endswith("12:03:00+00:00") and len(ledger.keys) == 2


def test_slots_older_than_the_grace_time_are_skipped() -> None:
    # Given a daily 03:00 schedule with a 5-minute grace time
    ledger = FakeLedger()
    schedule = Cron("nightly", "0 3 * * *", "nightly", misfire_grace_time=300)

    # When a scheduler starts at 03:06 (6 minutes after the slot) and at 03:04 the next day
    CronRunner([schedule], ledger.enqueue).tick(T0.replace(hour=3, minute=6))
    CronRunner([schedule], ledger.enqueue).tick(T0.replace(hour=3, minute=4) + timedelta(days=1))

    # Then the first slot was skipped (too late) and the second fired, 4 minutes late
    assert ledger.keys == ["cron:nightly:2026-11-03T03:00:00+00:00"]


def test_a_failed_fire_is_tried_again_on_the_next_tick() -> None:
    # Given an enqueue that fails once (RabbitMQ or the ledger briefly down)
    ledger = FakeLedger()
    failures = [ConnectionError("down")]

    def flaky(schedule: Cron, fire_time: datetime) -> bool:
        if failures:
            raise failures.pop()
        return ledger.enqueue(schedule, fire_time)

    runner = CronRunner([Cron("sync", "*/5 * * * *", "sync", misfire_grace_time=60)], flaky)
    runner.tick(_at(seconds=-1))

    # When the 12:00 slot's first attempt fails
    with pytest.raises(RuntimeError, match="sync"):
        runner.tick(_at(seconds=0.5))

    # Then the next tick enqueues it
    runner.tick(_at(seconds=1.5))
    assert ledger.keys == ["cron:sync:2026-11-02T12:00:00+00:00"]


def test_a_refused_fire_is_not_retried_every_second() -> None:
    # Given an enqueue that refuses the job (bad arguments for the actor)
    calls: list[datetime] = []

    def refuse(schedule: Cron, fire_time: datetime) -> bool:
        calls.append(fire_time)
        raise InvalidJob("arguments do not fit")

    runner = CronRunner([Cron("bad", "*/5 * * * *", "bad", misfire_grace_time=60)], refuse)
    runner.tick(_at(seconds=-1))

    # When ticks follow the refused 12:00 fire
    with pytest.raises(RuntimeError):
        runner.tick(_at(seconds=0.5))
    runner.tick(_at(seconds=1.5))
    runner.tick(_at(seconds=2.5))

    # Then it was tried once
    assert calls == [_at()]


def test_decorator_declares_a_schedule_on_an_actor_and_returns_it() -> None:
    # Given an actor-like object (what @fairlane.actor returns carries actor_name)
    actor = SimpleNamespace(actor_name="refresh_dashboards")

    # When @fairlane.cron decorates it, twice with distinct names
    decorated = fairlane.cron("*/5 * * * *", tenant="acme")(actor)
    fairlane.cron("0 3 * * *", name="nightly_refresh", priority="low", args=(1,))(actor)

    # Then the actor is unchanged and both schedules are declared
    assert decorated is actor
    schedules = {schedule.name: schedule for schedule in all_schedules([])}
    assert schedules["refresh_dashboards"].tenant == "acme"
    assert schedules["refresh_dashboards"].expression == "*/5 * * * *"
    assert (schedules["nightly_refresh"].priority, schedules["nightly_refresh"].args) == ("low", (1,))


def test_decorator_refuses_a_plain_function_a_duplicate_name_and_a_bad_tenant() -> None:
    # Given a declared schedule
    fairlane.cron("* * * * *")(SimpleNamespace(actor_name="a"))

    # Then a second schedule with its name, a non-actor and a bad tenant are refused
    with pytest.raises(ValueError, match="declared twice"):
        fairlane.cron("*/2 * * * *")(SimpleNamespace(actor_name="a"))
    with pytest.raises(TypeError, match=r"on top of @fairlane\.actor"):
        fairlane.cron("* * * * *")(lambda: None)
    with pytest.raises(InvalidJob):
        fairlane.cron("* * * * *", tenant="bad tenant!")(SimpleNamespace(actor_name="b"))


def test_settings_schedules_join_code_schedules_and_names_must_differ() -> None:
    # Given one schedule in code and one in settings
    fairlane.cron("* * * * *")(SimpleNamespace(actor_name="in_code"))
    from_settings = CronSchedule(name="from_settings", cron="0 * * * *", actor="ingest", tenant="t1")

    # Then both are scheduled, and reusing a name is refused
    assert [schedule.name for schedule in all_schedules([from_settings])] == ["from_settings", "in_code"]
    with pytest.raises(ValueError, match="both in code and in FAIRLANE_CRON"):
        all_schedules([CronSchedule(name="in_code", cron="0 * * * *", actor="x")])
