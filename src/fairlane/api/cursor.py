"""The opaque cursor of job listings: a job's place in the newest-first order.

It encodes the last listed job's ``(enqueued_at, id)`` as URL-safe base64 of a JSON pair, so
the next page needs no lookup and still works after that job has been cleaned up. It is
not signed: it carries no authority (filters and the key's tenant still apply), and a
forged one only moves where a listing starts.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from fairlane.api.problems import ApiProblem

#: Longest cursor accepted: a 64-character job id of 4-byte UTF-8 characters fits.
MAX_CURSOR = 512


def encode_cursor(position: tuple[datetime, str]) -> str:
    """The cursor after a job at ``position`` (see :func:`fairlane.ledger.jobs.list_position`)."""
    moment, job_id = position
    text = json.dumps([moment.isoformat(), job_id], separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor encodes; a problem (400) if it is not one of ours."""
    try:
        if len(cursor) > MAX_CURSOR:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        moment, job_id = json.loads(raw)
        position = datetime.fromisoformat(moment), job_id
        if position[0].tzinfo is None or not isinstance(job_id, str) or not job_id.isprintable():
            raise ValueError("not a position")
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ApiProblem(
            400, "bad-cursor", "Bad cursor", "cursor is not one a listing returned", field="cursor"
        ) from None
    return position
