"""Settings: defaults, environment parsing, and errors that name the variable."""

from __future__ import annotations

import pytest

from fairlane.settings import SettingsError, load_settings


def test_defaults_are_the_embedded_ledger_and_local_rabbitmq(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no FAIRLANE_ variables
    for name in ("FAIRLANE_BROKER_URL", "FAIRLANE_DATABASE_URL", "FAIRLANE_LANES"):
        monkeypatch.delenv(name, raising=False)

    # When settings load, then they point at local defaults
    settings = load_settings()
    assert settings.broker_url == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert settings.is_sqlite and settings.database_url.startswith("sqlite:///./.fairlane/")
    assert settings.lanes == ("urgent", "high", "normal", "low")


def test_environment_overrides_and_postgres_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given PostgreSQL and a budget in the environment
    monkeypatch.setenv("FAIRLANE_DATABASE_URL", "postgresql://app@db:5432/jobs")
    monkeypatch.setenv("FAIRLANE_DISPATCH_BUDGET", "32")
    monkeypatch.setenv("FAIRLANE_LANES", "urgent, normal")

    # When settings load, then psycopg 3 is the driver and the values apply
    settings = load_settings()
    assert settings.sqlalchemy_url == "postgresql+psycopg://app@db:5432/jobs"
    assert settings.dispatch_budget == 32
    assert settings.lanes == ("urgent", "normal")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FAIRLANE_DISPATCH_BUDGET", "0"),
        ("FAIRLANE_DISPATCH_BUDGET", "many"),
        ("FAIRLANE_BROKER_URL", "redis://localhost"),
        ("FAIRLANE_DATABASE_URL", "mysql://db"),
        ("FAIRLANE_QUEUE_TYPE", "stream"),
        ("FAIRLANE_DEFAULT_LANE", "whenever"),
        ("FAIRLANE_MAX_RETRIES", "-1"),
        ("FAIRLANE_LANES", "a,a"),
    ],
)
def test_invalid_setting_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    # Given one invalid variable
    monkeypatch.setenv(name, value)

    # When settings load, then the error names it
    with pytest.raises(
        SettingsError, match=name if name != "FAIRLANE_DEFAULT_LANE" else "DEFAULT_LANE|LANES"
    ):
        load_settings()
