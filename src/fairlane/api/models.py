"""The API's request and response bodies. Request bodies refuse unknown fields; strings,
lists and numbers are bounded, so the OpenAPI document states every limit."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from fairlane.ledger.api_keys import ApiKey
from fairlane.ledger.jobs import Job, JobSnapshot
from fairlane.ledger.lane_stats import LaneStats
from fairlane.ledger.tenants import TenantStats
from fairlane.validation import MAX_IDEMPOTENCY_KEY_LENGTH, MAX_TENANT_LENGTH

#: Most jobs in one batch submission.
MAX_BATCH = 1000
#: Most positional or keyword arguments of one job (their encoded size is bounded by send()).
MAX_ARGUMENTS = 1000
#: Longest delay of a submitted job: one year, in milliseconds.
MAX_DELAY_MS = 365 * 86_400_000

#: Identifiers and names: no control characters (PostgreSQL's text refuses NUL; nobody means them).
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"

State = Literal["pending", "dispatched", "running", "retrying", "succeeded", "dead", "cancelled"]
ActorName = Annotated[str, Field(min_length=1, max_length=255, pattern=NO_CONTROL)]
QueueName = Annotated[str, Field(min_length=1, max_length=255, pattern=NO_CONTROL)]
Priority = Annotated[str, Field(min_length=1, max_length=32, pattern=NO_CONTROL)]
TenantId = Annotated[str, Field(min_length=1, max_length=MAX_TENANT_LENGTH, pattern=NO_CONTROL)]
Arguments = Annotated[list[JsonValue], Field(max_length=MAX_ARGUMENTS)]
KeywordArguments = Annotated[dict[str, JsonValue], Field(max_length=MAX_ARGUMENTS)]
Cost = Annotated[float, Field(gt=0, le=1_000_000)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSubmission(_Request):
    """A job to run: the actor, its arguments and how to schedule it (the tenant is the key's)."""

    actor: ActorName
    args: Arguments = []
    kwargs: KeywordArguments = {}
    priority: Priority | None = None
    idempotency_key: (
        Annotated[str, Field(min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LENGTH, pattern=NO_CONTROL)] | None
    ) = None
    delay_ms: Annotated[int, Field(ge=0, le=MAX_DELAY_MS)] | None = None
    cost: Cost = 1


class BatchItem(_Request):
    """One job of a batch (no idempotency key or delay: submit those one by one)."""

    actor: ActorName
    args: Arguments = []
    kwargs: KeywordArguments = {}
    priority: Priority | None = None
    cost: Cost = 1


class BatchSubmission(_Request):
    """Up to 1,000 jobs, accepted all together or not at all."""

    jobs: Annotated[list[BatchItem], Field(min_length=1, max_length=MAX_BATCH)]


class BatchAccepted(BaseModel):
    """The ids of a batch's jobs, in the order submitted."""

    ids: list[str]


class JobErrorView(BaseModel):
    """What went wrong in a job's last failed attempt."""

    type: str
    message: str
    traceback: str | None


class JobView(BaseModel):
    """A job: state, attempts, progress (with whatever detail the job reports), error, timestamps."""

    id: str
    actor: str
    queue: str
    tenant: str
    priority: str
    state: State
    attempts: int
    progress: dict[str, JsonValue] | None
    error: JobErrorView | None
    idempotency_key: str | None
    cancel_requested: bool
    has_result: bool
    enqueued_at: datetime
    next_run_at: datetime
    dispatched_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobView:
        """The view of a ledger job."""
        error = job.error
        return cls(
            id=job.id,
            actor=job.actor,
            queue=job.queue,
            tenant=job.tenant,
            priority=job.priority,
            state=job.state,  # type: ignore[arg-type]
            attempts=job.attempts,
            progress=job.progress,
            error=None if error is None else JobErrorView(**vars(error)),
            idempotency_key=job.idempotency_key,
            cancel_requested=job.cancel_requested,
            has_result=job.state == "succeeded",
            enqueued_at=job.enqueued_at,
            next_run_at=job.next_run_at,
            dispatched_at=job.dispatched_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobPage(BaseModel):
    """One page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next (None: last page)."""

    jobs: list[JobView]
    next_cursor: str | None


class JobEvent(BaseModel):
    """The data of a job's Server-Sent Event: its live state after a change."""

    id: str
    state: State
    attempts: int
    progress: dict[str, JsonValue] | None
    cancel_requested: bool
    updated_at: datetime

    @classmethod
    def of(cls, snapshot: JobSnapshot) -> JobEvent:
        """The event data of a ledger snapshot."""
        return cls(
            id=snapshot.id,
            state=snapshot.state,  # type: ignore[arg-type]
            attempts=snapshot.attempts,
            progress=snapshot.progress,
            cancel_requested=snapshot.cancel_requested,
            updated_at=snapshot.updated_at,
        )


class DeadLetterView(JobView):
    """A dead job with the Dramatiq message it was sent as (arguments and options)."""

    message: JsonValue


class RawDeadLetterView(BaseModel):
    """A message in a dead-letter queue with no ledger row (e.g. undecodable), and why it is there."""

    queue: str
    reason: str
    dead_at: datetime | None
    body_preview: str


class DeadLetterFilter(_Request):
    """Which dead jobs to re-drive: at least one filter must be given."""

    actor: ActorName | None = None
    queue: QueueName | None = None
    tenant: TenantId | None = None
    older_than_seconds: Annotated[float, Field(gt=0, le=10 * 365 * 86_400)] | None = None


class PurgeFilter(_Request):
    """Which dead jobs to delete: those dead for longer than ``older_than_seconds``, narrowed by the rest."""

    older_than_seconds: Annotated[float, Field(ge=0, le=10 * 365 * 86_400)]
    actor: ActorName | None = None
    queue: QueueName | None = None
    tenant: TenantId | None = None


class Count(BaseModel):
    """How many jobs an operation affected."""

    count: int


class TenantView(BaseModel):
    """A tenant's load and settings (waits: jobs finished in the last 5 minutes, in ms)."""

    tenant: str
    backlog: int
    running: int
    weight: float
    cap: int | None
    wait_p50_ms: float | None
    wait_p99_ms: float | None

    @classmethod
    def of(cls, stats: TenantStats) -> TenantView:
        """The view of a tenant's stats."""
        return cls(**vars(stats))


class TenantUpdate(_Request):
    """New settings of a tenant: ``weight`` (fair share) and/or ``cap`` (null: the queue default)."""

    weight: Annotated[float, Field(gt=0, le=10_000)] | None = None
    cap: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class LaneView(BaseModel):
    """One lane of one queue: jobs waiting and in flight, finishes per minute (last 5 minutes)."""

    queue: str
    lane: str
    pending: int
    retrying: int
    dispatched: int
    running: int
    succeeded_per_minute: float
    dead_per_minute: float
    cancelled_per_minute: float

    @classmethod
    def of(cls, stats: LaneStats) -> LaneView:
        """The view of a lane's stats."""
        return cls(**vars(stats))


class KeyCreation(_Request):
    """A new API key: its tenant, whether it is an admin key, and a name to recognise it by."""

    tenant: TenantId
    admin: bool = False
    name: Annotated[str, Field(max_length=255, pattern=NO_CONTROL)] = ""


class KeyView(BaseModel):
    """An API key's record (never the key)."""

    id: str
    prefix: str
    tenant: str
    admin: bool
    name: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyView:
        """The view of a key record."""
        return cls(prefix=key.prefix, **vars(key))


class CreatedKey(KeyView):
    """A key just created, with the key itself: it is shown this once and never stored."""

    key: str


class Health(BaseModel):
    """``ok``, or why not."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = {}
