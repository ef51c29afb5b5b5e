"""What a send does when the ledger fails under it: find out whether its jobs were stored.

A send stores its job with one statement (``Admission.accept``), or its jobs with one
transaction per chunk (``Admission.accept_many``). When the connection fails:

* before the write was sent (no connection could be opened), nothing was stored;
* after it was sent, its COMMIT may have happened with only the reply lost. Only the ledger
  knows, so the jobs are looked up by id on a fresh connection:

  - all found: the write did commit, and the send goes on as if nothing had failed (a caller
    that retried on an error would have stored the job twice);
  - none found: nothing was stored, and the write is tried once more (a restarted PostgreSQL
    leaves the pool's connections dead; the lookup has just replaced them);
  - the lookup fails too: whether the jobs were stored is unknown.

What cannot be settled raises :class:`LedgerUnavailable`, which says what failed and, per job
id, whether it was stored, not stored, or unknown. A send that raises it never leaves a job
stored without saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import sqlalchemy as sa

from fairlane.fairlane_error import FairlaneError
from fairlane.ledger.schema import jobs

logger = logging.getLogger("fairlane.ledger")

T = TypeVar("T")

#: Attribute set on an error raised while opening a connection (see ``_mark_connect_failure``).
_WHILE_CONNECTING = "fairlane_while_connecting"
#: Lookups tried after a failed write: a stale pooled connection fails the first, and SQLAlchemy
#: then replaces the pool's connections, so the second runs on a fresh one.
_LOOKUP_ATTEMPTS = 2


class LedgerUnavailable(FairlaneError):
    """A send could not reach the ledger (or the ledger failed it).

    Attributes name the job ids by outcome: ``stored`` (they will run: do not send them
    again), ``not_stored`` (sending them again is safe) and ``unknown`` (the connection was lost
    after the write was sent and the ledger could not be asked: look them up with
    :func:`fairlane.jobs.get` once it is back, or send with an ``idempotency_key``).
    """

    def __init__(
        self,
        cause: str,
        *,
        stored: Sequence[str] = (),
        not_stored: Sequence[str] = (),
        unknown: Sequence[str] = (),
    ) -> None:
        self.cause = cause
        self.stored = tuple(stored)
        self.not_stored = tuple(not_stored)
        self.unknown = tuple(unknown)
        super().__init__(f"the ledger is unavailable ({cause}): {self._outcome()}")

    def _outcome(self) -> str:
        parts = []
        if self.stored:
            parts.append(f"{_jobs(self.stored)} stored and will run: do not send again")
        if self.not_stored:
            parts.append(f"{_jobs(self.not_stored)} not stored: sending again is safe")
        if self.unknown:
            parts.append(
                f"whether {_jobs(self.unknown)} stored is unknown (the connection was lost after the "
                "write was sent): look it up with fairlane.jobs.get() once the ledger is back before "
                "sending again, or send with an idempotency_key"
            )
        return "; ".join(parts)


def _jobs(ids: tuple[str, ...]) -> str:
    if len(ids) == 1:
        return f"job {ids[0]} was"
    return f"{len(ids)} jobs ({ids[0]} … {ids[-1]}) were"


class SendGuard:
    """Runs a send's ledger writes so that a lost connection is settled or explained."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        if not sa.event.contains(engine, "handle_error", _mark_connect_failure):
            sa.event.listen(engine, "handle_error", _mark_connect_failure)
        dbapi = engine.dialect.loaded_dbapi
        #: Errors that mean the ledger could not be reached or failed the write (not a bad row).
        self.errors: tuple[type[BaseException], ...] = (
            sa.exc.OperationalError,
            sa.exc.InterfaceError,
            dbapi.OperationalError,
            dbapi.InterfaceError,
        )

    @contextmanager
    def nothing_written(self, job_ids: Sequence[str]) -> Iterator[None]:
        """Raise a ledger failure before any job is written as :class:`LedgerUnavailable` (nothing stored)."""
        try:
            yield
        except self.errors as error:
            raise LedgerUnavailable(_cause(error), not_stored=job_ids) from error

    def write(
        self,
        job_ids: Sequence[str],
        write: Callable[[], T],
        committed: Callable[[dict[str, str]], T],
        *,
        stored_before: Sequence[str] = (),
        sent_after: Sequence[str] = (),
    ) -> T:
        """Run ``write``, which stores ``job_ids`` in one transaction, settling a lost connection.

        If the jobs turn out to be stored, ``committed`` builds the result from their states
        (id → state). ``stored_before`` and ``sent_after`` are the same send's jobs written by
        earlier chunks and left for later ones: an error names them as stored and not stored.

        Raises:
          LedgerUnavailable: the write failed, and it is stored nothing, or it is unknown.
        """
        for attempt in range(2):
            try:
                return write()
            except self.errors as error:
                failure = error
            states = {} if _before_sending(failure) else self._states(job_ids)
            if states is None:
                break
            if states:
                found = [job_id for job_id in job_ids if job_id in states]
                if len(found) == len(job_ids):
                    logger.warning(
                        "event=ledger_reply_lost jobs=%d error=%r action='the write had committed; "
                        "the send succeeded'",
                        len(job_ids),
                        _cause(failure),
                    )
                    return committed(states)
                missing = [job_id for job_id in job_ids if job_id not in states]
                raise LedgerUnavailable(
                    _cause(failure), stored=[*stored_before, *found], not_stored=[*missing, *sent_after]
                ) from failure
            if attempt == 0:
                logger.warning(
                    "event=ledger_write_failed jobs=%d error=%r action='nothing was stored; writing again'",
                    len(job_ids),
                    _cause(failure),
                )
        else:
            raise LedgerUnavailable(
                _cause(failure), stored=stored_before, not_stored=[*job_ids, *sent_after]
            ) from failure
        raise LedgerUnavailable(
            _cause(failure), stored=stored_before, unknown=job_ids, not_stored=sent_after
        ) from failure

    def _states(self, job_ids: Sequence[str]) -> dict[str, str] | None:
        """The ledger state of each of ``job_ids`` it holds, or None if the ledger can't be read."""
        query = sa.select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_(list(job_ids)))
        for _ in range(_LOOKUP_ATTEMPTS):
            try:
                with self.engine.connect() as connection:
                    return {str(row.id): str(row.state) for row in connection.execute(query)}
            except self.errors:
                continue
        return None


def _mark_connect_failure(context: sa.engine.ExceptionContext) -> None:
    """Mark an error raised while a connection was being opened (SQLAlchemy's ``handle_error``
    has no connection then): no statement of that connection reached the ledger. A failed
    COMMIT or ROLLBACK, which has no statement either, is not marked."""
    if context.connection is None and context.sqlalchemy_exception is not None:
        setattr(context.sqlalchemy_exception, _WHILE_CONNECTING, True)


def _before_sending(error: BaseException) -> bool:
    """Whether ``error`` came from opening a connection, so no statement reached the ledger."""
    return bool(getattr(error, _WHILE_CONNECTING, False))


def _cause(error: BaseException) -> str:
    original = error.orig if isinstance(error, sa.exc.DBAPIError) else error
    detail = " ".join(str(original).split())[:200]
    return f"{type(original).__name__}: {detail}"


__all__ = ["LedgerUnavailable", "SendGuard"]
