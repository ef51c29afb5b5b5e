"""Secure defaults: what a platform team's admission policies and auditors look for.

Every container runs as a non-root numeric user with a read-only root filesystem, no privilege
escalation, no capabilities, the runtime's seccomp profile and resource limits; no pod mounts a
ServiceAccount token; the ledger and broker passwords live only in a Secret. The paths the chart
mounts writable are the ones the image expects (checked against the Dockerfile).
"""

from __future__ import annotations

import json
import re

import pytest

from tests.chart.rendering import (
    CI_VALUES,
    RELEASE,
    REPO_DIR,
    container_env,
    permutation_values,
    render,
    render_error,
    render_permutation,
    with_connections,
)

PERMUTATIONS = sorted(CI_VALUES)
FULL = f"{RELEASE}-fairlane"
#: The passwords in the ci/ values files' connection URLs.
PASSWORDS = ("ci-db-password", "ci-mq-password")


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_every_container_is_non_root_read_only_unprivileged_and_limited(permutation: str) -> None:
    # Given every workload and container of one story
    rendered = render_permutation(permutation)
    containers = list(rendered.containers())
    assert containers

    for workload, pod in rendered.workloads():
        name = workload["metadata"]["name"]
        # Then the pod runs as a non-root numeric user with the runtime's seccomp profile and
        # mounts no ServiceAccount token
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name

    for workload, container in containers:
        name = f"{workload['metadata']['name']}/{container['name']}"
        security = container["securityContext"]
        # And each container: non-root, read-only root filesystem, no escalation, no capability
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] >= 10000, name
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security.get("privileged", False) is False, name
        assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"], name
        # And requests and limits for CPU and memory
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (name, kind)


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_writable_paths_are_volumes(permutation: str) -> None:
    # Given every container of one story (its root filesystem is read-only)
    rendered = render_permutation(permutation)
    for workload, pod in rendered.workloads():
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        for container in pod["containers"]:
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}

            # Then /tmp and the metrics directory are emptyDirs, and the results directory a
            # volume (emptyDir, or the operator's shared claim)
            assert "emptyDir" in volumes[mounts["/tmp"]], workload["metadata"]["name"]
            assert "emptyDir" in volumes[mounts["/var/lib/fairlane/metrics"]]
            results = volumes[mounts["/var/lib/fairlane/results"]]
            claim = permutation_values(permutation).get("results", {}).get("existingClaim")
            if claim:
                assert results["persistentVolumeClaim"]["claimName"] == claim
            else:
                assert "emptyDir" in results


def test_mounted_paths_and_user_match_the_image() -> None:
    # Given the image's recipe (written beside the chart; its contract with the chart is the
    # user, the entrypoint and the two writable directories)
    dockerfile = REPO_DIR / "Dockerfile"
    if not dockerfile.exists():
        pytest.skip("no Dockerfile in the repository yet: the chart's image contract is unchecked")
    text = dockerfile.read_text()
    env = dict(re.findall(r"(FAIRLANE_[A-Z_]+)=(\S+)", text))

    # When the chart renders
    rendered = render_permutation("default")
    (container,) = rendered.one("Deployment", f"{FULL}-worker-default")["spec"]["template"]["spec"][
        "containers"
    ]
    configmap = rendered.one("ConfigMap", FULL)["data"]

    # Then the image runs `fairlane` as uid 10001, and its metrics and results directories are
    # the ones the chart mounts and configures
    assert re.search(r'^ENTRYPOINT \["fairlane"\]', text, re.MULTILINE)
    assert re.search(r"^USER 10001(:10001)?$", text, re.MULTILINE)
    assert container["securityContext"]["runAsUser"] == 10001
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    for name in ("FAIRLANE_METRICS_DIR", "FAIRLANE_RESULTS_DIR"):
        assert env[name] == configmap[name] and env[name] in mounts, name
    assert "command" not in container  # the image's entrypoint is `fairlane`


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_passwords_appear_only_in_secrets(permutation: str) -> None:
    # Given a story whose connection URLs carry passwords
    rendered = render_permutation(permutation)

    for obj in rendered.objects:
        if obj["kind"] == "Secret":
            continue
        # Then no other object holds them: not a ConfigMap, not an annotation, not an env value
        text = json.dumps(obj)
        for password in PASSWORDS:
            assert password not in text, (obj["kind"], obj["metadata"]["name"])
        if obj["kind"] == "ConfigMap":
            assert not re.search(r"(postgres(ql)?|amqps?)://", text), obj["metadata"]["name"]


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_connection_urls_come_from_the_secret_by_reference(permutation: str) -> None:
    # Given every container of one story
    values = permutation_values(permutation)
    connections = values["connections"]
    secret_name = connections.get("existingSecret") or FULL
    keys = connections.get("existingSecretKeys") or {
        "databaseUrl": "FAIRLANE_DATABASE_URL",
        "brokerUrl": "FAIRLANE_BROKER_URL",
    }
    rendered = render(values)

    for workload, container in rendered.containers():
        env = container_env(container)
        # Then both URLs are secretKeyRefs into the release's Secret (the migration hook has its
        # own copy) or the operator's, under the right keys; no env value is a literal URL
        for variable, key in (("FAIRLANE_DATABASE_URL", "databaseUrl"), ("FAIRLANE_BROKER_URL", "brokerUrl")):
            ref = env[variable]["valueFrom"]["secretKeyRef"]
            assert "value" not in env[variable]
            expected = (
                {secret_name, f"{FULL}-migrate"} if not connections.get("existingSecret") else {secret_name}
            )
            assert ref["name"] in expected, workload["metadata"]["name"]
            assert ref["key"] == keys[key]
        for entry in env.values():
            assert not re.search(r"(postgres(ql)?|amqps?)://", entry.get("value", ""))


def test_the_secret_holds_the_urls_and_is_skipped_for_an_existing_one() -> None:
    # Given the default story, then its Secret holds the two URLs
    rendered = render_permutation("default")
    secret = rendered.one("Secret", FULL)
    assert set(secret["data"]) == {"FAIRLANE_DATABASE_URL", "FAIRLANE_BROKER_URL"}

    # Given an existing Secret instead, then the chart renders none of its own
    rendered = render_permutation("existing-secret")
    assert rendered.of_kind("Secret") == []


def test_a_connection_url_cannot_be_put_in_the_configmap() -> None:
    # Given values that try to pass the database URL as a plain setting
    values = with_connections(config={"database_url": "postgresql://u:secret@db/f"})

    # When the chart renders, then the schema refuses it
    assert "additional properties 'database_url' not allowed" in render_error(values)


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_service_accounts_mount_no_token(permutation: str) -> None:
    # Given one story's ServiceAccounts, then none mounts a token automatically
    for account in render_permutation(permutation).of_kind("ServiceAccount"):
        assert account["automountServiceAccountToken"] is False
