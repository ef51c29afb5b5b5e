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
