"""Admission on the embedded ledger: stride order, weights, caps, lane shares, budget bound."""

from __future__ import annotations

import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from fairlane.ledger.admission import Accepted, Admission, NewJob
from fairlane.ledger.database import create_ledger_engine, migrate
from fairlane.ledger.ratelimits import RateLimits
from fairlane.ledger.schema import jobs, tenants
from fairlane.settings import Settings

LANE_RANK = {"urgent": 0, "high": 1, "normal": 2, "low": 3}


def _admission(directory: Path, **overrides: Any) -> Admission:
    config = Settings(database_url=f"sqlite:///{directory / 'ledger.db'}", **overrides)
    engine = create_ledger_engine(config)
    migrate(engine, config)
    return Admission(engine, config, RateLimits(engine, config.rate_limits))


@pytest.fixture
def admission(tmp_path: Path) -> Iterator[Admission]:
    built = _admission(tmp_path)
    yield built
    built.engine.dispose()


def _accept(admission: Admission, tenant: str, lane: str = "normal", cost: float = 1.0) -> str:
    job_id = str(uuid.uuid4())
    message = f'{{"tenant": "{tenant}"}}'
    admission.accept(NewJob(job_id, "a", "q", tenant, lane, LANE_RANK[lane], cost, message, None))
    return job_id


def _free_budget(admission: Admission) -> None:
    """Workers started every dispatched job: the budget is free again (they are still running)."""
    with admission.engine.begin() as connection:
        connection.execute(jobs.update().where(jobs.c.state == "dispatched").values(state="running"))


def _finish(admission: Admission, job_ids: list[str]) -> None:
    with admission.engine.begin() as connection:
        connection.execute(jobs.update().where(jobs.c.id.in_(job_ids)).values(state="succeeded"))


def _set_tenant(admission: Admission, tenant: str, weight: float = 1.0, cap: int | None = None) -> None:
    with admission.engine.begin() as connection:
        connection.execute(tenants.insert().values(tenant=tenant, weight=weight, max_running=cap))
    admission.forget_tenant_cache()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=60))
def test_equal_tenants_are_admitted_round_robin(sends: list[str]) -> None:
    # Given jobs from several tenants accepted in any interleaving
    with tempfile.TemporaryDirectory() as directory:
        admission = _admission(Path(directory))
        tenant_of = {_accept(admission, tenant): tenant for tenant in sends}

        # When the whole backlog is admitted
        order = [tenant_of[job.id] for job in admission.admit("q", budget=1000).jobs]
        admission.engine.dispose()

    # Then every prefix is fair: tenants that still have jobs differ by at most one admitted job
    totals = Counter(sends)
    seen: Counter[str] = Counter()
    for tenant in order:
        seen[tenant] += 1
        counts = [seen[t] for t in totals if seen[t] < totals[t]]
        assert not counts or max(counts) - min(counts) <= 1
    assert Counter(order) == totals


@settings(max_examples=15, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=8), min_size=2, max_size=4),
    slots=st.integers(min_value=20, max_value=120),
)
def test_backlogged_tenants_get_shares_proportional_to_weight(weights: list[int], slots: int) -> None:
    # Given backlogged tenants with integer weights
    with tempfile.TemporaryDirectory() as directory:
        admission = _admission(Path(directory))
        names = [f"t{index}" for index in range(len(weights))]
        for name, weight in zip(names, weights, strict=True):
            _set_tenant(admission, name, weight=weight)
        tenant_of = {}
        for name in names:
            for _ in range(slots):
                tenant_of[_accept(admission, name)] = name

        # When `slots` jobs are admitted
        admitted = Counter(tenant_of[job.id] for job in admission.admit("q", budget=slots).jobs)
        admission.engine.dispose()

    # Then each tenant's count is its weighted share, within one job per tenant of rounding
    total = sum(weights)
    for name, weight in zip(names, weights, strict=True):
        assert abs(admitted[name] - slots * weight / total) <= len(weights)


def test_cost_makes_heavy_jobs_count_more(admission: Admission) -> None:
    # Given tenant "heavy" sending cost-4 jobs and tenant "light" cost-1 jobs
    tenant_of = {_accept(admission, "heavy", cost=4): "heavy" for _ in range(20)}
    tenant_of.update({_accept(admission, "light"): "light" for _ in range(40)})

    # When 25 are admitted, then light gets about 4 jobs per heavy job
    admitted = Counter(tenant_of[job.id] for job in admission.admit("q", budget=25).jobs)
    assert admitted["light"] == 20 and admitted["heavy"] == 5


def test_flood_does_not_delay_a_late_light_tenant(admission: Admission) -> None:
    # Given a tenant with 500 jobs, 10 of which were admitted
    for _ in range(500):
        _accept(admission, "noisy")
    admission.admit("q", budget=10)

    # When a light tenant sends 3 jobs later, and 10 more slots free up
    light = {_accept(admission, "light") for _ in range(3)}
    _free_budget(admission)
    admitted = [job.id for job in admission.admit("q", budget=10).jobs]

    # Then the light tenant's jobs are among the very next ones admitted
    assert light <= set(admitted[:6])


def test_higher_lanes_first_and_budget_is_respected(admission: Admission) -> None:
    # Given normal, low and urgent jobs
    low = _accept(admission, "t", "low")
    normal = [_accept(admission, "t", "normal") for _ in range(3)]
    urgent = _accept(admission, "t", "urgent")

    # When two slots are free, then urgent goes first and only two are admitted
    first = admission.admit("q", budget=2).jobs
    assert [job.id for job in first] == [urgent, normal[0]]
    assert admission.admit("q", budget=2).jobs == []

    # And low comes after normal once the budget frees
    _free_budget(admission)
    assert [job.id for job in admission.admit("q", budget=10).jobs] == [*normal[1:], low]


def test_every_backlogged_lane_gets_its_minimum_share(tmp_path: Path) -> None:
    # Given every lane flooded, with shares high 10%, normal 10%, low 5%
    admission = _admission(tmp_path)
    lane_of = {}
    for lane in LANE_RANK:
        for _ in range(400):
            lane_of[_accept(admission, "t", lane)] = lane

    # When 400 slots are admitted one round of 10 at a time
    admitted: Counter[str] = Counter()
    for _ in range(40):
        round_ = admission.admit("q", budget=10).jobs
        admitted.update(lane_of[job.id] for job in round_)
        _finish(admission, [job.id for job in round_])

    # Then no lane starves: each gets its share (less at most the slot it takes to earn one credit)
    assert admitted["high"] >= 40 - 2 and admitted["normal"] >= 40 - 2 and admitted["low"] >= 20 - 2
    assert admitted["urgent"] >= 400 - 40 - 40 - 20 - 3
    assert sum(admitted.values()) == 400


def test_urgent_still_overtakes_when_lower_lanes_are_owed(tmp_path: Path) -> None:
    # Given low owed its share after a long normal flood
    admission = _admission(tmp_path)
    for _ in range(100):
        _accept(admission, "t", "normal")
        _accept(admission, "t", "low")
    for _ in range(5):
        _finish(admission, [job.id for job in admission.admit("q", budget=10).jobs])

    # When an urgent job arrives, then it is in the next admission
    urgent = _accept(admission, "t", "urgent")
    _free_budget(admission)
    assert urgent in [job.id for job in admission.admit("q", budget=2).jobs]


def test_tenant_cap_is_never_exceeded_and_frees_slots_for_others(tmp_path: Path) -> None:
    # Given tenant "big" capped at 3 running jobs, with a large backlog, and "small" with a few
    admission = _admission(tmp_path)
    _set_tenant(admission, "big", cap=3)
    tenant_of = {_accept(admission, "big"): "big" for _ in range(50)}
    tenant_of.update({_accept(admission, "small"): "small" for _ in range(5)})

    # When the budget has room for 10
    round_ = admission.admit("q", budget=10)
    admitted = Counter(tenant_of[job.id] for job in round_.jobs)

    # Then "big" gets only its cap, "small" gets the rest, and the held-back jobs are counted
    assert admitted == Counter({"big": 3, "small": 5})
    assert round_.deferred["concurrency"] >= 1

    # And "big" gets more only once its jobs finish
    _free_budget(admission)
    assert admission.admit("q", budget=10).jobs == []
    _finish(admission, [job.id for job in round_.jobs if tenant_of[job.id] == "big"])
    assert len(admission.admit("q", budget=10).jobs) == 3


def test_queue_default_cap_from_settings(tmp_path: Path) -> None:
    # Given every tenant of queue "q" capped at 2 by settings
    admission = _admission(tmp_path, queue_tenant_caps={"q": 2})
    for _ in range(10):
        _accept(admission, "a")

    # When admission has room for 10, then only 2 go
    assert len(admission.admit("q", budget=10).jobs) == 2


def test_fairness_off_is_first_come_first_served(tmp_path: Path) -> None:
    # Given fairness disabled and a flood sent before a light tenant's job
    admission = _admission(tmp_path, fairness=False)
    flood = [_accept(admission, "noisy") for _ in range(20)]
    light = _accept(admission, "light")

    # When admitted, then the light job waits behind the whole flood
    assert [job.id for job in admission.admit("q", budget=100).jobs] == [*flood, light]


def test_idempotency_key_returns_the_first_job(admission: Admission) -> None:
    # Given a job accepted with a key
    first = NewJob("id-1", "a", "q", "store-1", "normal", 2, 1.0, "{}", "k")
    assert admission.accept(first) == Accepted("id-1", created=True, dispatched=False)

    # When another job with the same tenant and key arrives, then it maps to the first
    again = NewJob("id-2", "a", "q", "store-1", "normal", 2, 1.0, "{}", "k")
    assert admission.accept(again) == Accepted("id-1", created=False, dispatched=False)
    other_tenant = NewJob("id-3", "a", "q", "store-2", "normal", 2, 1.0, "{}", "k")
    assert admission.accept(other_tenant) == Accepted("id-3", created=True, dispatched=False)


def test_accept_many_keeps_fair_order_across_batches(admission: Admission) -> None:
    # Given a flood accepted in one batch, then a light tenant's job
    batch = [NewJob(str(uuid.uuid4()), "a", "q", "noisy", "normal", 2, 1.0, "{}", None) for _ in range(50)]
    admission.accept_many(batch)
    light = _accept(admission, "light")

    # When two are admitted, then the light job is one of them
    assert light in [job.id for job in admission.admit("q", budget=2).jobs]
    with admission.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one() == 51
