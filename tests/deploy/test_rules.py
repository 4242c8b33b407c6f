"""Alert rules: promtool check/test, the conventions every alert keeps, runbook anchors that exist, and
what the chart does to the rules (selector, labels, links, the opt-in SLO file)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator

from conftest import CHART, REPO, need_tool, objects, one, render, scenarios

RULES = REPO / "rules" / "automation-gateway.rules.yml"
SLO_RULES = REPO / "rules" / "automation-gateway.slo.rules.yml"
RULE_FILES = sorted((REPO / "rules").glob("*.rules.yml"))
RULE_TESTS = REPO / "rules" / "automation-gateway.rules.test.yml"
TEST_FILES = sorted((REPO / "rules").glob("*.test.yml"))
RUNBOOK = REPO / "docs" / "runbook.md"
DASHBOARD_URL = "https://grafana.example.com/d/automation-gateway-overview?var-namespace={ns}&var-job={job}"
SLO_ON = {"prometheusRule": {"slo": {"enabled": True, "objective": 0.995}}}


def alerts(files=None):
    return [r for f in (files or RULE_FILES) for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]
            if "alert" in r]


def rendered_rules(values, name="automation-gateway", namespace="automation"):
    pr = one(objects(render(values, name=name, namespace=namespace)), "PrometheusRule")
    return [r for g in pr["spec"]["groups"] for r in g["rules"]]


def promtool(*args, cwd=None):
    res = subprocess.run([need_tool("promtool"), *args], capture_output=True, text=True, timeout=300, cwd=cwd)
    return res.returncode, res.stdout + res.stderr


def test_rule_files_and_their_tests():
    assert RULES in RULE_FILES and SLO_RULES in RULE_FILES
    tested = {f for t in TEST_FILES for f in yaml.safe_load(t.read_text())["rule_files"]}
    assert {f.name for f in RULE_FILES} <= tested, "a rule file without promtool unit tests"


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules_on_the_source(path):
    rc, out = promtool("check", "rules", "--lint=all", "--lint-fatal", str(path))
    assert rc == 0, out


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(path):
    rc, out = promtool("test", "rules", path.name, cwd=path.parent)
    assert rc == 0 and "SUCCESS" in out, out


def test_every_alert_has_unit_tests_that_fire_and_stay_silent():
    tests = [t for f in TEST_FILES for t in yaml.safe_load(f.read_text())["tests"]]
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
    if "absent(" in alert["expr"]:
        assert ann["dashboard_url"] == DASHBOARD_URL.format(ns="automation", job="automation-gateway")
    else:
        assert ann["dashboard_url"] == DASHBOARD_URL.format(ns="{{ $labels.namespace }}", job="{{ $labels.job }}")
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


# --- New alerts of issue 14 -------------------------------------------------------------------------------

def test_http_5xx_and_429_alerts_exist():
    by_name = {a["alert"]: a for a in alerts()}
    e5 = by_name["AutomationGatewayHTTPErrorRateHigh"]["expr"]
    assert 'status=~"5.."' in e5 and "http_server_request_duration_seconds_count" in e5
    e429 = by_name["AutomationGatewayRateLimited"]["expr"]
    assert 'status="429"' in e429 and "http_server_request_duration_seconds_count" in e429


def test_slo_rules_have_the_multi_window_multi_burn_rate_shape():
    doc = yaml.safe_load(SLO_RULES.read_text())
    records = {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}
    assert records == {f"automation_gateway:job_error_ratio:rate{w}" for w in ["5m", "30m", "1h", "2h", "6h", "1d", "3d"]}
    burns = {(a["labels"]["long"], a["labels"]["short"]): a for a in alerts([SLO_RULES])}
    expected = {("1h", "5m"): ("14.4", "critical"), ("6h", "30m"): ("6", "critical"),
                ("1d", "2h"): ("3", "warning"), ("3d", "6h"): ("1", "warning")}
    assert set(burns) == set(expected)
    for (long, short), (factor, severity) in expected.items():
        a = burns[(long, short)]
        assert a["alert"] == "AutomationGatewayErrorBudgetBurn" and a["labels"]["severity"] == severity
        assert f"rate{long}{{" in a["expr"] and f"rate{short}{{" in a["expr"]
        assert a["expr"].count(f"> ({factor} * (1 - 0.99))") == 2, a["expr"]


# --- What the chart renders -----------------------------------------------------------------------------

def test_additional_rule_labels_are_on_every_alert_and_do_not_override_its_own():
    labels = {"team": "platform", "service": "automation", "severity": "info"}
    rules = rendered_rules({"prometheusRule": {"additionalRuleLabels": labels, **SLO_ON["prometheusRule"]}})
    alerting = [r for r in rules if "alert" in r]
    assert len(alerting) == len(alerts())
    for r in alerting:
        assert r["labels"]["team"] == "platform" and r["labels"]["service"] == "automation", r["alert"]
        assert r["labels"]["severity"] in {"critical", "warning"}, "an alert's own severity must win"
    # Off by default: no stray labels.
    for r in rendered_rules({}):
        assert "team" not in (r.get("labels") or {})


def test_every_rendered_alert_links_its_dashboard_with_the_release_namespace_and_job():
    values = {"prometheusRule": {"dashboardBaseUrl": "https://grafana.corp.test/", **SLO_ON["prometheusRule"]}}
    rules = [r for r in rendered_rules(values, name="ag", namespace="ops") if "alert" in r]
    assert rules
    for r in rules:
        url = r["annotations"]["dashboard_url"]
        assert url.startswith("https://grafana.corp.test/d/automation-gateway-overview?"), url
        assert "runbook_url" in r["annotations"]
        if r["alert"] == "AutomationGatewayDown":
            assert url.endswith("var-namespace=ops&var-job=ag-automation-gateway"), url
        else:
            assert url.endswith("var-namespace={{ $labels.namespace }}&var-job={{ $labels.job }}"), url


def test_slo_rules_are_opt_in():
    names = {r.get("alert") or r.get("record") for r in rendered_rules({})}
    assert "AutomationGatewayErrorBudgetBurn" not in names
    assert not any(n.startswith("automation_gateway:") for n in names)


def test_slo_objective_reaches_every_burn_threshold(tmp_path: Path):
    rules = rendered_rules(SLO_ON, name="ag", namespace="ops")
    burns = [r for r in rules if r.get("alert") == "AutomationGatewayErrorBudgetBurn"]
    records = [r for r in rules if "record" in r]
    assert len(burns) == 4 and len(records) == 7
    for r in burns:
        assert "(1 - 0.99)" not in r["expr"] and r["expr"].count("(1 - 0.995)") == 2, r["expr"]
        assert 'job="ag-automation-gateway", namespace="ops"' in r["expr"]
        assert "(objective: 0.995)" in r["annotations"]["description"]
    for r in records:
        assert 'job="ag-automation-gateway", namespace="ops"' in r["expr"]
    pr = one(objects(render(SLO_ON)), "PrometheusRule")
    f = tmp_path / "slo.rules.yml"
    f.write_text(yaml.safe_dump(pr["spec"], sort_keys=False))
    rc, out = promtool("check", "rules", "--lint=all", "--lint-fatal", str(f))
    assert rc == 0, out


@pytest.mark.parametrize("objective,ok", [(0.99, True), (0.999, True), (0.9, False), (1, False)])
def test_schema_bounds_the_slo_objective(objective, ok):
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    values["prometheusRule"]["slo"] = {"enabled": True, "objective": objective}
    errors = [e.message for e in Draft7Validator(schema).iter_errors(values)]
    assert (not errors) == ok, errors
