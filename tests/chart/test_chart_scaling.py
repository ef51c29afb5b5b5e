"""Autoscaling: KEDA on the ledger backlog of exactly a group's queues, or an HPA on CPU.

The KEDA trigger's SQL is run against a ledger built from fairlane's own table definitions
(ledger/schema.py, on SQLite in memory) holding jobs of every state in several queues: it must
count the group's pending, retrying and dispatched jobs and nothing else.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
import sqlalchemy as sa

from fairlane.ledger import schema
from tests.chart.rendering import RELEASE, permutation_values, render, render_permutation, with_connections

FULL = f"{RELEASE}-fairlane"
_ids = itertools.count()


def _ledger(jobs: list[tuple[str, str]]) -> sa.Engine:
    """An in-memory ledger holding one job per (queue, state)."""
    engine = sa.create_engine("sqlite://")
    schema.metadata.create_all(engine)
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "id": f"job-{next(_ids)}",
            "actor": "a",
            "queue": queue,
            "tenant": "t",
            "lane": "normal",
            "lane_rank": 2,
            "state": state,
            "stride_pass": 0.0,
            "message": "{}",
            "enqueued_at": now,
            "next_run_at": now,
            "updated_at": now,
        }
        for queue, state in jobs
    ]
    if rows:
        with engine.begin() as connection:
            connection.execute(schema.jobs.insert(), rows)
    return engine


def _trigger(rendered: Any, group: str) -> dict[str, Any]:
    (trigger,) = rendered.one("ScaledObject", f"{FULL}-worker-{group}")["spec"]["triggers"]
    return dict(trigger)


def test_keda_counts_the_backlog_of_exactly_the_groups_queues() -> None:
    # Given the two-group story (default: ingest, webhooks; exports: exports, reports) and a
    # ledger with one job in every state of those queues and of a stranger queue
    rendered = render_permutation("two-worker-groups")
    queues = ["ingest", "webhooks", "exports", "reports", "exports2", "report"]
    engine = _ledger([(queue, state) for queue in queues for state in schema.STATES])

    # When the exports group's trigger query runs
    trigger = _trigger(rendered, "exports")
    with engine.connect() as connection:
        backlog = connection.execute(sa.text(trigger["metadata"]["query"])).scalar_one()

    # Then it counts pending, retrying and dispatched jobs of exports and reports only (not
    # running or finished ones, not a queue whose name merely looks alike)
    assert backlog == 2 * 3
    assert trigger["type"] == "postgresql"
    assert rendered.names("ScaledObject") == [f"{FULL}-worker-exports"]


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        ([], 0),
        ([("llm", "pending")], 1),
        ([("llm", "retrying"), ("llm", "dispatched"), ("llm", "running")], 2),
        ([("llm", "succeeded"), ("llm", "dead"), ("llm", "cancelled")], 0),
        ([("ingest", "pending"), ("llm", "pending"), ("LLM", "pending")], 1),
    ],
)
def test_keda_query_counts_waiting_and_dispatched_jobs(jobs: list[tuple[str, str]], expected: int) -> None:
    # Given the `llm` group of the full story and a ledger holding `jobs`
    trigger = _trigger(render_permutation("full"), "llm")
    engine = _ledger(jobs)

    # When its query runs, then it returns the group's backlog
    with engine.connect() as connection:
        assert connection.execute(sa.text(trigger["metadata"]["query"])).scalar_one() == expected


def test_scaled_object_targets_the_group_with_a_backlog_per_replica() -> None:
    # Given the KEDA story
    values = permutation_values("keda")
    rendered = render(values)
    scaling = values["workerDefaults"]["autoscaling"]

    # Then the ScaledObject scales the group's Deployment between its bounds, asking one pod
    # per `targetBacklogPerReplica` jobs (an average over the pods) and waking above the
    # activation backlog
    scaled = rendered.one("ScaledObject", f"{FULL}-worker-default")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{FULL}-worker-default",
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
        scaling["minReplicas"],
        scaling["maxReplicas"],
    )
    (trigger,) = spec["triggers"]
    assert trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["targetQueryValue"] == "200"
    assert trigger["metadata"]["activationTargetQueryValue"] == "5"

    # And KEDA owns the replica count: the Deployment leaves it out
    assert "replicas" not in rendered.one("Deployment", f"{FULL}-worker-default")["spec"]


@pytest.mark.parametrize(
    ("permutation", "secret", "key"),
    [("keda", FULL, "FAIRLANE_DATABASE_URL"), ("existing-secret", "fairlane-connections", "ledger-url")],
)
def test_keda_reads_the_ledger_url_from_the_secret(permutation: str, secret: str, key: str) -> None:
    # Given a KEDA story, with the chart's Secret or the operator's
    rendered = render_permutation(permutation)

    # Then the trigger authenticates through a TriggerAuthentication reading the ledger URL from
    # that Secret, and carries no connection string itself
    trigger = _trigger(rendered, "default")
    auth = rendered.one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [{"parameter": "connection", "name": secret, "key": key}]
    assert not {"connection", "connectionFromEnv", "host", "password"} & set(trigger["metadata"])


def test_hpa_scales_the_group_on_cpu() -> None:
    # Given the HPA story
    rendered = render_permutation("hpa")

    # Then a HorizontalPodAutoscaler scales the group's Deployment on CPU between its bounds,
    # and the Deployment leaves the replica count to it
    hpa = rendered.one("HorizontalPodAutoscaler", f"{FULL}-worker-default")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{FULL}-worker-default"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}
    assert "replicas" not in rendered.one("Deployment", f"{FULL}-worker-default")["spec"]
    assert rendered.of_kind("ScaledObject") == []


def test_without_autoscaling_the_deployment_keeps_its_replicas() -> None:
    # Given a group with autoscaling none and 5 replicas
    values = with_connections(workerDefaults={"replicas": 5})

    # When the chart renders, then no autoscaler exists and the Deployment has its 5 replicas
    rendered = render(values)
    assert rendered.of_kind("HorizontalPodAutoscaler") == [] and rendered.of_kind("ScaledObject") == []
    assert rendered.one("Deployment", f"{FULL}-worker-default")["spec"]["replicas"] == 5
