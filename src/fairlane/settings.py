"""fairlane's configuration, read once from ``FAIRLANE_*`` environment variables.

This is the only module that reads the environment. Everything else receives a
:class:`Settings` instance (usually through :func:`fairlane.app.get_app`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "FAIRLANE_"


class SettingsError(ValueError):
    """Raised when a ``FAIRLANE_*`` variable holds an invalid value."""


class Settings(BaseSettings):
    """Every knob fairlane has. Each field is set by ``FAIRLANE_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    """RabbitMQ URL (``amqp://`` or ``amqps://``)."""
    database_url: str = "sqlite:///./.fairlane/fairlane.db"
    """Ledger URL: ``sqlite:///path`` (embedded default) or ``postgresql://…``."""
    queue_type: Literal["classic", "quorum"] = "classic"
    """RabbitMQ queue type for lane and dead-letter queues."""

    lanes: Annotated[tuple[str, ...], NoDecode] = ("urgent", "high", "normal", "low")
    """Priority lanes, highest first. One RabbitMQ queue per lane per actor queue."""
    default_lane: str = "normal"
    default_tenant: str = "default"

    dispatch_budget: int = Field(default=16, ge=1, le=10_000)
    """How many jobs of one queue may sit published-but-not-started in RabbitMQ."""
    admission_interval: float = Field(default=0.5, gt=0, le=60)
    """Seconds between a worker's sweeps for jobs that became due (retries, delays)."""
    cancel_poll_interval: float = Field(default=0.5, gt=0, le=60)
    """Seconds between a worker's checks for cancel requests of its running jobs."""

    max_retries: int = Field(default=3, ge=0, le=1000)
    """Retries after the first attempt, unless an actor says otherwise."""
    min_backoff: int = Field(default=1_000, ge=0)
    """Milliseconds before the first retry (doubles each attempt, with jitter)."""
    max_backoff: int = Field(default=3_600_000, ge=0)
    """Upper bound, in milliseconds, of any single retry wait."""
    time_limit: int = Field(default=600_000, ge=1)
    """Default time limit of a job, in milliseconds."""

    max_payload_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    """Largest encoded message (arguments and options) accepted at send time."""
    result_inline_bytes: int = Field(default=64 * 1024, ge=0, le=16 * 1024 * 1024)
    """Results up to this size are stored in the ledger row; larger ones go to ``results_dir``."""
    result_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    """Largest result accepted at all; a larger one fails the job."""
    results_dir: Path = Path("./.fairlane/results")

    dead_letter_ttl_days: int = Field(default=90, ge=1, le=3650)
    """How long RabbitMQ keeps a dead letter (``x-message-ttl`` of the dead-letter queue)."""

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must start with amqp:// or amqps://")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://", "postgres://")):
            raise ValueError("must be sqlite:///PATH or postgresql://…")
        return value

    @field_validator("lanes", mode="before")
    @classmethod
    def _split_lanes(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _check_lanes(self) -> Settings:
        if not self.lanes or len(set(self.lanes)) != len(self.lanes):
            raise ValueError("lanes: must be a non-empty list of distinct names")
        if self.default_lane not in self.lanes:
            raise ValueError(f"default_lane: {self.default_lane!r} is not one of lanes {list(self.lanes)}")
        if self.min_backoff > self.max_backoff:
            raise ValueError("min_backoff: must not exceed max_backoff")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the driver SQLAlchemy should use."""
        for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
            if self.database_url.startswith(prefix):
                return "postgresql+psycopg://" + self.database_url[len(prefix) :]
        return self.database_url

    @property
    def is_sqlite(self) -> bool:
        """True when the ledger is the embedded SQLite database."""
        return self.database_url.startswith("sqlite:")


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (and ``overrides``), naming the bad variable on error."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = []
        for item in error.errors():
            field = str(item["loc"][0]) if item["loc"] else str(item["msg"]).split(":")[0].split()[-1]
            problems.append(f"{ENV_PREFIX}{field.upper()}: {item['msg']}")
        raise SettingsError("invalid fairlane settings: " + "; ".join(problems)) from None
