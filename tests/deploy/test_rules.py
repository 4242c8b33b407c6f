"""Alert rules: promtool check/test, the conventions every alert keeps, and runbook anchors that exist."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, need_tool, objects, one, render, scenarios

RULES = REPO / "rules" / "automation-gateway.rules.yml"
RULE_TESTS = REPO / "rules" / "automation-gateway.rules.test.yml"
RUNBOOK = REPO / "docs" / "runbook.md"


def alerts():
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def promtool(*args, cwd=None):
    res = subprocess.run([need_tool("promtool"), *args], capture_output=True, text=True, timeout=300, cwd=cwd)
    return res.returncode, res.stdout + res.stderr


def test_promtool_check_rules_on_the_source():
    rc, out = promtool("check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert rc == 0, out


def test_promtool_unit_tests_pass():
    rc, out = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert rc == 0 and "SUCCESS" in out, out


def test_every_alert_has_unit_tests_that_fire_and_stay_silent():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired, silent = set(), set()
    for t in tests:
        for a in t.get("alert_rule_test", []):
            (fired if a.get("exp_alerts") else silent).add(a["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names <= fired, f"alerts never shown to fire: {names - fired}"
    assert names <= silent, f"alerts never shown to stay silent / respect for: {names - silent}"


@pytest.mark.parametrize("sid,values", scenarios(), ids=[s[0] for s in scenarios()])
def test_promtool_check_rules_on_the_rendered_prometheus_rule(tmp_path: Path, sid, values):
    pr = one(objects(render(values)), "PrometheusRule")
    f = tmp_path / "rendered.rules.yml"
    f.write_text(yaml.safe_dump(pr["spec"], sort_keys=False))
    rc, out = promtool("check", "rules", "--lint=all", "--lint-fatal", str(f))
    assert rc == 0, out


def test_the_two_required_alerts_exist_with_their_contract_shape():
    by_name = {a["alert"]: a for a in alerts()}
    sr = by_name["AutomationGatewayJobSuccessRateLow"]
    assert sr["for"] == "10m" and sr["expr"].rstrip().endswith("< 0.9")
    assert "or\n  0 * sum by (namespace, job)" in sr["expr"], "an outage with no SUCCESS series must still fire"
    q = by_name["AutomationGatewayQueueDepthHigh"]
    assert q["for"] == "10m" and "automation_job_queue_depth" in q["expr"]


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_alert_conventions(alert):
    assert alert["alert"].startswith("AutomationGateway")
    assert alert["labels"]["severity"] in {"critical", "warning", "info"}
    ann = alert["annotations"]
    assert ann["summary"].endswith(".") and "{{" not in ann["summary"]
    assert ann["description"]
    assert ann["runbook_url"] == (
        "https://github.com/example-org/automation-gateway/blob/main/docs/runbook.md#" + alert["alert"].lower()
    )
    expr = alert["expr"]
    assert 'job="automation-gateway", namespace="automation"' in expr
    # The namespace label must survive aggregation (AlertmanagerConfig routing matches on it).
    for m in re.finditer(r"\b(sum|max|min|avg|count)\s+by\s*\(([^)]*)\)", expr):
        assert "namespace" in m.group(2), f"aggregation drops namespace: {m.group(0)}"
    if "absent(" in expr:
        assert alert["labels"].get("namespace") == "automation" and alert["labels"].get("job") == "automation-gateway"


def _anchors(markdown: str) -> set[str]:
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            text = m.group(1).strip().lower()
            text = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
            anchors.add(text)
    return anchors


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_runbook_section_exists_for_each_alert(alert):
    anchor = alert["annotations"]["runbook_url"].split("#", 1)[1]
    assert anchor in _anchors(RUNBOOK.read_text()), f"docs/runbook.md has no heading for #{anchor}"
