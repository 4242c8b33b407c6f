"""The awx runner against a loopback AWX fake (fakes/awx.py): the exact launch request (path, auth,
content type, extra_vars rendered with their JSON types, limit), polling, `external` recorded while
the run is still going, each terminal outcome (failure text with the stdout tail), cancel and timeout
propagated to AWX, permanent vs transient errors, and the token never exposed."""

from __future__ import annotations

import os
import secrets
import time

import pytest

from conftest import (assert_no_more, assert_secret_absent, cancel_job, field_of, get_job, list_actions, start_with_actions,
                      submit, wait_job, wait_terminal)
from fakes.awx import FakeAwx

TEMPLATE = 42


@pytest.fixture
def token():
    return "awxtok-" + secrets.token_hex(12)


@pytest.fixture
def awx(token):
    f = FakeAwx(token=token, templates=(TEMPLATE,))
    yield f
    f.close()


@pytest.fixture
def token_path(secret_file, token):
    return secret_file(token + "\n")   # trailing newline: trimmed by the gateway


def awx_catalog(awx, token_path, name="rotate_config", policy=None, **block):
    b = {"url": awx.url, "token_file": token_path, "job_template_id": TEMPLATE,
         "extra_vars": {"target": "{{ target }}"}, "poll_interval_ms": 50}
    b.update(block)
    pol = {"max_attempts": 1, "timeout_ms": 30000, "backoff_ms": 100}
    pol.update(policy or {})
    return {name: {"runner": "awx", "description": "rotate the config through AWX", "policy": pol, "awx": b}}


def ext(awx, job_id):
    return {"system": "awx", "id": str(job_id), "url": f"{awx.url}/#/jobs/playbook/{job_id}"}


# ------------------------------------------------------------------------------------ success


def test_launch_request_is_exact_and_success_records_external(gateways, awx, token, token_path):
    extra_vars = {
        "target": "{{ target }}",
        "reason": "{{parameters.reason}}",
        "count": "{{ parameters.count }}",
        "enabled": "{{ parameters.enabled }}",
        "opts": "{{ parameters.opts }}",
        "deep": "{{ parameters.a.b }}",
        "note": "{{ action }} on {{ target }} by {{ requested_by }}: {{ parameters.reason }}",
        "count_text": "n={{ parameters.count }}",
        "job": "{{ job_id }}",
        "literal": "plain text",
    }
    svc = start_with_actions(gateways, "awx-ok", awx_catalog(awx, token_path, extra_vars=extra_vars, limit="{{ target }}"))
    awx.script(hold=True)
    reason = 'quarterly "rotation" & \\ back\\slash, ünïcode {{ not a template }}'
    params = {"reason": reason, "count": 3, "enabled": True, "opts": {"dry_run": False, "hosts": [1, 2]},
              "a": {"b": "deep-value"}}
    job_id = submit(svc, "rotate_config", "payments-1", params)

    assert awx.wait_for(lambda: len(awx.jobs) == 1, 15), f"no launch; requests:\n{awx.describe()}\n{svc.tail()}"
    launch = awx.launches()[0]
    assert launch.path == f"/api/v2/job_templates/{TEMPLATE}/launch/"
    assert launch.query == {}
    assert launch.headers.get("authorization") == f"Bearer {token}"
    assert launch.headers.get("content-type", "").split(";")[0].strip() == "application/json"
    assert launch.headers.get("accept", "").split(";")[0].strip() == "application/json"
    assert launch.json == {
        "extra_vars": {
            "target": "payments-1",
            "reason": reason,
            "count": 3,
            "enabled": True,
            "opts": {"dry_run": False, "hosts": [1, 2]},
            "deep": "deep-value",
            "note": f"rotate_config on payments-1 by runners@example.com: {reason}",
            "count_text": "n=3",
            "job": job_id,
            "literal": "plain text",
        },
        "limit": "payments-1",
    }, f"launch body: {launch.body!r}"

    awx_job = awx.only_job()
    # external is recorded as soon as AWX answered, while the run is still going
    j = wait_job(svc, job_id, lambda j: j.get("external") is not None, 10, "external recorded")
    assert j["status"] == "RUNNING", j
    assert j["external"] == ext(awx, awx_job.id)
    assert awx.wait_for(lambda: len(awx.polls_of(awx_job.id)) >= 2, 10), awx.describe()
    for p in awx.polls_of(awx_job.id):
        assert p.headers.get("authorization") == f"Bearer {token}"
    assert wait_job(svc, job_id, lambda j: True, 1)["status"] == "RUNNING"

    awx.finish(awx_job.id, "successful")
    j = wait_terminal(svc, job_id, 15)
    assert j["status"] == "SUCCESS", j
    assert j["error"] is None, j
    assert j["attempts"] == 1, j
    assert j["external"] == ext(awx, awx_job.id)
    assert j["result"] == {**ext(awx, awx_job.id), "status": "successful"}
    assert len(awx.launches()) == 1
    assert not awx.cancels(), "a successful run was canceled"

    import requests
    items = requests.get(svc.url + "/v1/jobs", params={"action": "rotate_config"}, timeout=10).json()["items"]
    mine = [i for i in items if i["job_id"] == job_id]
    assert len(mine) == 1 and mine[0].get("external") == ext(awx, awx_job.id), f"list item: {mine}"

    lines = svc.lines_with("external run recorded")
    assert len(lines) == 1, [str(l)[:300] for l in lines]
    assert field_of(lines[0], "job_id") == job_id
    assert field_of(lines[0], "system") == "awx"
    assert str(field_of(lines[0], "external_id")) == str(awx_job.id)
    assert field_of(lines[0], "url") == ext(awx, awx_job.id)["url"]
    assert_secret_absent(svc, token, [job_id])


def test_aap_api_prefix_and_no_limit(gateways, token):
    with FakeAwx(token=token, api_prefix="/api/controller/v2", templates=(7,)) as aap:
        path = gateways.root / "aap-token"
        path.write_text(token + "\n")
        cat = awx_catalog(aap, str(path), job_template_id=7, api_prefix="/api/controller/v2")
        svc = start_with_actions(gateways, "awx-aap", cat)
        job_id = submit(svc, "rotate_config", "db-2")
        j = wait_terminal(svc, job_id, 20)
        assert j["status"] == "SUCCESS", j
        launch = aap.launches()
        assert [r.path for r in launch] == ["/api/controller/v2/job_templates/7/launch/"], aap.describe()
        assert launch[0].json == {"extra_vars": {"target": "db-2"}}, launch[0].body
        job = aap.only_job()
        assert aap.count("GET", rf"/api/controller/v2/jobs/{job.id}/") >= 1
        assert not aap.matching("*", r"/api/v2/.*"), "requests outside the configured api_prefix"
        assert j["external"] == ext(aap, job.id)


# ------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize("status", ["failed", "error", "canceled"])
def test_unsuccessful_run_fails_with_stdout_tail(gateways, awx, token, token_path, status):
    svc = start_with_actions(gateways, f"awx-{status}", awx_catalog(awx, token_path))
    awx.script(terminal=status, polls=2)
    job_id = submit(svc, "rotate_config", "payments-1")
    j = wait_terminal(svc, job_id, 20)
    awx_job = awx.only_job()
    assert j["status"] == "FAILED", j
    err = j["error"] or ""
    assert err.startswith(f"awx job {awx_job.id} ended {status}"), err
    stdout_reqs = awx.stdout_requests()
    assert stdout_reqs, f"the stdout was not fetched; requests:\n{awx.describe()}"
    assert stdout_reqs[0].path == f"/api/v2/jobs/{awx_job.id}/stdout/"
    assert stdout_reqs[0].query.get("format") == "txt", stdout_reqs[0].raw_path
    assert stdout_reqs[0].headers.get("authorization") == f"Bearer {token}"
    # the last 20 lines: 11..30, not 10
    for i in (11, 20, 30):
        assert f"stdout-line-{i:02d}" in err, err
    assert "stdout-line-10" not in err, err
    assert j["external"] == ext(awx, awx_job.id)
    assert j["attempts"] == 1
    assert_no_more(awx, "POST", r"/api/v2/job_templates/\d+/launch/", 1)
    assert_secret_absent(svc, token, [job_id])


def test_stdout_tail_is_capped_at_2_kib(gateways, awx, token_path):
    long_lines = "\n".join(f"L{i:02d}-" + "x" * 200 for i in range(1, 31)) + "\n"
    svc = start_with_actions(gateways, "awx-longout", awx_catalog(awx, token_path))
    awx.script(terminal="failed", polls=1, stdout=long_lines)
    job_id = submit(svc, "rotate_config", "payments-1")
    j = wait_terminal(svc, job_id, 20)
    assert j["status"] == "FAILED", j
    err = j["error"]
    assert "L30-" in err, err[-300:]
    prefix = f"awx job {awx.only_job().id} ended failed"
    assert err.startswith(prefix), err[:200]
    assert len(err.encode()) <= 2048 + len(prefix) + 16, f"error is {len(err.encode())} bytes"
    assert "L01-" not in err


def test_failed_attempt_is_retried_when_attempts_remain(gateways, awx, token_path):
    svc = start_with_actions(gateways, "awx-retry", awx_catalog(awx, token_path, policy={"max_attempts": 2}))
    awx.terminal_queue.extend(["failed", "successful"])
    awx.script(polls=1)
    job_id = submit(svc, "rotate_config", "payments-1")
    j = wait_terminal(svc, job_id, 30)
    assert j["status"] == "SUCCESS", j
    assert j["attempts"] == 2, j
    assert len(awx.launches()) == 2, awx.describe()
    second = max(awx.jobs)
    assert j["external"] == ext(awx, second)
    assert j["result"]["id"] == str(second)


# ------------------------------------------------------------------------------ cancel, timeout


@pytest.mark.parametrize("cancel_status", [202, 405])
def test_cancel_propagates_to_awx(gateways, awx, token, token_path, cancel_status):
    svc = start_with_actions(gateways, f"awx-cancel-{cancel_status}", awx_catalog(awx, token_path))
    awx.script(hold=True)
    awx.cancel_status = cancel_status
    job_id = submit(svc, "rotate_config", "payments-1")
    j = wait_job(svc, job_id, lambda j: j.get("external") is not None and j["status"] == "RUNNING", 15, "RUNNING with external")
    awx_job = awx.only_job()
    assert awx.wait_for(lambda: awx_job.run.seen_running.is_set(), 10)
    r = cancel_job(svc, job_id)
    assert r.status_code in (200, 202), r.text
    assert awx.wait_for(lambda: len(awx.cancels()) >= 1, 10), f"no cancel call; requests:\n{awx.describe()}"
    c = awx.cancels()[0]
    assert c.path == f"/api/v2/jobs/{awx_job.id}/cancel/"
    assert c.headers.get("authorization") == f"Bearer {token}"
    j = wait_terminal(svc, job_id, 15)
    assert j["status"] == "CANCELED", j
    assert j["external"] == ext(awx, awx_job.id)
    assert_no_more(awx, "POST", r"/api/v2/job_templates/\d+/launch/", 1)


def test_timeout_cancels_awx_job_and_fails(gateways, awx, token_path):
    cat = awx_catalog(awx, token_path, policy={"timeout_ms": 1500, "max_attempts": 1})
    svc = start_with_actions(gateways, "awx-timeout", cat)
    awx.script(hold=True)
    t0 = time.monotonic()
    job_id = submit(svc, "rotate_config", "payments-1")
    j = wait_terminal(svc, job_id, 20)
    elapsed = time.monotonic() - t0
    assert j["status"] == "FAILED", j
    assert "timed out after 1500 ms" in (j["error"] or ""), j
    assert elapsed >= 1.3, f"ended after {elapsed:.2f} s, before the 1.5 s timeout"
    awx_job = awx.only_job()
    assert awx.wait_for(lambda: len(awx.cancels()) >= 1, 5), f"timeout did not cancel the AWX job:\n{awx.describe()}"
    assert awx.cancels()[0].path == f"/api/v2/jobs/{awx_job.id}/cancel/"
    assert awx_job.canceled


# --------------------------------------------------------------------------- error classes


@pytest.mark.parametrize("status,body", [
    (400, {"passwords_needed_to_start": ["ssh_password"]}),
    (401, {"detail": "Invalid token."}),
    (403, {"detail": "You do not have permission to perform this action."}),
    (404, {"detail": "Not found."}),
    (405, {"detail": 'Method "POST" not allowed.'}),
])
def test_launch_4xx_is_permanent(gateways, awx, token_path, status, body):
    cat = awx_catalog(awx, token_path, policy={"max_attempts": 3, "backoff_ms": 100})
    svc = start_with_actions(gateways, f"awx-perm-{status}", cat)
    awx.launch_answers.set_always((status, {}, body))
    job_id = submit(svc, "rotate_config", "payments-1")
    j = wait_terminal(svc, job_id, 20)
    assert j["status"] == "FAILED", j
    assert j["error"], j
    assert str(status) in j["error"], j["error"]
    assert j["external"] is None, j
    assert_no_more(awx, "POST", r"/api/v2/job_templates/\d+/launch/", 1, settle=1.0)
    assert j["attempts"] <= 1, j


@pytest.mark.parametrize("status,headers", [
    (503, {}),
    (502, {}),
    (500, {}),
    (408, {}),
    (429, {"Retry-After": "1"}),
])
def test_launch_transient_error_is_retried(gateways, awx, token_path, status, headers):
    cat = awx_catalog(awx, token_path, policy={"max_attempts": 3, "backoff_ms": 100})
    svc = start_with_actions(gateways, f"awx-transient-{status}", cat)
    awx.launch_answers.push((status, headers, {"detail": "try again later"}))
    awx.script(polls=1)
    job_id = submit(svc, "rotate_config", "payments-1")
    j = wait_terminal(svc, job_id, 30)
    assert j["status"] == "SUCCESS", j
    launches = awx.launches()
    assert len(launches) == 2, awx.describe()
    assert launches[1].json == launches[0].json
    if "Retry-After" in headers:
        gap = launches[1].at - launches[0].at
        assert gap >= 0.9, f"retried {gap:.3f} s after a 429 with Retry-After: 1"
    assert j["external"] == ext(awx, awx.only_job().id)


def test_transient_poll_errors_keep_polling_in_the_same_attempt(gateways, awx, token_path):
    svc = start_with_actions(gateways, "awx-pollerr", awx_catalog(awx, token_path, policy={"max_attempts": 3}))
    awx.poll_answers.push((502, {}, "<html>bad gateway</html>"), (503, {}, {"detail": "busy"}),
                          (429, {"Retry-After": "0"}, {"detail": "slow down"}))
    awx.script(polls=2)
    job_id = submit(svc, "rotate_config", "payments-1")
    j = wait_terminal(svc, job_id, 30)
    assert j["status"] == "SUCCESS", j
    assert j["attempts"] == 1, j
    assert len(awx.launches()) == 1, awx.describe()


def test_connect_error_is_transient(gateways, token_path):
    from conftest import free_port
    dead = f"http://127.0.0.1:{free_port()}"
    cat = {"rotate_config": {"runner": "awx", "policy": {"max_attempts": 2, "backoff_ms": 100, "timeout_ms": 10000},
                             "awx": {"url": dead, "token_file": token_path, "job_template_id": TEMPLATE,
                                     "extra_vars": {}, "poll_interval_ms": 50}}}
    svc = start_with_actions(gateways, "awx-dead", cat)
    job_id = submit(svc, "rotate_config", "payments-1")
    j = wait_terminal(svc, job_id, 30)
    assert j["status"] == "FAILED", j
    assert j["attempts"] == 2, f"a connect error should be retried by policy: {j}"


def test_ignored_fields_is_a_permanent_error(gateways, awx, token_path):
    cat = awx_catalog(awx, token_path, limit="{{ target }}", policy={"max_attempts": 3, "backoff_ms": 100})
    svc = start_with_actions(gateways, "awx-ignored", cat)
    awx.ignored_fields = {"limit": "payments-1"}
    job_id = submit(svc, "rotate_config", "payments-1")
    j = wait_terminal(svc, job_id, 20)
    assert j["status"] == "FAILED", j
    assert "limit" in (j["error"] or ""), j
    assert "ignored" in (j["error"] or "").lower(), j
    assert_no_more(awx, "POST", r"/api/v2/job_templates/\d+/launch/", 1, settle=1.0)


# --------------------------------------------------------------------------------- the token


def test_token_file_is_read_at_each_use(gateways, awx, token, token_path):
    svc = start_with_actions(gateways, "awx-rotate-token", awx_catalog(awx, token_path))
    awx.script(polls=1)
    first = submit(svc, "rotate_config", "payments-1")
    assert wait_terminal(svc, first, 20)["status"] == "SUCCESS"
    new_token = "awxtok-rotated-" + secrets.token_hex(8)
    tmp = token_path + ".new"
    with open(tmp, "w") as f:
        f.write(f"{new_token}\n\n  ")
    os.replace(tmp, token_path)
    awx.token = new_token
    second = submit(svc, "rotate_config", "payments-2")
    j = wait_terminal(svc, second, 20)
    assert j["status"] == "SUCCESS", j
    assert awx.launches()[-1].headers.get("authorization") == f"Bearer {new_token}"
    assert_secret_absent(svc, token, [first, second])
    assert_secret_absent(svc, new_token, [first, second])


def test_unreadable_token_file_at_run_time_is_permanent(gateways, awx, token, token_path):
    cat = awx_catalog(awx, token_path, policy={"max_attempts": 3, "backoff_ms": 100})
    svc = start_with_actions(gateways, "awx-token-gone", cat)
    os.unlink(token_path)
    job_id = submit(svc, "rotate_config", "payments-1")
    j = wait_terminal(svc, job_id, 20)
    assert j["status"] == "FAILED", j
    assert j["error"], j
    time.sleep(0.5)
    assert not awx.launches(), awx.describe()
    assert j["attempts"] <= 1, j


def test_actions_listing_hides_runner_config(gateways, awx, token, token_path):
    svc = start_with_actions(gateways, "awx-list", awx_catalog(awx, token_path))
    r = list_actions(svc)
    assert r.status_code == 200, r.text
    mine = [a for a in r.json()["actions"] if a["name"] == "rotate_config"]
    assert len(mine) == 1, r.text
    assert mine[0]["runner"] == "awx"
    assert "awx" not in mine[0], mine[0]
    assert token_path not in r.text and token not in r.text


# ------------------------------------------------------------------------------ more edges


@pytest.mark.parametrize("launch_status", [200, 202])
def test_launch_answer_200_or_202_is_accepted(gateways, awx, token_path, launch_status):
    svc = start_with_actions(gateways, f"awx-launch-{launch_status}", awx_catalog(awx, token_path))
    awx.launch_status = launch_status
    awx.script(polls=1)
    job_id = submit(svc, "rotate_config", "payments-1")
    j = wait_terminal(svc, job_id, 20)
    assert j["status"] == "SUCCESS", j
    assert j["external"] == ext(awx, awx.only_job().id)


def test_poll_interval_is_respected(gateways, awx, token_path):
    svc = start_with_actions(gateways, "awx-interval", awx_catalog(awx, token_path, poll_interval_ms=250))
    awx.script(hold=True)
    job_id = submit(svc, "rotate_config", "payments-1")
    assert awx.wait_for(lambda: len(awx.jobs) == 1, 15)
    awx_job = awx.only_job()
    time.sleep(2.0)
    polls = awx.polls_of(awx_job.id)
    awx.finish(awx_job.id, "successful")
    assert wait_terminal(svc, job_id, 15)["status"] == "SUCCESS"
    assert 4 <= len(polls) <= 10, f"{len(polls)} polls in 2 s at a 250 ms interval"
    gaps = [b.at - a.at for a, b in zip(polls, polls[1:])]
    assert min(gaps) >= 0.2, f"polls closer than the 250 ms interval: {[round(g, 3) for g in gaps]}"


def test_poll_errors_until_the_timeout_fail_with_timed_out(gateways, awx, token_path):
    cat = awx_catalog(awx, token_path, policy={"timeout_ms": 1500, "max_attempts": 1})
    svc = start_with_actions(gateways, "awx-poll-down", cat)
    awx.poll_answers.set_always((503, {}, {"detail": "down for maintenance"}))
    job_id = submit(svc, "rotate_config", "payments-1")
    j = wait_terminal(svc, job_id, 20)
    assert j["status"] == "FAILED", j
    assert "timed out after 1500 ms" in (j["error"] or ""), j
    assert len(awx.launches()) == 1
    assert len(awx.polls_of(awx.only_job().id)) >= 5, "stopped polling on a transient error"


def test_transient_launch_errors_exhaust_attempts(gateways, awx, token, token_path):
    cat = awx_catalog(awx, token_path, policy={"max_attempts": 2, "backoff_ms": 100})
    svc = start_with_actions(gateways, "awx-exhaust", cat)
    awx.launch_answers.set_always((503, {}, {"detail": "unavailable"}))
    job_id = submit(svc, "rotate_config", "payments-1")
    j = wait_terminal(svc, job_id, 20)
    assert j["status"] == "FAILED", j
    assert j["attempts"] == 2, j
    assert j["external"] is None
    assert_no_more(awx, "POST", r"/api/v2/job_templates/\d+/launch/", 2)
    assert_secret_absent(svc, token, [job_id])
