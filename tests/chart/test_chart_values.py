"""Values: a wrong one fails the render with a message naming it; every setting is reachable.

values.schema.json rejects wrong types, negative counts and unknown keys (Helm checks it before
rendering); "fairlane.validate" in _helpers.tpl fails on what a schema cannot say (the grace
period against the shutdown timeout, missing connections). The `config` map covers every field
of fairlane's Settings, and what the chart renders from it is what Settings parses.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from fairlane.settings import Settings, load_settings
from tests.chart.rendering import (
    CHART_DIR,
    RELEASE,
    permutation_values,
    render,
    render_error,
    render_permutation,
    with_connections,
)

FULL = f"{RELEASE}-fairlane"
#: Settings the chart sets itself rather than through `config`, and where from.
CHART_MANAGED = {
    "database_url": "the Secret",
    "broker_url": "the Secret",
    "auto_migrate": "always false (the migration hook Job migrates)",
    "metrics_port": "ports.metrics",
    "health_port": "ports.health",
    "metrics_dir": "the metrics emptyDir",
    "results_dir": "the results volume",
}


def _group(**fields: Any) -> dict[str, Any]:
    return {"name": "g", "modules": ["myapp.tasks"], "queues": ["tasks"], **fields}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"config": {"queue_typ": "quorum"}}, "additional properties 'queue_typ' not allowed"),
        ({"config": {"queue_type": "stream"}}, "/config/queue_type"),
        ({"config": {"max_retries": -1}}, "/config/max_retries"),
        ({"config": {"prefetch_per_thread": "two"}}, "/config/prefetch_per_thread"),
        ({"workerDefaults": {"replicas": -1}}, "/workerDefaults/replicas"),
        ({"workerGroups": [_group(threads="eight")]}, "/workerGroups/0/threads"),
        ({"workerGroups": [_group(threads=0)]}, "/workerGroups/0/threads"),
        ({"workerGroups": [_group(processes=65)]}, "/workerGroups/0/processes"),
        ({"workerGroups": [_group(shutdownTimeout=-5)]}, "/workerGroups/0/shutdownTimeout"),
        ({"workerGroups": [_group(queues=[])]}, "/workerGroups/0/queues"),
        ({"workerGroups": [_group(queues=["x'; DROP TABLE fairlane_jobs; --"])]}, "/workerGroups/0/queues/0"),
        ({"workerGroups": [_group(name="Big_Group")]}, "/workerGroups/0/name"),
        ({"workerGroups": [_group(autoscaling={"type": "vpa"})]}, "/workerGroups/0/autoscaling/type"),
        (
            {"workerGroups": [_group(autoscaling={"maxReplicas": 0})]},
            "/workerGroups/0/autoscaling/maxReplicas",
        ),
        ({"workerGroups": [_group(resources={"requests": {"cpu": "1", "memory": "1Gi"}})]}, "limits"),
        ({"workerGroups": []}, "/workerGroups"),
        ({"scheduler": {"replicas": -2}}, "/scheduler/replicas"),
        (
            {
                "securityContext": {
                    "runAsNonRoot": True,
                    "readOnlyRootFilesystem": False,
                    "allowPrivilegeEscalation": False,
                }
            },
            "/securityContext/readOnlyRootFilesystem",
        ),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
        ({"image": {"repository": "fairlane", "pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"api": {"enabled": True, "ingress": {"enabled": True}}}, "/api/ingress"),
        ({"ports": {"metrics": 0, "health": 9192}}, "/ports/metrics"),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(values: dict[str, Any], message: str) -> None:
    # Given values with one mistake (and valid connections)
    values = with_connections(**values)

    # When the chart renders, then it fails on the schema with the key's path
    error = render_error(values)
    assert "values don't meet the specifications of the schema" in error
    assert message in error, error


def test_connection_urls_must_be_postgresql_and_amqp() -> None:
    # Given an SQLite ledger (no use across pods) and a Redis broker
    values = {"connections": {"databaseUrl": "sqlite:///ledger.db", "brokerUrl": "redis://r:6379"}}

    # When the chart renders, then both are refused
    error = render_error(values)
    assert "/connections/databaseUrl" in error and "/connections/brokerUrl" in error


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"workerGroups": [_group(shutdownTimeout=600, terminationGracePeriodSeconds=600)]},
            "workerGroups[0] (g): terminationGracePeriodSeconds (600) must be larger than "
            "shutdownTimeout (600)",
        ),
        (
            {
                "workerDefaults": {"terminationGracePeriodSeconds": 60},
                "workerGroups": [_group(shutdownTimeout=90)],
            },
            "raise terminationGracePeriodSeconds (e.g. to 120) or lower shutdownTimeout",
        ),
        (
            {"workerGroups": [_group(), _group()]},
            'workerGroups[1]: the name "g" is used twice',
        ),
        (
            {"workerGroups": [_group(autoscaling={"type": "hpa", "minReplicas": 0})]},
            "a HorizontalPodAutoscaler cannot scale to zero",
        ),
        (
            {"workerGroups": [_group(autoscaling={"type": "keda", "minReplicas": 5, "maxReplicas": 2})]},
            "autoscaling.minReplicas (5) is larger than autoscaling.maxReplicas (2)",
        ),
        (
            {"api": {"ingress": {"enabled": True, "hosts": [{"host": "jobs.example.com"}]}}},
            "api.ingress.enabled needs api.enabled",
        ),
    ],
)
def test_inconsistent_values_fail_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    # Given values whose parts contradict each other
    values = with_connections(**values)

    # When the chart renders, then it stops with a message saying what to change
    assert message in render_error(values)


def test_missing_or_doubled_connections_fail_with_a_clear_message() -> None:
    # Given the chart's bare defaults: no connection at all
    # When it renders, then it asks for the URLs or an existing Secret
    assert "set connections.databaseUrl and connections.brokerUrl" in render_error({})

    # Given both an existing Secret and URLs, then it asks to choose
    values = with_connections()
    values["connections"] = {**values["connections"], "existingSecret": "mine"}
    assert "connections.existingSecret is set, so leave connections.databaseUrl" in render_error(values)


@pytest.mark.parametrize("permutation", ["default", "two-worker-groups", "full"])
def test_grace_period_exceeds_the_shutdown_timeout(permutation: str) -> None:
    # Given one story's worker groups
    values = permutation_values(permutation)
    rendered = render(values)

    for deployment in rendered.of_kind("Deployment"):
        if deployment["metadata"]["labels"]["app.kubernetes.io/component"] != "worker":
            continue
        pod = deployment["spec"]["template"]["spec"]
        args = pod["containers"][0]["args"]
        timeout = float(args[args.index("--shutdown-timeout") + 1])

        # Then the kubelet waits longer than the worker lets its jobs finish
        assert pod["terminationGracePeriodSeconds"] > timeout, deployment["metadata"]["name"]


def test_grace_period_defaults_to_the_timeout_plus_thirty_seconds() -> None:
    # Given a group with only a shutdown timeout, and one with both
    values = with_connections(
        workerGroups=[
            _group(name="a", shutdownTimeout=90.5),
            _group(name="b", shutdownTimeout=60, terminationGracePeriodSeconds=61),
        ]
    )

    # When the chart renders
    rendered = render(values)

    # Then the first gets ceil(90.5) + 30 and the second keeps its own
    grace = {
        name: rendered.one("Deployment", f"{FULL}-worker-{name}")["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"
        ]
        for name in ("a", "b")
    }
    assert grace == {"a": 121, "b": 61}


def test_every_fairlane_setting_is_reachable_from_values() -> None:
    # Given the chart's schema for `config` and fairlane's Settings
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    in_config = set(schema["definitions"]["config"]["properties"])
    fields = set(Settings.model_fields)

    # Then every setting is a `config` key or set by the chart itself, and nothing else is
    missing = fields - in_config - set(CHART_MANAGED)
    assert not missing, (
        f"settings {sorted(missing)} cannot be set from the Helm chart: add them to "
        "definitions.config in helm/fairlane/values.schema.json"
    )
    assert not in_config - fields, (
        f"the chart offers settings fairlane does not have: {sorted(in_config - fields)}"
    )
    assert not in_config & set(CHART_MANAGED)


def test_rendered_settings_are_what_fairlane_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the story with settings of every kind (numbers, booleans, lists, JSON objects)
    values = permutation_values("full")
    rendered = render(values)
    data = rendered.one("ConfigMap", FULL)["data"]

    # When fairlane's Settings read the ConfigMap as the pods' environment
    for name in [name for name in os.environ if name.startswith("FAIRLANE_")]:
        monkeypatch.delenv(name)
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()

    # Then every value arrives as the operator wrote it
    config = values["config"]
    assert settings.auto_migrate is False
    assert settings.queue_type == "quorum"
    assert settings.lanes == tuple(config["lanes"])
    assert settings.prefetch_per_thread == 1 and settings.admission_interval == 0.25
    assert settings.tenant_cap == 8 and settings.queue_tenant_caps == {"exports": 2}
    assert settings.lane_min_shares == config["lane_min_shares"]
    assert settings.rate_limits["openai"].tokens_per_minute == 450000
    assert settings.cron[0].name == "nightly" and settings.cron[0].args == ([],)
    assert settings.retention_succeeded_days == 14
    assert settings.max_priority is None  # null means fairlane's default
    assert str(settings.metrics_dir) == "/var/lib/fairlane/metrics"
    assert (settings.metrics_port, settings.health_port) == (9191, 9192)


def test_numbers_render_as_plain_decimals() -> None:
    # Given large and fractional settings
    values = with_connections(
        config={"time_limit": 86_400_000, "max_backoff": 3_600_000, "heartbeat_timeout": 12.5}
    )

    # When the chart renders, then no value turns into exponent notation
    data = render(values).one("ConfigMap", FULL)["data"]
    assert data["FAIRLANE_TIME_LIMIT"] == "86400000"
    assert data["FAIRLANE_MAX_BACKOFF"] == "3600000"
    assert data["FAIRLANE_HEARTBEAT_TIMEOUT"] == "12.5"


def test_values_changes_roll_the_pods() -> None:
    # Given two renders that differ in one setting
    before = render_permutation("default").one("Deployment", f"{FULL}-worker-default")
    after = render(with_connections(config={"max_retries": 7})).one("Deployment", f"{FULL}-worker-default")

    # Then the pod template's config checksum differs, so Kubernetes rolls the pods
    def checksum(deployment: dict[str, Any]) -> str:
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum(before) != checksum(after)
