"""The plain Alertmanager example: valid, and routes this service's alerts (only) to Slack."""
from __future__ import annotations

import subprocess

import pytest

from conftest import REPO, need_tool

CONFIG = REPO / "alertmanager" / "alertmanager.yml"


def amtool(*args):
    res = subprocess.run([need_tool("amtool"), *args], capture_output=True, text=True, timeout=60, cwd=CONFIG.parent)
    return res.returncode, res.stdout + res.stderr


def test_amtool_check_config():
    rc, out = amtool("check-config", str(CONFIG))
    assert rc == 0 and "SUCCESS" in out, out


@pytest.mark.parametrize("alertname", [
    "AutomationGatewayJobSuccessRateLow", "AutomationGatewayQueueDepthHigh", "AutomationGatewayJobsStuck",
    "AutomationGatewayJobLatencyHigh", "AutomationGatewayDown",
])
def test_service_alerts_route_to_slack(alertname):
    rc, out = amtool("config", "routes", "test", f"--config.file={CONFIG}", "--verify.receivers=slack-automation",
                     "namespace=automation", f"alertname={alertname}", "severity=warning")
    assert rc == 0, out


def test_other_namespaces_do_not_reach_this_slack_channel():
    rc, out = amtool("config", "routes", "test", f"--config.file={CONFIG}", "--verify.receivers=default-null",
                     "namespace=other", "alertname=AutomationGatewayDown")
    assert rc == 0, out
