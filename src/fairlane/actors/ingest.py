"""The built-in ``ingest`` actor: store a batch of JSON records in the ledger.

It owns batch validation, per-record checks and the writes to ``fairlane_ingested_records``.
A bad *batch* (not a list, too many records, a bad ``key_field``) fails the job without
retries. A bad *record* (not an object, missing its key, too large) does not: it is
reported in the result and the rest of the batch is stored.

Rows are keyed by ``(job_id, item_index)`` and inserted with "on conflict do nothing", so a
retry or a redelivery after a crash stores each record once.

    from fairlane.actors.ingest import ingest

    records = [{"sku": "A-1", "qty": 3}]
    ingest.send_with_options(args=(records,), kwargs={"key_field": "sku"}, tenant="store-42")
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

import fairlane
from fairlane.ledger.database import utcnow
from fairlane.ledger.schema import ingested_records

logger = logging.getLogger("fairlane.actors")

#: Most records one ingest job accepts.
MAX_RECORDS = 10_000
#: Largest record, in bytes of compact UTF-8 JSON.
MAX_RECORD_BYTES = 64 * 1024
#: Longest record key (the ``record_key`` column's width) and key field name.
MAX_KEY_LENGTH = 255
#: At most this many per-record errors are kept in the result; ``failed`` counts them all.
MAX_REPORTED_ERRORS = 100
#: Rows written per transaction.
CHUNK_SIZE = 200


class InvalidBatch(ValueError):
    """The batch as a whole is unusable; the job fails without retries."""


@dataclasses.dataclass(frozen=True)
class IngestSummary:
    """What an ingest run did.

    ``stored`` counts the valid records, all of which are in the ledger when the run returns
    (including ones a previous attempt of the same job had already written). ``failed``
    counts the rejected records; ``errors`` describes the first :data:`MAX_REPORTED_ERRORS`
    of them as ``{"index": i, "error": "..."}``.
    """

    stored: int
    failed: int
    errors: list[dict[str, Any]]

    def as_result(self) -> dict[str, Any]:
        """The summary as the actor's JSON result."""
        return {"stored": self.stored, "failed": self.failed, "errors": list(self.errors)}


def check_batch(records: object, key_field: object) -> None:
    """Raise :class:`InvalidBatch` unless ``records`` is a list of at most :data:`MAX_RECORDS`
    items and ``key_field`` is ``None`` or a non-empty string."""
    if not isinstance(records, list):
        raise InvalidBatch(f"records must be a list of JSON objects, not {type(records).__name__}")
    if len(records) > MAX_RECORDS:
        raise InvalidBatch(f"batch holds {len(records)} records; the limit is {MAX_RECORDS}")
    if key_field is not None and (not isinstance(key_field, str) or not key_field):
        raise InvalidBatch(f"key_field must be a non-empty string or None, not {key_field!r}")
    if isinstance(key_field, str) and len(key_field) > MAX_KEY_LENGTH:
        raise InvalidBatch(f"key_field is {len(key_field)} characters; the limit is {MAX_KEY_LENGTH}")


def _record_problem(record: object, key_field: str | None) -> tuple[str | None, str | None]:
    """``(record_key, None)`` for a storable record, or ``(None, error)`` saying why it is not."""
    if not isinstance(record, dict):
        return None, f"record must be a JSON object, not {_json_type(record)}"
    try:
        encoded = json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        return None, f"record is not valid JSON: {error}"
    size = len(encoded.encode("utf-8"))
    if size > MAX_RECORD_BYTES:
        return None, f"record is {size} bytes encoded; the limit is {MAX_RECORD_BYTES}"
    if key_field is None:
        return None, None
    if key_field not in record or record[key_field] is None:
        return None, f"record has no {key_field!r} field"
    key = record[key_field]
    if isinstance(key, bool) or not isinstance(key, str | int):
        return None, f"field {key_field!r} must be a string or integer, not {_json_type(key)}"
    text = str(key)
    if not text or len(text) > MAX_KEY_LENGTH:
        return None, f"field {key_field!r} must be 1 to {MAX_KEY_LENGTH} characters, not {len(text)}"
    return text, None


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def store_records(
    engine: sa.Engine,
    job_id: str,
    tenant: str,
    records: Sequence[object],
    key_field: str | None = None,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Validate ``records`` and store the valid ones as job ``job_id``'s rows, :data:`CHUNK_SIZE` at a time.

    Idempotent: rows already stored for ``(job_id, item_index)`` are left as they are.
    ``on_progress(done, total)`` is called after each chunk commits (never inside a
    transaction), with ``done`` counting the records handled so far, valid or not.

    Raises:
      InvalidBatch: ``records`` or ``key_field`` is unusable; nothing was stored.
    """
    check_batch(records, key_field)
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    total = len(records)
    stored = failed = 0
    errors: list[dict[str, Any]] = []
    for start in range(0, total, CHUNK_SIZE):
        now = utcnow()
        rows = []
        for index in range(start, min(start + CHUNK_SIZE, total)):
            record = records[index]
            record_key, problem = _record_problem(record, key_field)
            if problem is not None:
                failed += 1
                if len(errors) < MAX_REPORTED_ERRORS:
                    errors.append({"index": index, "error": problem})
                continue
            rows.append(
                {
                    "job_id": job_id,
                    "item_index": index,
                    "tenant": tenant,
                    "record_key": record_key,
                    "data": record,
                    "ingested_at": now,
                }
            )
        if rows:
            with engine.begin() as connection:
                connection.execute(
                    insert(ingested_records).on_conflict_do_nothing(
                        index_elements=[ingested_records.c.job_id, ingested_records.c.item_index]
                    ),
                    rows,
                )
            stored += len(rows)
        if on_progress is not None:
            on_progress(min(start + CHUNK_SIZE, total), total)
    if total == 0 and on_progress is not None:
        on_progress(0, 0)
    return IngestSummary(stored=stored, failed=failed, errors=errors)


def _report_progress(done: int, total: int) -> None:
    fairlane.progress(done=done, total=total)


@fairlane.actor(queue_name="ingest", max_retries=3, min_backoff=500, throws=(InvalidBatch,))
def ingest(records: list[dict[str, Any]], key_field: str | None = None) -> dict[str, Any]:
    """Store a batch of JSON records for the running job's tenant.

    Returns ``{"stored": n, "failed": m, "errors": [{"index": i, "error": "..."}, ...]}``
    (at most 100 errors listed). Progress is reported as records handled of the batch size.

    Raises:
      InvalidBatch: not a list, more than 10,000 records, or a bad ``key_field`` (not retried).
    """
    job = fairlane.current_job()
    app = fairlane.get_app()
    tenant = job.tenant or app.settings.default_tenant
    summary = store_records(app.engine, job.id, tenant, records, key_field, on_progress=_report_progress)
    logger.info(
        "event=ingest_stored job=%s stored=%d failed=%d total=%d",
        job.id,
        summary.stored,
        summary.failed,
        len(records),
    )
    return summary.as_result()
