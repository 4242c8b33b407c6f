"""Shared fixtures of the fault tests: start the service binary ($GATEWAY_BIN) on a free 127.0.0.1
port with environment overrides, capture its JSON log to a file, make a fresh PostgreSQL database
per test (dropped at the end), and read the log back.

Every wait is bounded. Services are stopped with SIGTERM (SIGCONT first, in case a test left one
stopped; SIGKILL only if SIGTERM does not stop it within 30 s). Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pytest
import requests

PG_HOST = "127.0.0.1"
PG_PORT = "5432"
PG_USER = "postgres"
PROBLEM = "application/problem+json"
TERMINAL = ("SUCCESS", "FAILED", "CANCELED")


def gateway_bin() -> str:
    b = os.environ.get("GATEWAY_BIN", "")
    if not b:
        pytest.fail("GATEWAY_BIN is not set (path of the built automation-gateway binary)", pytrace=False)
    if not (os.path.isfile(b) and os.access(b, os.X_OK)):
        pytest.fail(f"GATEWAY_BIN={b} is not an executable file", pytrace=False)
    return b


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_body(action: str = "health_check", target: str = "fault-test", duration_ms: int | None = None, **parameters) -> dict:
    params = dict(parameters)
    if duration_ms is not None:
        params["simulate"] = {"duration_ms": duration_ms, "fail": False}
    return {"action": action, "target": target, "requested_by": "faults@example.com", "parameters": params}


# ----------------------------------------------------------------------------------------- logs


def parse_log(text: str) -> list[dict]:
    """The JSON lines of a log (anything else, e.g. a panic message, is skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if isinstance(v, dict):
            out.append(v)
    return out


def field_of(line: dict, name: str):
    """A field of a log line: flat at top level (the documented shape) or under "fields"."""
    if name in line:
        return line[name]
    f = line.get("fields")
    if isinstance(f, dict):
        return f.get(name)
    return None


def message_of(line: dict) -> str:
    return str(field_of(line, "message") or "")


def level_of(line: dict) -> str:
    return str(line.get("level") or "").upper()


# -------------------------------------------------------------------------------------- service


@dataclass
class Service:
    proc: subprocess.Popen
    url: str
    port: int
    log_path: Path
    workdir: Path
    env: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self, timeout: float = 2.0) -> bool:
        try:
            return requests.get(self.url + "/readyz", timeout=timeout).status_code == 200
        except requests.RequestException:
            return False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict]:
        return parse_log(self.log_text())

    def lines_with(self, message_part: str) -> list[dict]:
        return [l for l in self.log_lines() if message_part in message_of(l)]

    def wait_log(self, pred: Callable[[list[dict]], bool], within: float) -> bool:
        deadline = time.monotonic() + within
        while True:
            if pred(self.log_lines()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def tail(self, n: int = 4000) -> str:
        return self.log_text()[-n:]

    def post(self, body: dict, headers: dict | None = None, timeout: float = 20.0) -> requests.Response:
        return requests.post(self.url + "/v1/jobs", json=body, headers=headers or {}, timeout=timeout)

    def get_job(self, job_id: str, timeout: float = 10.0) -> requests.Response:
        return requests.get(f"{self.url}/v1/jobs/{job_id}", timeout=timeout)

    def metrics(self) -> str:
        return requests.get(self.url + "/metrics", timeout=10).text

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


class Gateways:
    """Starts services for one test and stops every one of them at its end."""

    def __init__(self, root: Path):
        self.root = root
        self.started: list[Service] = []

    def start(self, name: str, database_url: str, env: dict | None = None, wait_ready: bool = True,
              preexec_fn=None, ready_within: float = 60.0) -> Service:
        binary = gateway_bin()
        workdir = self.root / name
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("GATEWAY_") and k not in ("DATABASE_URL", "RUST_LOG", "LOKI_URL", "OTEL_EXPORTER_OTLP_ENDPOINT")}
        base.update(
            DATABASE_URL=database_url,
            GATEWAY_LISTEN=f"127.0.0.1:{port}",
            GATEWAY_SIM_DURATION_MS="1-5",
            GATEWAY_SIM_FAILURE_RATE="0",
            GATEWAY_RATE_LIMIT="0",
            # Teardown does not wait for long simulated runs.
            GATEWAY_SHUTDOWN_GRACE_SECS="2",
            RUST_LOG="info",
        )
        base.update({k: str(v) for k, v in (env or {}).items()})
        n = sum(1 for s in self.started if s.workdir == workdir)
        log_path = workdir / (f"{name}.log" if n == 0 else f"{name}.{n}.log")
        logf = open(log_path, "wb")
        proc = subprocess.Popen([binary, "serve"], env=base, cwd=workdir, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)
        logf.close()
        svc = Service(proc=proc, url=f"http://127.0.0.1:{port}", port=port, log_path=log_path, workdir=workdir, env=base)
        self.started.append(svc)
        print(f"[faults] started {name} pid {proc.pid} on {svc.url}, log {log_path}")
        if not wait_ready:
            return svc
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            if not svc.alive():
                pytest.fail(f"{name} exited with {proc.returncode} during start-up; log:\n{svc.tail()}", pytrace=False)
            if svc.ready(timeout=1.0):
                return svc
            time.sleep(0.1)
        svc.stop()
        pytest.fail(f"{name} not ready within {ready_within} s; log:\n{svc.tail()}", pytrace=False)

    def stop_all(self):
        for s in self.started:
            try:
                s.stop()
            except Exception as e:  # noqa: BLE001 - teardown goes on
                print(f"[faults] stopping pid {s.pid}: {e}")


@pytest.fixture
def gateways(tmp_path):
    g = Gateways(tmp_path)
    yield g
    g.stop_all()


# ----------------------------------------------------------------------------------- postgresql


def psql(dbname: str, sql: str, timeout: float = 30.0, check: bool = True) -> list[list[str]]:
    """Runs SQL with psql; returns the rows (unaligned, tab-separated)."""
    r = subprocess.run(
        ["psql", "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER, "-d", dbname, "-X", "-q", "-tA", "-F", "\t",
         "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True, text=True, timeout=timeout,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"psql failed ({r.returncode}): {r.stderr.strip()} for: {sql[:300]}")
    return [line.split("\t") for line in r.stdout.splitlines() if line != ""]


@dataclass
class PgDb:
    name: str

    @property
    def url(self) -> str:
        return f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{self.name}"

    def sql(self, q: str, timeout: float = 30.0) -> list[list[str]]:
        return psql(self.name, q, timeout=timeout)

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            lit = ",".join(f"'{uuid.UUID(x)}'" for x in chunk)
            found |= {r[0] for r in self.sql(f"SELECT id::text FROM jobs WHERE id IN ({lit})")}
        return found


@pytest.fixture
def pg_db():
    name = "ag_fault_" + secrets.token_hex(6)
    r = subprocess.run(["createdb", "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER, name], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        pytest.fail(f"createdb {name} failed: {r.stderr.strip()}", pytrace=False)
    db = PgDb(name)
    yield db
    subprocess.run(["dropdb", "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER, "--force", "--if-exists", name],
                   capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------------------- small helpers


def wait_until(pred: Callable[[], bool], within: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + within
    while True:
        try:
            if pred():
                return True
        except requests.RequestException:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)


def job_status(svc: Service, job_id: str) -> str | None:
    try:
        r = svc.get_job(job_id, timeout=5)
    except requests.RequestException:
        return None
    return r.json().get("status") if r.status_code == 200 else None


def wait_statuses(svc: Service, ids: Iterable[str], wanted: Iterable[str], within: float) -> dict[str, str | None]:
    """Polls until every job has one of the wanted statuses (or the time is up); returns the last seen."""
    wanted = set(wanted)
    last: dict[str, str | None] = {i: None for i in ids}
    deadline = time.monotonic() + within
    while True:
        for i, s in list(last.items()):
            if s not in wanted:
                last[i] = job_status(svc, i)
        if all(s in wanted for s in last.values()) or time.monotonic() >= deadline:
            return last
        time.sleep(0.2)


def metric_value(text: str, name: str) -> float | None:
    """Sum of the samples of one series name (any labels) in Prometheus text, None when absent."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        head = line.split(" ")[0]
        base = head.split("{")[0]
        if base == name:
            try:
                total += float(line.rsplit(" ", 1)[-1])
                seen = True
            except ValueError:
                pass
    return total if seen else None


def problem_violations(r: requests.Response, want_type_suffix: str | None = None) -> list[str]:
    """What is wrong with a non-202 answer that should be a retryable 503 problem."""
    bad = []
    if r.status_code != 503:
        bad.append(f"status {r.status_code} (want 503)")
    ct = r.headers.get("content-type", "")
    if not ct.startswith(PROBLEM):
        bad.append(f"content-type {ct!r}")
    if "retry-after" not in {k.lower() for k in r.headers}:
        bad.append("no Retry-After")
    try:
        p = r.json()
    except ValueError:
        bad.append(f"body not JSON: {r.text[:200]!r}")
        return bad
    if want_type_suffix and not str(p.get("type", "")).endswith(want_type_suffix):
        bad.append(f"type {p.get('type')!r} (want ...{want_type_suffix})")
    return bad
