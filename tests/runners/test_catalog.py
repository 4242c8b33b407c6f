"""The actions catalog file (issue 12): `check-actions FILE`, start-up validation, GET /v1/actions and
request validation against the file's actions.

- `check-actions` on a valid file: exit 0, `FILE: N actions OK (names)`; on each kind of invalid file
  (bad name, unknown runner, missing runner, unknown key, missing runner block, unknown template name,
  invalid JSON Schema, more than 100 actions): exit 1 and the message names the action and the key; an
  unreadable file: exit 2; a missing token file: a warning, exit 0 (but start-up fails).
- start-up with an invalid file: the process exits non-zero, the message names the action and the key.
- without a file: the three built-in actions, listed with runner `simulated`, still run.
- with a file: GET /v1/actions lists exactly the file's actions (name, runner, description,
  parameters_schema, targets, concurrency, policy with its defaults) and no token or runner config;
  unknown action -> 422 listing the file's actions; a target outside the allowlist -> 422 validation,
  detail `target: ...` naming the globs; a schema violation -> 422 `parameters: ...` naming the path; a
  parameter a template needs missing -> 422 naming it; `automation_jobs_total` only has the file's
  actions as `action` label values.

Every wait is bounded; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import requests

from conftest import (PROBLEM, assert_secret_absent, gateway_bin, list_actions, post_job, start_with_actions,
                      wait_terminal, write_catalog)

BUILT_IN = {
    "restart_service": {"timeout_ms": 300000, "max_attempts": 3, "backoff_ms": 2000, "on_lost": "fail"},
    "rotate_config": {"timeout_ms": 300000, "max_attempts": 3, "backoff_ms": 2000, "on_lost": "fail"},
    "health_check": {"timeout_ms": 30000, "max_attempts": 3, "backoff_ms": 1000, "on_lost": "retry"},
}
SECRET = "tok-9f8e7d6c5b4a-never-shown"
UNREACHABLE = "http://127.0.0.1:9"   # discard port: nothing listens; no test here lets a job reach it


def check_actions(path: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k not in ("DATABASE_URL",)}
    return subprocess.run([gateway_bin(), "check-actions", str(path)], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def out_of(r: subprocess.CompletedProcess) -> str:
    return (r.stdout or "") + (r.stderr or "")


def job_id_of(r: requests.Response) -> str:
    b = r.json()
    return str(b.get("job_id") or b.get("id"))


# --------------------------------------------------------------------------------- check-actions


def valid_catalog(token_path: str) -> dict:
    return {
        "ping_host": {"runner": "simulated", "description": "Ping a host"},
        "call_hook": {"runner": "http", "http": {"url": UNREACHABLE + "/hook/{{ target }}?job={{ job_id }}"}},
        "run_playbook": {"runner": "awx", "targets": ["web-*"],
                         "awx": {"url": UNREACHABLE, "token_file": token_path, "job_template_id": 3,
                                 "extra_vars": {"who": "{{ requested_by }}", "n": "{{ parameters.n }}"}}},
    }


def test_check_actions_accepts_a_valid_file_and_names_its_actions(tmp_path, secret_file):
    path = write_catalog(tmp_path / "ok.yaml", valid_catalog(secret_file(SECRET + "\n")))
    r = check_actions(path)
    out = out_of(r)
    assert r.returncode == 0, f"exit {r.returncode}; output:\n{out}"
    m = re.search(r"(\d+) actions OK \(([^)]*)\)", out)
    assert m, f"no 'N actions OK (names)' in:\n{out}"
    assert m.group(1) == "3", out
    assert {s.strip() for s in m.group(2).split(",")} == {"ping_host", "call_hook", "run_playbook"}, out
    assert path in out, f"the output does not name the file {path}:\n{out}"
    assert SECRET not in out


def _many(n: int) -> dict:
    return {f"action_{i:03d}": {"runner": "simulated"} for i in range(n)}


# (case id, the faulty action(s), words the message must contain)
INVALID = [
    ("bad-name", {"Bad-Name": {"runner": "simulated"}}, ["Bad-Name"]),
    ("name-too-long", {"a" * 64: {"runner": "simulated"}}, ["a" * 64]),
    ("unknown-runner", {"odd_runner": {"runner": "ftp", "ftp": {}}}, ["odd_runner", "runner"]),
    ("no-runner", {"no_runner": {"description": "forgot the runner"}}, ["no_runner", "runner"]),
    ("unknown-key", {"odd_key": {"runner": "simulated", "colour": "red"}}, ["odd_key", "colour"]),
    ("unknown-policy-key", {"odd_policy": {"runner": "simulated", "policy": {"retries": 3}}}, ["odd_policy", "retries"]),
    ("unknown-runner-key", {"odd_http": {"runner": "http", "http": {"url": UNREACHABLE, "verb": "GET"}}},
     ["odd_http", "verb"]),
    ("missing-runner-block", {"no_block": {"runner": "awx"}}, ["no_block", "awx"]),
    ("missing-required-key", {"no_template": {"runner": "awx", "awx": {"url": UNREACHABLE, "token_file": "/dev/null"}}},
     ["no_template", "job_template_id"]),
    ("unknown-template-name", {"bad_tpl": {"runner": "http", "http": {"url": UNREACHABLE + "/x/{{ nope }}"}}},
     ["bad_tpl", "nope"]),
    ("bad-json-schema", {"bad_schema": {"runner": "simulated", "parameters_schema": {"type": 12}}},
     ["bad_schema", "parameters_schema"]),
    ("per-target-zero", {"zero_conc": {"runner": "simulated", "concurrency": {"per_target": 0}}},
     ["zero_conc", "per_target"]),
    ("bad-on-lost", {"bad_lost": {"runner": "simulated", "policy": {"on_lost": "maybe"}}}, ["bad_lost", "on_lost"]),
]


@pytest.mark.parametrize("case,bad,words", INVALID, ids=[c[0] for c in INVALID])
def test_check_actions_refuses_an_invalid_file_naming_action_and_key(tmp_path, case, bad, words):
    cat = {"good_one": {"runner": "simulated"}}
    cat.update(bad)
    path = write_catalog(tmp_path / f"{case}.yaml", cat)
    r = check_actions(path)
    out = out_of(r)
    assert r.returncode == 1, f"{case}: exit {r.returncode} (want 1); output:\n{out}"
    missing = [w for w in words if w not in out]
    assert not missing, f"{case}: the message does not name {missing}; output:\n{out}"
    assert "actions OK" not in out, f"{case}: claims OK:\n{out}"


def test_check_actions_refuses_more_than_100_actions(tmp_path):
    ok = check_actions(write_catalog(tmp_path / "hundred.yaml", _many(100)))
    assert ok.returncode == 0, f"100 actions: exit {ok.returncode}; output:\n{out_of(ok)}"
    r = check_actions(write_catalog(tmp_path / "too-many.yaml", _many(101)))
    out = out_of(r)
    assert r.returncode == 1, f"101 actions: exit {r.returncode} (want 1); output:\n{out}"
    assert "100" in out, f"the message does not state the limit of 100:\n{out}"


def test_check_actions_unreadable_file_exits_2(tmp_path):
    r = check_actions(str(tmp_path / "does-not-exist.yaml"))
    assert r.returncode == 2, f"exit {r.returncode} (want 2); output:\n{out_of(r)}"


def test_missing_token_file_is_a_warning_for_check_actions_and_an_error_at_start_up(tmp_path, gateways):
    missing = str(tmp_path / "secrets" / "no-such-token")
    cat = {"needs_token": {"runner": "awx", "awx": {"url": UNREACHABLE, "token_file": missing, "job_template_id": 5}}}
    path = write_catalog(tmp_path / "missing-token.yaml", cat)
    r = check_actions(path)
    out = out_of(r)
    assert r.returncode == 0, f"check-actions with a missing token file: exit {r.returncode} (want 0, a warning); output:\n{out}"
    assert "warning" in out.lower() and "needs_token" in out, f"no warning naming the action:\n{out}"

    svc = gateways.start("missing-token", f"sqlite://{tmp_path}/mt.db?mode=rwc",
                         env={"GATEWAY_ACTIONS_FILE": path}, wait_ready=False)
    try:
        svc.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the gateway still runs 20 s after starting with a missing token file; log:\n{svc.tail()}",
                    pytrace=False)
    log = svc.log_text()
    assert svc.proc.returncode != 0, f"exit 0 with a missing token file; log:\n{log[-3000:]}"
    assert "needs_token" in log and "token_file" in log, f"the message does not name action and key:\n{log[-3000:]}"


# ---------------------------------------------------------------------------------------- start-up


STARTUP_INVALID = [c for c in INVALID if c[0] in ("unknown-key", "unknown-template-name", "missing-runner-block")]


@pytest.mark.parametrize("case,bad,words", STARTUP_INVALID, ids=[c[0] for c in STARTUP_INVALID])
def test_start_up_with_an_invalid_file_fails_naming_action_and_key(tmp_path, gateways, case, bad, words):
    cat = {"good_one": {"runner": "simulated"}}
    cat.update(bad)
    path = write_catalog(tmp_path / f"{case}.yaml", cat)
    svc = gateways.start(f"bad-{case}", f"sqlite://{tmp_path}/{case}.db?mode=rwc",
                         env={"GATEWAY_ACTIONS_FILE": path}, wait_ready=False)
    try:
        svc.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: the gateway still runs 20 s after starting with an invalid actions file; "
                    f"log:\n{svc.tail()}", pytrace=False)
    log = svc.log_text()
    assert svc.proc.returncode != 0, f"{case}: exit 0; log:\n{log[-3000:]}"
    missing = [w for w in words if w not in log]
    assert not missing, f"{case}: the start-up error does not name {missing}; log:\n{log[-3000:]}"
    assert path in log, f"{case}: the start-up error does not name the file {path}; log:\n{log[-3000:]}"


# ------------------------------------------------------------------------------- without a file


def test_without_a_file_the_built_in_actions_are_listed_and_run(tmp_path, gateways):
    svc = gateways.start("builtin", f"sqlite://{tmp_path}/builtin.db?mode=rwc")
    r = list_actions(svc)
    assert r.status_code == 200, f"GET /v1/actions: {r.status_code} {r.text[:500]}"
    listed = {a["name"]: a for a in r.json()["actions"]}
    assert set(listed) == set(BUILT_IN), f"GET /v1/actions lists {sorted(listed)}"
    errors = []
    for name, policy in BUILT_IN.items():
        a = listed[name]
        if a.get("runner") != "simulated":
            errors.append(f"{name}: runner {a.get('runner')!r} (want simulated)")
        if a.get("policy") != policy:
            errors.append(f"{name}: policy {a.get('policy')} (want {policy})")
    ids = []
    for name in BUILT_IN:
        p = post_job(svc, name, "builtin-1", {"simulate": {"duration_ms": 5, "fail": False}})
        if p.status_code != 202:
            errors.append(f"POST {name}: {p.status_code} {p.text[:300]}")
        else:
            ids.append((name, job_id_of(p)))
    for name, j in ids:
        job = wait_terminal(svc, j, within=20)
        if job.get("status") != "SUCCESS":
            errors.append(f"{name}: job ended {job.get('status')} {job.get('error')!r}")
    assert not errors, "built-in actions without a file:\n" + "\n".join(errors)


# ---------------------------------------------------------------------------------- with a file

SCHEMA = {"type": "object", "properties": {"reason": {"type": "string", "minLength": 3}},
          "required": ["reason"], "additionalProperties": False}


def file_catalog(token_path: str) -> dict:
    return {
        "rotate_secrets": {
            "runner": "awx", "description": "Rotate secrets through AWX",
            "targets": ["payments-*", "db-?"],
            "parameters_schema": SCHEMA,
            "policy": {"timeout_ms": 600000},
            "concurrency": {"per_target": 1},
            "awx": {"url": UNREACHABLE, "token_file": token_path, "job_template_id": 7,
                    "extra_vars": {"reason": "{{ parameters.reason }}", "who": "{{ requested_by }}"}},
        },
        "ping_host": {"runner": "simulated", "description": "Ping a host"},
        "notify_team": {
            "runner": "http", "description": "Post a notice",
            "policy": {"max_attempts": 2, "backoff_ms": 500, "on_lost": "retry"},
            "http": {"method": "POST", "url": UNREACHABLE + "/notify/{{ target }}", "token_file": token_path,
                     "body": {"ticket": "{{ parameters.ticket }}", "by": "{{ requested_by }}"}},
        },
    }


EXPECTED = {
    "rotate_secrets": {"runner": "awx", "description": "Rotate secrets through AWX", "parameters_schema": SCHEMA,
                       "targets": ["payments-*", "db-?"], "concurrency": {"per_target": 1},
                       "policy": {"timeout_ms": 600000, "max_attempts": 1, "backoff_ms": 2000, "on_lost": "fail"}},
    "ping_host": {"runner": "simulated", "description": "Ping a host", "parameters_schema": None, "targets": None,
                  "concurrency": None,
                  "policy": {"timeout_ms": 300000, "max_attempts": 3, "backoff_ms": 2000, "on_lost": "fail"}},
    "notify_team": {"runner": "http", "description": "Post a notice", "parameters_schema": None, "targets": None,
                    "concurrency": None,
                    "policy": {"timeout_ms": 300000, "max_attempts": 2, "backoff_ms": 500, "on_lost": "retry"}},
}


@pytest.fixture
def file_gateway(gateways, secret_file):
    token = secret_file(SECRET + "\n")
    svc = start_with_actions(gateways, "catalog", file_catalog(token))
    svc.token_path = token
    return svc


def test_get_actions_lists_exactly_the_files_actions_and_no_secrets(file_gateway):
    svc = file_gateway
    r = list_actions(svc)
    assert r.status_code == 200, f"GET /v1/actions: {r.status_code} {r.text[:500]}"
    actions = r.json().get("actions")
    assert isinstance(actions, list), r.text[:1000]
    names = [a.get("name") for a in actions]
    assert sorted(names) == sorted(EXPECTED), f"GET /v1/actions lists {names} (want exactly {sorted(EXPECTED)})"
    errors = []
    for a in actions:
        want = EXPECTED[a["name"]]
        for key, value in want.items():
            if key not in a:
                errors.append(f"{a['name']}: no {key!r} field")
            elif a[key] != value:
                errors.append(f"{a['name']}: {key} = {a[key]!r} (want {value!r})")
    for leak in (SECRET, svc.token_path, UNREACHABLE, "job_template_id", "extra_vars", "token_file",
                 "parameters.reason"):
        if leak in r.text:
            errors.append(f"GET /v1/actions contains {leak!r}")
    assert not errors, "GET /v1/actions:\n" + "\n".join(errors) + f"\nbody: {r.text[:2000]}"
    assert_secret_absent(svc, SECRET)


def problem_of(r: requests.Response, what: str) -> dict:
    assert r.status_code == 422, f"{what}: {r.status_code} (want 422) {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith(PROBLEM), f"{what}: content-type {r.headers.get('content-type')}"
    return r.json()


def test_unknown_action_is_refused_listing_the_files_actions(file_gateway):
    for action in ("restart_service", "health_check", "no_such_action"):
        p = problem_of(post_job(file_gateway, action, "payments-1", {}), f"POST {action}")
        assert str(p.get("type", "")).endswith("unknown-action"), f"POST {action}: type {p.get('type')}"
        assert sorted(p.get("supported_actions") or []) == sorted(EXPECTED), \
            f"POST {action}: supported_actions {p.get('supported_actions')} (want {sorted(EXPECTED)})"
        assert action in p.get("detail", ""), p


def test_target_allowlist(file_gateway):
    svc = file_gateway
    errors = []
    for target in ("web-1", "db-12", "xpayments-1", "payments", "db-"):
        r = post_job(svc, "rotate_secrets", target, {"reason": "quarterly"})
        if r.status_code != 422:
            errors.append(f"target {target!r}: {r.status_code} (want 422) {r.text[:300]}")
            continue
        p = r.json()
        if not r.headers.get("content-type", "").startswith(PROBLEM):
            errors.append(f"target {target!r}: content-type {r.headers.get('content-type')}")
        if not str(p.get("type", "")).endswith("validation"):
            errors.append(f"target {target!r}: type {p.get('type')!r} (want .../validation)")
        d = str(p.get("detail", ""))
        if not d.startswith("target:") or "payments-*" not in d or "db-?" not in d:
            errors.append(f"target {target!r}: detail {d!r} (want 'target: ...' naming payments-* and db-?)")
    # Inside the allowlist (`*` spans `/` too, `?` is one character): accepted. The action's backend is
    # unreachable, so these jobs fail later; only the acceptance matters here.
    for target in ("payments-eu/1", "payments-", "db-1"):
        r = post_job(svc, "rotate_secrets", target, {"reason": "quarterly"})
        if r.status_code != 202:
            errors.append(f"target {target!r} (inside the allowlist): {r.status_code} {r.text[:300]}")
    # No allowlist: any valid target.
    r = post_job(svc, "ping_host", "anything/at-all", {})
    if r.status_code != 202:
        errors.append(f"ping_host (no targets list): {r.status_code} {r.text[:300]}")
    assert not errors, "target allowlist:\n" + "\n".join(errors)


def test_parameters_schema_violation_names_the_path(file_gateway):
    svc = file_gateway
    errors = []
    for params, where in (({"reason": 5}, "/reason"), ({"reason": "ab"}, "/reason")):
        r = post_job(svc, "rotate_secrets", "payments-1", params)
        if r.status_code != 422:
            errors.append(f"parameters {params}: {r.status_code} (want 422) {r.text[:300]}")
            continue
        p = r.json()
        d = str(p.get("detail", ""))
        if not str(p.get("type", "")).endswith("validation"):
            errors.append(f"parameters {params}: type {p.get('type')!r}")
        if not d.startswith("parameters:") or where not in d:
            errors.append(f"parameters {params}: detail {d!r} (want 'parameters: ...' naming {where})")
    r = post_job(svc, "rotate_secrets", "payments-1", {})
    if r.status_code != 422 or not str(r.json().get("detail", "")).startswith("parameters:") \
            or "reason" not in r.json().get("detail", ""):
        errors.append(f"missing required 'reason': {r.status_code} {r.text[:300]}")
    assert not errors, "parameters_schema:\n" + "\n".join(errors)


def test_missing_template_parameter_is_refused_naming_it(file_gateway):
    r = post_job(file_gateway, "notify_team", "team-a", {"other": 1})
    p = problem_of(r, "POST notify_team without 'ticket'")
    d = str(p.get("detail", ""))
    assert str(p.get("type", "")).endswith("validation"), p
    assert d.startswith("parameters:") and "ticket" in d, f"detail {d!r} (want 'parameters: ...' naming 'ticket')"


def test_metrics_action_labels_are_the_files_actions(file_gateway):
    svc = file_gateway
    r = post_job(svc, "ping_host", "metrics-1", {"simulate": {"duration_ms": 5, "fail": False}})
    assert r.status_code == 202, r.text[:300]
    job = wait_terminal(svc, job_id_of(r), within=20)
    assert job.get("status") == "SUCCESS", job
    # Refused requests for built-in actions must not create label values either.
    post_job(svc, "restart_service", "metrics-1", {})
    text = svc.metrics()
    labels = set()
    for line in text.splitlines():
        if line.startswith("automation_jobs_total{"):
            m = re.search(r'[{,]action="([^"]*)"', line)
            if m:
                labels.add(m.group(1))
    assert "ping_host" in labels, f"automation_jobs_total has no ping_host series; action labels: {sorted(labels)}"
    assert labels <= set(EXPECTED), f"automation_jobs_total action labels {sorted(labels)} (allowed: {sorted(EXPECTED)})"
