"""The Grafana dashboard: contract panels verbatim, operator panels, datasource variable, valid PromQL."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from conftest import REPO, need_tool

DASHBOARD = REPO / "dashboards" / "automation-gateway.json"
CONTRACT_QUERIES = [
    "sum(rate(automation_jobs_total[5m])) by (action, status)",
    "histogram_quantile(0.95, sum(rate(automation_job_duration_seconds_bucket[5m])) by (le, action))",
    "automation_job_queue_depth",
]
# Substitutions that turn Grafana variables into plain PromQL (also used by the end-to-end test).
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    '=~"$namespace"': '=~"automation"',
    '=~"$job"': '=~"automation-gateway"',
    '=~"$action"': '=~".*"',
}


def dashboard():
    return json.loads(DASHBOARD.read_text())


def panels(d=None):
    return [p for p in (d or dashboard())["panels"] if p["type"] != "row"]


def queries(d=None) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(d) for t in p["targets"]]


def plain(expr: str) -> str:
    for k, v in SUBSTITUTIONS.items():
        expr = expr.replace(k, v)
    return expr


def test_identity_and_layout():
    d = dashboard()
    assert d["uid"] == "automation-gateway-overview" and len(d["uid"]) <= 40
    assert d["id"] is None and d["title"] and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert "__inputs" not in d, "exported-with-inputs form breaks sidecar provisioning"


def test_datasource_is_a_template_variable_used_everywhere():
    d = dashboard()
    ds = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert ds and ds[0]["name"] == "datasource" and ds[0]["query"] == "prometheus"
    for p in panels(d):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"


def test_the_three_contract_panels_use_the_exact_queries():
    exprs = [e for _, e in queries()]
    for q in CONTRACT_QUERIES:
        assert q in exprs, f"missing exact contract query: {q}"


def test_operator_panels_are_present():
    text = " ".join(e for _, e in queries())
    for needle in [
        'status="SUCCESS"',  # success ratio
        "automation_job_queue_wait_seconds_bucket",
        "automation_job_oldest_pending_age_seconds",
        "automation_jobs_running",
        'status!="SUCCESS"',  # failures by action
        "automation_jobs_created_total",
        "http_server_request_duration_seconds_count",
        "http_server_request_duration_seconds_bucket",
        'status=~"5.."',
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "max(automation_job_queue_depth{",
    ]:
        assert needle in text, needle


def test_every_rate_outside_the_contract_panels_uses_rate_interval():
    for title, expr in queries():
        if expr in CONTRACT_QUERIES:
            continue
        for m in re.finditer(r"\[([\w$]+)\]\s*\)", expr):  # range selectors, not regex classes
            assert m.group(1) == "$__rate_interval", f"{title}: {m.group(0)}"


def test_queue_depth_other_than_the_contract_panel_takes_max_over_replicas():
    for title, expr in queries():
        if expr == "automation_job_queue_depth":
            continue
        for m in re.finditer(r"(\w+)\s*(?:by\s*\([^)]*\)\s*)?\(\s*automation_job_queue_depth", expr):
            assert m.group(1) == "max", f"{title}: queue depth is global, use max(): {expr}"


def test_every_query_parses_with_promtool(tmp_path: Path):
    rules = [{"record": f"dash:q{i}", "expr": plain(e)} for i, (_, e) in enumerate(queries())]
    f = tmp_path / "dash.rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = subprocess.run([need_tool("promtool"), "check", "rules", str(f)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
