"""The actor catalog: which actors the workers declare, for senders that do not declare them.

Dramatiq services call each other's actors by name (``broker.enqueue(Message(actor_name=…))``)
without importing their code. Each worker publishes the actors it declares at boot (name,
queue, parameters, and options that are plain JSON values); a sender that does not declare an
actor looks it up here, validates the job against it, and refuses only a name that no worker
has declared.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from fairlane.ledger.database import utcnow
from fairlane.ledger.schema import actors

_KINDS = {
    kind.name: kind
    for kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.VAR_POSITIONAL,
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.VAR_KEYWORD,
    )
}
#: Seconds a sender trusts what it read of an actor, and of an actor's absence.
FOUND_TTL = 30.0
MISSING_TTL = 2.0


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    """One declared actor as the catalog holds it."""

    name: str
    queue: str
    #: ``(name, kind, has_default)`` per parameter, ``kind`` named as on ``inspect.Parameter``
    #: (``POSITIONAL_OR_KEYWORD``, ``VAR_POSITIONAL``, …); None if the function has no signature.
    parameters: tuple[tuple[str, str, bool], ...] | None
    #: The actor's options: all of them for an actor declared here; for one read from the
    #: catalog, those that are plain JSON values.
    options: Mapping[str, Any]

    @classmethod
    def describe(
        cls, name: str, queue: str, fn: Callable[..., Any], options: Mapping[str, Any]
    ) -> CatalogEntry:
        """The entry of an actor declared in this process."""
        try:
            signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # builtins and some C callables have none
            signature = None
        parameters = (
            None
            if signature is None
            else tuple(
                (parameter.name, parameter.kind.name, parameter.default is not inspect.Parameter.empty)
                for parameter in signature.parameters.values()
            )
        )
        return cls(name, queue, parameters, options)

    @functools.cached_property
    def signature(self) -> inspect.Signature | None:
        """A signature that binds exactly the arguments the actor's function accepts."""
        return None if self.parameters is None else _signature_of(self.parameters)

    def binding_problem(self, positional: int, keywords: tuple[str, ...]) -> str | None:
        """Why ``positional`` arguments and these keyword names do not fit the actor, or None.

        Whether arguments bind depends only on how many are positional and which are named, so
        the answer is kept per shape: a bulk send checks its signature once, not per job.
        """
        if self.parameters is None:
            return None
        return _binding_problem(self.parameters, positional, keywords)


@functools.lru_cache(maxsize=256)
def _signature_of(parameters: tuple[tuple[str, str, bool], ...]) -> inspect.Signature:
    return inspect.Signature(
        [
            inspect.Parameter(name, _KINDS[kind], default=None if has_default else inspect.Parameter.empty)
            for name, kind, has_default in parameters
        ]
    )


@functools.lru_cache(maxsize=1024)
def _binding_problem(
    parameters: tuple[tuple[str, str, bool], ...], positional: int, keywords: tuple[str, ...]
) -> str | None:
    try:
        _signature_of(parameters).bind(*([None] * positional), **dict.fromkeys(keywords))
    except TypeError as error:
        return str(error)
    return None


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(item) for item in value)
    return False


class ActorCatalog:
    """Reads and writes of the ``fairlane_actors`` catalog, with a short read cache."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._cache: dict[str, tuple[float, CatalogEntry | None]] = {}
        self._lock = threading.Lock()

    def publish(self, entries: Iterable[CatalogEntry], declared_by: str) -> None:
        """Record the actors a worker declares (replacing earlier entries of the same names)."""
        now = utcnow()
        rows = [
            {
                "name": entry.name,
                "queue": entry.queue,
                "parameters": None if entry.parameters is None else [list(p) for p in entry.parameters],
                "options": {key: value for key, value in entry.options.items() if _is_plain(value)},
                "declared_by": declared_by,
                "declared_at": now,
            }
            for entry in entries
        ]
        if not rows:
            return
        statement = self._insert(actors)
        statement = statement.on_conflict_do_update(
            index_elements=[actors.c.name],
            set_={
                column: statement.excluded[column]
                for column in ("queue", "parameters", "options", "declared_by", "declared_at")
            },
        )
        with self.engine.begin() as connection:
            connection.execute(statement, rows)

    def lookup(self, name: str) -> CatalogEntry | None:
        """The catalog's entry for ``name``, or None if no worker has declared it."""
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(actors).where(actors.c.name == name)).first()
        entry = None
        if row is not None:
            parameters = (
                None
                if row.parameters is None
                else tuple((str(n), str(k), bool(d)) for n, k, d in row.parameters)
            )
            entry = CatalogEntry(row.name, row.queue, parameters, dict(row.options or {}))
        with self._lock:
            self._cache[name] = (time.monotonic() + (FOUND_TTL if entry else MISSING_TTL), entry)
        return entry


__all__ = ["ActorCatalog", "CatalogEntry"]
