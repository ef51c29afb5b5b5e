"""The metrics catalog: its names, multiprocess mode, leader gauges, and the assets that use it."""

from __future__ import annotations

import json
import multiprocessing
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from fairlane.observability import catalog

OBSERVABILITY_DIR = Path(catalog.__file__).parent
DASHBOARDS = sorted((OBSERVABILITY_DIR / "dashboards").glob("*.json"))
RULES_FILE = OBSERVABILITY_DIR / "alerts" / "fairlane.rules.yml"
RULES_TEST_FILE = OBSERVABILITY_DIR / "alerts" / "fairlane.rules.test.yml"
METRIC_NAME = re.compile(r"fairlane_[a-z_]+")
SELECTOR = re.compile(r"(fairlane_[a-z_]+)(\{[^}]*\})?")

JOB_METRICS = {
    f"fairlane_jobs_{event}_total"
    for event in ("enqueued", "started", "succeeded", "failed", "retried", "dead", "cancelled", "deferred")
}
HISTOGRAMS = {
    f"fairlane_job_{name}_seconds_{suffix}"
    for name in ("queue_wait", "duration")
    for suffix in ("bucket", "sum", "count")
}
WORKER_GAUGES = {
    "fairlane_jobs_in_progress",
    "fairlane_oldest_running_job_age_seconds",
    "fairlane_ratelimit_used",
    "fairlane_ratelimit_limit",
}
LEADER_GAUGES = {
    "fairlane_backlog_jobs",
    "fairlane_oldest_pending_age_seconds",
    "fairlane_dead_letters",
    "fairlane_tenants_with_backlog",
    "fairlane_lane_queue_depth",
    "fairlane_lane_consumers",
    "fairlane_workers",
    "fairlane_scheduler_is_leader",
    "fairlane_scheduler_last_success_timestamp_seconds",
}
WITHOUT_QUEUE_LABEL = {
    "fairlane_ratelimit_used",
    "fairlane_ratelimit_limit",
    "fairlane_workers",
    "fairlane_scheduler_is_leader",
    "fairlane_scheduler_last_success_timestamp_seconds",
}
JOB = {"queue": "default", "actor": "send_email", "lane": "normal"}

# Runs in a fresh interpreter (spawn) so prometheus_client starts in multiprocess mode there.
_CHILD_CODE = """
from fairlane.observability import catalog
job = {"queue": "default", "actor": "send_email", "lane": "normal"}
catalog.JOBS_SUCCEEDED.labels(**job).inc()
catalog.JOBS_IN_PROGRESS.labels(**job).set(1)
catalog.OLDEST_RUNNING_JOB_AGE_SECONDS.labels(queue="default").set(__AGE__)
catalog.JOB_DURATION_SECONDS.labels(**job).observe(0.2)
catalog.WORKERS.set(7)
"""


def _strings_under(node: Any, keys: frozenset[str]) -> list[str]:
    if isinstance(node, dict):
        found = [value for key, value in node.items() if key in keys and isinstance(value, str)]
        return found + [text for value in node.values() for text in _strings_under(value, keys)]
    if isinstance(node, list):
        return [text for item in node for text in _strings_under(item, keys)]
    return []


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return _strings_under(dashboard["panels"], frozenset({"expr"}))


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for panel in panels for p in (panel, *_panels(panel.get("panels", [])))]


def _run_child(age: float) -> int:
    process = multiprocessing.get_context("spawn").Process(
        target=exec, args=(_CHILD_CODE.replace("__AGE__", repr(age)), {})
    )
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 0, f"child exited with {process.exitcode}"
    assert process.pid is not None
    return process.pid


def test_catalog_exports_exactly_the_specified_metrics() -> None:
    # Given the metric names the design specifies
    expected = JOB_METRICS | HISTOGRAMS | WORKER_GAUGES | LEADER_GAUGES

    # When the catalog lists its sample names
    # Then they are exactly those
    assert expected == catalog.ALL_METRIC_NAMES


def test_dashboards_and_alerts_use_only_catalog_metrics() -> None:
    # Given every PromQL expression of the dashboards (panels and variables), alert rules and rule tests
    texts: list[str] = []
    for path in DASHBOARDS:
        texts += _strings_under(json.loads(path.read_text()), frozenset({"expr", "query", "definition"}))
    rules = yaml.safe_load(RULES_FILE.read_text())
    texts += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    rule_tests = yaml.safe_load(RULES_TEST_FILE.read_text())
    texts += [series["series"] for test in rule_tests["tests"] for series in test["input_series"]]

    # When the metric names are extracted
    used = {name for text in texts for name in METRIC_NAME.findall(text)}

    # Then there are some, and each one is in the catalog (a renamed metric fails here)
    assert len(used) > 20
    assert used - catalog.ALL_METRIC_NAMES == set()


def test_every_alert_has_severity_annotations_and_a_test() -> None:
    # Given the alert rules and their promtool tests
    rules = yaml.safe_load(RULES_FILE.read_text())
    rule_tests = yaml.safe_load(RULES_TEST_FILE.read_text())
    tested = [case for test in rule_tests["tests"] for case in test["alert_rule_test"]]

    # When each alert is inspected
    (group,) = rules["groups"]
    assert group["name"] == "fairlane"
    for rule in group["rules"]:
        alert = rule["alert"]
        cases = [case for case in tested if case["alertname"] == alert]

        # Then it has a severity, documented annotations, a firing case and a quiet case
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, alert
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), alert
        assert any(case["exp_alerts"] for case in cases), f"{alert} has no firing case"
        assert any(not case["exp_alerts"] for case in cases), f"{alert} has no non-firing case"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.stem)
def test_dashboard_has_variables_unique_panel_ids_and_filters(path: Path) -> None:
    # Given a dashboard
    dashboard = json.loads(path.read_text())

    # When its variables, panels and queries are read
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    ids = [panel["id"] for panel in _panels(dashboard["panels"])]
    exprs = _dashboard_exprs(dashboard)

    # Then it is a schema 39 dashboard with a uid, a title and the three variables
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"].startswith("fairlane-") and dashboard["title"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "queue"):
        assert variables[name]["type"] == "query"
        assert "label_values(fairlane_" in variables[name]["definition"]
    # And panel ids are unique
    assert len(ids) == len(set(ids)) > 3
    # And every metric selector filters by namespace, and by queue where the metric has one
    assert exprs
    for expr in exprs:
        for name, selector in SELECTOR.findall(expr):
            assert 'namespace=~"$namespace"' in selector, f"{path.name}: {name} in {expr}"
            if name not in WITHOUT_QUEUE_LABEL:
                assert 'queue=~"$queue"' in selector, f"{path.name}: {name} in {expr}"


def test_dashboard_uids_are_unique() -> None:
    # Given every dashboard
    # When their uids are collected
    uids = [json.loads(path.read_text())["uid"] for path in DASHBOARDS]

    # Then there are the four dashboards, each with its own uid
    assert sorted(path.name for path in DASHBOARDS) == [
        "overview.json",
        "queues.json",
        "scheduler.json",
        "tenants.json",
    ]
    assert len(set(uids)) == len(uids)


def test_multiprocess_scrape_sums_processes_without_pid_label(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a wiped multiprocess directory that worker processes inherit
    stale = tmp_path / "counter_999999.db"
    stale.write_bytes(b"stale run")
    catalog.prepare_multiprocess_dir(tmp_path)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    # When two worker processes each count a success, run one job and set a leader gauge
    first = _run_child(age=10.0)
    _run_child(age=30.0)
    registry = catalog.worker_registry_for_scrape(tmp_path)
    exposition = generate_latest(registry).decode()

    # Then the pod's scrape sums counters and in-progress, takes the max age, and has no pid label
    assert registry.get_sample_value("fairlane_jobs_succeeded_total", JOB) == 2.0
    assert registry.get_sample_value("fairlane_jobs_in_progress", JOB) == 2.0
    assert registry.get_sample_value("fairlane_oldest_running_job_age_seconds", {"queue": "default"}) == 30.0
    assert registry.get_sample_value("fairlane_job_duration_seconds_count", JOB) == 2.0
    assert "pid=" not in exposition
    # And the leader gauges never reach the worker scrape
    assert "fairlane_workers" not in exposition

    # When the first process is marked dead
    catalog.mark_process_dead(first, tmp_path)

    # Then its live gauges stop counting while its counters stay
    assert registry.get_sample_value("fairlane_jobs_in_progress", JOB) == 1.0
    assert registry.get_sample_value("fairlane_jobs_succeeded_total", JOB) == 2.0


def test_prepare_multiprocess_dir_creates_and_wipes_only_metric_files(tmp_path: Path) -> None:
    # Given a directory with metric files of a previous run and an unrelated file
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"old")
    (directory / "gauge_livesum_1.db").write_bytes(b"old")
    (directory / "notes.txt").write_text("keep")

    # When it is prepared, and so is a path that does not exist yet
    catalog.prepare_multiprocess_dir(directory)
    catalog.prepare_multiprocess_dir(tmp_path / "new" / "dir")

    # Then the metric files are gone, the other file stays, and the new path exists
    assert sorted(p.name for p in directory.iterdir()) == ["notes.txt"]
    assert (tmp_path / "new" / "dir").is_dir()


def test_leader_gauges_live_only_on_the_leader_registry() -> None:
    # Given the leader registry and the default registry
    # When both are collected
    leader_names = {family.name for family in catalog.LEADER_REGISTRY.collect()}
    default_names = {family.name for family in REGISTRY.collect()}

    # Then the leader gauges are on the leader registry only
    assert leader_names == LEADER_GAUGES
    assert default_names & LEADER_GAUGES == set()


def test_leader_gauge_sets_replaces_and_clears_samples() -> None:
    # Given a leader gauge on its own registry
    registry = CollectorRegistry()
    gauge = catalog.LeaderGauge("fairlane_example_jobs", "Example.", ("queue", "lane"), registry=registry)

    # When samples are set one by one
    gauge.set(5, queue="default", lane="normal")
    gauge.set(2, queue="default", lane="low")

    # Then the registry exports them
    assert registry.get_sample_value("fairlane_example_jobs", {"queue": "default", "lane": "normal"}) == 5.0
    assert gauge.get(queue="default", lane="low") == 2.0

    # When the whole family is replaced by a snapshot
    gauge.replace({("default", "urgent"): 1})

    # Then lanes missing from the snapshot are no longer exported
    assert registry.get_sample_value("fairlane_example_jobs", {"queue": "default", "lane": "normal"}) is None
    assert registry.get_sample_value("fairlane_example_jobs", {"queue": "default", "lane": "urgent"}) == 1.0

    # When it is cleared
    gauge.clear()

    # Then nothing is exported
    assert "fairlane_example_jobs{" not in generate_latest(registry).decode()


def test_leader_gauge_rejects_wrong_labels() -> None:
    # Given a leader gauge labelled by queue and lane
    gauge = catalog.LeaderGauge("fairlane_example_depth", "Example.", ("queue", "lane"), registry=None)

    # When it is set with a missing or an extra label, or replaced with short keys
    # Then it raises instead of exporting an unbounded or partial label set
    with pytest.raises(ValueError):
        gauge.set(1, queue="default")
    with pytest.raises(ValueError):
        gauge.set(1, queue="default", lane="normal", tenant="acme")
    with pytest.raises(ValueError):
        gauge.replace({("default",): 1})
