"""API keys of ``fairlane api``: create, look up by the key presented, list and revoke.

A key reads ``fl_<id>_<secret>``: ``id`` is 8 random hex digits, public (listings, logs), and
``secret`` 32 random bytes (256 bits) in URL-safe base64. The ledger stores ``id`` and the
SHA-256 digest of the whole key, never the key. A fast hash is the right one here: slow
password hashes (bcrypt, argon2) exist to make guessing *low-entropy* secrets expensive, and
nobody guesses 256 random bits; a plain digest lets every request find its key with one
indexed lookup instead of spending tens of milliseconds of CPU per request.

A revoked key keeps its row (``revoked_at`` set) so listings show what existed; it never
authenticates again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from datetime import datetime

import sqlalchemy as sa

from fairlane.ledger.database import as_utc, utcnow
from fairlane.ledger.schema import api_keys

KEY_PREFIX = "fl_"


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """One API key's record (never the key itself)."""

    id: str
    tenant: str
    admin: bool
    name: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def prefix(self) -> str:
        """The public start of the key (``fl_<id>``), enough to recognise it."""
        return f"{KEY_PREFIX}{self.id}"


def key_digest(key: str) -> str:
    """The SHA-256 hex digest stored for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


def _key_from_row(row: sa.Row[object]) -> ApiKey:
    return ApiKey(
        id=row.id,
        tenant=row.tenant,
        admin=bool(row.admin),
        name=row.name,
        created_at=as_utc(row.created_at),  # type: ignore[arg-type]
        revoked_at=as_utc(row.revoked_at),
    )


class ApiKeyStore:
    """The API keys of one ledger."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def create(self, tenant: str, *, admin: bool = False, name: str = "") -> tuple[ApiKey, str]:
        """Create a key for ``tenant``; returns its record and the key (shown this once)."""
        key_id = secrets.token_hex(4)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id, tenant, admin, name, utcnow(), None)
        with self.engine.begin() as connection:
            connection.execute(
                api_keys.insert().values(
                    id=record.id,
                    key_hash=key_digest(key),
                    tenant=tenant,
                    admin=admin,
                    name=name,
                    created_at=record.created_at,
                )
            )
        return record, key

    def authenticate(self, key: str) -> ApiKey | None:
        """The live (not revoked) key record of ``key``, or None."""
        query = sa.select(api_keys).where(
            api_keys.c.key_hash == key_digest(key), api_keys.c.revoked_at.is_(None)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else _key_from_row(row)

    def list(self, *, include_revoked: bool = True) -> list[ApiKey]:
        """Every key record, oldest first."""
        query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        with self.engine.connect() as connection:
            return [_key_from_row(row) for row in connection.execute(query)]

    def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke a key by its id (``fl_`` prefix optional); None if there is no such key.

        Revoking a revoked key changes nothing and returns its record.
        """
        key_id = key_id.removeprefix(KEY_PREFIX)
        with self.engine.begin() as connection:
            connection.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            row = connection.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        return None if row is None else _key_from_row(row)
