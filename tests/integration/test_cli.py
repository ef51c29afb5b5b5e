"""The ``fairlane`` command's jobs and dlq subcommands, run in-process against real services."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import dramatiq
import pika
import pytest

import fairlane
from fairlane import cli
from fairlane.app import App

from .support import dead_letter_depth, eventually

Cli = Callable[..., tuple[int, str]]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Run ``fairlane ARGS…`` in this process; returns its exit code and what it printed."""
    monkeypatch.setattr(cli.console, "width", 300)  # whole job ids in tables

    def _run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        code = cli.main(list(argv))
        return code, capsys.readouterr().out

    return _run


@pytest.fixture
def tenant() -> str:
    return f"shop-{uuid.uuid4().hex[:8]}"


class Checkout:
    """An actor that charges orders; it fails (without retries) until ``healthy`` is set."""

    def __init__(self, queue: str) -> None:
        self.healthy = threading.Event()

        @fairlane.actor(queue_name=queue, max_retries=0)
        def charge(order: int) -> dict[str, Any]:
            if not self.healthy.is_set():
                raise RuntimeError(f"card declined for order {order}")
            return {"order": order, "charged": True}

        self.charge = charge

    def send(self, order: int, tenant: str) -> str:
        return self.charge.send_with_options(args=(order,), tenant=tenant).message_id


@pytest.fixture
def checkout(
    app: App, queue: str, worker: Callable[..., AbstractContextManager[dramatiq.Worker]]
) -> Iterator[Checkout]:
    """The checkout actor on this test's queue, with an embedded worker running."""
    actor = Checkout(queue)
    with worker(threads=2):
        yield actor


def _dead(app: App, queue: str, checkout: Checkout, tenant: str, *orders: int) -> list[str]:
    """Send failing orders and wait until each is dead and its message is in the dead-letter queue."""
    already = dead_letter_depth(app, queue)
    ids = [checkout.send(order, tenant) for order in orders]
    for job_id in ids:
        assert fairlane.jobs.wait(job_id, timeout=10).state == "dead"
    eventually(lambda: dead_letter_depth(app, queue) == already + len(ids), message="dead letters")
    return ids


def _publish_raw(broker_url: str, routing_key: str, body: bytes) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        connection.channel().basic_publish("", routing_key, body, pika.BasicProperties(delivery_mode=2))
    finally:
        connection.close()


# -- jobs -----------------------------------------------------------------------------------------------


def test_jobs_show_prints_a_succeeded_job_and_a_dead_ones_error(
    app: App, queue: str, checkout: Checkout, tenant: str, run_cli: Cli
) -> None:
    # Given a dead job and, once the cause is fixed, a succeeded one
    [dead] = _dead(app, queue, checkout, tenant, 7)
    checkout.healthy.set()
    done = checkout.send(8, tenant)
    fairlane.jobs.wait(done, timeout=10)

    # When each is shown
    code, shown = run_cli("jobs", "show", done)

    # Then the succeeded one shows its tenant, state, attempts and result
    assert code == 0
    for expected in (done, "charge", queue, tenant, "succeeded", '{"order": 8, "charged": true}'):
        assert expected in shown
    assert re.search(r"state\s+succeeded\b", shown) and re.search(r"attempts\s+1\b", shown)

    # And the dead one shows the error and where it was raised
    code, shown = run_cli("jobs", "show", dead)
    assert code == 0
    assert "dead" in shown
    assert "RuntimeError: card declined for order 7" in shown
    assert "traceback" in shown and "in charge" in shown


def test_jobs_show_unknown_id_fails_with_a_clear_message(app: App, run_cli: Cli) -> None:
    # Given no job with the id; when it is shown, then the command fails and says why
    code, shown = run_cli("jobs", "show", "no-such-id")
    assert code == 1
    assert "no job with id 'no-such-id'" in shown


def test_jobs_list_shows_only_that_tenants_jobs(app: App, queue: str, tenant: str, run_cli: Cli) -> None:
    # Given three jobs of one tenant and one of another
    checkout = Checkout(queue)
    mine = [checkout.send(order, tenant) for order in range(3)]
    theirs = checkout.send(99, f"{tenant}-other")

    # When the tenant's jobs are listed
    code, listed = run_cli("jobs", "list", "--tenant", tenant)

    # Then exactly its jobs are listed, newest first
    assert code == 0
    assert "3 jobs, newest first" in listed
    positions = [listed.index(job_id) for job_id in reversed(mine)]
    assert positions == sorted(positions)
    assert theirs not in listed


def test_jobs_cancel_stops_a_job_that_has_not_started(
    app: App, queue: str, tenant: str, run_cli: Cli
) -> None:
    # Given a job waiting for a worker
    job_id = Checkout(queue).send(1, tenant)

    # When it is cancelled
    code, said = run_cli("jobs", "cancel", job_id)

    # Then the command confirms it and the ledger agrees
    assert code == 0
    assert f"job {job_id}: cancelled" in said
    assert fairlane.jobs.get(job_id).state == "cancelled"


# -- dead letters ---------------------------------------------------------------------------------------


def test_dlq_list_shows_dead_jobs_and_raw_dead_letters(
    app: App, queue: str, checkout: Checkout, tenant: str, broker_url: str, run_cli: Cli
) -> None:
    # Given two dead jobs and a message that could never be decoded
    dead = _dead(app, queue, checkout, tenant, 1, 2)
    _publish_raw(broker_url, f"{queue}.normal", b"not json")
    eventually(lambda: dead_letter_depth(app, queue) == 3, message="undecodable message dead-lettered")

    # When the dead letters of the queue are listed
    code, listed = run_cli("dlq", "list", "--queue", queue)

    # Then both jobs are there with their error, and the raw one with its reason
    assert code == 0
    assert "2 dead jobs, oldest first" in listed
    assert all(job_id in listed for job_id in dead)
    assert listed.count("RuntimeError: card declined for order") == 2
    assert f"{queue}.XQ no ledger row: undecodable message" in listed
    assert "not json" in listed

    # And listing by tenant finds the same two jobs
    code, listed = run_cli("dlq", "list", "--tenant", tenant, "--queue", queue)
    assert code == 0 and all(job_id in listed for job_id in dead)


def test_dlq_show_prints_error_traceback_and_message(
    app: App, queue: str, checkout: Checkout, tenant: str, run_cli: Cli
) -> None:
    # Given a dead job
    [dead] = _dead(app, queue, checkout, tenant, 41)

    # When it is shown
    code, shown = run_cli("dlq", "show", dead)

    # Then its error, traceback and original message (with its arguments) are printed
    assert code == 0
    assert "RuntimeError: card declined for order 41" in shown
    assert "Traceback (most recent call last)" in shown
    assert '"args":[41]' in shown.replace(" ", "")
    assert "not dead" not in shown


def test_dlq_requeue_by_id_runs_the_job_again(
    app: App, queue: str, checkout: Checkout, tenant: str, run_cli: Cli
) -> None:
    # Given two dead jobs, and the cause fixed
    first, second = _dead(app, queue, checkout, tenant, 1, 2)
    checkout.healthy.set()

    # When one is requeued by id
    code, said = run_cli("dlq", "requeue", first)

    # Then it runs again from attempt 1 and succeeds; the other stays dead, in the dead-letter queue
    assert code == 0
    assert "requeued 1 dead job(s)" in said
    job = fairlane.jobs.wait(first, timeout=10)
    assert (job.state, job.attempts, job.result) == ("succeeded", 1, {"order": 1, "charged": True})
    assert fairlane.jobs.get(second).state == "dead"
    assert dead_letter_depth(app, queue) == 1


def test_dlq_requeue_by_tenant_reruns_only_that_tenants_jobs(
    app: App, queue: str, checkout: Checkout, tenant: str, run_cli: Cli
) -> None:
    # Given dead jobs of two tenants, and the cause fixed
    mine = _dead(app, queue, checkout, tenant, 1, 2, 3)
    [theirs] = _dead(app, queue, checkout, f"{tenant}-other", 4)
    checkout.healthy.set()

    # When the tenant's dead jobs are requeued
    code, said = run_cli("dlq", "requeue", "--tenant", tenant)

    # Then all of them succeed, and the other tenant's job stays dead
    assert code == 0
    assert "requeued 3 dead job(s)" in said
    assert all(fairlane.jobs.wait(job_id, timeout=10).state == "succeeded" for job_id in mine)
    assert fairlane.jobs.get(theirs).state == "dead"
    assert dead_letter_depth(app, queue) == 1


def test_dlq_requeue_without_a_selector_is_refused(
    app: App, queue: str, checkout: Checkout, tenant: str, run_cli: Cli
) -> None:
    # Given a dead job
    [dead] = _dead(app, queue, checkout, tenant, 1)

    # When requeue is run with no ids and no filter, then it refuses, naming what is missing
    with pytest.raises(SystemExit) as refused:
        run_cli("dlq", "requeue")
    refusal = str(refused.value.code)
    assert "give job ids or at least one of --actor, --tenant, --queue, --older-than" in refusal

    # And nothing was requeued
    assert fairlane.jobs.get(dead).state == "dead"
    assert dead_letter_depth(app, queue) == 1


def test_dlq_purge_removes_ledger_rows_and_rabbitmq_copies(
    app: App, queue: str, checkout: Checkout, tenant: str, broker_url: str, run_cli: Cli
) -> None:
    # Given two dead jobs and an undecodable dead letter, all in the dead-letter queue
    dead = _dead(app, queue, checkout, tenant, 1, 2)
    _publish_raw(broker_url, f"{queue}.normal", b"not json")
    eventually(lambda: dead_letter_depth(app, queue) == 3, message="undecodable message dead-lettered")

    # When everything dead before now is purged
    code, said = run_cli("dlq", "purge", "--older-than", "0s", "--queue", queue)

    # Then the ledger rows are gone, and so is every message in the dead-letter queue
    assert code == 0
    assert "purged 2 dead job(s)" in said
    for job_id in dead:
        with pytest.raises(fairlane.JobNotFound):
            fairlane.jobs.get(job_id)
    assert dead_letter_depth(app, queue) == 0
    code, listed = run_cli("dlq", "list", "--queue", queue)
    assert "0 dead jobs" in listed and "no ledger row" not in listed


@pytest.mark.parametrize("command", ["purge", "requeue"])
def test_invalid_duration_exits_with_status_2(
    app: App, command: str, run_cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    # When a duration has an unknown unit, then argparse rejects it with usage status 2
    with pytest.raises(SystemExit) as refused:
        run_cli("dlq", command, "--older-than", "5x")
    assert refused.value.code == 2
    assert "'5x' is not a duration like 90s, 30m, 12h or 7d" in capsys.readouterr().err


def test_tenants_set_and_list(app: App, queue: str, tenant: str, run_cli: Cli) -> None:
    # Given a tenant with a backlog (no worker runs)
    @fairlane.actor(queue_name=queue)
    def noop() -> None:
        pass

    noop.send_many([()] * 3, tenant=tenant)

    # When its weight and cap are set from the command line
    code, out = run_cli("tenants", "set", tenant, "--weight", "5", "--cap", "2")
    assert code == 0 and "updated" in out

    # Then the listing shows them with the jobs in flight
    code, out = run_cli("tenants", "--queue", queue)
    row = next(line for line in out.splitlines() if tenant in line)
    assert code == 0
    assert re.search(rf"{tenant}\s*│\s*0\s*│\s*3\s*│\s*5\s*│\s*2\s*│", row), row

    # And --no-cap clears the cap; a set with nothing to set is refused
    assert run_cli("tenants", "set", tenant, "--no-cap")[0] == 0
    assert fairlane.tenants.stats(queue=queue)[0].cap is None
    with pytest.raises(SystemExit):
        run_cli("tenants", "set", tenant)
    assert run_cli("tenants", "set", tenant, "--weight", "-1")[0] == 1
