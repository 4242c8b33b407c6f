"""Shared fixtures of the runner tests (issue 12: actions catalog file + remote runners).

The service harness is tests/faults/conftest.py, loaded here under the module name "faults_harness"
(not duplicated) and re-exported: `gateways`, `pg_db` (fixtures), `Service`, `Gateways`, `wait_until`,
`job_status`, `wait_statuses`, `metric_value`, `problem_violations`, `parse_log`, `field_of`,
`message_of`, `level_of`, `free_port`, `psql`, ... Added here:

- fixture `actions_file(tmp_path)` -> write(catalog: dict) -> path of a YAML file {"actions": catalog};
- fixture `secret_file(tmp_path)` -> write(content: str, name="token") -> path (mode 0600);
- `start_with_actions(gateways, name, catalog, database_url=None, env=None, **start_kwargs)`: starts a
  gateway with GATEWAY_ACTIONS_FILE (SQLite at <tmp>/<name>/gw.db by default; starting the same name
  again reuses that database, for restart/resume tests); the catalog path is `svc.actions_path`;
- `post_job(svc, action, target, parameters=None, requested_by=...)` -> requests.Response;
- `get_job(svc, job_id)` -> dict (fails the test on a non-200);
- `wait_terminal(svc, job_id, within=30)` -> the job JSON once SUCCESS/FAILED/CANCELED;
- `wait_job(svc, job_id, pred, within, what)` -> the job JSON once pred(job) holds;
- `cancel_job(svc, job_id)` -> requests.Response;
- `list_actions(svc)` -> requests.Response of GET /v1/actions;
- `assert_secret_absent(svc, secret, job_ids=())`: the secret is in neither the log file, the job
  JSON of those jobs, the job list nor GET /v1/actions.

Auth is off (no GATEWAY_AUTH_TOKENS_FILE), as in tests/faults. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
if str(HERE) not in sys.path:  # so tests can `from fakes.awx import FakeAwx`
    sys.path.insert(0, str(HERE))

sys.path.insert(0, str(REPO / "tests" / "lib"))
from harness import export_faults_harness  # noqa: E402

faults_harness = export_faults_harness(globals())

REQUESTED_BY = "runners@example.com"


# ------------------------------------------------------------------------------------ files


def write_catalog(path: Path, catalog: dict) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"actions": catalog}, sort_keys=False, default_flow_style=False))
    return str(path)


@pytest.fixture
def actions_file(tmp_path):
    n = [0]

    def write(catalog: dict) -> str:
        n[0] += 1
        return write_catalog(tmp_path / f"actions-{n[0]}.yaml", catalog)

    return write


@pytest.fixture
def secret_file(tmp_path):
    d = tmp_path / "secrets"
    d.mkdir(exist_ok=True)

    def write(content: str, name: str = "token") -> str:
        p = d / name
        p.write_text(content)
        os.chmod(p, 0o600)
        return str(p)

    return write


# ---------------------------------------------------------------------------------- service


def start_with_actions(gateways, name: str, catalog: dict, database_url: str | None = None,
                       env: dict | None = None, **start_kwargs):
    """Starts a gateway whose catalog is `catalog` (written to <tmp>/<name>-actions.yaml)."""
    path = write_catalog(Path(gateways.root) / f"{name}-actions.yaml", catalog)
    if database_url is None:
        (Path(gateways.root) / name).mkdir(parents=True, exist_ok=True)
        database_url = f"sqlite://{Path(gateways.root) / name / 'gw.db'}?mode=rwc"
    e = {"GATEWAY_ACTIONS_FILE": path}
    e.update({k: str(v) for k, v in (env or {}).items()})
    svc = gateways.start(name, database_url, env=e, **start_kwargs)
    svc.actions_path = path
    return svc


def post_job(svc, action: str, target: str, parameters: dict | None = None,
             requested_by: str = REQUESTED_BY, headers: dict | None = None) -> requests.Response:
    body = {"action": action, "target": target, "requested_by": requested_by, "parameters": parameters or {}}
    return requests.post(svc.url + "/v1/jobs", json=body, headers=headers or {}, timeout=20)


def submit(svc, action: str, target: str, parameters: dict | None = None, **kw) -> str:
    """post_job that must be accepted (202); returns the job id."""
    r = post_job(svc, action, target, parameters, **kw)
    if r.status_code != 202:
        pytest.fail(f"POST /v1/jobs {action} {target}: {r.status_code} {r.text[:1000]}", pytrace=False)
    j = r.json()
    return j.get("job_id") or j["id"]


def get_job(svc, job_id: str) -> dict:
    r = requests.get(f"{svc.url}/v1/jobs/{job_id}", timeout=10)
    if r.status_code != 200:
        pytest.fail(f"GET /v1/jobs/{job_id}: {r.status_code} {r.text[:1000]}", pytrace=False)
    return r.json()


def wait_job(svc, job_id: str, pred, within: float = 30.0, what: str = "condition", every: float = 0.05) -> dict:
    deadline = time.monotonic() + within
    last: dict | str | None = None
    while True:
        try:
            r = requests.get(f"{svc.url}/v1/jobs/{job_id}", timeout=5)
            if r.status_code == 200:
                last = r.json()
                if pred(last):
                    return last
            else:
                last = f"{r.status_code} {r.text[:500]}"
        except requests.RequestException as e:
            last = f"request error: {e}"
        if time.monotonic() >= deadline:
            pytest.fail(f"job {job_id}: {what} not reached within {within} s; last: "
                        f"{json.dumps(last, indent=1) if isinstance(last, dict) else last}\nlog tail:\n{svc.tail(3000)}",
                        pytrace=False)
        time.sleep(every)


def wait_terminal(svc, job_id: str, within: float = 30.0) -> dict:
    return wait_job(svc, job_id, lambda j: j.get("status") in TERMINAL, within, "a terminal status")


def cancel_job(svc, job_id: str) -> requests.Response:
    return requests.post(f"{svc.url}/v1/jobs/{job_id}/cancel", timeout=10)


def list_actions(svc) -> requests.Response:
    return requests.get(svc.url + "/v1/actions", timeout=10)


def assert_secret_absent(svc, secret: str, job_ids=()) -> None:
    secret = secret.strip()
    assert secret, "empty secret"
    assert secret not in svc.log_text(), "the secret appears in the gateway's log"
    for j in job_ids:
        r = requests.get(f"{svc.url}/v1/jobs/{j}", timeout=10)
        assert secret not in r.text, f"the secret appears in GET /v1/jobs/{j}"
    r = requests.get(svc.url + "/v1/jobs", timeout=10)
    assert secret not in r.text, "the secret appears in GET /v1/jobs"
    r = list_actions(svc)
    assert secret not in r.text, "the secret appears in GET /v1/actions"


def assert_no_more(recorder, method, path_regex, n: int, settle: float = 0.6) -> None:
    """After `settle` seconds, the fake received exactly n requests matching (method, path_regex)."""
    time.sleep(settle)
    got = recorder.count(method, path_regex)
    assert got == n, f"{method} {path_regex}: {got} requests, want {n}; requests:\n{recorder.describe()}"
