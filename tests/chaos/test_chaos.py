"""The chaos suite: faults while a producer sends, and what became of every accepted job.

Each test runs a small deployment (:mod:`tests.chaos.cluster`: a worker tree of 2 processes of
4 threads, two scheduler replicas, the test run's PostgreSQL ledger and RabbitMQ vhost), sends
through ``send()`` and ``send_many`` while one fault happens, recovers as Kubernetes would
(a killed or stopped worker pod is started again; a scheduler standby takes over by itself),
and then checks that every accepted job succeeded and ran, none is stuck, and prints
accepted / refused / lost / stuck / ran twice.

Every process reaches RabbitMQ and PostgreSQL through TCP proxies of the test's, so each service
is also made unreachable for 5 s (all connections dropped, none accepted) for this deployment
alone. Really stopping RabbitMQ and restarting PostgreSQL disturb everything else on the
machine, so those two faults run only with ``FAIRLANE_CHAOS_SERVICES=1`` (``.ci/run`` sets it,
where the services are CI's alone).

Run with ``make chaos`` (``make test`` leaves this directory out).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.deployment import STARTUP, wait_for

from .cluster import Cluster, Producer, Tally

SERVICES = os.environ.get("FAIRLANE_CHAOS_SERVICES") == "1"
#: The loopback services as .ci/services starts them.
_PG_CLUSTER = sorted(os.listdir("/etc/postgresql"))[-1] if os.path.isdir("/etc/postgresql") else ""
_TALLIES: list[Tally] = []

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def cluster(broker_url: str, postgres_url: str, tmp_path: Path) -> Iterator[Cluster]:
    deployment = Cluster(broker_url, postgres_url, tmp_path)
    try:
        deployment.start_schedulers()
        deployment.start_workers()
        yield deployment
    finally:
        deployment.close()


@pytest.fixture(scope="module", autouse=True)
def table() -> Iterator[None]:
    """Print every fault's tally at the end of the module."""
    yield
    print("\nchaos: fault                     outcome")
    for tally in _TALLIES:
        print(f"chaos: {tally.row()}")


def _assert_no_job_lost_through(
    cluster: Cluster, name: str, fault: Callable[[], set[str] | None], milliseconds: int = 20
) -> Tally:
    """Send while ``fault`` happens, then settle and check what became of every accepted job
    (the producer's, and those ``fault`` returns as sent by itself)."""
    producer = Producer(cluster.step, milliseconds)
    producer.start()
    wait_for(lambda: sum(cluster.runs_of().values()) >= 50, STARTUP, "the workers run jobs")
    sent_by_fault = fault() or set()
    time.sleep(2)  # keep sending while the deployment recovers
    producer.stop()
    tally = cluster.settle(name, producer, sent_by_fault)
    _TALLIES.append(tally)
    print(f"chaos: {tally.row()} errors={dict(producer.errors)}")
    assert tally.accepted > 0
    assert (tally.lost, tally.stuck) == (0, 0), f"{tally}\n{tally.examples}\nlogs:\n{cluster.log_tail()}"
    return tally


def test_worker_tree_killed_with_about_a_thousand_jobs_in_flight(cluster: Cluster) -> None:
    # Given a worker tree busy with ~1,000 jobs sent at once, while the producer keeps sending
    def fault() -> set[str]:
        burst = {message.message_id for message in cluster.step.send_many([(20,)] * 1000)}
        wait_for(lambda: len(burst & set(cluster.runs_of())) >= 50, STARTUP, "the burst runs")
        # When the whole tree is SIGKILLed, and its pod started again
        assert cluster.workers is not None
        cluster.kill_tree(cluster.workers)
        print(
            f"chaos: killed the worker tree with {len(burst - set(cluster.runs_of()))} burst jobs not yet run"
        )
        cluster.start_workers()
        return burst

    # Then every accepted job (the burst included: it was sent through send_many) succeeded and ran
    _assert_no_job_lost_through(cluster, "worker tree SIGKILL", fault)


def test_worker_tree_stopped_with_sigterm(cluster: Cluster) -> None:
    # Given a busy worker tree
    def fault() -> None:
        # When it gets SIGTERM (a rolling update), exits, and its pod is started again
        assert cluster.workers is not None
        cluster.kill_tree(cluster.workers, signal.SIGTERM)
        cluster.start_workers()

    # Then every accepted job succeeded and ran
    _assert_no_job_lost_through(cluster, "worker tree SIGTERM", fault)


def test_scheduler_leader_killed(cluster: Cluster) -> None:
    # Given two scheduler replicas, one leading
    def fault() -> None:
        leader = cluster.leader()
        assert leader is not None
        # When the leader is SIGKILLed (and a worker tree dies too, so the reaper has work)
        cluster.kill_tree(leader)
        assert cluster.workers is not None
        cluster.kill_tree(cluster.workers)
        cluster.start_workers()
        # Then the standby takes over without anyone restarting it
        wait_for(lambda: cluster.leader() not in (None, leader), STARTUP, "the standby leads")

    # And every accepted job succeeded and ran
    _assert_no_job_lost_through(cluster, "scheduler leader SIGKILL", fault)


def test_rabbitmq_unreachable_for_five_seconds(cluster: Cluster) -> None:
    # Given a busy deployment
    def fault() -> None:
        # When every connection to RabbitMQ drops and none can be made for 5 s
        cluster.rabbitmq.cut()
        time.sleep(5)
        cluster.rabbitmq.restore()

    # Then every process reconnects by itself and every accepted job succeeded and ran
    _assert_no_job_lost_through(cluster, "RabbitMQ unreachable 5 s", fault)


def test_postgresql_unreachable_for_five_seconds(cluster: Cluster) -> None:
    # Given a busy deployment
    def fault() -> None:
        # When every connection to PostgreSQL drops and none can be made for 5 s
        cluster.postgresql.cut()
        time.sleep(5)
        cluster.postgresql.restore()

    # Then sends in that time raise LedgerUnavailable (saying what was stored) or succeed, every
    # process recovers by itself, and every accepted job succeeded and ran
    _assert_no_job_lost_through(cluster, "PostgreSQL unreachable 5 s", fault)


@pytest.mark.skipif(not SERVICES, reason="stops the shared RabbitMQ: set FAIRLANE_CHAOS_SERVICES=1")
def test_rabbitmq_stopped_and_started(cluster: Cluster) -> None:
    # Given a busy deployment
    def fault() -> None:
        # When RabbitMQ stops for 5 s and starts again
        subprocess.run(["rabbitmqctl", "-q", "stop_app"], check=True)
        time.sleep(5)
        subprocess.run(["rabbitmqctl", "-q", "start_app"], check=True)

    # Then every process reconnects by itself and every accepted job succeeded and ran
    _assert_no_job_lost_through(cluster, "RabbitMQ stop/start", fault)


@pytest.mark.skipif(not SERVICES, reason="restarts the shared PostgreSQL: set FAIRLANE_CHAOS_SERVICES=1")
def test_postgresql_restarted(cluster: Cluster) -> None:
    # Given a busy deployment
    def fault() -> None:
        # When PostgreSQL restarts
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", _PG_CLUSTER, "main", "restart"], check=True
        )

    # Then sends during the restart raise LedgerUnavailable or succeed, never both, and every
    # accepted job succeeded and ran
    _assert_no_job_lost_through(cluster, "PostgreSQL restart", fault)
