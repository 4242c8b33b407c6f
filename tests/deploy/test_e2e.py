"""End-to-end on loopback: the real service binary, a real Prometheus scraping it every second with the
repository's rules loaded (a copy with shortened `for` and ranges), and a real Alertmanager using the
repository's alertmanager.yml and Slack template, whose Slack receiver points at a local HTTP receiver.

The service binary comes from GATEWAY_BIN (never built here); the test fails loudly without it.
Everything binds to 127.0.0.1 on free ports, lives in a temp dir, and every wait is bounded.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from conftest import REPO, need_tool
from test_dashboard import plain, queries

SUCCESS_ALERT = "AutomationGatewayJobSuccessRateLow"
ACTIONS = ["restart_service", "rotate_config", "health_check"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 5.0):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(what: str, fn, timeout: float, interval: float = 0.5):
    """Call fn until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except (OSError, urllib.error.URLError, ValueError) as e:  # not up yet
            last = e
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class SlackReceiver:
    """A tiny Slack incoming-webhook stand-in that records every POSTed JSON body."""

    def __init__(self):
        self.payloads: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                try:
                    receiver.payloads.append(json.loads(raw))
                except ValueError:
                    receiver.payloads.append({"_raw": raw.decode(errors="replace")})
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/XXXX"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def shorten_rules(src: Path, dst: Path):
    """The repository's rules with pending periods of 5s and ranges scaled to a 1s scrape interval."""
    doc = yaml.safe_load(src.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "5s"
            rule["expr"] = rule["expr"].replace("[5m]", "[20s]").replace("[10m]", "[30s]")
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))


def e2e_alertmanager_config(tmp: Path, receiver_url: str) -> Path:
    """alertmanager/alertmanager.yml as shipped, with the webhook file and group timings made local and quick."""
    cfg = yaml.safe_load((REPO / "alertmanager" / "alertmanager.yml").read_text())
    shutil.copy(REPO / "alertmanager" / "slack.tmpl", tmp / "slack.tmpl")
    (tmp / "slack_webhook_url").write_text(receiver_url + "\n")
    cfg["route"].update(group_wait="1s", group_interval="2s", repeat_interval="1h")
    for r in cfg["receivers"]:
        for sc in r.get("slack_configs", []):
            sc["api_url_file"] = str(tmp / "slack_webhook_url")
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class Stack:
    def __init__(self, tmp: Path, gateway_bin: str):
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        self.receiver = SlackReceiver()
        self.svc = f"http://127.0.0.1:{free_port()}"
        self.am = f"http://127.0.0.1:{free_port()}"
        self.prom = f"http://127.0.0.1:{free_port()}"
        self.gateway_bin = gateway_bin

    def start(self, name: str, argv: list[str], env: dict | None = None):
        log = self.tmp / f"{name}.log"
        fh = open(log, "wb")
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=self.tmp,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        fh.close()
        self.procs.append((name, proc, log))
        return proc

    def check_alive(self):
        for name, proc, log in self.procs:
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")

    def up(self):
        data = self.tmp / "svc"
        data.mkdir()
        self.start("automation-gateway", [self.gateway_bin, "serve"], env={
            "GATEWAY_LISTEN": self.svc.removeprefix("http://"),
            "DATABASE_URL": f"sqlite://{data}/automation-gateway.db?mode=rwc",
            "GATEWAY_SIM_DURATION_MS": "5-20",
            "GATEWAY_SIM_FAILURE_RATE": "0",
            "GATEWAY_SHUTDOWN_GRACE_SECS": "2",
            "RUST_LOG": "info",
        })
        wait_for("the service's /healthz", lambda: self.check_alive() or http("GET", self.svc + "/healthz")[0] == 200, 60)

        am_cfg = e2e_alertmanager_config(self.tmp, self.receiver.url)
        self.start("alertmanager", [need_tool("prometheus-alertmanager"), f"--config.file={am_cfg}",
                                    f"--storage.path={self.tmp / 'am-data'}",
                                    f"--web.listen-address={self.am.removeprefix('http://')}",
                                    "--cluster.listen-address="])
        wait_for("Alertmanager ready", lambda: self.check_alive() or http("GET", self.am + "/-/ready")[0] == 200, 60)

        rules = self.tmp / "automation-gateway.rules.yml"
        shorten_rules(REPO / "rules" / "automation-gateway.rules.yml", rules)
        prom_cfg = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [self.am.removeprefix("http://")]}]}]},
            "scrape_configs": [{
                "job_name": "automation-gateway",
                "metrics_path": "/metrics",
                # What the ServiceMonitor gives in the cluster: job = Service name, namespace = release namespace.
                "static_configs": [{"targets": [self.svc.removeprefix("http://")], "labels": {"namespace": "automation"}}],
            }],
        }
        (self.tmp / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg))
        self.start("prometheus", [need_tool("prometheus"), f"--config.file={self.tmp / 'prometheus.yml'}",
                                  f"--storage.tsdb.path={self.tmp / 'prom-data'}",
                                  f"--web.listen-address={self.prom.removeprefix('http://')}"])
        wait_for("Prometheus ready", lambda: self.check_alive() or http("GET", self.prom + "/-/ready")[0] == 200, 60)
        wait_for("the service target to be up", lambda: self.query('up{job="automation-gateway", namespace="automation"} == 1'), 60)

    def query(self, expr: str) -> list:
        status, body = http("GET", self.prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        if status != 200:
            raise ValueError(f"query {expr!r} answered {status}: {body[:500]}")
        return json.loads(body)["data"]["result"]

    def post_job(self, action: str, fail: bool) -> str:
        status, body = http("POST", self.svc + "/v1/jobs", {
            "action": action, "target": "demo", "requested_by": "e2e@example.com",
            "parameters": {"simulate": {"duration_ms": 10, "fail": fail}},
        })
        assert status == 202, (status, body)
        return json.loads(body)["job_id"]

    def wait_terminal(self, job_ids: list[str], timeout: float) -> dict[str, str]:
        def done():
            out = {}
            for jid in job_ids:
                status, body = http("GET", f"{self.svc}/v1/jobs/{jid}")
                assert status == 200, (status, body)
                out[jid] = json.loads(body)["status"]
            return out if all(s in ("SUCCESS", "FAILED", "CANCELED") for s in out.values()) else None
        return wait_for(f"{len(job_ids)} jobs to finish", done, timeout)

    def down(self):
        for name, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc, _ in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.receiver.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    gateway_bin = os.environ.get("GATEWAY_BIN")
    if not gateway_bin:
        pytest.fail("GATEWAY_BIN is not set: point it at the built service binary, e.g. target/debug/automation-gateway")
    if not (os.path.isfile(gateway_bin) and os.access(gateway_bin, os.X_OK)):
        pytest.fail(f"GATEWAY_BIN={gateway_bin} is not an executable file")
    s = Stack(tmp_path_factory.mktemp("e2e"), gateway_bin)
    try:
        s.up()
        yield s
    finally:
        s.down()


def test_service_exposes_the_contract_series(stack):
    status, text = http("GET", stack.svc + "/metrics")
    assert status == 200
    for action in ACTIONS:
        for st in ("SUCCESS", "FAILED"):
            assert re.search(rf'^automation_jobs_total\{{action="{action}",status="{st}"\}} \d', text, re.M), (action, st)
    assert re.search(r"^automation_job_queue_depth \d", text, re.M)
    assert "otel_scope" not in text
    # (the duration histogram appears with the first finished job: checked through the dashboard queries)


def test_every_dashboard_query_returns_data(stack):
    ids = [stack.post_job(ACTIONS[i % 3], fail=False) for i in range(12)]
    http("GET", f"{stack.svc}/v1/jobs/00000000-0000-0000-0000-000000000000")  # a 404 for the 4xx panel
    http("GET", f"{stack.svc}/v1/jobs/not-a-uuid")  # a 400
    statuses = stack.wait_terminal(ids, 60)
    assert set(statuses.values()) == {"SUCCESS"}, statuses
    # The queue gauges report 0 here, which is data; the alert test below exercises the queue.
    pending = {f"{i}: {title}": expr for i, (title, expr) in enumerate(queries())}
    results = {}

    def all_have_data():
        stack.check_alive()
        for title, expr in list(pending.items()):
            res = stack.query(plain(expr))
            if res:
                results[title] = res
                del pending[title]
        return not pending

    deadline_ok = False
    try:
        deadline_ok = bool(wait_for("every dashboard query to return data", all_have_data, 90, interval=2))
    finally:
        if not deadline_ok:
            print("queries without data:", json.dumps(pending, indent=1))
    assert len(results) == len(queries())


def test_success_rate_alert_fires_and_reaches_slack(stack):
    # Fail jobs continuously until the (shortened) success-rate alert fires.
    def firing():
        stack.check_alive()
        for _ in range(4):
            stack.post_job("health_check", fail=True)
        status, body = http("GET", stack.prom + "/api/v1/alerts")
        alerts = json.loads(body)["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == SUCCESS_ALERT and a["state"] == "firing"]

    fired = wait_for(f"{SUCCESS_ALERT} to fire in Prometheus", firing, 120, interval=2)
    labels = fired[0]["labels"]
    assert labels["namespace"] == "automation" and labels["job"] == "automation-gateway"
    assert labels["severity"] == "critical"

    def slack_message():
        stack.check_alive()
        return [p for p in stack.receiver.payloads if SUCCESS_ALERT in json.dumps(p)]

    msgs = wait_for("the Slack receiver to get a message naming the alert", slack_message, 90)
    msg = msgs[0]
    print("\nSlack payload received:", json.dumps(msg)[:1500])
    assert msg["channel"] == "#automation-alerts"
    att = msg["attachments"][0]
    assert att["title"].startswith("[FIRING:") and SUCCESS_ALERT in att["title"] and "(automation)" in att["title"]
    assert att["color"] == "danger"
    assert "severity: *critical*" in att["text"]
    assert "Automation job success rate is below its threshold." in att["text"]
    assert "Runbook: https://github.com/example-org/automation-gateway/blob/main/docs/runbook.md#automationgatewayjobsuccessratelow" in att["text"]
