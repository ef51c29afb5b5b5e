"""Log setup of fairlane's processes (CLI commands, worker processes): one key=value line per event."""

from __future__ import annotations

import logging


def configure_logging(verbose: bool) -> None:
    """Structured (key=value) log lines on stderr; alembic only from WARNING (pika: see
    :func:`fairlane.rabbitmq_outages.silence_pika`)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


def add_filter_once(logger_name: str, log_filter: type[logging.Filter]) -> None:
    """Add a ``log_filter`` to the logger ``logger_name`` unless one is there already (apps and
    workers built again in one process, as in tests, add it once)."""
    target = logging.getLogger(logger_name)
    if not any(isinstance(item, log_filter) for item in target.filters):
        target.addFilter(log_filter())
