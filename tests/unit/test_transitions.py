"""The transitions table: every named transition follows an allowed edge, every allowed edge is
used, and every single-row statement moves a row exactly when its state is one of the
transition's sources (run against a row in every state, on the embedded SQLite ledger)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fairlane.ledger import transitions
from fairlane.ledger.database import create_ledger_engine, migrate, utcnow
from fairlane.ledger.schema import (
    CANCELLED,
    DEAD,
    FINAL_STATES,
    PENDING,
    RETRYING,
    RUNNING,
    STATES,
    SUCCEEDED,
    jobs,
)
from fairlane.ledger.transitions import ALLOWED, FINISH_ONE, FINISHES, TRANSITIONS, Transition
from fairlane.settings import Settings

#: Every ``from -> to`` edge the table allows.
EDGES = {(source, target) for source, targets in ALLOWED.items() for target in targets}

#: Each single-row statement that changes a job's state, with the transition it is built from.
SINGLE_ROW: dict[str, tuple[sa.Update, Transition]] = {
    "START_ONE": (transitions.START_ONE, transitions.START),
    "RESTART_ONE": (transitions.RESTART_ONE, transitions.RESTART),
    "SUCCEED_ONE": (transitions.SUCCEED_ONE, transitions.SUCCEED),
    "RETRY_ONE": (transitions.RETRY_ONE, transitions.RETRY),
    "FAIL_ONE": (transitions.FAIL_ONE, transitions.FAIL),
    "KILL_ONE": (transitions.KILL_ONE, transitions.KILL),
    "INTERRUPT_ONE": (transitions.INTERRUPT_ONE, transitions.INTERRUPT),
    "DEFER_ONE": (transitions.DEFER_ONE, transitions.DEFER),
    "CANCEL_ONE": (transitions.CANCEL_ONE, transitions.CANCEL),
}
#: Single-row statements that are not transitions: they never change ``state``.
NOT_TRANSITIONS = {"REQUEST_CANCEL_ONE", "PROGRESS_ONE"}


# -- the table ---------------------------------------------------------------------------------------


def test_table_covers_every_state_and_only_known_states() -> None:
    # Given the table of allowed transitions
    # Then it has a row for every state, and names no state that doesn't exist
    assert set(ALLOWED) == set(STATES)
    assert {target for targets in ALLOWED.values() for target in targets} <= set(STATES)


def test_succeeded_and_cancelled_are_final_and_dead_only_goes_back_to_pending() -> None:
    # Given the final states
    # Then succeeded and cancelled jobs never change again; a dead job can only be re-driven
    assert {SUCCEEDED, DEAD, CANCELLED} == FINAL_STATES
    assert ALLOWED[SUCCEEDED] == frozenset()
    assert ALLOWED[CANCELLED] == frozenset()
    assert ALLOWED[DEAD] == frozenset({PENDING})


def test_every_transition_follows_allowed_edges() -> None:
    # Given every named transition
    for name, transition in TRANSITIONS.items():
        # Then it is filed under its own name and has at least one source
        assert transition.name == name
        assert transition.sources, name
        # And each of its source -> target edges is in the table
        illegal = [(s, transition.target) for s in transition.sources if (s, transition.target) not in EDGES]
        assert illegal == [], f"{name} moves along edges ALLOWED lacks: {illegal}"


def test_every_allowed_edge_is_used_by_some_transition() -> None:
    # Given the edges the named transitions use
    used = {(source, t.target) for t in TRANSITIONS.values() for source in t.sources}

    # Then they are exactly the table's edges: no allowed edge is unreachable (no exceptions)
    assert sorted(EDGES - used) == []
    assert sorted(used - EDGES) == []


def test_finishes_are_the_running_job_endings() -> None:
    # Given the finishes a worker's ledger writer flushes
    # Then each leaves ``running`` only, for its own target, with its single-row statement
    assert set(FINISHES) == {SUCCEEDED, RETRYING, DEAD, CANCELLED}
    for target, transition in FINISHES.items():
        assert (transition.target, transition.sources) == (target, (RUNNING,))
    assert set(FINISH_ONE) == set(FINISHES)
    statement_of = {statement: t for statement, t in SINGLE_ROW.values()}
    assert {target: statement_of[statement] for target, statement in FINISH_ONE.items()} == FINISHES


def test_every_single_row_statement_is_checked_here() -> None:
    # Given the prebuilt single-row statements of the transitions module
    defined = {
        name
        for name, value in vars(transitions).items()
        if name.endswith("_ONE") and isinstance(value, sa.Update)
    }

    # Then each is either a transition this file runs in every state, or declared as no transition
    assert defined == set(SINGLE_ROW) | NOT_TRANSITIONS


# -- each statement against a row in every state ------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    """One migrated SQLite ledger for the module (each case uses a row of its own)."""
    directory: Path = tmp_path_factory.mktemp("transitions")
    config = Settings(database_url=f"sqlite:///{directory / 'ledger.db'}")
    built = create_ledger_engine(config)
    migrate(built, config)
    yield built
    built.dispose()


def _insert_job(engine: sa.Engine, state: str) -> str:
    job_id = str(uuid.uuid4())
    then = utcnow() - timedelta(minutes=5)
    with engine.begin() as connection:
        connection.execute(
            jobs.insert().values(
                id=job_id,
                actor="task",
                queue="q",
                tenant="t",
                lane="normal",
                lane_rank=2,
                state=state,
                stride_pass=0.0,
                attempts=1,
                message="{}",
                worker_id="old-worker",
                enqueued_at=then,
                next_run_at=then,
                updated_at=then,
            )
        )
    return job_id


def _row(engine: sa.Engine, job_id: str) -> dict[str, Any]:
    with engine.connect() as connection:
        return dict(connection.execute(sa.select(jobs).where(jobs.c.id == job_id)).one()._mapping)


def _parameters(job_id: str) -> dict[str, Any]:
    """Every parameter any of the statements takes (each ignores those it doesn't)."""
    return {
        "p_id": job_id,
        "p_worker": "new-worker",
        "p_result": {"ok": True},
        "p_result_path": None,
        "p_run_at": utcnow() + timedelta(seconds=30),
        "p_delay": 30.0,
        "p_error_type": "ValueError",
        "p_error_message": "boom",
        "p_error_traceback": "Traceback …",
        "p_message": None,
    }


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("name", sorted(SINGLE_ROW))
def test_single_row_statement_moves_a_row_only_from_its_sources(
    engine: sa.Engine, name: str, state: str
) -> None:
    statement, transition = SINGLE_ROW[name]
    # Given a job row in ``state``
    job_id = _insert_job(engine, state)
    before = _row(engine, job_id)

    # When the statement runs against it
    with engine.begin() as connection:
        result = connection.execute(statement, _parameters(job_id))
        changed = len(result.all()) if result.returns_rows else result.rowcount
    after = _row(engine, job_id)

    if state in transition.sources:
        # Then, from one of the transition's sources, the row moves to its target along an allowed edge
        assert changed == 1
        assert after["state"] == transition.target
        assert (state, after["state"]) in EDGES
        assert after["updated_at"] != before["updated_at"]
    else:
        # Then, from any other state, nothing about the row changes
        assert changed == 0
        assert after == before


@pytest.mark.parametrize("name", ["START_ONE", "RESTART_ONE"])
def test_starts_count_the_attempt_and_record_the_worker(engine: sa.Engine, name: str) -> None:
    statement, _transition = SINGLE_ROW[name]
    # Given a dispatched job that has used one attempt
    job_id = _insert_job(engine, "dispatched")

    # When it is started
    with engine.begin() as connection:
        returned = connection.execute(statement, _parameters(job_id)).one()

    # Then its attempt is counted once, returned, and the new worker recorded
    after = _row(engine, job_id)
    assert (after["state"], after["attempts"], after["worker_id"]) == (RUNNING, 2, "new-worker")
    assert returned.attempts == 2
