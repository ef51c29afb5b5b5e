"""Stride admission on the embedded ledger: fair order across tenants, lanes first, budget bound."""

from __future__ import annotations

import tempfile
import uuid
from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fairlane.ledger.admission import Admission, NewJob
from fairlane.ledger.database import create_ledger_engine, migrate, utcnow
from fairlane.settings import Settings

LANE_RANK = {"urgent": 0, "high": 1, "normal": 2, "low": 3}


def _admission(directory: Path) -> Admission:
    config = Settings(database_url=f"sqlite:///{directory / 'ledger.db'}")
    engine = create_ledger_engine(config)
    migrate(engine, config)
    return Admission(engine)


def _accept(admission: Admission, tenant: str, lane: str = "normal", queue: str = "q") -> str:
    job_id = str(uuid.uuid4())
    admission.accept(
        NewJob(
            job_id,
            "a",
            queue,
            tenant,
            lane,
            LANE_RANK[lane],
            1.0,
            f'{{"tenant": "{tenant}"}}',
            None,
            utcnow(),
        )
    )
    return job_id


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=60))
def test_equal_tenants_are_admitted_round_robin(sends: list[str]) -> None:
    # Given jobs from several tenants accepted in any interleaving
    with tempfile.TemporaryDirectory() as directory:
        admission = _admission(Path(directory))
        tenant_of = {_accept(admission, tenant): tenant for tenant in sends}

        # When the whole backlog is admitted
        order = [tenant_of[job.id] for job in admission.admit("q", budget=1000)]

    # Then every prefix is fair: tenants that still have jobs differ by at most one admitted job
    totals = Counter(sends)
    seen: Counter[str] = Counter()
    for tenant in order:
        seen[tenant] += 1
        backlogged = [t for t in totals if seen[t] < totals[t]]
        counts = [seen[t] for t in backlogged]
        assert not counts or max(counts) - min(counts) <= 1
    assert Counter(order) == totals


def test_flood_does_not_delay_a_late_light_tenant(tmp_path: Path) -> None:
    # Given a tenant with 500 jobs, 10 of which are already admitted and run
    admission = _admission(tmp_path)
    for _ in range(500):
        _accept(admission, "noisy")
    admission.admit("q", budget=10)

    # When a light tenant sends 3 jobs later, and 10 more slots free up
    light = {_accept(admission, "light") for _ in range(3)}
    with admission.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE fairlane_queues SET in_flight = 0")
    admitted = [job.id for job in admission.admit("q", budget=10)]

    # Then the light tenant's jobs are among the very next ones admitted
    assert light <= set(admitted[:6])


def test_higher_lanes_first_and_budget_is_respected(tmp_path: Path) -> None:
    # Given normal, low and urgent jobs
    admission = _admission(tmp_path)
    low = _accept(admission, "t", "low")
    normal = [_accept(admission, "t", "normal") for _ in range(3)]
    urgent = _accept(admission, "t", "urgent")

    # When two slots are free, then urgent goes first and only two are admitted
    first = admission.admit("q", budget=2)
    assert [job.id for job in first] == [urgent, normal[0]]
    assert admission.admit("q", budget=2) == []

    # And low comes after normal once the budget frees
    with admission.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE fairlane_queues SET in_flight = 0")
    assert [job.id for job in admission.admit("q", budget=10)] == [*normal[1:], low]


def test_idempotency_key_returns_the_first_job(tmp_path: Path) -> None:
    # Given a job accepted with a key
    admission = _admission(tmp_path)
    first = NewJob("id-1", "a", "q", "store-1", "normal", 2, 1.0, "{}", "k", utcnow())
    assert admission.accept(first) == ("id-1", True)

    # When another job with the same tenant and key arrives, then it maps to the first
    again = NewJob("id-2", "a", "q", "store-1", "normal", 2, 1.0, "{}", "k", utcnow())
    assert admission.accept(again) == ("id-1", False)
    other_tenant = NewJob("id-3", "a", "q", "store-2", "normal", 2, 1.0, "{}", "k", utcnow())
    assert admission.accept(other_tenant) == ("id-3", True)
