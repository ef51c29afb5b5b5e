"""Cron schedules: declared in code with ``@fairlane.cron`` or in settings, fired by the leader.

::

    @fairlane.cron("*/5 * * * *", tenant="acme")          # every 5 minutes, UTC
    @fairlane.actor(queue_name="reports")
    def refresh_dashboards() -> None: ...

Expressions are standard five-field crontab (``minute hour day month weekday``; weekday 0
or 7 is Sunday, names like ``mon-fri`` work too) or six fields with seconds first
(``second minute hour day month weekday``). They are evaluated in UTC with APScheduler's
``CronTrigger``.

Each fire is enqueued through admission with ``idempotency_key =
"cron:<schedule name>:<fire time, ISO 8601 UTC>"`` (per tenant), so a fire is enqueued
once however many schedulers try: two leaders during a failover, or a restarted one.

Misfire policy (coalesce, with a grace time): the leader checks every schedule once a
second. When a check finds fire times that passed since the previous check, it enqueues
only the latest of them, and only if it is at most ``misfire_grace_time`` seconds old
(default 300). A scheduler that becomes leader (after a restart or a failover) looks back
``misfire_grace_time``, so the slot that fell during a short outage still fires once (if the
old leader enqueued it already, the idempotency key makes this a no-op); slots missed for
longer are skipped and logged, never replayed in a burst.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from apscheduler.triggers.cron import CronTrigger

from fairlane.errors import InvalidJob
from fairlane.settings import CronSchedule
from fairlane.validation import check_tenant

logger = logging.getLogger("fairlane.scheduler")

#: Seconds a missed fire may be late and still be enqueued (see the misfire policy).
DEFAULT_MISFIRE_GRACE_TIME = 300.0
_SKIPPED_COUNT_LIMIT = 10_000
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NUMERIC_WEEKDAYS = re.compile(r"^(\*|\d+)(?:-(\d+))?(?:/(\d+))?$")

A = TypeVar("A")


@dataclasses.dataclass(frozen=True)
class Cron:
    """A periodic job: which actor, with what arguments, for whom, when."""

    name: str
    expression: str
    actor: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tenant: str | None = None
    priority: str | None = None
    misfire_grace_time: float = DEFAULT_MISFIRE_GRACE_TIME

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"cron schedule name {self.name!r}: use 1-100 of A-Z a-z 0-9 _ . : -")
        if self.tenant is not None:
            check_tenant(self.tenant)
        if self.misfire_grace_time <= 0:
            raise ValueError(f"cron schedule {self.name!r}: misfire_grace_time must be positive")
        parse_cron(self.expression)

    def idempotency_key(self, fire_time: datetime) -> str:
        """The key that makes the fire at ``fire_time`` enqueue once."""
        return f"cron:{self.name}:{fire_time.astimezone(UTC).isoformat()}"

    @classmethod
    def from_settings(cls, schedule: CronSchedule) -> Cron:
        """A schedule declared in ``FAIRLANE_CRON``."""
        return cls(
            name=schedule.name,
            expression=schedule.cron,
            actor=schedule.actor,
            args=tuple(schedule.args),
            kwargs=dict(schedule.kwargs),
            tenant=schedule.tenant,
            priority=schedule.priority,
        )


def _weekday_field(field: str) -> str:
    """Translate crontab weekday numbers (0 or 7 = Sunday) to names APScheduler 3 reads right.

    APScheduler 3 numbers weekdays from Monday = 0; crontab from Sunday = 0.
    """
    parts = []
    for part in field.split(","):
        match = _NUMERIC_WEEKDAYS.match(part)
        if match is None or part == "*":
            parts.append(part)
            continue
        start, end, step = match.groups()
        low = 0 if start == "*" else int(start)
        high = 6 if start == "*" else int(end) if end is not None else low
        if step is not None and end is None and start != "*":
            high = 7  # "1/2" means from 1 to the end, every 2
        if not (0 <= low <= 7 and 0 <= high <= 7 and low <= high):
            raise ValueError(f"bad weekday {part!r} (0-7, 0 and 7 are Sunday)")
        days = range(low, high + 1, int(step) if step else 1)
        parts.extend(dict.fromkeys(_WEEKDAYS[day % 7] for day in days))
    return ",".join(dict.fromkeys(parts))


def parse_cron(expression: str) -> CronTrigger:
    """An APScheduler trigger, in UTC, for a 5-field (or 6-field, seconds first) cron expression."""
    fields = expression.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ValueError(
            f"cron expression {expression!r}: expected 5 fields (minute hour day month weekday) "
            "or 6 (second minute hour day month weekday)"
        )
    second, minute, hour, day, month, weekday = fields
    try:
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_weekday_field(weekday),
            timezone=UTC,
        )
    except ValueError as error:
        raise ValueError(f"cron expression {expression!r}: {error}") from None


def fire_times(
    trigger: CronTrigger, after: datetime, until: datetime, limit: int | None = None
) -> list[datetime]:
    """Fire times of ``trigger`` in ``(after, until]``, oldest first (at most ``limit``)."""
    found: list[datetime] = []
    moment = trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
    while moment is not None and moment <= until and (limit is None or len(found) < limit):
        found.append(moment)
        moment = trigger.get_next_fire_time(None, moment + timedelta(microseconds=1))
    return found


_declared: dict[str, Cron] = {}


def cron(
    expression: str,
    *,
    name: str | None = None,
    tenant: str | None = None,
    priority: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    misfire_grace_time: float = DEFAULT_MISFIRE_GRACE_TIME,
) -> Callable[[A], A]:
    """Run the decorated actor on a cron schedule (put it on top of ``@fairlane.actor``).

    Parameters:
      expression: ``"*/5 * * * *"`` (5 fields) or ``"*/10 * * * * *"`` (6, seconds first), UTC.
      name: the schedule's name (default: the actor's name); part of each fire's idempotency key.
      tenant, priority: send options of each fire (default tenant and lane when None).
      args, kwargs: the actor's arguments for each fire (JSON).
      misfire_grace_time: seconds a missed fire may be late and still run (see the misfire policy).

    The leader of ``fairlane scheduler MODULE…`` fires the schedules of the modules it imports.
    """

    def decorator(actor: A) -> A:
        actor_name = getattr(actor, "actor_name", None)
        if not isinstance(actor_name, str):
            raise TypeError("@fairlane.cron goes on top of @fairlane.actor (or a Dramatiq actor)")
        schedule = Cron(
            name=name or actor_name,
            expression=expression,
            actor=actor_name,
            args=tuple(args),
            kwargs=dict(kwargs or {}),
            tenant=tenant,
            priority=priority,
            misfire_grace_time=misfire_grace_time,
        )
        existing = _declared.get(schedule.name)
        if existing is not None and existing != schedule:
            raise ValueError(f"cron schedule {schedule.name!r} is declared twice: give each a distinct name=")
        _declared[schedule.name] = schedule
        return actor

    return decorator


def declared_schedules() -> list[Cron]:
    """Schedules declared with ``@fairlane.cron`` in the modules imported so far."""
    return list(_declared.values())


def all_schedules(settings_schedules: Iterable[CronSchedule]) -> list[Cron]:
    """Schedules declared in code and in settings; a name used twice is an error."""
    schedules = {schedule.name: schedule for schedule in declared_schedules()}
    for item in settings_schedules:
        if item.name in schedules:
            raise ValueError(f"cron schedule {item.name!r} is declared both in code and in FAIRLANE_CRON")
        schedules[item.name] = Cron.from_settings(item)
    return sorted(schedules.values(), key=lambda schedule: schedule.name)


@dataclasses.dataclass(frozen=True)
class CronFire:
    """One fire the runner enqueued (or found already enqueued)."""

    schedule: str
    fire_time: datetime
    created: bool
    missed: int  # earlier fire times coalesced into this one


class CronRunner:
    """Decides which fires are due, by the misfire policy, and hands them to ``enqueue``.

    ``enqueue(schedule, fire_time)`` returns True if it created the job, False if the
    idempotency key found it already enqueued. The runner keeps, per schedule, the time up
    to which it has checked; a new runner (a new leader) starts ``misfire_grace_time`` back.
    """

    def __init__(self, schedules: Sequence[Cron], enqueue: Callable[[Cron, datetime], bool]) -> None:
        self.schedules = list(schedules)
        self._enqueue = enqueue
        self._triggers = {schedule.name: parse_cron(schedule.expression) for schedule in self.schedules}
        self._checked_until: dict[str, datetime] = {}

    def tick(self, now: datetime) -> list[CronFire]:
        """Enqueue what is due at ``now``; returns the fires handled."""
        fired: list[CronFire] = []
        errors: list[str] = []
        for schedule in self.schedules:
            grace = timedelta(seconds=schedule.misfire_grace_time)
            checked = self._checked_until.get(schedule.name, now - grace)
            horizon = max(checked, now - grace)
            due = fire_times(self._triggers[schedule.name], horizon, now)
            trigger = self._triggers[schedule.name]
            skipped = (
                len(fire_times(trigger, checked, horizon, limit=_SKIPPED_COUNT_LIMIT))
                if checked < horizon
                else 0
            )
            if skipped:
                logger.warning(
                    "event=cron_fires_skipped schedule=%s count=%d%s reason='older than misfire_grace_time=%gs'",  # noqa: E501
                    schedule.name,
                    skipped,
                    "+" if skipped == _SKIPPED_COUNT_LIMIT else "",
                    schedule.misfire_grace_time,
                )
            if not due:
                self._checked_until[schedule.name] = now
                continue
            fire_time = due[-1]
            try:
                created = self._enqueue(schedule, fire_time)
            except InvalidJob as error:
                # Refused for good (bad arguments, tenant or priority): trying again won't help.
                logger.error(
                    "event=cron_fire_refused schedule=%s fire_time=%s error=%r",
                    schedule.name,
                    fire_time.isoformat(),
                    str(error),
                )
                self._checked_until[schedule.name] = now
                errors.append(f"{schedule.name}: refused")
                continue
            except Exception as error:
                # Not marked checked: the next tick tries this fire again (within its grace).
                logger.exception("event=cron_fire_failed schedule=%s fire_time=%s", schedule.name, fire_time)
                errors.append(f"{schedule.name}: {type(error).__name__}")
                continue
            self._checked_until[schedule.name] = now
            fired.append(CronFire(schedule.name, fire_time, created, len(due) - 1))
            logger.info(
                "event=cron_fired schedule=%s fire_time=%s created=%s coalesced=%d",
                schedule.name,
                fire_time.isoformat(),
                str(created).lower(),
                len(due) - 1,
            )
        if errors:
            raise RuntimeError("cron fires failed: " + "; ".join(errors))
        return fired


__all__ = [
    "DEFAULT_MISFIRE_GRACE_TIME",
    "Cron",
    "CronFire",
    "CronRunner",
    "all_schedules",
    "cron",
    "declared_schedules",
    "fire_times",
    "parse_cron",
]
