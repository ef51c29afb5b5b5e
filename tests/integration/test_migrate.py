"""``fairlane migrate`` and ``FAIRLANE_AUTO_MIGRATE``: one migration per release, no racing pods."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

import fairlane
from fairlane import cli
from fairlane.ledger import database
from fairlane.ledger.database import LedgerOutdated, create_ledger_engine, migrate, schema_revisions
from tests.deployment import private_database


@pytest.fixture
def fresh_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker_url: str) -> str:
    """An empty SQLite ledger, named by the environment as a pod's would be."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("FAIRLANE_DATABASE_URL", url)
    monkeypatch.setenv("FAIRLANE_BROKER_URL", broker_url)
    return url


def _revisions(url: str) -> tuple[str | None, str | None]:
    engine = create_ledger_engine(fairlane.Settings(database_url=url))
    try:
        return schema_revisions(engine)
    finally:
        engine.dispose()


def test_migrate_brings_the_schema_to_the_newest_revision_and_is_repeatable(
    fresh_ledger: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an empty ledger
    assert _revisions(fresh_ledger)[0] is None

    # When `fairlane migrate` runs twice
    first = cli.main(["migrate"])
    first_output = capsys.readouterr().out
    second = cli.main(["migrate"])
    second_output = capsys.readouterr().out

    # Then the schema is at the newest revision, and the second run changed nothing
    current, newest = _revisions(fresh_ledger)
    assert (first, second) == (0, 0)
    assert current == newest
    assert f"empty -> {newest}" in first_output
    assert "already current" in second_output


def test_a_process_that_may_not_migrate_refuses_an_outdated_schema(
    fresh_ledger: str, broker_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a pod's settings with migrations left to the migration job
    settings = fairlane.Settings(database_url=fresh_ledger, broker_url=broker_url, auto_migrate=False)

    # When it starts before the job ran, then it refuses, saying what to run, and migrates nothing
    with pytest.raises(LedgerOutdated, match="run `fairlane migrate`"):
        fairlane.configure(settings)
    assert _revisions(fresh_ledger)[0] is None

    # And once the job ran, it starts
    assert cli.main(["migrate"]) == 0
    app = fairlane.configure(settings)
    try:
        assert app.settings.auto_migrate is False
    finally:
        app.close()


def test_the_jobs_table_is_vacuumed_after_a_fixed_number_of_changes_on_postgresql(
    postgres_server_url: str,
) -> None:
    # Given a PostgreSQL ledger of its own, migrated
    with private_database(postgres_server_url, f"fairlane_migrate_{uuid.uuid4().hex[:8]}") as url:
        settings = fairlane.Settings(database_url=url)
        engine = create_ledger_engine(settings)
        try:
            migrate(engine, settings)

            # Then autovacuum visits fairlane_jobs after 10,000 changes plus 2%, not 20% of the table
            assert _autovacuum_options(engine) == {
                "autovacuum_vacuum_threshold": "10000",
                "autovacuum_vacuum_scale_factor": "0.02",
                "autovacuum_vacuum_insert_threshold": "10000",
                "autovacuum_vacuum_insert_scale_factor": "0.02",
                "autovacuum_analyze_threshold": "10000",
                "autovacuum_analyze_scale_factor": "0.02",
            }

            # And a downgrade gives the table PostgreSQL's defaults back
            _downgrade(engine, "0007")
            assert _autovacuum_options(engine) == {}
        finally:
            engine.dispose()


def _downgrade(engine: sa.Engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(Path(database.__file__).with_name("migrations")))
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
        connection.commit()


def _autovacuum_options(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as connection:
        options = connection.exec_driver_sql(
            "SELECT reloptions FROM pg_class WHERE relname = 'fairlane_jobs'"
        ).scalar_one()
    return dict(option.split("=", 1) for option in options or [])
