"""The ledger's clock in SQL, on SQLite and PostgreSQL: the same instants as stored times.

Statements take their times from :func:`fairlane.ledger.clock.ledger_now`; rows written with it
must compare with times bound from Python (tests, the scheduler's cutoffs) as the instants they
are, on SQLite too, where times are stored as text.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from fairlane.ledger.clock import database_now, ledger_epoch, ledger_now
from fairlane.ledger.database import as_utc, create_ledger_engine, utcnow
from fairlane.settings import Settings


@pytest.fixture
def engine(ledger_url: str) -> Iterator[sa.Engine]:
    built = create_ledger_engine(Settings(database_url=ledger_url))
    yield built
    built.dispose()


def test_the_ledger_clock_is_the_hosts_and_moves_by_the_seconds_asked(engine: sa.Engine) -> None:
    # Given this host's clock (the test database runs on this host)
    before = utcnow()

    # When the ledger's time is read, now and shifted, in SQL and in Python
    with engine.connect() as connection:
        now, later, earlier, epoch = connection.execute(
            sa.select(ledger_now(), ledger_now(2.5), ledger_now(sa.literal(-60.0)), ledger_epoch())
        ).one()
        read = database_now(connection)
    after = utcnow()

    # Then each is the instant it says, to the millisecond SQLite keeps
    now, later, earlier = as_utc(now), as_utc(later), as_utc(earlier)
    assert now is not None and later is not None and earlier is not None
    slack = timedelta(milliseconds=2)
    assert before - slack <= now <= after
    assert abs(later - now - timedelta(seconds=2.5)) < slack
    assert abs(now - earlier - timedelta(seconds=60)) < slack
    assert before.timestamp() - 0.002 <= epoch <= after.timestamp() + 0.002
    assert before - slack <= read <= after + slack


def test_times_written_by_the_ledger_clock_compare_with_times_bound_from_python(engine: sa.Engine) -> None:
    # Given a row whose time is written by the ledger's clock
    table = sa.Table("clock_probe", sa.MetaData(), sa.Column("at", sa.DateTime(timezone=True)))
    table.create(engine)
    try:
        with engine.begin() as connection:
            connection.execute(table.insert().values(at=ledger_now()))
            written = as_utc(connection.execute(sa.select(table.c.at)).scalar_one())
        assert written is not None

        # When it is compared, in SQL, with times a microsecond either side of it bound from Python
        def count(condition: sa.ColumnElement[bool]) -> int:
            with engine.connect() as connection:
                return int(connection.execute(sa.select(sa.func.count()).where(condition)).scalar_one())

        tick = timedelta(microseconds=1)

        # Then the comparisons hold as for the instants themselves
        assert count(table.c.at < written + tick) == 1
        assert count(table.c.at > written - tick) == 1
        assert count(table.c.at > written + tick) == 0
        assert count(table.c.at <= ledger_now()) == 1
        assert count(table.c.at > ledger_now(-60)) == 1
    finally:
        table.drop(engine)
