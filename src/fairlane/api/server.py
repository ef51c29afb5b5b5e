"""``fairlane api``: serve the API with uvicorn, after importing the actor modules.

The modules declare actors as in a worker, so submissions are validated against their
signatures; an actor no module declares is validated against the catalog workers publish.
With ``--workers N`` uvicorn starts N processes, each building its own app from
``FAIRLANE_*`` (the modules travel in ``FAIRLANE_API_MODULES``) and writing its metrics to
a shared multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, set before they start).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import uvicorn
from fastapi import FastAPI

from fairlane.api.app import create_api
from fairlane.api.metrics import api_metrics_dir
from fairlane.app import get_app
from fairlane.observability.catalog import prepare_multiprocess_dir
from fairlane.settings import ENV_PREFIX, load_settings
from fairlane.worker import import_actor_modules

logger = logging.getLogger("fairlane.api")


def api_from_settings() -> FastAPI:
    """The API of this process's app, with ``FAIRLANE_API_MODULES`` imported (uvicorn's factory)."""
    app = get_app()
    import_actor_modules(app.settings.api_modules)
    return create_api(app)


def serve(modules: Sequence[str], *, host: str | None, port: int | None, workers: int | None) -> int:
    """Run the API until interrupted; ``None`` options come from ``FAIRLANE_API_*`` settings."""
    settings = load_settings()
    if modules:
        # Handed to the processes uvicorn starts through their environment, read by settings.py.
        os.environ[f"{ENV_PREFIX}API_MODULES"] = ",".join(modules)
    host = host or settings.api_host
    port = port or settings.api_port
    workers = workers or settings.api_workers
    logger.info("event=api_starting host=%s port=%d workers=%d", host, port, workers)
    if workers > 1:
        # Read by the processes uvicorn spawns: prometheus_client at import, settings.py at start.
        metrics_dir = api_metrics_dir(settings).resolve()
        prepare_multiprocess_dir(metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        os.environ[f"{ENV_PREFIX}API_WORKERS"] = str(workers)
    if workers == 1:
        uvicorn.run(api_from_settings(), host=host, port=port, log_config=None)
    else:
        uvicorn.run(
            "fairlane.api.server:api_from_settings",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,
        )
    return 0
