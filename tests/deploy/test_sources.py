"""rules/ and dashboards/ are the single source: the chart's copies must be byte-identical."""
from __future__ import annotations

import re

from conftest import CHART, REPO


def _pairs(src_dir: str, dst_dir: str, pattern: str):
    src = {p.name: p for p in (REPO / src_dir).glob(pattern)}
    dst = {p.name: p for p in (CHART / dst_dir).glob(pattern)}
    return src, dst


def test_chart_rules_equal_rules_source():
    src, dst = _pairs("rules", "files/rules", "*.rules.yml")
    assert src, "rules/ has no *.rules.yml"
    assert sorted(src) == sorted(dst), f"rule files differ: rules/ {sorted(src)} vs chart {sorted(dst)}"
    for name in src:
        assert src[name].read_bytes() == dst[name].read_bytes(), (
            f"charts/automation-gateway/files/rules/{name} differs from rules/{name}: "
            f"cp rules/{name} charts/automation-gateway/files/rules/"
        )


def test_chart_has_no_rule_tests_or_stray_files():
    stray = [p.name for p in (CHART / "files" / "rules").iterdir() if not p.name.endswith(".rules.yml")]
    assert not stray, stray


def test_chart_dashboards_equal_dashboards_source():
    src, dst = _pairs("dashboards", "files/dashboards", "*.json")
    assert src, "dashboards/ has no *.json"
    assert sorted(src) == sorted(dst), f"dashboards differ: {sorted(src)} vs {sorted(dst)}"
    for name in src:
        assert src[name].read_bytes() == dst[name].read_bytes(), (
            f"charts/automation-gateway/files/dashboards/{name} differs from dashboards/{name}: "
            f"cp dashboards/{name} charts/automation-gateway/files/dashboards/"
        )


def test_slack_templates_equal_between_chart_and_alertmanager_example():
    tmpl = (REPO / "alertmanager" / "slack.tmpl").read_text()
    defines = dict(re.findall(r'\{\{ define "automation_gateway\.slack\.(\w+)" \}\}(.*?)\{\{ end \}\}(?=\n\n|\n?$)', tmpl, re.S))
    assert set(defines) == {"title", "text", "color"}, sorted(defines)
    for name, body in defines.items():
        chart_copy = (CHART / "files" / "alertmanager" / f"slack-{name}.tmpl").read_text().strip()
        assert body.strip() == chart_copy, f"slack {name} template differs between alertmanager/slack.tmpl and the chart"
