"""Shared fixtures of the live-jobs tests (issue 13: event log, SSE streams, long-poll, webhooks, CLI).

The service harness is tests/faults/conftest.py, loaded here under the module name "faults_harness"
(not duplicated) and re-exported: `gateways`, `pg_db` (fixtures), `Service`, `Gateways`, `wait_until`,
`metric_value`, `free_port`, `psql`, ... Added here:

- `start_gw(gateways, name, backend, request, env)`: a gateway on SQLite (<tmp>/<name>/gw.db; the same
  name again reuses the file, for restarts) or on the test's fresh PostgreSQL database (`pg_db`);
- `submit(svc, ...)` -> job id (fails the test unless 202), `get_job`, `get_events`, `wait_terminal`,
  `wait_status`;
- `SseStream`: a raw-socket HTTP/1.1 SSE client (chunked decoding, the SSE line grammar, the raw body
  text for wire-format checks, receipt time of each event); every read is bounded;
- `Receiver`: a loopback webhook receiver (http.server in a thread) recording every request, with a
  scripted answer; `verify_signature` / `matching_signatures`: Standard Webhooks verification written
  here (HMAC-SHA256 over "{webhook-id}.{webhook-timestamp}.{raw body}");
- `tokens_file(path, entries)`, `sha256_hex`, `metric_sample` (one labelled series), `parse_ts`.

Only 127.0.0.1 is contacted. Every wait is bounded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import select
import socket
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

sys.path.insert(0, str(REPO / "tests" / "lib"))
from harness import export_faults_harness  # noqa: E402

faults_harness = export_faults_harness(globals())

REQUESTED_BY = "live@example.com"
TERMINAL_EVENTS = ("finished", "canceled")
EVENT_KEYS = {"id", "job_id", "at", "event", "status", "action", "target", "actor", "request_id", "detail"}
# Failing jobs retry quickly (the built-in backoff of health_check is 1 s, doubling).
FAST_RETRY_POLICY = "health_check.backoff_ms=100,health_check.max_attempts=3"


# ------------------------------------------------------------------------------------ gateways


def start_gw(gateways, name: str, backend: str, request=None, env: dict | None = None, database_url: str | None = None,
             **kw) -> Service:
    """A gateway on `backend` ("sqlite": <root>/<name>/gw.db; "pg": the test's pg_db database)."""
    if database_url is None:
        if backend == "sqlite":
            d = Path(gateways.root) / name
            d.mkdir(parents=True, exist_ok=True)
            database_url = f"sqlite://{d / 'gw.db'}?mode=rwc"
        elif backend == "pg":
            database_url = request.getfixturevalue("pg_db").url
        else:
            raise ValueError(backend)
    return gateways.start(name, database_url, env=env, **kw)


def body(action: str = "health_check", target: str = "live", duration_ms: int | None = 5, fail: bool = False,
         extra_params: dict | None = None, **fields) -> dict:
    params = dict(extra_params or {})
    if duration_ms is not None:
        params["simulate"] = {"duration_ms": duration_ms, "fail": fail}
    b = {"action": action, "target": target, "requested_by": REQUESTED_BY, "parameters": params}
    b.update(fields)
    return b


def submit(svc, b: dict | None = None, headers: dict | None = None, **kw) -> str:
    r = requests.post(svc.url + "/v1/jobs", json=b if b is not None else body(**kw), headers=headers or {}, timeout=20)
    if r.status_code != 202:
        pytest.fail(f"POST /v1/jobs: {r.status_code} {r.text[:1000]}", pytrace=False)
    return r.json()["job_id"]


def get_job(svc, job_id: str, headers: dict | None = None) -> dict:
    r = requests.get(f"{svc.url}/v1/jobs/{job_id}", headers=headers or {}, timeout=10)
    if r.status_code != 200:
        pytest.fail(f"GET /v1/jobs/{job_id}: {r.status_code} {r.text[:1000]}", pytrace=False)
    return r.json()


def get_events(svc, job_id: str, headers: dict | None = None) -> list[dict]:
    r = requests.get(f"{svc.url}/v1/jobs/{job_id}/events", headers=headers or {}, timeout=10)
    if r.status_code != 200:
        pytest.fail(f"GET /v1/jobs/{job_id}/events: {r.status_code} {r.text[:1000]}", pytrace=False)
    v = r.json()
    assert isinstance(v, list), f"GET /v1/jobs/{job_id}/events is not a JSON array: {r.text[:500]}"
    return v


def wait_status(svc, job_id: str, wanted, within: float = 30.0, headers: dict | None = None) -> dict:
    wanted = {wanted} if isinstance(wanted, str) else set(wanted)
    deadline = time.monotonic() + within
    last = None
    while True:
        try:
            r = requests.get(f"{svc.url}/v1/jobs/{job_id}", headers=headers or {}, timeout=5)
            last = r.json() if r.status_code == 200 else f"{r.status_code} {r.text[:300]}"
            if isinstance(last, dict) and last.get("status") in wanted:
                return last
        except (requests.RequestException, ValueError) as e:
            last = f"request error: {e}"
        if time.monotonic() >= deadline:
            pytest.fail(f"job {job_id} not in {sorted(wanted)} within {within} s; last: {last}\nlog tail:\n{svc.tail(2000)}",
                        pytrace=False)
        time.sleep(0.05)


def wait_terminal(svc, job_id: str, within: float = 30.0, headers: dict | None = None) -> dict:
    return wait_status(svc, job_id, TERMINAL, within, headers)


def wait_events(svc, job_id: str, pred, within: float = 10.0, what: str = "events") -> list[dict]:
    """The job's events once pred(events) holds (fails the test otherwise)."""
    deadline = time.monotonic() + within
    evs: list[dict] = []
    while True:
        evs = get_events(svc, job_id)
        if pred(evs):
            return evs
        if time.monotonic() >= deadline:
            pytest.fail(f"job {job_id}: {what} not reached within {within} s; events: {kinds(evs)}", pytrace=False)
        time.sleep(0.05)


def kinds(evs: list[dict]) -> list[str]:
    return [e.get("event") for e in evs]


# ---------------------------------------------------------------------------------- timestamps

_TS = re.compile(r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)$")


def parse_ts(s) -> float:
    """Unix seconds of an RFC 3339 timestamp (fails on anything else)."""
    m = _TS.match(str(s))
    assert m, f"not an RFC 3339 timestamp: {s!r}"
    dt = datetime.strptime(f"{m[1]}T{m[2]}", "%Y-%m-%dT%H:%M:%S")
    frac = (m[3] or "0")
    micro = int(frac[:6].ljust(6, "0"))
    if m[4] in ("Z", "z"):
        tz = timezone.utc
    else:
        sign = 1 if m[4][0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(m[4][1:3]), minutes=int(m[4][4:6])))
    return dt.replace(microsecond=micro, tzinfo=tz).timestamp() + (int(frac.ljust(9, "0")[6:9]) / 1e9)


# ------------------------------------------------------------------------------------- metrics


def metric_sample(text: str, name: str, labels: dict) -> float | None:
    """The value of the sample of `name` whose labels include `labels` (summed over matches)."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        head, _, value = line.rpartition(" ")
        base, _, lab = head.partition("{")
        if base != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', lab))
        if all(got.get(k) == v for k, v in labels.items()):
            try:
                total += float(value)
                seen = True
            except ValueError:
                pass
    return total if seen else None


# ---------------------------------------------------------------------------------------- auth


def sha256_hex(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def tokens_file(path: Path, entries: list[dict]) -> str:
    """Entries: name, token, actions, optional scope, can_read, can_cancel."""
    out = ["tokens:"]
    for e in entries:
        out += [f"  - name: {e['name']}", f'    sha256: "{sha256_hex(e["token"])}"',
                f"    actions: {json.dumps(e.get('actions', ['*']))}"]
        if "scope" in e:
            out.append(f"    scope: {json.dumps(e['scope'])}")
        out += [f"    can_read: {str(e.get('can_read', True)).lower()}",
                f"    can_cancel: {str(e.get('can_cancel', True)).lower()}"]
    path = Path(path)
    path.write_text("\n".join(out) + "\n")
    os.chmod(path, 0o600)
    return str(path)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# ----------------------------------------------------------------------------------------- SSE


class SseEvent:
    __slots__ = ("id", "event", "data", "lines", "t")

    def __init__(self, id_, event, data, lines, t):
        self.id, self.event, self.data, self.lines, self.t = id_, event, data, lines, t

    def json(self) -> dict:
        return json.loads(self.data)

    def __repr__(self):
        return f"SseEvent(id={self.id!r}, event={self.event!r}, data={self.data[:120]!r})"


class SseStream:
    """One GET on a raw socket. `status`/`headers` after the head; then `read_*` decode the body
    (chunked or until close) and parse it as text/event-stream into `events` and `comments`.
    `ended` once the server finished the body (last chunk or close)."""

    def __init__(self, port: int, path: str, headers: dict | None = None, timeout: float = 10.0):
        self.port, self.path = port, path
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        hdrs = {"Host": f"127.0.0.1:{port}", "Accept": "text/event-stream", "User-Agent": "live-tests"}
        hdrs.update(headers or {})
        req = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        self.sock.sendall(req.encode("latin-1"))
        self.raw = b""            # undecoded bytes not yet consumed
        self.body = b""           # the decoded body so far (all of it: for wire-format checks)
        self.text_pending = ""    # decoded text not yet split into lines
        self.cur_lines: list[str] = []
        self.cur: dict = {}
        self.events: list[SseEvent] = []
        self.comments: list[tuple[float, str]] = []
        self.ended = False
        self.closed = False
        self._eof = False
        self.ended_at: float | None = None  # time.time() of the end
        self.status: int | None = None
        self.headers: dict = {}
        self.chunked = False
        self.length: int | None = None
        self._chunk_left = 0
        self._in_chunk_data = False
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.raw:
            if not self._recv(deadline - time.monotonic()):
                if self.ended or time.monotonic() >= deadline:
                    break
        head, sep, rest = self.raw.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"GET {path}: no HTTP answer head within {timeout} s (got {self.raw[:300]!r})")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        if "content-length" in self.headers:
            self.length = int(self.headers["content-length"])
        self.raw = rest
        self.ended = self._eof
        if self.ended:
            self.ended_at = time.time()
        self._decode(time.time())

    # --- low level

    def _recv(self, timeout: float) -> bool:
        """One recv within timeout; False on timeout or close."""
        if timeout <= 0:
            timeout = 0.0
        try:
            r, _, _ = select.select([self.sock], [], [], timeout)
        except (OSError, ValueError):
            self._end()
            return False
        if not r:
            return False
        try:
            d = self.sock.recv(262144)
        except (ConnectionResetError, OSError):
            self._end()
            return False
        if not d:
            self._end()
            return False
        self.raw += d
        return True

    def _end(self):
        self._eof = True
        if not self.ended:
            self.ended = True
            self.ended_at = time.time()

    def _decode(self, t: float):
        out = b""
        if not self.chunked:
            if self.length is not None:
                take = self.length - len(self.body) - len(out)
                out, self.raw = self.raw[:take], self.raw[take:]
                if len(self.body) + len(out) >= self.length:
                    self._end()
            else:
                out, self.raw = self.raw, b""
        else:
            while True:
                if self._in_chunk_data:
                    if self._chunk_left > 0:
                        take = self.raw[: self._chunk_left]
                        out += take
                        self.raw = self.raw[len(take):]
                        self._chunk_left -= len(take)
                        if self._chunk_left > 0:
                            break
                    if len(self.raw) < 2:
                        break
                    self.raw = self.raw[2:]  # CRLF after the chunk
                    self._in_chunk_data = False
                    continue
                line, sep, rest = self.raw.partition(b"\r\n")
                if not sep:
                    break
                size = int(line.split(b";")[0].strip() or b"0", 16)
                self.raw = rest
                if size == 0:
                    self._end()
                    break
                self._chunk_left = size
                self._in_chunk_data = True
        if out:
            self.body += out
            self._parse(out.decode("utf-8", errors="replace"), t)

    def _parse(self, text: str, t: float):
        self.text_pending += text
        while True:
            m = re.search(r"\r\n|\n|\r", self.text_pending)
            if not m:
                return
            if m.group() == "\r" and m.end() == len(self.text_pending):
                return  # may be the first half of CRLF
            line = self.text_pending[: m.start()]
            self.text_pending = self.text_pending[m.end():]
            self._line(line, t)

    def _line(self, line: str, t: float):
        if line == "":
            if self.cur_lines and any(k in self.cur for k in ("data", "event", "id")):
                self.events.append(SseEvent(self.cur.get("id"), self.cur.get("event"), "\n".join(self.cur.get("data", [])),
                                            self.cur_lines, t))
            self.cur, self.cur_lines = {}, []
            return
        if line.startswith(":"):
            self.comments.append((t, line))
            return
        self.cur_lines.append(line)
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self.cur.setdefault("data", []).append(value)
        elif name in ("event", "id", "retry"):
            self.cur[name] = value

    # --- public

    def pump(self, timeout: float) -> bool:
        """Reads what arrives within timeout; False when nothing did (or the stream ended)."""
        if self.ended or self.closed:
            return False
        got = self._recv(timeout)
        if self.raw:
            self._decode(time.time())
        return got

    def read_until(self, pred, within: float) -> bool:
        deadline = time.monotonic() + within
        while True:
            if pred(self):
                return True
            left = deadline - time.monotonic()
            if left <= 0 or self.ended:
                return pred(self)
            self.pump(min(left, 0.2))

    def read_for(self, seconds: float):
        deadline = time.monotonic() + seconds
        while not self.ended and time.monotonic() < deadline:
            self.pump(min(0.2, max(0.0, deadline - time.monotonic())))

    def read_until_end(self, within: float) -> bool:
        return self.read_until(lambda s: s.ended, within)

    def ids(self) -> list[int]:
        return [int(e.id) for e in self.events]

    def payloads(self) -> list[dict]:
        return [e.json() for e in self.events]

    def body_json(self):
        return json.loads(self.body)

    def close(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


class BgReader:
    """Pumps one SseStream in a thread (so the server never sees a slow client) until stopped or ended."""

    def __init__(self, s: SseStream):
        self.s = s
        self._stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self._stop and not self.s.ended and not self.s.closed:
            try:
                self.s.pump(0.05)
            except Exception:  # noqa: BLE001 - a socket closed under us ends the reader
                break

    def stop(self):
        self._stop = True
        self.t.join(timeout=5)


# ------------------------------------------------------------------------------------ webhooks


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def expected_signature(secret: str, msg_id: str, ts: str, raw: bytes) -> str:
    assert secret.startswith("whsec_"), secret
    key = base64.b64decode(secret[len("whsec_"):])
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + raw, hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def matching_signatures(secret: str, headers: dict, raw: bytes) -> list[str]:
    """The entries of webhook-signature ("v1,<b64>", space-separated) that verify with `secret`."""
    want = expected_signature(secret, headers.get("webhook-id", ""), headers.get("webhook-timestamp", ""), raw)
    out = []
    for part in headers.get("webhook-signature", "").split(" "):
        version, _, sig = part.partition(",")
        if version == "v1" and hmac.compare_digest(sig.encode(), want.encode()):
            out.append(part)
    return out


def verify_signature(secret: str, headers: dict, raw: bytes, now: float | None = None, tolerance: int = 300) -> str | None:
    """None when the request verifies (Standard Webhooks), else why not."""
    for h in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        if not headers.get(h):
            return f"header {h} missing"
    try:
        ts = int(headers["webhook-timestamp"])
    except ValueError:
        return f"webhook-timestamp not an integer: {headers['webhook-timestamp']!r}"
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance:
        return f"webhook-timestamp {ts} is {now - ts:.0f} s away from the receipt time"
    if not matching_signatures(secret, headers, raw):
        return f"no v1 signature matches: {headers['webhook-signature']!r}"
    return None


class Receiver:
    """A webhook receiver on 127.0.0.1. `answer(req) -> status` decides each answer (default 200);
    every request is recorded as a dict: path, headers (lower-case keys), body (bytes), t (time.time()),
    status (what was answered)."""

    def __init__(self, port: int = 0):
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.answer = lambda req: 200
        self.extra_headers = lambda req: {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
                    raw = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        raw += self.rfile.read(size)
                        self.rfile.readline()
                else:
                    raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                req = {"path": self.path, "method": "POST", "headers": {k.lower(): v for k, v in self.headers.items()},
                       "body": raw, "t": time.time()}
                try:
                    status = int(outer.answer(req))
                    extra = outer.extra_headers(req) or {}
                except Exception as e:  # noqa: BLE001 - a broken script answers 599
                    status, extra = 599, {}
                    req["script_error"] = repr(e)
                req["status"] = status
                with outer.lock:
                    outer.requests.append(req)
                payload = b"ok"
                try:
                    self.send_response(status)
                    for k, v in extra.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the sender went away (e.g. it was killed mid-request)
                    req["answer_lost"] = True

            def do_GET(self):
                req = {"path": self.path, "method": "GET", "headers": {k.lower(): v for k, v in self.headers.items()},
                       "body": b"", "t": time.time(), "status": 404}
                with outer.lock:
                    outer.requests.append(req)
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.requests)

    def by_id(self, webhook_id: str) -> list[dict]:
        return [r for r in self.snapshot() if r["headers"].get("webhook-id") == webhook_id]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


def webhook_id_of(job_id: str) -> str:
    return "msg_" + job_id.replace("-", "")


# ------------------------------------------------------------------------------------- checks


def event_shape_errors(ev: dict, job: dict) -> list[str]:
    """What is wrong with one event's common fields (against its job)."""
    bad = []
    missing = EVENT_KEYS - set(ev)
    if missing:
        bad.append(f"event {ev.get('event')} lacks {sorted(missing)}")
    if not isinstance(ev.get("id"), int) or isinstance(ev.get("id"), bool):
        bad.append(f"id {ev.get('id')!r} is not an integer")
    if ev.get("job_id") != job["job_id"]:
        bad.append(f"job_id {ev.get('job_id')!r} != {job['job_id']}")
    if ev.get("action") != job["action"] or ev.get("target") != job["target"]:
        bad.append(f"action/target {ev.get('action')}/{ev.get('target')} != {job['action']}/{job['target']}")
    try:
        parse_ts(ev.get("at"))
    except AssertionError as e:
        bad.append(str(e))
    if not isinstance(ev.get("detail"), dict):
        bad.append(f"detail {ev.get('detail')!r} is not an object")
    return bad


def order_errors(evs: list[dict]) -> list[str]:
    bad = []
    ids = [e.get("id") for e in evs]
    if any(not isinstance(i, int) for i in ids) or any(b <= a for a, b in zip(ids, ids[1:])):
        bad.append(f"ids not strictly increasing: {ids}")
    try:
        ats = [parse_ts(e.get("at")) for e in evs]
        if any(b < a for a, b in zip(ats, ats[1:])):
            bad.append(f"`at` goes backwards: {[e.get('at') for e in evs]}")
    except AssertionError as e:
        bad.append(str(e))
    terms = [i for i, e in enumerate(evs) if e.get("event") in TERMINAL_EVENTS]
    if len(terms) != 1 or terms[0] != len(evs) - 1:
        bad.append(f"terminal events at positions {terms} of {len(evs)} (want exactly one, last): {kinds(evs)}")
    return bad


def fmt_events(evs: list[dict]) -> str:
    return "\n".join(json.dumps(e, sort_keys=True) for e in evs)


def clean_env(**extra) -> dict:
    """The environment for CLI runs: no GATEWAY_* / DATABASE_URL of the caller."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GATEWAY_") and k not in ("DATABASE_URL", "RUST_LOG", "LOKI_URL", "OTEL_EXPORTER_OTLP_ENDPOINT")}
    env.update({k: str(v) for k, v in extra.items()})
    return env
