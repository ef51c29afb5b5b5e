"""The Prometheus alert rules and dashboard queries are valid PromQL, and the alert unit tests pass."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fairlane import observability

OBSERVABILITY_DIR = Path(observability.__file__).parent
ALERTS_DIR = OBSERVABILITY_DIR / "alerts"
RULES_FILE = ALERTS_DIR / "fairlane.rules.yml"
RULES_TEST_FILE = ALERTS_DIR / "fairlane.rules.test.yml"
DASHBOARDS = sorted((OBSERVABILITY_DIR / "dashboards").glob("*.json"))
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package `prometheus`: apt-get install prometheus)",
)


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [value for key, value in node.items() if key == "expr" and isinstance(value, str)]
        return found + [expr for value in node.values() for expr in _exprs(value)]
    if isinstance(node, list):
        return [expr for item in node for expr in _exprs(item)]
    return []


def test_alert_rules_pass_promtool_check() -> None:
    # Given the fairlane alert rules file
    # When promtool checks it
    result = _promtool("check", "rules", RULES_FILE.name, cwd=ALERTS_DIR)

    # Then it is valid
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    # Given the promtool unit tests of every alert (firing and non-firing cases)
    # When promtool runs them
    result = _promtool("test", "rules", RULES_TEST_FILE.name, cwd=ALERTS_DIR)

    # Then every case passes
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # Given every query of every dashboard, with Grafana's variables filled in
    substitutions = {"$__rate_interval": "5m", "$namespace": ".*", "$queue": ".*"}
    records = []
    for dashboard in DASHBOARDS:
        for number, expr in enumerate(_exprs(json.loads(dashboard.read_text())), start=1):
            for variable, value in substitutions.items():
                expr = expr.replace(variable, value)
            records.append({"record": f"dashboard:{dashboard.stem}:{number}", "expr": expr})
    assert len(records) > 20
    rules_file = tmp_path / "dashboards.rules.yml"
    rules_file.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": records}]}))

    # When promtool parses them as recording rules
    result = _promtool("check", "rules", rules_file.name, cwd=tmp_path)

    # Then every one is valid PromQL
    assert result.returncode == 0, result.stdout + result.stderr
