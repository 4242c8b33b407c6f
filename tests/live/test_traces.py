"""Traces end to end, against a local OTLP/HTTP receiver (a stand-in for Tempo or a collector:
it decodes the real OTLP protobuf the gateway exports). A job is posted to replica A with a
caller's `traceparent`; replica B (the only one with workers) runs it. One trace id must span the
caller's context, A's request and enqueue spans and B's attempt span; the runner's outgoing request
carries `traceparent` of that trace; B's JSON log lines about the attempt carry its trace_id and
span_id."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
import yaml

from conftest import free_port, parse_log, wait_terminal, wait_until

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{TRACE}-00f067aa0ba902b7-01"


class Collector:
    """Accepts OTLP/HTTP protobuf exports on /v1/traces; keeps every span."""

    def __init__(self):
        self.spans: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                req = trace_service_pb2.ExportTraceServiceRequest()
                req.ParseFromString(raw)
                with outer.lock:
                    for rs in req.resource_spans:
                        service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                        for ss in rs.scope_spans:
                            for s in ss.spans:
                                outer.spans.append({
                                    "name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                                    "parent": s.parent_span_id.hex(), "service": service,
                                    "attrs": {a.key: a.value.string_value or a.value.int_value for a in s.attributes},
                                })
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def of_trace(self, trace: str) -> list[dict]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace]


class Endpoint:
    """The http runner's destination: records the traceparent of each call."""

    def __init__(self):
        self.seen: list[str | None] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.seen.append(self.headers.get("traceparent"))
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]


def test_one_trace_spans_request_enqueue_and_the_attempt_on_another_replica(gateways, pg_db, tmp_path):
    collector, endpoint = Collector(), Endpoint()
    actions = tmp_path / "actions.yaml"
    actions.write_text(yaml.safe_dump({"actions": {"probe": {
        "runner": "http", "http": {"method": "GET", "url": f"http://127.0.0.1:{endpoint.port}/healthz", "expect_status": [200]},
    }}}))
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "GATEWAY_ACTIONS_FILE": str(actions)}
    a = gateways.start("trace-a", pg_db.url, {**env, "GATEWAY_WORKERS": 0})
    b = gateways.start("trace-b", pg_db.url, {**env, "GATEWAY_WORKERS": 2})
    r = requests.post(f"{a.url}/v1/jobs", json={"action": "probe", "target": "svc", "requested_by": "trace-test"},
                      headers={"traceparent": CALLER}, timeout=10)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    job = wait_terminal(b, job_id, within=30)
    assert job["status"] == "SUCCESS", job

    assert wait_until(lambda: {"http.request", "enqueue", "job"} <= {s["name"] for s in collector.of_trace(TRACE)}, within=20), \
        f"spans of trace {TRACE}: {collector.of_trace(TRACE)}; all: {[(s['name'], s['trace_id']) for s in collector.spans][:20]}"
    spans = collector.of_trace(TRACE)
    by_name = {s["name"]: s for s in spans}
    request, enqueue, attempt = by_name["http.request"], by_name["enqueue"], by_name["job"]
    assert request["parent"] == "00f067aa0ba902b7", request  # the caller's span
    assert enqueue["parent"] == request["span_id"], (enqueue, request)
    assert attempt["parent"] == enqueue["span_id"], (attempt, enqueue)
    assert attempt["attrs"].get("job_id") == job_id, attempt

    # The runner's request continued the trace, as a child of the attempt.
    assert endpoint.seen and endpoint.seen[0] is not None, endpoint.seen
    assert endpoint.seen[0].split("-")[1] == TRACE, endpoint.seen
    assert endpoint.seen[0].split("-")[2] == attempt["span_id"], (endpoint.seen, attempt)

    # B's log lines about the attempt carry the trace and span ids.
    lines = [l for l in parse_log(b.log_text()) if l.get("job_id") == job_id and l.get("message") == "job attempt started"]
    assert lines, "no 'job attempt started' line on replica B"
    assert lines[0].get("trace_id") == TRACE and lines[0].get("span_id") == attempt["span_id"], lines[0]
