"""``fairlane migrate`` and ``FAIRLANE_AUTO_MIGRATE``: one migration per release, no racing pods."""

from __future__ import annotations

from pathlib import Path

import pytest

import fairlane
from fairlane import cli
from fairlane.ledger.database import LedgerOutdated, create_ledger_engine, schema_revisions


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
