"""Every rendered object is valid for the API server that will receive it.

Core objects are checked by kubernetes-validate against the OpenAPI schemas of Kubernetes 1.30
(the chart's kubeVersion floor) and of the newest release it ships, in strict mode (an unknown
field is an error, as `kubectl apply --validate=strict` makes it). The custom resources are
checked against models generated from the published CRDs, which PyPI carries offline
(cloudcoil-models-keda: KEDA 2.16; cloudcoil-models-prometheus-operator: 0.80): each object must
parse in strict mode (no coercion) and dump back unchanged (a field the CRD lacks is dropped by
the model, so a difference is an unknown field).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.chart.rendering import CI_VALUES, CUSTOM_KINDS, render_permutation

kubernetes_validate = pytest.importorskip("kubernetes_validate")

PERMUTATIONS = sorted(CI_VALUES)
#: The stories that render custom resources (KEDA or Prometheus Operator objects).
CRD_PERMUTATIONS = [
    name
    for name in PERMUTATIONS
    if any((obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS for obj in render_permutation(name).objects)
]
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.utils.latest_version()]


def _crd_models() -> dict[tuple[str, str], Any]:
    keda = pytest.importorskip(
        "cloudcoil.models.keda.v1alpha1", reason="cloudcoil-models-keda is not installed"
    )
    prometheus = pytest.importorskip(
        "cloudcoil.models.prometheus_operator.v1",
        reason="cloudcoil-models-prometheus-operator is not installed",
    )
    return {
        ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
        ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
        ("monitoring.coreos.com/v1", "PodMonitor"): prometheus.PodMonitor,
        ("monitoring.coreos.com/v1", "PrometheusRule"): prometheus.PrometheusRule,
    }


def _crd_problems(obj: dict[str, Any]) -> list[str]:
    """Why ``obj`` does not fit its CRD's published schema (empty: it fits)."""
    model = _crd_models()[(obj["apiVersion"], obj["kind"])]
    try:
        parsed = model.model_validate(obj, strict=True)
    except ValueError as error:  # pydantic's ValidationError
        return [str(error)]
    dumped = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return [] if dumped == obj else [f"fields the CRD does not have: {_dropped(obj, dumped)}"]


def _dropped(original: Any, dumped: Any, path: str = "") -> list[str]:
    if isinstance(original, dict) and isinstance(dumped, dict):
        return [
            missing
            for key, value in original.items()
            for missing in (
                [f"{path}/{key}"] if key not in dumped else _dropped(value, dumped[key], f"{path}/{key}")
            )
        ]
    if isinstance(original, list) and isinstance(dumped, list):
        return [
            m
            for index, pair in enumerate(zip(original, dumped, strict=False))
            for m in _dropped(*pair, f"{path}/{index}")
        ]
    return [] if original == dumped else [path]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_core_objects_match_the_kubernetes_schemas(permutation: str, version: str) -> None:
    # Given the core (non-CRD) objects of one story
    objects = [
        obj
        for obj in render_permutation(permutation).objects
        if (obj["apiVersion"], obj["kind"]) not in CUSTOM_KINDS
    ]
    assert objects

    # When each is validated strictly against that Kubernetes version's schema
    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{obj['kind']} {obj['metadata']['name']}: {error.message} at {list(error.path)}")

    # Then none is invalid (a kind without a schema would raise SchemaNotFoundError and fail)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("permutation", CRD_PERMUTATIONS)
def test_custom_resources_match_their_published_crds(permutation: str) -> None:
    # Given the KEDA and Prometheus Operator objects of one story
    objects = [
        obj
        for obj in render_permutation(permutation).objects
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS
    ]

    # Then each parses strictly against its CRD's model and loses no field
    problems = {f"{obj['kind']} {obj['metadata']['name']}": _crd_problems(obj) for obj in objects}
    assert not any(problems.values()), problems


def test_the_full_story_renders_every_custom_kind() -> None:
    # Given the story with everything on, then it exercises every custom kind the chart has
    rendered = {(obj["apiVersion"], obj["kind"]) for obj in render_permutation("full").objects}
    assert rendered >= CUSTOM_KINDS


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [
        ("ScaledObject", lambda o: o["spec"].update(minReplicaCount="one"), "minReplicaCount"),
        ("ScaledObject", lambda o: o["spec"]["triggers"][0].update(authRef="x"), "/spec/triggers/0/authRef"),
        ("PodMonitor", lambda o: o["spec"]["podMetricsEndpoints"][0].update(portName=9191), "portName"),
        (
            "PrometheusRule",
            lambda o: o["spec"]["groups"][0]["rules"][0].update(expression="up"),
            "expression",
        ),
    ],
)
def test_crd_check_catches_wrong_types_and_unknown_fields(kind: str, mutate: Any, expected: str) -> None:
    # Given a valid custom resource spoiled by one mistake
    (obj,) = [copy.deepcopy(o) for o in render_permutation("full").objects if o["kind"] == kind][:1]
    mutate(obj)

    # When it is checked, then the mistake is reported
    problems = _crd_problems(obj)
    assert problems and expected in problems[0], problems


def test_core_check_catches_unknown_fields() -> None:
    # Given a valid Deployment with a misspelt field
    deployment = copy.deepcopy(render_permutation("default").of_kind("Deployment")[0])
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 30

    # When it is validated, then strict mode rejects it
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30", strict=True)
