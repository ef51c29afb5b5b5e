"""fairlane's built-in job types, one module each.

- :mod:`fairlane.actors.ingest`: ``ingest(records, key_field=None)`` on queue ``ingest`` stores a
  batch of JSON records in the ledger (``fairlane_ingested_records``), reporting bad records
  per item instead of failing the batch.
- :mod:`fairlane.actors.webhook`: ``webhook(url, payload, headers=None, timeout=10.0)`` on queue
  ``webhooks`` POSTs JSON to a URL, retrying 5xx, 429, timeouts and connection errors.

Importing this package declares both actors on the process's fairlane app, so a worker
started as ``fairlane worker fairlane.actors`` runs them. Send them with
``from fairlane.actors.ingest import ingest`` / ``from fairlane.actors.webhook import webhook``.
"""

from __future__ import annotations

# The modules, not their actors, are bound here: ``fairlane.actors.ingest.ingest`` is the actor.
from fairlane.actors import ingest, webhook

__all__ = ["ingest", "webhook"]
