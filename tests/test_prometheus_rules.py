"""The Prometheus alerting rules of deploy/prometheus: valid, and each alert fires when
(and only when) its unit tests say so, as `promtool` checks them.

The unit tests (deploy/prometheus/rules.test.yml, the paths SPEC section 8 names) give every alert input series,
evaluation times and the alerts expected, including cases where it must not
fire. Without `promtool` on the PATH these tests skip, naming the package.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules.yml"
UNIT_TESTS = PROMETHEUS / "rules.test.yml"
ALERTS = {"BecomingOneInputStalled", "BecomingOneNoInput", "BecomingOneLagRising", "BecomingOneDeadLetterRate",
          "BecomingOneBrokerUnreachable", "BecomingOneNoSnapshot", "BecomingOneWitnessChainBreak"}


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _promtool(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool not installed: apt-get install prometheus")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def test_every_alert_has_for_severity_summary_description_and_runbook():
    rules = _rules()
    assert {r["alert"] for r in rules} == ALERTS
    for rule in rules:
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, rule["alert"]
        anchor = rule["annotations"]["runbook"].removeprefix("deploy/README.md#")
        assert anchor == rule["alert"].lower()


def test_runbook_sections_exist_for_every_alert():
    readme = (PROMETHEUS.parent / "README.md").read_text()
    for alert in ALERTS:
        assert re.search(rf"^#+ {alert}$", readme, re.MULTILINE), alert


def test_promtool_checks_the_rules():
    proc = _promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in proc.stdout


def test_every_alert_has_unit_tests_where_it_fires_and_where_it_does_not():
    """Each alert is evaluated at least once with an alert expected and once with none."""
    firing: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert firing == ALERTS and silent == ALERTS


def test_promtool_unit_tests_pass():
    proc = _promtool("test", "rules", str(UNIT_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
