"""The plain Alertmanager example: valid, routes this service's alerts (only) to Slack, and the chart's
AlertmanagerConfig carries the same inhibit rules."""
from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from conftest import REPO, crd_errors, need_tool, objects, one, render

CONFIG = REPO / "alertmanager" / "alertmanager.yml"


def amtool(*args):
    res = subprocess.run([need_tool("amtool"), *args], capture_output=True, text=True, timeout=60, cwd=CONFIG.parent)
    return res.returncode, res.stdout + res.stderr


def test_amtool_check_config():
    rc, out = amtool("check-config", str(CONFIG))
    assert rc == 0 and "SUCCESS" in out, out


@pytest.mark.parametrize("alertname", [
    "AutomationGatewayJobSuccessRateLow", "AutomationGatewayQueueDepthHigh", "AutomationGatewayJobsStuck",
    "AutomationGatewayJobLatencyHigh", "AutomationGatewayDown", "AutomationGatewayHTTPErrorRateHigh",
    "AutomationGatewayRateLimited", "AutomationGatewayErrorBudgetBurn",
])
def test_service_alerts_route_to_slack(alertname):
    rc, out = amtool("config", "routes", "test", f"--config.file={CONFIG}", "--verify.receivers=slack-automation",
                     "namespace=automation", f"alertname={alertname}", "severity=warning")
    assert rc == 0, out


def test_other_namespaces_do_not_reach_this_slack_channel():
    rc, out = amtool("config", "routes", "test", f"--config.file={CONFIG}", "--verify.receivers=default-null",
                     "namespace=other", "alertname=AutomationGatewayDown")
    assert rc == 0, out


# --- Inhibition: alertmanager/alertmanager.yml and the chart's AlertmanagerConfig agree ------------------

_MATCHER = re.compile(r'^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"?(.*?)"?\s*$')


def _parse_matcher(text: str) -> tuple[str, str, str]:
    m = _MATCHER.match(text)
    assert m, f"cannot read matcher {text!r}"
    return m.group(1), m.group(2), m.group(3)


def _plain_inhibit_rules() -> list[dict]:
    rules = yaml.safe_load(CONFIG.read_text()).get("inhibit_rules") or []
    return [{
        "source": sorted(_parse_matcher(x) for x in r.get("source_matchers", [])),
        "target": sorted(_parse_matcher(x) for x in r.get("target_matchers", [])),
        "equal": sorted(r.get("equal", [])),
    } for r in rules]


def _chart_inhibit_rules(amc: dict) -> list[dict]:
    def side(ms):
        return sorted((m["name"], m.get("matchType", "=~" if m.get("regex") else "="), m.get("value", "")) for m in ms)
    return [{
        "source": side(r.get("sourceMatch", [])),
        "target": side(r.get("targetMatch", [])),
        "equal": sorted(r.get("equal", [])),
    } for r in amc["spec"].get("inhibitRules", [])]


def _amc(namespace="automation"):
    values = {"alertmanagerConfig": {"enabled": True, "slack": {"existingSecret": "slack-webhook"}}}
    return one(objects(render(values, namespace=namespace)), "AlertmanagerConfig")


def test_the_plain_config_inhibits_the_alerts_of_a_service_that_is_down():
    rules = _plain_inhibit_rules()
    assert rules, "alertmanager.yml has no inhibit_rules"
    assert any(("alertname", "=", "AutomationGatewayDown") in r["source"] and {"namespace", "job"} <= set(r["equal"])
               for r in rules), rules


def test_chart_alertmanager_config_has_the_same_inhibit_rules_as_alertmanager_yml():
    amc = _amc()
    assert crd_errors(amc) == []
    assert _chart_inhibit_rules(amc) == _plain_inhibit_rules()


def test_inhibit_rules_do_not_depend_on_the_release_namespace():
    # The operator adds the namespace matcher itself; a hard-coded one would break other namespaces.
    for r in _chart_inhibit_rules(_amc(namespace="payments")):
        assert all(m[0] != "namespace" for m in r["source"] + r["target"]), r


def _firing(alertname, severity):
    return {"labels": {"alertname": alertname, "severity": severity, "namespace": "automation",
                       "job": "automation-gateway"}}


def test_inhibit_rule_silences_warnings_but_not_the_down_alert_itself():
    # Evaluate the plain rule as Alertmanager would (equal labels, all matchers of each side).
    def ok(labels, matchers):
        for name, op, value in matchers:
            v = labels.get(name, "")
            hit = {"=": v == value, "!=": v != value,
                   "=~": re.fullmatch(value, v) is not None, "!~": re.fullmatch(value, v) is None}[op]
            if not hit:
                return False
        return True

    src = _firing("AutomationGatewayDown", "critical")["labels"]
    for rule in _plain_inhibit_rules():
        def inhibited(target):
            return (ok(src, rule["source"]) and ok(target, rule["target"])
                    and all(src.get(k) == target.get(k) for k in rule["equal"]))
        assert inhibited(_firing("AutomationGatewayQueueDepthHigh", "warning")["labels"])
        assert not inhibited(src)
        other = dict(_firing("AutomationGatewayQueueDepthHigh", "warning")["labels"], namespace="other")
        assert not inhibited(other)


def test_slack_text_shows_runbook_and_dashboard_links():
    for path in [REPO / "alertmanager" / "slack.tmpl",
                 REPO / "charts" / "automation-gateway" / "files" / "alertmanager" / "slack-text.tmpl"]:
        text = path.read_text()
        assert "Runbook: {{ .Annotations.runbook_url }}" in text, path
        assert "Dashboard: {{ .Annotations.dashboard_url }}" in text, path
