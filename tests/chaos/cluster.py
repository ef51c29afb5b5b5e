"""A small fairlane deployment for the chaos suite: real worker and scheduler processes (a
:class:`~tests.deployment.Deployment`), and a producer sending through ``send()`` and ``send_many``
from the test process.

The worker tree is ``fairlane worker --processes 2 --threads 4``; two ``fairlane scheduler``
replicas contend for leadership. Every process, the test's own included, reaches RabbitMQ and
PostgreSQL through a TCP proxy of the test's (:class:`~tests.integration.tcp_proxy.TcpProxy`),
so a service can be made unreachable for this deployment alone. Heartbeats, the reaper and
the re-publisher run on short intervals so a fault is recovered from within seconds.
:meth:`Cluster.settle` waits for every accepted job to finish and returns the :class:`Tally`
the suite prints and checks.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

import fairlane
from fairlane.ledger.schema import SUCCEEDED, jobs
from tests.deployment import Deployment
from tests.integration.tcp_proxy import TcpProxy

from .chaos_actors import QUEUE_VARIABLE, RUNS_VARIABLE, declare

SETTLE = 120.0  # seconds every accepted job has to finish after a fault
_FINAL = ("succeeded", "dead", "cancelled")

#: Settings shared by every process of the cluster and the test process (``FAIRLANE_`` names).
_SETTINGS = {
    "ADMISSION_INTERVAL": "0.1",
    "HEARTBEAT_INTERVAL": "0.5",
    "HEARTBEAT_TIMEOUT": "3",
    "REAPER_INTERVAL": "1",
    "DISPATCH_TIMEOUT": "5",
    "METRICS_PORT": "0",
    "HEALTH_PORT": "0",
}


@dataclasses.dataclass
class Tally:
    """What became of the jobs sent while one fault happened."""

    fault: str
    accepted: int
    refused: int
    lost: int  # accepted, but missing from the ledger, not succeeded, or succeeded without running
    stuck: int  # accepted and still not finished when the settling time ran out
    ran_twice: int  # ran to the end more than once (at-least-once allows it)
    #: The ledger rows of up to 10 lost or stuck jobs, to say what went wrong.
    examples: list[dict[str, Any]] = dataclasses.field(default_factory=list, repr=False)

    def row(self) -> str:
        return (
            f"{self.fault:<26} accepted={self.accepted:<6} refused={self.refused:<4} lost={self.lost:<3} "
            f"stuck={self.stuck:<3} ran_twice={self.ran_twice}"
        )


class Producer(threading.Thread):
    """Sends jobs until stopped: mostly single sends, every tenth a ``send_many`` of 20."""

    def __init__(self, step: fairlane.Actor[Any], milliseconds: int) -> None:
        super().__init__(daemon=True)
        self.step = step
        self.milliseconds = milliseconds
        self.accepted: set[str] = set()
        self.unknown: set[str] = set()
        self.refused = 0
        self.errors: Counter[str] = Counter()
        self._stopping = threading.Event()

    def run(self) -> None:
        sends = 0
        while not self._stopping.is_set():
            try:
                if sends % 10 == 0:
                    messages = self.step.send_many([(self.milliseconds,)] * 20)
                    self.accepted.update(message.message_id for message in messages)
                else:
                    self.accepted.add(self.step.send(self.milliseconds).message_id)
            except fairlane.LedgerUnavailable as error:
                self.accepted.update(error.stored)
                self.unknown.update(error.unknown)
                self.refused += len(error.not_stored)
                self.errors[type(error).__name__] += 1
                time.sleep(0.1)
            except Exception as error:  # counted as refused: the send said it did not go through
                self.refused += 1
                self.errors[type(error).__name__] += 1
                time.sleep(0.1)
            sends += 1
            time.sleep(0.005)

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=30)


class Cluster(Deployment):
    """Worker and scheduler processes on one queue, and the test process's app to send with."""

    def __init__(self, broker_url: str, postgres_url: str, tmp_path: Path) -> None:
        self.rabbitmq = _proxy_for(broker_url, 5672)
        self.postgresql = _proxy_for(postgres_url, 5432)
        broker_url = self.rabbitmq.url_for(broker_url)
        postgres_url = self.postgresql.url_for(postgres_url)
        self.queue = f"chaos_{uuid.uuid4().hex[:10]}"
        self.runs = tmp_path / "runs"
        self.runs.mkdir()
        logs = tmp_path / "logs"
        logs.mkdir()
        env = {
            **os.environ,
            "FAIRLANE_BROKER_URL": broker_url,
            "FAIRLANE_DATABASE_URL": postgres_url,
            "FAIRLANE_RESULTS_DIR": str(tmp_path / "results"),
            "FAIRLANE_METRICS_DIR": str(tmp_path / "metrics"),
            **{f"FAIRLANE_{name}": value for name, value in _SETTINGS.items()},
            QUEUE_VARIABLE: self.queue,
            RUNS_VARIABLE: str(self.runs),
            "PYTHONUNBUFFERED": "1",
        }
        super().__init__(env, "tests.chaos.chaos_actors", logs)
        self.app = fairlane.configure(
            fairlane.Settings(
                broker_url=broker_url,
                database_url=postgres_url,
                results_dir=tmp_path / "results",
                **{name.lower(): value for name, value in _SETTINGS.items()},
            )
        )
        self.step = declare(self.queue, self.runs)

    def close(self) -> None:
        super().close()
        self.app.close()
        self.rabbitmq.close()
        self.postgresql.close()

    # -- jobs ----------------------------------------------------------------------------------------

    def runs_of(self) -> Counter[str]:
        """How many times each job ran to the end."""
        return Counter(path.name.split(".", 1)[0] for path in self.runs.iterdir())

    def states(self, job_ids: set[str]) -> dict[str, str]:
        """The ledger state of each of ``job_ids`` it holds."""
        found: dict[str, str] = {}
        ids = sorted(job_ids)
        with self.app.engine.connect() as connection:
            for start in range(0, len(ids), 1000):
                query = sa.select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_(ids[start : start + 1000]))
                found.update({row.id: row.state for row in connection.execute(query)})
        return found

    def settle(self, fault: str, producer: Producer, extra: frozenset[str] | set[str] = frozenset()) -> Tally:
        """Wait (up to :data:`SETTLE` s) for every accepted job to finish, and tally the outcome.

        A send whose outcome was unknown counts as accepted if its job is in the ledger.
        """
        stored_unknown = set(self.states(producer.unknown))
        accepted = producer.accepted | stored_unknown | set(extra)
        refused = producer.refused + len(producer.unknown - stored_unknown)
        deadline = time.monotonic() + SETTLE
        states = self.states(accepted)
        while time.monotonic() < deadline and any(states.get(job) not in _FINAL for job in accepted):
            time.sleep(0.5)
            states = self.states(accepted)
        runs = self.runs_of()
        lost = sum(
            1
            for job in accepted
            if states.get(job) in (None, "dead", "cancelled") or (states[job] == SUCCEEDED and not runs[job])
        )
        unfinished = [job for job in accepted if job in states and states[job] not in _FINAL]
        ran_twice = sum(1 for job in accepted if runs[job] > 1)
        bad = unfinished + [job for job in accepted if states.get(job) in (None, "dead", "cancelled")]
        return Tally(fault, len(accepted), refused, lost, len(unfinished), ran_twice, self._rows(bad[:10]))

    def _rows(self, job_ids: list[str]) -> list[dict[str, Any]]:
        columns = [column for column in jobs.c if column.name not in ("message", "result")]
        with self.app.engine.connect() as connection:
            found = connection.execute(sa.select(*columns).where(jobs.c.id.in_(job_ids))).mappings()
            rows = {row["id"]: dict(row) for row in found}
        return [rows.get(job_id, {"id": job_id, "state": "(no row)"}) for job_id in job_ids]


def _proxy_for(url: str, default_port: int) -> TcpProxy:
    parts = urlsplit(url)
    return TcpProxy(parts.hostname or "127.0.0.1", parts.port or default_port)
