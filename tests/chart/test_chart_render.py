"""The chart renders and lints for every operator story, and deploys what each one asks for.

Each permutation is a values file under helm/fairlane/ci/ (default, two worker groups, KEDA,
HPA, an existing Secret, the API with a restricted NetworkPolicy, everything on). The commands
the pods run are parsed by fairlane's own argument parser, so a flag the CLI does not have fails
here rather than in a crash-looping pod.
"""

from __future__ import annotations

import contextlib
import io

import pytest

from fairlane.cli import build_parser
from tests.chart.rendering import (
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    configmap_env,
    container_env,
    default_values,
    lint,
    permutation_values,
    render,
    render_permutation,
    with_connections,
)

PERMUTATIONS = sorted(CI_VALUES)
FULL = f"{RELEASE}-fairlane"


def _parses(args: list[str]) -> bool:
    """Whether the installed ``fairlane`` CLI accepts ``args`` (argparse exits on an error)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit:
        return False
    return True


def _has_command(name: str) -> bool:
    """Whether ``fairlane NAME`` is a command (its --help exits 0; an unknown one exits 2)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args([name, "--help"])
    except SystemExit as stop:
        return stop.code == 0
    return True


@pytest.mark.parametrize("kube_version", ["v1.30.0", "v1.37.0"])
@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_chart_lints_clean(permutation: str, kube_version: str) -> None:
    # Given one operator story's values
    values = permutation_values(permutation)

    # When helm lint --strict runs on the chart with them
    report = lint(values, kube_version)

    # Then it finds no error and no warning (only the informational "icon is recommended")
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_every_object_is_namespaced_and_labelled_for_the_release(permutation: str) -> None:
    # Given a render of one story
    rendered = render_permutation(permutation)

    # Then every object lives in the release's namespace (dashboards may go to Grafana's) and
    # carries the release's labels
    for obj in rendered.objects:
        metadata = obj["metadata"]
        expected = {
            NAMESPACE,
            permutation_values(permutation).get("monitoring", {}).get("dashboards", {}).get("namespace"),
        }
        assert metadata["namespace"] in expected, metadata
        assert metadata["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert metadata["labels"]["app.kubernetes.io/name"] == "fairlane"


def test_defaults_deploy_one_worker_group_the_scheduler_and_the_migration() -> None:
    # Given the chart's defaults (with the connection URLs an operator must give)
    rendered = render_permutation("default")

    # Then the release is one worker group, a two-replica scheduler, the migration hook and
    # the dashboards; no API, no CRD objects
    assert rendered.names("Deployment") == [f"{FULL}-scheduler", f"{FULL}-worker-default"]
    assert rendered.one("Deployment", f"{FULL}-scheduler")["spec"]["replicas"] == 2
    assert rendered.one("Deployment", f"{FULL}-worker-default")["spec"]["replicas"] == 2
    assert rendered.names("Job") == [f"{FULL}-migrate"]
    assert rendered.of_kind("Service") == [] and rendered.of_kind("Ingress") == []
    kinds = {obj["kind"] for obj in rendered.objects}
    assert kinds.isdisjoint({"ScaledObject", "TriggerAuthentication", "PodMonitor", "PrometheusRule"})
    assert len(rendered.of_kind("NetworkPolicy")) == 1


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_worker_commands_are_ones_the_fairlane_cli_accepts(permutation: str) -> None:
    # Given every worker group of one story, merged over workerDefaults as the chart does
    values = permutation_values(permutation)
    defaults = default_values()["workerDefaults"]
    groups = values.get("workerGroups", default_values()["workerGroups"])
    rendered = render(values)

    for group in groups:
        merged = {**defaults, **values.get("workerDefaults", {}), **group}
        deployment = rendered.one("Deployment", f"{FULL}-worker-{group['name']}")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]

        # When fairlane's own parser reads the container's arguments
        args = build_parser().parse_args(container["args"])

        # Then it is `fairlane worker MODULE… --processes N --threads T --shutdown-timeout S`
        assert args.command == "worker"
        assert args.modules == group["modules"]
        assert args.processes == merged["processes"]
        assert args.threads == merged["threads"]
        assert args.shutdown_timeout == float(merged["shutdownTimeout"])


def test_scheduler_migration_and_api_commands_are_ones_the_cli_accepts() -> None:
    # Given the story with everything on
    rendered = render_permutation("full")

    # When the parser reads the scheduler's and the migration's arguments, then they are valid
    (scheduler,) = rendered.one("Deployment", f"{FULL}-scheduler")["spec"]["template"]["spec"]["containers"]
    assert scheduler["args"] == ["scheduler", "myapp.cron"] and _parses(scheduler["args"])
    (migrate,) = rendered.one("Job", f"{FULL}-migrate")["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["migrate"] and _parses(migrate["args"])

    # And the API runs `fairlane api --host 0.0.0.0 --port 8000`, which the CLI must accept
    # once the command exists
    (api,) = rendered.one("Deployment", f"{FULL}-api")["spec"]["template"]["spec"]["containers"]
    assert api["args"] == ["api", "--host", "0.0.0.0", "--port", "8000"]
    if not _has_command("api"):
        pytest.skip("`fairlane api` is not in the CLI yet: the chart's API command is unchecked")
    assert _parses(api["args"])


def test_the_migration_runs_as_a_hook_before_install_and_upgrade_with_its_own_config() -> None:
    # Given the default render
    rendered = render_permutation("default")

    # Then the migration Job is a pre-install,pre-upgrade hook running `fairlane migrate`
    job = rendered.one("Job", f"{FULL}-migrate")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"

    # And the ConfigMap, Secret and ServiceAccount it uses are hooks created before it (the
    # release's own do not exist yet on a first install)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    hook_objects = [
        rendered.one("ConfigMap", container["envFrom"][0]["configMapRef"]["name"]),
        rendered.one(
            "Secret", container_env(container)["FAIRLANE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
        ),
        rendered.one("ServiceAccount", pod["serviceAccountName"]),
    ]
    for obj in hook_objects:
        hook = obj["metadata"]["annotations"]
        assert hook["helm.sh/hook"] == "pre-install,pre-upgrade", obj["kind"]
        assert int(hook["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"]), obj["kind"]
        assert "before-hook-creation" in hook["helm.sh/hook-delete-policy"]


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_no_pod_ever_migrates_the_ledger_itself(permutation: str) -> None:
    # Given every container of one story
    rendered = render_permutation(permutation)

    for workload, container in rendered.containers():
        # When its environment is assembled as the kubelet does (env wins over envFrom)
        environment = configmap_env(rendered, container)
        environment.update(
            {name: entry["value"] for name, entry in container_env(container).items() if "value" in entry}
        )

        # Then FAIRLANE_AUTO_MIGRATE is false: only `fairlane migrate` changes the schema
        assert environment.get("FAIRLANE_AUTO_MIGRATE") == "false", workload["metadata"]["name"]


def test_two_worker_groups_are_two_deployments_with_their_own_settings() -> None:
    # Given the two-group story
    rendered = render_permutation("two-worker-groups")

    # Then each group is a Deployment selecting only its own pods
    default = rendered.one("Deployment", f"{FULL}-worker-default")
    exports = rendered.one("Deployment", f"{FULL}-worker-exports")
    assert default["spec"]["selector"] != exports["spec"]["selector"]
    for deployment, group in ((default, "default"), (exports, "exports")):
        assert deployment["spec"]["selector"]["matchLabels"]["fairlane/worker-group"] == group

    # And the exports group has its placement, resources and per-group setting
    pod = exports["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"workload": "batch"}
    assert pod["tolerations"][0]["key"] == "batch"
    (container,) = pod["containers"]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert container_env(container)["FAIRLANE_PREFETCH_PER_THREAD"]["value"] == "1"
    assert "FAIRLANE_PREFETCH_PER_THREAD" not in container_env(
        default["spec"]["template"]["spec"]["containers"][0]
    )

    # And each group has its own PodDisruptionBudget
    assert sorted(rendered.names("PodDisruptionBudget")) == [
        f"{FULL}-scheduler",
        f"{FULL}-worker-default",
        f"{FULL}-worker-exports",
    ]


def test_a_group_overrides_defaults_even_with_zero_and_false() -> None:
    # Given a group paused at 0 replicas with its disruption budget turned off
    values = with_connections(
        workerGroups=[
            {
                "name": "paused",
                "modules": ["m"],
                "queues": ["q"],
                "replicas": 0,
                "podDisruptionBudget": {"enabled": False},
            },
        ]
    )

    # When the chart renders
    rendered = render(values)

    # Then the zero and the false win over workerDefaults (2 replicas, budget on)
    assert rendered.one("Deployment", f"{FULL}-worker-paused")["spec"]["replicas"] == 0
    assert rendered.of_kind("PodDisruptionBudget") == [
        rendered.one("PodDisruptionBudget", f"{FULL}-scheduler")
    ]


def test_scheduler_survives_a_node_loss_and_can_be_switched_off() -> None:
    # Given the default render
    scheduler = render_permutation("default").one("Deployment", f"{FULL}-scheduler")

    # Then its two replicas must sit on different nodes, and a disruption takes one at a time
    pod = scheduler["spec"]["template"]["spec"]
    by_node = [c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == "kubernetes.io/hostname"]
    assert by_node and by_node[0]["whenUnsatisfiable"] == "DoNotSchedule" and by_node[0]["maxSkew"] == 1
    selector = scheduler["spec"]["selector"]["matchLabels"]
    assert by_node[0]["labelSelector"]["matchLabels"] == selector
    budget = render_permutation("default").one("PodDisruptionBudget", f"{FULL}-scheduler")
    assert budget["spec"]["maxUnavailable"] == 1 and budget["spec"]["selector"]["matchLabels"] == selector

    # When it is switched off, then no scheduler objects remain
    rendered = render(with_connections(scheduler={"enabled": False}))
    assert f"{FULL}-scheduler" not in rendered.names("Deployment") + rendered.names("PodDisruptionBudget")


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_every_deployment_has_a_disruption_budget_and_spreads_over_nodes(permutation: str) -> None:
    # Given one story's Deployments
    rendered = render_permutation(permutation)
    budgets = {
        tuple(sorted(budget["spec"]["selector"]["matchLabels"].items()))
        for budget in rendered.of_kind("PodDisruptionBudget")
    }

    for deployment in rendered.of_kind("Deployment"):
        selector = tuple(sorted(deployment["spec"]["selector"]["matchLabels"].items()))
        pod = deployment["spec"]["template"]["spec"]

        # Then a PodDisruptionBudget selects exactly its pods, unless the story turned it off
        group_budget_off = any(
            group.get("podDisruptionBudget", {}).get("enabled") is False
            for group in permutation_values(permutation).get("workerGroups", [])
        )
        assert selector in budgets or group_budget_off, deployment["metadata"]["name"]

        # And its pods spread across nodes
        keys = {constraint["topologyKey"] for constraint in pod["topologySpreadConstraints"]}
        assert "kubernetes.io/hostname" in keys, deployment["metadata"]["name"]


def test_api_is_off_by_default_and_on_brings_service_ingress_and_probes() -> None:
    # Given the API story
    rendered = render_permutation("api-network-policy")

    # Then the API Deployment, its Service and its Ingress exist and point at each other
    api = rendered.one("Deployment", f"{FULL}-api")
    service = rendered.one("Service", f"{FULL}-api")
    ingress = rendered.one("Ingress", f"{FULL}-api")
    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    assert ingress["spec"]["rules"][0]["host"] == "jobs.example.com"
    assert ingress["spec"]["tls"][0]["secretName"] == "jobs-example-com-tls"
    (container,) = api["spec"]["template"]["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000, "metrics": 9191}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"

    # And the NOTES tell how to reach it
    assert "https://jobs.example.com" in rendered.notes


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_notes_say_how_to_reach_the_api_metrics_and_dashboards(permutation: str) -> None:
    # Given one story's NOTES.txt
    notes = render_permutation(permutation).notes

    # Then it has a section for each, with a command to run
    for heading in ("API:", "Metrics:", "Dashboards:"):
        assert heading in notes
    assert "/metrics" in notes and "port-forward" in notes
    assert "grafana_dashboard=1" in notes or "dashboards.enabled=false" in notes
