"""Shared fixtures of the security tests: start the service binary ($GATEWAY_BIN) on a free
127.0.0.1 port with a fresh SQLite database, optionally with a tokens file, and capture its log.

Every wait is bounded. The service is stopped with SIGTERM (SIGKILL only if it does not stop).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

# Tokens used by the tests. They are random per run, so a leak in the log cannot be a coincidence.
ADMIN_TOKEN = "agw_" + secrets.token_hex(32)
# A well-formed token that is NOT in the tokens file (401); it must not be logged either.
UNKNOWN_TOKEN = "agw_" + secrets.token_hex(32)

# Service logs captured while authentication was on: the token-leak test reads them all.
LOG_DIR_ENV = "AG_SECURITY_LOG_DIR"


def sha256_hex(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


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


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class Service:
    proc: subprocess.Popen
    url: str
    host: str
    port: int
    log_path: Path
    workdir: Path
    token: str | None = None
    env: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self, timeout: float = 2.0) -> bool:
        try:
            return requests.get(self.url + "/readyz", timeout=timeout).status_code == 200
        except requests.RequestException:
            return False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def start_service(workdir: Path, name: str, tokens: bool, extra_env: dict | None = None) -> Service:
    """Start the service; `tokens=True` writes a tokens file with one admin token (all rights)."""
    binary = gateway_bin()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k not in ("DATABASE_URL", "RUST_LOG", "LOKI_URL", "OTEL_EXPORTER_OTLP_ENDPOINT")}
    env.update(
        DATABASE_URL=f"sqlite://{workdir}/gw.db?mode=rwc",
        GATEWAY_LISTEN=f"127.0.0.1:{port}",
        GATEWAY_SIM_DURATION_MS="1-5",
        GATEWAY_SIM_FAILURE_RATE="0",
        RUST_LOG="info",
    )
    token = None
    if tokens:
        token = ADMIN_TOKEN
        tf = workdir / "tokens.yaml"
        tf.write_text(
            "tokens:\n"
            "  - name: security-admin\n"
            f'    sha256: "{sha256_hex(ADMIN_TOKEN)}"\n'
            '    actions: ["*"]\n'
            "    can_read: true\n"
            "    can_cancel: true\n"
        )
        env["GATEWAY_AUTH_TOKENS_FILE"] = str(tf)
    env.update(extra_env or {})
    log_dir = Path(os.environ.get(LOG_DIR_ENV, workdir))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}{'.tokens' if tokens else ''}.log"
    logf = open(log_path, "wb")
    proc = subprocess.Popen([binary, "serve"], env=env, cwd=workdir, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    logf.close()
    svc = Service(proc=proc, url=f"http://127.0.0.1:{port}", host="127.0.0.1", port=port, log_path=log_path, workdir=workdir, token=token, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not svc.alive():
            pytest.fail(f"service exited with {proc.returncode} during start-up; log:\n{svc.log_text()[-4000:]}", pytrace=False)
        if svc.ready(timeout=1.0):
            return svc
        time.sleep(0.2)
    svc.stop()
    pytest.fail(f"service not ready within 60 s; log:\n{svc.log_text()[-4000:]}", pytrace=False)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    d = Path(os.environ.get(LOG_DIR_ENV) or tmp_path_factory.mktemp("logs"))
    os.environ[LOG_DIR_ENV] = str(d)
    d.mkdir(parents=True, exist_ok=True)
    return d


# --- helpers of test_input_strict.py, test_auth_hardening.py and test_secrets.py -----------------

PG_HOST = "127.0.0.1"
PG_PORT = 5432


def tokens_yaml(entries: list[dict]) -> str:
    """A tokens file: each entry has name, actions and either `token` (hashed here) or `sha256`."""
    out = ["tokens:"]
    for e in entries:
        digest = e["sha256"] if "sha256" in e else sha256_hex(e["token"])
        actions = ", ".join(f'"{a}"' for a in e.get("actions", ["*"]))
        out += [
            f"  - name: {e['name']}",
            f'    sha256: "{digest}"',
            f"    actions: [{actions}]",
            f"    can_read: {str(e.get('can_read', True)).lower()}",
            f"    can_cancel: {str(e.get('can_cancel', True)).lower()}",
        ]
    return "\n".join(out) + "\n"


def replace_file(path: Path, text: str | bytes) -> None:
    """Write `text` next to `path` and rename it into place (the reloader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(tmp, path)


def start_with_tokens_file(workdir: Path, name: str, text: str, extra_env: dict | None = None) -> Service:
    """Start the service with the tokens file `text` (workdir/tokens.yaml). The log is `{name}.log`
    (not `*.tokens.log`: test_z_token_leak.py only reads the logs of its own suites)."""
    workdir.mkdir(parents=True, exist_ok=True)
    tf = workdir / "tokens.yaml"
    tf.write_text(text)
    return start_service(workdir, name, tokens=False, extra_env={"GATEWAY_AUTH_TOKENS_FILE": str(tf), **(extra_env or {})})


def log_offset(svc: Service) -> int:
    return svc.log_path.stat().st_size


def log_records(svc: Service, offset: int = 0) -> list[dict]:
    """The service's log lines from byte `offset` on, parsed (a non-JSON line becomes {"_raw": line})."""
    import json

    with open(svc.log_path, "rb") as f:
        f.seek(offset)
        data = f.read().decode("utf-8", "replace")
    out = []
    for ln in data.splitlines():
        try:
            rec = json.loads(ln)
            out.append(rec if isinstance(rec, dict) else {"_raw": ln})
        except ValueError:
            if ln.strip():
                out.append({"_raw": ln})
    return out


def clean_env() -> dict:
    """The environment start_service gives the binary, without its settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k not in ("DATABASE_URL", "RUST_LOG", "LOKI_URL", "OTEL_EXPORTER_OTLP_ENDPOINT")}


def pg_create_db() -> str:
    """A fresh PostgreSQL database on 127.0.0.1 (trust auth, user postgres); returns its name."""
    name = "ag_sec_" + secrets.token_hex(6)
    r = subprocess.run(["createdb", "-h", PG_HOST, "-p", str(PG_PORT), "-U", "postgres", name], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.fail(f"createdb {name} failed: {r.stderr}", pytrace=False)
    return name


def pg_drop_db(name: str) -> None:
    subprocess.run(["dropdb", "-h", PG_HOST, "-p", str(PG_PORT), "-U", "postgres", "--if-exists", "--force", name], capture_output=True, text=True, timeout=30)
