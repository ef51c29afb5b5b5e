"""checkov, the policy scanner platform teams run on manifests, finds nothing to fail.

Every story is rendered, each object written to its own file, and checkov's Kubernetes checks
run once over all of them, offline (--skip-download, no Prisma Cloud mappings). Accepted
findings are skipped in the chart itself, with a reason, as `checkov.io/skipN` annotations on
the workloads ("fairlane.checkovSkips" in _helpers.tpl), and only while the value causing them
is in effect: the full story pins its image by digest with pullPolicy Always, so its workloads
must not carry those two skips.

checkov ignores any file containing `{{` as an unrendered Helm template; the rendered dashboards
and alert rules carry Grafana's and Prometheus's own `{{ $labels.x }}` in their text, so the
braces in those files are swapped for `[[` `]]` before the scan (text no Kubernetes check reads).
The test asserts that every object was scanned.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.rendering import CHART_DIR, CI_VALUES, render_permutation

PERMUTATIONS = sorted(CI_VALUES)
CHECKOV = shutil.which("checkov", path=str(Path(sys.executable).parent)) or shutil.which("checkov")
#: The checks the chart skips, as "fairlane.checkovSkips" in _helpers.tpl names them.
DOCUMENTED_SKIPS = set(
    re.findall(r'"(CKV2?_K8S_\d+)=', (CHART_DIR / "templates" / "_helpers.tpl").read_text())
)

pytestmark = pytest.mark.skipif(CHECKOV is None, reason="checkov is not installed (pip install checkov)")


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """checkov's report over every story, and the files of each: {"files", "results", "summary"}."""
    root = tmp_path_factory.mktemp("rendered")
    files: dict[str, list[str]] = {}
    for permutation in PERMUTATIONS:
        directory = root / permutation
        directory.mkdir()
        for index, obj in enumerate(render_permutation(permutation).objects):
            path = directory / f"{index:02d}-{obj['kind']}-{obj['metadata']['name']}.yaml"
            text = yaml.safe_dump(obj, sort_keys=False).replace("{{", "[[").replace("}}", "]]")
            path.write_text(text)
            files.setdefault(permutation, []).append(f"/{permutation}/{path.name}")
    assert CHECKOV is not None
    completed = subprocess.run(
        [
            CHECKOV,
            "--directory",
            str(root),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_OUTPUT_COLOR": "1"},
    )
    # Exit code 1 means "failed checks", which the tests below report one by one.
    assert completed.returncode in (0, 1), completed.stderr[-3000:]
    reports = json.loads(completed.stdout)
    (report,) = [
        r for r in (reports if isinstance(reports, list) else [reports]) if r["check_type"] == "kubernetes"
    ]
    return {"files": files, "results": report["results"], "summary": report["summary"]}


def _in(permutation: str, checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [check for check in checks if check["file_path"].startswith(f"/{permutation}/")]


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_checkov_finds_no_failed_check(scan: dict[str, Any], permutation: str) -> None:
    # Given checkov's findings on one story
    failed = _in(permutation, scan["results"]["failed_checks"])

    # Then no check failed
    assert not failed, [
        f"{c['check_id']} {c['check_name']} in {c['file_path']} ({c['resource']})" for c in failed
    ]


def test_checkov_scanned_every_object(scan: dict[str, Any]) -> None:
    # Given every file written and checkov's report on them
    results, summary = scan["results"], scan["summary"]
    written = [path for paths in scan["files"].values() for path in paths]
    workloads = [path for path in written if re.search(r"/\d+-(Deployment|Job)-", path)]

    # Then checkov parsed every object (it counts each workload's pods once more, as the Pod
    # its graph checks look at), so no file was dropped as a template or unparseable
    assert summary["resource_count"] == len(written) + len(workloads)
    assert summary["parsing_errors"] == 0

    # And it evaluated every object of the kinds it has checks for, the rendered dashboards and
    # the ConfigMaps among them
    seen = {
        check["file_path"]
        for kind in ("passed_checks", "failed_checks", "skipped_checks")
        for check in results[kind]
    }
    checked_kinds = r"/\d+-(Deployment|Job|ConfigMap|Secret|ServiceAccount|Service|Ingress)-"
    missing = [path for path in written if re.search(checked_kinds, path) and path not in seen]
    assert not missing, missing


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_every_skip_is_documented_in_the_chart_with_a_reason(scan: dict[str, Any], permutation: str) -> None:
    # Given the checks checkov skipped in one story
    skipped = _in(permutation, scan["results"]["skipped_checks"])

    for check in skipped:
        # Then each is one the chart's skip list names, and carries a reason in words
        reason = check.get("check_result", {}).get("suppress_comment", "")
        assert check["check_id"] in DOCUMENTED_SKIPS, check["check_id"]
        assert len(reason.split()) >= 8, (check["check_id"], reason)


def test_skips_follow_the_values_that_cause_them(scan: dict[str, Any]) -> None:
    # Given the default story (version tag, IfNotPresent, NetworkPolicy on) and the full one
    # (digest, Always, NetworkPolicy on) and the one whose operator brings its own policy
    def skipped_ids(permutation: str) -> set[str]:
        return {check["check_id"] for check in _in(permutation, scan["results"]["skipped_checks"])}

    # Then the tag and pull-policy skips exist only where a tag and IfNotPresent are in effect,
    # and the NetworkPolicy skip only where the chart's policy is off
    assert {"CKV_K8S_43", "CKV_K8S_15"} <= skipped_ids("default")
    assert not {"CKV_K8S_43", "CKV_K8S_15"} & skipped_ids("full")
    assert "CKV2_K8S_6" not in skipped_ids("default") | skipped_ids("full")
    assert "CKV2_K8S_6" in skipped_ids("existing-secret")
