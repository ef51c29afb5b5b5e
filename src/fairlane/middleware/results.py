"""Results: store a succeeded job's return value as JSON, inline or in the results directory.

A result up to ``result_inline_bytes`` lives in the ledger row; a larger one is written to
``results_dir/<job id>.json`` and read back transparently by ``fairlane.jobs``. A result
that is not JSON, or larger than ``result_max_bytes``, fails the job for good: retrying
would return the same thing.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware

from fairlane.ledger.jobs import JobError
from fairlane.ledger.schema import DEAD, SUCCEEDED
from fairlane.ledger.writer import Finish, LedgerWriter
from fairlane.settings import Settings

logger = logging.getLogger("fairlane.worker")
#: Built once: ``json.dumps`` with any option builds a new encoder per call (3 µs a job).
_RESULT_ENCODER = json.JSONEncoder(allow_nan=False)


def result_file(results_dir: Path, job_id: str) -> Path:
    """Where a large result of ``job_id`` is stored."""
    return results_dir / f"{job_id}.json"


def read_result_file(path: str) -> Any:
    """Load a result stored in the results directory."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


class Results(Middleware):
    """Record success and the result of every job that returned normally."""

    def __init__(self, writer: LedgerWriter, settings: Settings) -> None:
        self.writer = writer
        self.settings = settings

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is not None:
            return
        try:
            encoded = "null" if result is None else _RESULT_ENCODER.encode(result)
        except (TypeError, ValueError) as error:
            self._refuse(message, f"result is not JSON-serialisable: {error}")
            return
        size = len(encoded.encode())
        if size > self.settings.result_max_bytes:
            self._refuse(message, f"result is {size} bytes; the limit is {self.settings.result_max_bytes}")
            return
        if size <= self.settings.result_inline_bytes:
            self.writer.finish(Finish(message.message_id, SUCCEEDED, result=result, result_json=encoded))
            return
        path = result_file(self.settings.results_dir, message.message_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(encoded, encoding="utf-8")
        os.replace(partial, path)
        self.writer.finish(Finish(message.message_id, SUCCEEDED, result_path=str(path)))

    def _refuse(self, message: MessageProxy, reason: str) -> None:
        logger.error("event=job_dead job=%s reason=%r", message.message_id, reason)
        self.writer.finish(Finish(message.message_id, DEAD, error=JobError("InvalidResult", reason)))
        message.fail()
