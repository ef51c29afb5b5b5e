"""``fairlane.tenants``: tenant weights and caps, and who is waiting on what.

A tenant's weight sets its fair share (default 1: weights 5:3:2 split busy workers 50/30/20);
its cap bounds its dispatched + running jobs per queue across every worker process and pod
(default: ``FAIRLANE_QUEUE_TENANT_CAPS`` / ``FAIRLANE_TENANT_CAP``, or none). Workers pick up a
change within a few seconds.
"""

from __future__ import annotations

from fairlane.app import get_app
from fairlane.ledger.tenants import TenantStats, TenantStore
from fairlane.validation import check_tenant

__all__ = ["TenantStats", "set_cap", "set_weight", "stats"]


def _store() -> TenantStore:
    return TenantStore(get_app().engine)


def set_weight(tenant: str, weight: float) -> None:
    """Give ``tenant`` a fair-share weight in (0, 10000]."""
    check_tenant(tenant)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight <= 10_000:
        raise ValueError(f"weight must be a number in (0, 10000], not {weight!r}")
    _store().configure(tenant, weight=float(weight))
    get_app().admission.forget_tenant_cache()


def set_cap(tenant: str, cap: int | None) -> None:
    """Cap ``tenant``'s dispatched + running jobs per queue (None: back to the queue default)."""
    check_tenant(tenant)
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ValueError(f"cap must be a positive integer or None, not {cap!r}")
    _store().configure(tenant, max_running=cap)
    get_app().admission.forget_tenant_cache()


def stats(queue: str | None = None) -> list[TenantStats]:
    """Per tenant: backlog, running, weight, cap and start-wait p50/p99 of the last 5 minutes."""
    return _store().stats(queue)
