"""The github_actions runner against a loopback GitHub REST fake (fakes/github.py): the exact dispatch
request (path, headers, body with `return_run_details` and inputs rendered with their JSON types),
run polling, `external` recorded at dispatch, each conclusion, cancel and timeout propagated,
the 204 answer (no run details) as a permanent error, permanent vs transient errors, the token never
exposed."""

from __future__ import annotations

import secrets
import time

import pytest

from conftest import (assert_no_more, assert_secret_absent, cancel_job, field_of, start_with_actions, submit,
                      wait_job, wait_terminal)
from fakes.github import FakeGitHub

REPO = "acme/payments"
WORKFLOW = "deploy.yml"
DISPATCH = rf"/repos/{REPO}/actions/workflows/{WORKFLOW}/dispatches"
ANY_DISPATCH = r"/repos/.*/dispatches"


@pytest.fixture
def token():
    return "ghp_" + secrets.token_hex(16)


@pytest.fixture
def gh(token):
    f = FakeGitHub(token=token)
    yield f
    f.close()


@pytest.fixture
def token_path(secret_file, token):
    return secret_file(token + "\n")


def gh_catalog(gh, token_path, name="release", policy=None, **block):
    b = {"repository": REPO, "workflow": WORKFLOW, "ref": "main", "token_file": token_path,
         "inputs": {"target": "{{ target }}"}, "api_url": gh.url, "poll_interval_ms": 50}
    b.update(block)
    pol = {"max_attempts": 1, "timeout_ms": 30000, "backoff_ms": 100}
    pol.update(policy or {})
    return {name: {"runner": "github_actions", "description": "release through GitHub Actions", "policy": pol,
                   "github_actions": b}}


def ext(run):
    return {"system": "github_actions", "id": str(run.id), "url": run.html_url}


def check_headers(r, token, api_version="2022-11-28"):
    assert r.headers.get("authorization") == f"Bearer {token}", r
    assert r.headers.get("accept") == "application/vnd.github+json", r.headers
    assert r.headers.get("x-github-api-version") == api_version, r.headers
    assert r.headers.get("user-agent", "").startswith("automation-gateway/"), r.headers


# ------------------------------------------------------------------------------------ success


def test_dispatch_request_is_exact_and_success_records_external(gateways, gh, token, token_path):
    inputs = {
        "target": "{{ target }}",
        "reason": "{{ parameters.reason }}",
        "replicas": "{{ parameters.replicas }}",
        "dry_run": "{{parameters.dry_run}}",
        "msg": "deploy {{ target }} x{{ parameters.replicas }} for {{ requested_by }}",
        "job": "{{ job_id }}",
        "fixed": "v1",
    }
    svc = start_with_actions(gateways, "gh-ok", gh_catalog(gh, token_path, inputs=inputs))
    gh.script(hold=True)
    reason = 'say "hi"\n\ttab \\ {{ x }} ü'
    job_id = submit(svc, "release", "web-1.svc:8080", {"reason": reason, "replicas": 3, "dry_run": False})

    assert gh.wait_for(lambda: len(gh.runs) == 1, 15), f"no dispatch; requests:\n{gh.describe()}\n{svc.tail()}"
    d = gh.dispatches()[0]
    assert d.path == DISPATCH, d.path
    check_headers(d, token)
    assert d.headers.get("content-type", "").split(";")[0].strip() == "application/json"
    assert d.json == {
        "ref": "main",
        "inputs": {
            "target": "web-1.svc:8080",
            "reason": reason,
            "replicas": 3,
            "dry_run": False,
            "msg": "deploy web-1.svc:8080 x3 for runners@example.com",
            "job": job_id,
            "fixed": "v1",
        },
        "return_run_details": True,
    }, f"dispatch body {d.body!r}"

    run = gh.only_run()
    j = wait_job(svc, job_id, lambda j: j.get("external") is not None, 10, "external recorded")
    assert j["status"] == "RUNNING", j
    assert j["external"] == ext(run)
    polls = lambda: gh.matching("GET", rf"/repos/{REPO}/actions/runs/{run.id}")  # noqa: E731
    assert gh.wait_for(lambda: len(polls()) >= 2, 10), gh.describe()
    for p in polls():
        check_headers(p, token)

    gh.finish(run.id, "success")
    j = wait_terminal(svc, job_id, 15)
    assert j["status"] == "SUCCESS", j
    assert j["error"] is None
    assert j["attempts"] == 1
    assert j["external"] == ext(run)
    assert j["result"] == {**ext(run), "conclusion": "success"}
    assert len(gh.dispatches()) == 1 and not gh.cancels()

    lines = svc.lines_with("external run recorded")
    assert len(lines) == 1, lines
    assert field_of(lines[0], "job_id") == job_id
    assert field_of(lines[0], "system") == "github_actions"
    assert str(field_of(lines[0], "external_id")) == str(run.id)
    assert field_of(lines[0], "url") == run.html_url
    assert_secret_absent(svc, token, [job_id])


def test_api_version_is_configurable(gateways, gh, token, token_path):
    svc = start_with_actions(gateways, "gh-apiver", gh_catalog(gh, token_path, api_version="2026-03-10"))
    gh.script(polls=1)
    job_id = submit(svc, "release", "web-1")
    j = wait_terminal(svc, job_id, 20)
    assert j["status"] == "SUCCESS", j
    for r in gh.requests:
        check_headers(r, token, api_version="2026-03-10")


# ------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize("conclusion", ["failure", "cancelled", "timed_out", "startup_failure", "action_required"])
def test_unsuccessful_conclusion_fails(gateways, gh, token_path, conclusion):
    svc = start_with_actions(gateways, f"gh-{conclusion}", gh_catalog(gh, token_path))
    gh.script(conclusion=conclusion, polls=1)
    job_id = submit(svc, "release", "web-1")
    j = wait_terminal(svc, job_id, 20)
    run = gh.only_run()
    assert j["status"] == "FAILED", j
    assert (j["error"] or "").startswith(f"workflow run {run.id} concluded {conclusion}"), j["error"]
    assert j["external"] == ext(run)
    assert_no_more(gh, "POST", ANY_DISPATCH, 1)


def test_failed_attempt_is_retried_when_attempts_remain(gateways, gh, token_path):
    svc = start_with_actions(gateways, "gh-retry", gh_catalog(gh, token_path, policy={"max_attempts": 2}))
    gh.conclusion_queue.extend(["failure", "success"])
    gh.script(polls=1)
    job_id = submit(svc, "release", "web-1")
    j = wait_terminal(svc, job_id, 30)
    assert j["status"] == "SUCCESS", j
    assert j["attempts"] == 2, j
    assert len(gh.dispatches()) == 2
    assert j["external"]["id"] == str(max(gh.runs))


def test_204_without_run_details_is_permanent(gateways, gh, token_path):
    svc = start_with_actions(gateways, "gh-204", gh_catalog(gh, token_path, policy={"max_attempts": 3}))
    gh.no_details = True
    job_id = submit(svc, "release", "web-1")
    j = wait_terminal(svc, job_id, 20)
    assert j["status"] == "FAILED", j
    assert j["error"], j
    assert j["external"] is None, j
    assert_no_more(gh, "POST", ANY_DISPATCH, 1, settle=1.0)


# ------------------------------------------------------------------------------ cancel, timeout


def test_cancel_propagates_to_the_run(gateways, gh, token, token_path):
    svc = start_with_actions(gateways, "gh-cancel", gh_catalog(gh, token_path))
    gh.script(hold=True)
    job_id = submit(svc, "release", "web-1")
    wait_job(svc, job_id, lambda j: j.get("external") is not None and j["status"] == "RUNNING", 15, "RUNNING with external")
    run = gh.only_run()
    r = cancel_job(svc, job_id)
    assert r.status_code in (200, 202), r.text
    assert gh.wait_for(lambda: len(gh.cancels()) >= 1, 10), f"no cancel call; requests:\n{gh.describe()}"
    c = gh.cancels()[0]
    assert c.path == f"/repos/{REPO}/actions/runs/{run.id}/cancel"
    check_headers(c, token)
    j = wait_terminal(svc, job_id, 15)
    assert j["status"] == "CANCELED", j
    assert j["external"] == ext(run)
    assert_no_more(gh, "POST", ANY_DISPATCH, 1)


def test_timeout_cancels_the_run_and_fails(gateways, gh, token_path):
    svc = start_with_actions(gateways, "gh-timeout", gh_catalog(gh, token_path, policy={"timeout_ms": 1500}))
    gh.script(hold=True)
    t0 = time.monotonic()
    job_id = submit(svc, "release", "web-1")
    j = wait_terminal(svc, job_id, 20)
    assert j["status"] == "FAILED", j
    assert "timed out after 1500 ms" in (j["error"] or ""), j
    assert time.monotonic() - t0 >= 1.3
    assert gh.wait_for(lambda: len(gh.cancels()) >= 1, 5), f"timeout did not cancel the run:\n{gh.describe()}"
    assert gh.only_run().canceled


# --------------------------------------------------------------------------- error classes


@pytest.mark.parametrize("status,body", [
    (400, {"message": "Unexpected inputs provided: [\"x\"]"}),
    (401, {"message": "Bad credentials"}),
    (403, {"message": "Resource not accessible by integration"}),
    (404, {"message": "Not Found"}),
    (422, {"message": "Workflow does not have 'workflow_dispatch' trigger"}),
])
def test_dispatch_4xx_is_permanent(gateways, gh, token_path, status, body):
    svc = start_with_actions(gateways, f"gh-perm-{status}", gh_catalog(gh, token_path, policy={"max_attempts": 3}))
    gh.dispatch_answers.set_always((status, {}, body))
    job_id = submit(svc, "release", "web-1")
    j = wait_terminal(svc, job_id, 20)
    assert j["status"] == "FAILED", j
    assert j["error"], j
    assert j["external"] is None
    assert_no_more(gh, "POST", ANY_DISPATCH, 1, settle=1.0)


@pytest.mark.parametrize("status,headers", [(500, {}), (503, {}), (429, {"Retry-After": "1"})])
def test_dispatch_transient_error_is_retried(gateways, gh, token_path, status, headers):
    svc = start_with_actions(gateways, f"gh-transient-{status}", gh_catalog(gh, token_path, policy={"max_attempts": 3}))
    gh.dispatch_answers.push((status, headers, {"message": "Server Error"}))
    gh.script(polls=1)
    job_id = submit(svc, "release", "web-1")
    j = wait_terminal(svc, job_id, 30)
    assert j["status"] == "SUCCESS", j
    ds = gh.dispatches()
    assert len(ds) == 2, gh.describe()
    assert ds[1].json == ds[0].json
    if headers:
        assert ds[1].at - ds[0].at >= 0.9, f"retried {ds[1].at - ds[0].at:.3f} s after Retry-After: 1"


def test_transient_poll_errors_keep_polling(gateways, gh, token_path):
    svc = start_with_actions(gateways, "gh-pollerr", gh_catalog(gh, token_path, policy={"max_attempts": 3}))
    gh.poll_answers.push((502, {}, "bad gateway"), (503, {}, {"message": "unavailable"}))
    gh.script(polls=1)
    job_id = submit(svc, "release", "web-1")
    j = wait_terminal(svc, job_id, 30)
    assert j["status"] == "SUCCESS", j
    assert j["attempts"] == 1
    assert len(gh.dispatches()) == 1


def test_missing_template_parameter_is_422_and_nothing_is_dispatched(gateways, gh, token_path):
    cat = gh_catalog(gh, token_path, inputs={"target": "{{ target }}", "reason": "{{ parameters.reason }}"})
    svc = start_with_actions(gateways, "gh-missing", cat)
    from conftest import post_job
    r = post_job(svc, "release", "web-1", {"other": 1})
    assert r.status_code == 422, r.text
    detail = r.json().get("detail", "")
    assert detail.startswith("parameters:"), detail
    assert "'reason'" in detail and "github_actions.inputs" in detail, detail
    assert str(r.json().get("type", "")).endswith("validation"), r.text
    time.sleep(0.5)
    assert not gh.requests, gh.describe()
