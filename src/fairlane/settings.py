"""fairlane's configuration, read once from ``FAIRLANE_*`` environment variables.

This is the only module that reads the environment. Everything else receives a
:class:`Settings` instance (usually through :func:`fairlane.app.get_app`).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from fairlane.fairlane_error import FairlaneError

ENV_PREFIX = "FAIRLANE_"
_DEFAULT_LANE_SHARES = {"high": 0.10, "normal": 0.10, "low": 0.05}


class SettingsError(FairlaneError, ValueError):
    """Raised when a ``FAIRLANE_*`` variable holds an invalid value."""


class RateLimit(BaseModel):
    """A shared budget for an external API, e.g. 450 requests and 450,000 tokens per minute."""

    model_config = {"extra": "forbid", "frozen": True}

    requests_per_minute: float = Field(gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)


class CronSchedule(BaseModel):
    """A periodic job declared in settings (``FAIRLANE_CRON``, a JSON list of these)."""

    model_config = {"extra": "forbid", "frozen": True}

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    cron: str = Field(min_length=9, max_length=100)
    actor: str = Field(min_length=1, max_length=255)
    args: tuple[object, ...] = ()
    kwargs: dict[str, object] = {}
    tenant: str | None = None
    priority: str | None = None


class Settings(BaseSettings):
    """Every knob fairlane has. Each field is set by ``FAIRLANE_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    """RabbitMQ URL (``amqp://`` or ``amqps://``)."""
    database_url: str = "sqlite:///./.fairlane/fairlane.db"
    """Ledger URL: ``sqlite:///path`` (embedded default) or ``postgresql://…``."""
    auto_migrate: bool = True
    """Migrate the ledger schema on first use. ``false`` where ``fairlane migrate`` does it (the
    Helm chart's hook Job): a process then refuses to start on an outdated schema."""
    queue_type: Literal["classic", "quorum"] = "classic"
    """RabbitMQ queue type for lane queues."""
    max_priority: int | None = Field(default=None, ge=1, le=255)
    """Dramatiq's ``max_priority``: lane queues (and ``Q``, ``Q.DQ``, as a plain Dramatiq broker
    with the same value declares them) take ``x-max-priority``, so messages sent with
    Dramatiq's ``broker_priority`` option run highest first among the jobs dispatched to a
    lane. Classic queues only."""

    lanes: Annotated[tuple[str, ...], NoDecode] = ("urgent", "high", "normal", "low")
    """Priority lanes, highest first. One RabbitMQ queue per lane per actor queue."""
    default_lane: str = "normal"
    default_tenant: str = "default"

    dispatch_budget: int | None = Field(default=None, ge=1, le=10_000)
    """How many jobs of one queue may sit published-but-not-started in RabbitMQ. Unset: twice
    the worker threads consuming the queue, from the live workers' heartbeats."""
    prefetch_per_thread: int = Field(default=2, ge=1, le=4)
    """Unacked messages per worker thread and lane queue: 2 (Dramatiq's default) keeps a ready job
    beside each running one; 1 suits long jobs, which then never wait behind another in a busy
    worker while an idle one could run them."""
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
    consumer_timeout: int = Field(default=1_800_000, ge=1)
    """RabbitMQ's ``consumer_timeout`` in milliseconds (its default, 30 minutes; set this to the
    broker's value). RabbitMQ closes the channel of a consumer that holds a message longer, and
    the job is delivered again while it still runs. A message is held from its delivery, and
    may wait behind up to ``prefetch_per_thread - 1`` jobs before it runs, so a time limit (this
    default, an actor's or a message's) above ``consumer_timeout / prefetch_per_thread`` is
    refused. RabbitMQ before 3.11.15 (3.10 is supported) has no per-queue ``x-consumer-timeout``;
    and changing an existing lane queue's arguments would fail (406 PRECONDITION_FAILED), so for
    longer jobs raise the broker's own ``consumer_timeout`` and this setting together."""

    max_payload_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    """Largest encoded message (arguments and options) accepted at send time."""
    result_inline_bytes: int = Field(default=64 * 1024, ge=0, le=16 * 1024 * 1024)
    """Results up to this size are stored in the ledger row; larger ones go to ``results_dir``."""
    result_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    """Largest result accepted at all; a larger one fails the job."""
    results_dir: Path = Path("./.fairlane/results")

    dead_letter_ttl_days: int = Field(default=7, ge=1, le=3650)
    """How long RabbitMQ keeps a dead letter (``x-message-ttl`` of the dead-letter queue ``Q.XQ``).

    7 days is plain Dramatiq's ``dead_message_ttl``, so both declare ``Q.XQ`` alike on a shared
    vhost; the ledger keeps dead jobs (and their messages) for ``retention_dead_days``."""

    # -- fairness -------------------------------------------------------------------------------------
    fairness: bool = True
    """Weighted fair (stride) order, caps and lane shares. Off: first-come order within a lane."""
    tenant_cap: int | None = Field(default=None, ge=1)
    """Default cap on one tenant's dispatched + running jobs per queue (None: no cap)."""
    queue_tenant_caps: dict[str, int] = {}
    """Per-queue default tenant caps, e.g. ``{"exports": 4}`` (a tenant's own cap wins)."""
    lane_min_shares: dict[str, float] | None = None
    """Share of admissions each lane is guaranteed while it has backlog, so no lane starves
    (default: high 10%, normal 10%, low 5% of the lanes that exist; urgent needs none)."""
    rate_limits: dict[str, RateLimit] = {}
    """Shared rate limits by key (JSON in ``FAIRLANE_RATE_LIMITS``), e.g.
    ``{"openai": {"requests_per_minute": 450, "tokens_per_minute": 450000}}``."""

    # -- outbound requests ----------------------------------------------------------------------------
    webhook_allowed_networks: Annotated[tuple[str, ...], NoDecode] = ()
    """Networks (CIDRs, comma-separated) the built-in ``webhook`` job may call although they are
    not public, e.g. ``10.20.0.0/16``. By default it refuses loopback, private, link-local
    (cloud metadata), shared, multicast and reserved addresses."""

    # -- AMQP ingress (``fairlane ingress``) --------------------------------------------------------------
    ingress_tenants: dict[str, str] = {}
    """Which tenant each RabbitMQ user publishes for on the ingress (JSON), e.g.
    ``{"svc-billing": "billing"}``. A message's ``user_id`` property (which RabbitMQ checks equals
    the publishing connection's user) picks the tenant; a message from a user not listed here
    is refused."""
    ingress_max_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024)
    """Largest ingress message body accepted; a larger one is dead-lettered unread."""

    # -- scheduler, health and metrics ----------------------------------------------------------------
    retention_succeeded_days: float = Field(default=30, gt=0)
    retention_dead_days: float = Field(default=90, gt=0)
    retention_cancelled_days: float = Field(default=7, gt=0)
    cleanup_batch_size: int = Field(default=500, ge=1, le=10_000)
    cleanup_interval: float = Field(default=300, gt=0)
    """Seconds between retention runs of the scheduler."""
    reaper_interval: float = Field(default=15, gt=0)
    heartbeat_interval: float = Field(default=5, gt=0)
    """Seconds between a worker's heartbeats in the ledger."""
    heartbeat_timeout: float = Field(default=60, gt=0)
    """A running job whose worker's heartbeat is older than this goes back to pending."""
    dispatch_timeout: float = Field(default=300, gt=0)
    """A dispatched job no worker started within this many seconds is published again."""
    gauges_interval: float = Field(default=15, gt=0)
    """Seconds between the scheduler leader's exports of ledger and RabbitMQ gauges."""
    cron: tuple[CronSchedule, ...] = ()
    """Cron schedules declared in settings (JSON list); ``@fairlane.cron`` declares them in code."""
    leader_lock_path: Path | None = None
    """File lock for scheduler leadership on SQLite (default: beside the database file)."""
    metrics_port: int = Field(default=9191, ge=0, le=65535)
    health_port: int = Field(default=9192, ge=0, le=65535)
    metrics_dir: Path = Path("./.fairlane/metrics")
    """prometheus-client multiprocess directory of a worker pod, wiped when the pod starts."""
    heartbeat_log_interval: float = Field(default=30, gt=0)

    # -- HTTP API (``fairlane api``) ------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    """Address ``fairlane api`` listens on (``0.0.0.0`` in a container)."""
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_workers: int = Field(default=1, ge=1, le=64)
    """uvicorn worker processes of ``fairlane api``; each has its own rate limiter and event poller."""
    api_modules: Annotated[tuple[str, ...], NoDecode] = ()
    """Modules (comma-separated) the API imports to declare actors, as a worker does; actors no
    module declares are validated against the catalog the workers publish."""
    api_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    """Largest request body the API reads (a batch of 1,000 jobs included); larger: 413."""
    api_rate_limit: float = Field(default=50, gt=0, le=100_000)
    """Requests per second one API key may make to one API process (a token bucket)."""
    api_rate_burst: int = Field(default=100, ge=1, le=1_000_000)
    """Requests one API key may make at once before ``api_rate_limit`` applies."""
    api_tenant_max_backlog: int = Field(default=100_000, ge=1)
    """Most jobs one tenant may have waiting (pending or retrying) before submissions get 429."""
    api_events_interval: float = Field(default=0.5, gt=0, le=60)
    """Seconds between the ledger reads of an API process's one Server-Sent Events poller."""

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

    @field_validator("lanes", "webhook_allowed_networks", "api_modules", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a network such as 10.0.0.0/8 or fd00::/8") from None
        return value

    @model_validator(mode="after")
    def _check_lanes(self) -> Settings:
        if not self.lanes or len(set(self.lanes)) != len(self.lanes):
            raise ValueError("lanes: must be a non-empty list of distinct names")
        if self.default_lane not in self.lanes:
            raise ValueError(f"default_lane: {self.default_lane!r} is not one of lanes {list(self.lanes)}")
        if self.max_priority is not None and self.queue_type == "quorum":
            raise ValueError(
                "max_priority: RabbitMQ priority queues are classic queues; unset it or use classic"
            )
        if self.time_limit > self.longest_time_limit:
            raise ValueError(time_limit_problem(self.time_limit, self))
        if self.min_backoff > self.max_backoff:
            raise ValueError("min_backoff: must not exceed max_backoff")
        unknown = set(self.lane_min_shares or {}) - set(self.lanes)
        if unknown:
            raise ValueError(f"lane_min_shares: unknown lanes {sorted(unknown)}")
        shares = self.min_shares.values()
        if any(not 0 <= share <= 1 for share in shares) or sum(shares) > 1:
            raise ValueError("lane_min_shares: each share must be in [0, 1] and together at most 1")
        if any(cap < 1 for cap in self.queue_tenant_caps.values()):
            raise ValueError("queue_tenant_caps: caps must be at least 1")
        return self

    @property
    def longest_time_limit(self) -> int:
        """The longest time limit (ms) a job may have: RabbitMQ's consumer timeout must not end
        while its message waits behind others or runs (see ``consumer_timeout``)."""
        return self.consumer_timeout // self.prefetch_per_thread

    @property
    def min_shares(self) -> dict[str, float]:
        """The guaranteed share of every lane (0 for lanes given none)."""
        if self.lane_min_shares is not None:
            return {lane: self.lane_min_shares.get(lane, 0.0) for lane in self.lanes}
        return {lane: _DEFAULT_LANE_SHARES.get(lane, 0.0) for lane in self.lanes}

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


def time_limit_problem(time_limit: object, settings: Settings) -> str | None:
    """Why a job may not have ``time_limit`` (milliseconds) under ``settings``, or None if it may."""
    if isinstance(time_limit, bool) or not isinstance(time_limit, int | float) or time_limit < 1:
        return f"time_limit must be a positive number of milliseconds, not {time_limit!r}"
    if time_limit <= settings.longest_time_limit:
        return None
    return (
        f"time_limit {time_limit} ms exceeds {settings.longest_time_limit} ms, the longest a job may run "
        f"before RabbitMQ's consumer timeout (FAIRLANE_CONSUMER_TIMEOUT={settings.consumer_timeout} ms / "
        f"FAIRLANE_PREFETCH_PER_THREAD={settings.prefetch_per_thread}) redelivers it while it still runs: "
        "lower the time limit, or raise RabbitMQ's consumer_timeout and FAIRLANE_CONSUMER_TIMEOUT together "
        "(FAIRLANE_PREFETCH_PER_THREAD=1 suits long jobs)"
    )


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
