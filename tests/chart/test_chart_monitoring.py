"""Monitoring: the chart's alerts and dashboards are the package's, and its pods get scraped.

One source: helm/fairlane/files/alerts and files/dashboards are symlinks to
src/fairlane/observability/alerts and dashboards. Helm's loader follows them (and `helm package`
stores the linked content), so the chart reads the package's files through `.Files`. These
tests hold that in place: the chart's files are byte-equal to the package's, the rendered
PrometheusRule is the package's rule file, each dashboard ConfigMap holds a package dashboard
unchanged, and a packaged chart carries them too.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from fairlane import observability
from tests.chart.rendering import CHART_DIR, NAMESPACE, RELEASE, helm, render_permutation

FULL = f"{RELEASE}-fairlane"
OBSERVABILITY_DIR = Path(observability.__file__).parent
RULES_FILE = OBSERVABILITY_DIR / "alerts" / "fairlane.rules.yml"
DASHBOARDS = {path.name: path for path in sorted((OBSERVABILITY_DIR / "dashboards").glob("*.json"))}


def test_the_charts_files_are_the_packages_files() -> None:
    # Given the files Helm loads for the chart (symlinks followed, .helmignore applied)
    with helm.Chart.load(CHART_DIR) as chart:
        files = {item["name"]: item["data"] for item in chart.files}

    # Then the alert rules and every dashboard are there, byte for byte as the package has them
    assert files["files/alerts/fairlane.rules.yml"] == RULES_FILE.read_text()
    chart_dashboards = {
        name.removeprefix("files/dashboards/") for name in files if name.startswith("files/dashboards/")
    }
    assert chart_dashboards == set(DASHBOARDS)
    for name, path in DASHBOARDS.items():
        assert files[f"files/dashboards/{name}"] == path.read_text(), name

    # And the rules' promtool tests stay in the package (.helmignore)
    assert not [name for name in files if name.endswith(".test.yml")]


def test_prometheus_rule_is_the_packages_rule_file() -> None:
    # Given the story with the Prometheus Operator objects on
    rule = render_permutation("full").one("PrometheusRule", FULL)

    # Then its groups are exactly the package's alert groups, and Prometheus selects it
    assert rule["spec"] == {"groups": yaml.safe_load(RULES_FILE.read_text())["groups"]}
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboards_are_configmaps_for_the_grafana_sidecar() -> None:
    # Given the full story's dashboard ConfigMaps (Grafana's namespace, a folder annotation)
    rendered = render_permutation("full")
    configmaps = [
        obj for obj in rendered.of_kind("ConfigMap") if "grafana_dashboard" in obj["metadata"]["labels"]
    ]

    # Then there is one per package dashboard, labelled for the sidecar, in Grafana's namespace
    assert len(configmaps) == len(DASHBOARDS)
    for configmap in configmaps:
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["metadata"]["namespace"] == "monitoring"
        assert configmap["metadata"]["annotations"] == {"grafana_folder": "fairlane"}
        ((key, text),) = configmap["data"].items()

        # And each holds its dashboard unchanged (the text, not just an equal JSON)
        source = DASHBOARDS[key.removeprefix("fairlane-")]
        assert text == source.read_text().rstrip("\n")
        assert json.loads(text)["uid"] == json.loads(source.read_text())["uid"]


def test_dashboards_are_on_by_default_in_the_release_namespace() -> None:
    # Given the defaults, then the dashboards are rendered in the release's namespace
    rendered = render_permutation("default")
    configmaps = [
        obj for obj in rendered.of_kind("ConfigMap") if "grafana_dashboard" in obj["metadata"]["labels"]
    ]
    assert {obj["metadata"]["namespace"] for obj in configmaps} == {NAMESPACE}
    assert len(configmaps) == len(DASHBOARDS)


def test_pod_monitor_scrapes_every_workload_with_a_metrics_port() -> None:
    # Given the full story (workers, scheduler, API, migration)
    rendered = render_permutation("full")
    monitor = rendered.one("PodMonitor", FULL)
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}

    scraped = []
    for workload, pod in rendered.workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        ports = {port["name"] for container in pod["containers"] for port in container.get("ports", [])}
        # Then every long-running pod is selected and has the endpoint's named port
        if workload["kind"] == "Deployment":
            assert selector.items() <= labels.items(), workload["metadata"]["name"]
            assert endpoint["port"] in ports, workload["metadata"]["name"]
            scraped.append(labels["app.kubernetes.io/component"])
    assert sorted(set(scraped)) == ["api", "scheduler", "worker"]
    assert endpoint["path"] == "/metrics"


def test_probes_call_the_health_endpoints_on_the_health_port() -> None:
    # Given a worker and a scheduler pod
    rendered = render_permutation("default")
    for name in (f"{FULL}-worker-default", f"{FULL}-scheduler"):
        (container,) = rendered.one("Deployment", name)["spec"]["template"]["spec"]["containers"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}

        # Then startup and liveness ask /livez, readiness /readyz, all on the health port, and
        # the ports are the ones fairlane is told to serve
        assert container["startupProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
        config = rendered.one("ConfigMap", FULL)["data"]
        assert ports == {
            "metrics": int(config["FAIRLANE_METRICS_PORT"]),
            "health": int(config["FAIRLANE_HEALTH_PORT"]),
        }


def test_a_packaged_chart_carries_the_rules_and_dashboards(tmp_path: Path) -> None:
    # Given the chart packaged as `helm package` does (symlinks resolved into the archive)
    archive = helm.package(CHART_DIR, destination=tmp_path)

    # When the archive is loaded on its own, away from the repository
    with helm.Chart.load_archive(Path(archive).read_bytes()) as chart:
        files = {item["name"]: item["data"] for item in chart.files}

    # Then it holds the package's rules and dashboards, not links to them
    assert files["files/alerts/fairlane.rules.yml"] == RULES_FILE.read_text()
    assert {name for name in files if name.startswith("files/dashboards/")} == {
        f"files/dashboards/{name}" for name in DASHBOARDS
    }
