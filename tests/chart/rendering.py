"""Renders the Helm chart offline, for the chart tests.

Helm's own Go SDK does the rendering (the ``helm-python-sdk`` package binds it through ctypes):
no ``helm`` binary, no cluster, no network. Values go through the chart's values.schema.json
and templates exactly as in ``helm template``. The permutations the tests cover are the values
files under ``helm/fairlane/ci/`` (the chart-testing convention), each one operator story.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip(
    "helm_python", reason="helm-python-sdk (Helm's Go SDK) has no wheel for this platform"
)

REPO_DIR = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_DIR / "helm" / "fairlane"
CI_VALUES = {
    path.name.removesuffix("-values.yaml"): path for path in sorted(CHART_DIR.glob("ci/*-values.yaml"))
}
RELEASE = "rel"
NAMESPACE = "jobs"
#: Kinds rendered from CRDs (KEDA, Prometheus Operator); every other kind is core Kubernetes.
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
#: Workload kinds and the path to their pod spec.
WORKLOAD_KINDS = ("Deployment", "Job")

# The Go library logs through Python's logging once asked to; INFO (e.g. "found symbolic link",
# for files/alerts and files/dashboards) is not news.
helm.enable_logging(logging.WARNING)


@dataclasses.dataclass(frozen=True)
class Rendered:
    """One render of the chart: its Kubernetes objects (hooks included) and NOTES.txt."""

    objects: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The objects of ``kind``, in render order."""
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        """The object of ``kind`` called ``name`` (fails the test if there is not exactly one)."""
        found = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    def names(self, kind: str) -> list[str]:
        """Names of the objects of ``kind``."""
        return [obj["metadata"]["name"] for obj in self.of_kind(kind)]

    def workloads(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Every (workload, pod spec) pair: Deployments and Jobs."""
        for obj in self.objects:
            if obj["kind"] in WORKLOAD_KINDS:
                yield obj, obj["spec"]["template"]["spec"]

    def containers(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """Every (workload, container) pair, init containers included."""
        for workload, pod in self.workloads():
            for container in pod.get("initContainers", []) + pod["containers"]:
                yield workload, container


@functools.cache
def _chart() -> Any:
    return helm.Chart.load(CHART_DIR)


@functools.cache
def _render(values_json: str) -> Rendered:
    manifests = _chart().render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE)
    objects = [
        document
        for path, text in sorted(manifests.items())
        if path.endswith((".yaml", ".yml"))
        for document in yaml.safe_load_all(text)
        if document
    ]
    notes = next((text for path, text in manifests.items() if path.endswith("NOTES.txt")), "")
    return Rendered(objects, notes)


def render(values: dict[str, Any]) -> Rendered:
    """Render the chart with ``values`` over its defaults (renders are cached by value)."""
    return _render(json.dumps(values, sort_keys=True))


def permutation_values(name: str) -> dict[str, Any]:
    """The values of ``helm/fairlane/ci/<name>-values.yaml``."""
    values: dict[str, Any] = yaml.safe_load(CI_VALUES[name].read_text())
    return values


def render_permutation(name: str) -> Rendered:
    """Render one of the ``ci/`` values files."""
    return render(permutation_values(name))


def render_error(values: dict[str, Any]) -> str:
    """The message with which rendering ``values`` fails (fails the test if it renders)."""
    try:
        _chart().render(values, name=RELEASE, namespace=NAMESPACE)
    except helm.HelmError as error:
        return str(error)
    raise AssertionError(f"the chart rendered values it should reject: {values}")


def lint(values: dict[str, Any], kube_version: str) -> dict[str, Any]:
    """``helm lint --strict`` of the chart with ``values`` against a Kubernetes version."""
    report: dict[str, Any] = helm.lint(
        CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version=kube_version
    )
    return report


def default_values() -> dict[str, Any]:
    """The chart's own values.yaml."""
    values: dict[str, Any] = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    return values


def with_connections(**values: Any) -> dict[str, Any]:
    """``values`` plus the connection URLs of the default permutation (rendering needs them)."""
    return {"connections": permutation_values("default")["connections"], **values}


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's env entries by name."""
    return {entry["name"]: entry for entry in container.get("env", [])}


def configmap_env(rendered: Rendered, container: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets through ``envFrom`` ConfigMaps of the render."""
    merged: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            for configmap in rendered.of_kind("ConfigMap"):
                if configmap["metadata"]["name"] == source["configMapRef"]["name"]:
                    merged.update(configmap.get("data", {}))
    return merged
