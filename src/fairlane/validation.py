"""Bounds on identifiers that arrive from callers: tenant ids and idempotency keys."""

from __future__ import annotations

import re

from fairlane.errors import InvalidJob

MAX_TENANT_LENGTH = 128
MAX_IDEMPOTENCY_KEY_LENGTH = 255
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")


def check_tenant(tenant: object) -> str:
    """Return ``tenant`` if it is a valid tenant id, else raise :class:`InvalidJob`."""
    if not isinstance(tenant, str) or not tenant:
        raise InvalidJob(f"tenant must be a non-empty string, not {tenant!r}")
    if len(tenant) > MAX_TENANT_LENGTH:
        raise InvalidJob(f"tenant id is {len(tenant)} characters; the limit is {MAX_TENANT_LENGTH}")
    if not _TENANT.fullmatch(tenant):
        raise InvalidJob(
            f"tenant {tenant!r} may hold only letters, digits and . _ : @ - (starting with a letter or digit)"
        )
    return tenant


def check_idempotency_key(key: object) -> str:
    """Return ``key`` if it is a valid idempotency key, else raise :class:`InvalidJob`."""
    if not isinstance(key, str) or not key.strip():
        raise InvalidJob(f"idempotency_key must be a non-empty string, not {key!r}")
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidJob(
            f"idempotency_key is {len(key)} characters; the limit is {MAX_IDEMPOTENCY_KEY_LENGTH}"
        )
    if not key.isprintable():
        raise InvalidJob(f"idempotency_key {key!r} holds control characters; use printable text")
    return key
