"""The Grafana dashboard: required panels verbatim, operator panels, datasource variable, valid PromQL,
per-minute numbers under per-minute titles, deploy annotations and links to the console and to Loki."""
from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import yaml

from conftest import CHART, REPO, need_tool

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
    "$__range": "1h",
}
REQUIRED_TITLES = {"Jobs per minute", "p95 duration by action", "Queue depth"}


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
    for p in panels():
        if p["title"] in REQUIRED_TITLES:
            continue  # they keep the required [5m] window
        for t in p["targets"]:
            for m in re.finditer(r"\[([\w$]+)\]\s*\)", t["expr"]):  # range selectors, not regex classes
                # $__range only in an instant query (a total over the time range).
                allowed = {"$__rate_interval", "$__range"} if t.get("instant") else {"$__rate_interval"}
                assert m.group(1) in allowed, f"{p['title']}: {m.group(0)}"


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


def panel(title):
    found = [p for p in panels() if p["title"] == title]
    assert len(found) == 1, f"expected one panel titled {title!r}"
    return found[0]


def visible(p):
    return [t for t in p["targets"] if not t.get("hide")]


def test_jobs_per_minute_shows_per_minute_numbers_and_keeps_the_exact_query():
    p = panel("Jobs per minute")
    assert CONTRACT_QUERIES[0] in [t["expr"] for t in p["targets"]], "the exact query stays in the panel"
    shown = visible(p)
    assert shown, "the panel must plot something"
    for t in shown:
        # A per-second rate under a per-minute title is what this guards against.
        assert re.search(r"\*\s*60\s*$", t["expr"]), f"plotted query is not per minute: {t['expr']}"
        assert "automation_jobs_total" in t["expr"] and "[5m]" in t["expr"]
    assert p["fieldConfig"]["defaults"]["unit"] == "opm"
    desc = p["description"].lower()
    assert "per minute" in desc and "60" in desc and "per-second" in desc


def test_the_required_panels_follow_the_namespace_and_job_variables():
    for title, exact in zip(["Jobs per minute", "p95 duration by action", "Queue depth"], CONTRACT_QUERIES):
        p = panel(title)
        assert exact in [t["expr"] for t in p["targets"]], title
        shown = visible(p)
        assert shown, title
        for t in shown:
            assert 'namespace=~"$namespace"' in t["expr"] and 'job=~"$job"' in t["expr"], f"{title}: {t['expr']}"


def test_only_the_exact_required_queries_are_hidden():
    for p in panels():
        for t in p["targets"]:
            if t.get("hide"):
                assert p["title"] in REQUIRED_TITLES and t["expr"] in CONTRACT_QUERIES, (p["title"], t["expr"])


@pytest.mark.parametrize("metric,by", [
    ("automation_job_retries_total", "action"),
    ("automation_job_leases_lost_total", "action"),
    ("automation_webhook_deliveries_total", "outcome"),
    ("automation_jobs_total", "action, status"),
])
def test_reliability_panels(metric, by):
    hits = [(p["title"], t["expr"]) for p in panels() for t in visible(p)
            if metric in t["expr"] and f"by ({by})" in t["expr"] and 'namespace=~"$namespace"' in t["expr"]]
    assert hits, f"no panel plots {metric} by ({by})"


def test_runner_outcomes_and_new_panels_are_titled():
    titles = {p["title"] for p in panels()}
    for needle in ["Retries", "Lost leases", "Webhook deliveries", "Runner outcomes"]:
        assert any(needle in t for t in titles), needle


def test_deploy_annotations():
    anns = [a for a in dashboard()["annotations"]["list"] if a.get("expr")]
    exprs = " ".join(a["expr"] for a in anns)
    assert "kube_deployment_status_observed_generation" in exprs and "argocd_app_sync_total" in exprs
    names = {v["name"] for v in dashboard()["templating"]["list"]}
    for a in anns:
        assert a["enable"] and a["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for var in re.findall(r"\$(\w+)", a["expr"]):
            assert var in names, f"annotation uses undefined variable ${var}"


def test_annotation_queries_parse_with_promtool(tmp_path: Path):
    subs = {"$argocd_app": "automation-gateway"}
    rules = []
    for i, a in enumerate(a for a in dashboard()["annotations"]["list"] if a.get("expr")):
        expr = plain(a["expr"])
        for k, v in subs.items():
            expr = expr.replace(k, v)
        rules.append({"record": f"dash:anno{i}", "expr": expr})
    f = tmp_path / "anno.rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "annotations", "rules": rules}]}))
    res = subprocess.run([need_tool("promtool"), "check", "rules", str(f)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def _link(title):
    found = [link for link in dashboard()["links"] if link["title"] == title]
    assert len(found) == 1, f"expected one dashboard link titled {title!r}"
    return found[0]


def test_console_link():
    d = dashboard()
    link = _link("Console")
    assert link["url"].endswith("/ui")
    var = re.match(r"^\$\{(\w+)\}/ui$", link["url"])
    assert var, link["url"]
    v = {x["name"]: x for x in d["templating"]["list"]}[var.group(1)]
    assert v["type"] in {"textbox", "constant"} and v["query"].startswith("http")


def test_loki_link_opens_explore_filtered_by_job():
    d = dashboard()
    url = _link("Logs (Loki)")["url"]
    assert url.startswith("/explore?")
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["loki"]["type"] == "datasource" and variables["loki"]["query"] == "loki"
    assert variables["job_id"]["type"] == "textbox"
    # What Grafana does: fill in the variables, then the browser decodes the query string.
    filled = (url.replace("${loki}", "P8E80F9AEF21F6940").replace("${namespace:pipe}", "automation")
              .replace("${job:pipe}", "automation-gateway").replace("${job_id}", "0b6c6a52-6f1f-4f07-9f8e-3f3d2f0b9c11"))
    assert "${" not in filled, filled
    panes = json.loads(urllib.parse.parse_qs(urllib.parse.urlsplit(filled).query)["panes"][0])
    (pane,) = panes.values()
    assert pane["datasource"] == "P8E80F9AEF21F6940"
    (q,) = pane["queries"]
    assert q["datasource"] == {"type": "loki", "uid": "P8E80F9AEF21F6940"}
    assert q["expr"] == ('{namespace=~"automation", pod=~"(automation-gateway)-.*"} '
                         '|= "0b6c6a52-6f1f-4f07-9f8e-3f3d2f0b9c11"')


OWNED = [REPO / "dashboards", REPO / "rules", REPO / "alertmanager", REPO / "docs" / "runbook.md",
         CHART / "files", CHART / "templates" / "prometheusrule.yaml", CHART / "templates" / "alertmanagerconfig.yaml",
         CHART / "templates" / "dashboards.yaml"]


def test_no_reference_to_files_outside_the_repository():
    # The repository must stand alone: nothing may point at the specification notes beside it.
    files = [f for o in OWNED for f in ([o] if o.is_file() else sorted(o.rglob("*"))) if f.is_file()]
    assert files
    for f in files:
        text = f.read_text()
        for needle in ["CONTRACT.md", "../shared"]:
            assert needle not in text, f"{f.relative_to(REPO)} mentions {needle}"
