"""The jenkins runner against a loopback Jenkins fake (fakes/jenkins.py): the exact trigger request
(folder path, Basic auth, form-encoded rendered parameters), the queue item then the build polled,
`external` recorded at the trigger (queue item) and updated once the build starts, each result,
cancel while queued (cancelItem) and while building (stop), timeout, permanent vs transient errors,
and the token never exposed."""

from __future__ import annotations

import base64
import secrets
import time
from urllib.parse import parse_qs

import pytest

from conftest import (assert_no_more, assert_secret_absent, cancel_job, field_of, start_with_actions, submit,
                      wait_job, wait_terminal)
from fakes.jenkins import FakeJenkins

USER = "deployer"
JOB = "ops/deploy-app"
JOB_PATH = "/job/ops/job/deploy-app"
TRIGGER = r".*/buildWithParameters/?"


@pytest.fixture
def token():
    return "jktok-" + secrets.token_hex(12)


@pytest.fixture
def jk(token):
    f = FakeJenkins(user=USER, token=token)
    yield f
    f.close()


@pytest.fixture
def token_path(secret_file, token):
    return secret_file(token + "\n")


def jenkins_catalog(jk, token_path, name="deploy_app", policy=None, **block):
    b = {"url": jk.base, "job": JOB, "user": USER, "token_file": token_path,
         "parameters": {"TARGET": "{{ target }}"}, "poll_interval_ms": 50}
    b.update(block)
    pol = {"max_attempts": 1, "timeout_ms": 30000, "backoff_ms": 100}
    pol.update(policy or {})
    return {name: {"runner": "jenkins", "description": "deploy through Jenkins", "policy": pol, "jenkins": b}}


def queue_ext(jk, item):
    return {"system": "jenkins", "id": f"queue/{item}", "url": jk.item_url(item)}


def build_ext(jk, b, job=JOB):
    return {"system": "jenkins", "id": f"{job}#{b.number}", "url": jk.build_url(b)}


# ------------------------------------------------------------------------------------ success


def test_trigger_request_is_exact_and_external_follows_queue_then_build(gateways, jk, token, token_path):
    params_tpl = {
        "TARGET": "{{ target }}",
        "REASON": "{{ parameters.reason }}",
        "COUNT": "{{ parameters.count }}",
        "NOTE": "{{ action }} on {{ target }} by {{ requested_by }}",
        "JOB_ID": "{{job_id}}",
        "LITERAL": "as is",
    }
    svc = start_with_actions(gateways, "jk-ok", jenkins_catalog(jk, token_path, parameters=params_tpl))
    jk.script(hold_queue=True, hold_build=True)
    reason = "a&b=c d+e %41 ü/ \"q\""
    job_id = submit(svc, "deploy_app", "web-1.svc:8080", {"reason": reason, "count": 3})

    assert jk.wait_for(lambda: len(jk.builds) == 1, 15), f"no trigger; requests:\n{jk.describe()}\n{svc.tail()}"
    trig = jk.triggers()[0]
    assert trig.path == f"{JOB_PATH}/buildWithParameters", trig.path
    assert trig.query == {}, f"parameters belong in the body, not the query: {trig.raw_path}"
    assert trig.headers.get("authorization") == jk.expected_auth()
    assert trig.headers.get("content-type", "").split(";")[0].strip() == "application/x-www-form-urlencoded"
    raw = parse_qs(trig.body.decode(), keep_blank_values=True, strict_parsing=True)
    assert raw == {
        "TARGET": ["web-1.svc:8080"],
        "REASON": [reason],
        "COUNT": ["3"],
        "NOTE": ["deploy_app on web-1.svc:8080 by runners@example.com"],
        "JOB_ID": [job_id],
        "LITERAL": ["as is"],
    }, f"form body {trig.body!r}"

    b = jk.only_build()
    j = wait_job(svc, job_id, lambda j: j.get("external") is not None, 10, "external recorded")
    assert j["status"] == "RUNNING", j
    assert j["external"] == queue_ext(jk, b.item)
    assert jk.wait_for(lambda: jk.count("GET", rf"/queue/item/{b.item}/api/json") >= 2, 10), jk.describe()
    for r in jk.matching("GET", rf"/queue/item/{b.item}/api/json"):
        assert r.headers.get("authorization") == jk.expected_auth()

    jk.start(b.item)
    j = wait_job(svc, job_id, lambda j: (j.get("external") or {}).get("id", "").startswith(JOB + "#"), 10,
                 "external updated to the build")
    assert j["status"] == "RUNNING", j
    assert j["external"] == build_ext(jk, b)
    build_polls = lambda: jk.matching("GET", rf"{JOB_PATH}/{b.number}/api/json")  # noqa: E731
    assert jk.wait_for(lambda: len(build_polls()) >= 2, 10), jk.describe()
    for r in build_polls():
        assert r.headers.get("authorization") == jk.expected_auth()
        assert r.query.get("tree") == "building,result,number,url", r.raw_path

    jk.finish(b.item, "SUCCESS")
    j = wait_terminal(svc, job_id, 15)
    assert j["status"] == "SUCCESS", j
    assert j["error"] is None
    assert j["attempts"] == 1
    assert j["external"] == build_ext(jk, b)
    assert j["result"] == {**build_ext(jk, b), "result": "SUCCESS"}
    assert len(jk.triggers()) == 1
    assert not jk.stops() and not jk.cancel_items()

    lines = svc.lines_with("external run recorded")
    assert lines, "no 'external run recorded' log line"
    assert field_of(lines[0], "job_id") == job_id
    assert field_of(lines[0], "system") == "jenkins"
    assert_secret_absent(svc, token, [job_id])
    basic = base64.b64encode(f"{USER}:{token}".encode()).decode()
    assert_secret_absent(svc, basic, [job_id])


@pytest.mark.parametrize("prefix,relative,status", [
    ("", False, 303),          # de-duplicated into an existing item: 303 + Location
    ("", True, 201),           # Location "/queue/item/N/"
    ("/jenkins", False, 201),  # Jenkins under a context path, absolute Location
    ("/jenkins", True, 201),   # ... and Location "/jenkins/queue/item/N/": resolved against the server (RFC 3986)
], ids=["303", "relative", "prefix", "prefix-relative"])
def test_prefix_single_job_relative_location_and_303(gateways, token, token_path, prefix, relative, status):
    with FakeJenkins(user=USER, token=token, prefix=prefix) as jk:
        jk.relative_location = relative
        jk.trigger_status = status
        jk.script(queue_polls=1, build_polls=1)
        cat = jenkins_catalog(jk, token_path, job="deploy")
        svc = start_with_actions(gateways, f"jk-prefix-{status}-{relative}", cat)
        job_id = submit(svc, "deploy_app", "web-2")
        j = wait_terminal(svc, job_id, 20)
        assert j["status"] == "SUCCESS", f"{j}\n{jk.describe()}"
        assert [r.path for r in jk.triggers()] == [f"{prefix}/job/deploy/buildWithParameters"]
        b = jk.only_build()
        assert jk.count("GET", rf"{prefix}/queue/item/{b.item}/api/json") >= 1, jk.describe()
        assert j["external"] == build_ext(jk, b, job="deploy")
        assert j["result"]["result"] == "SUCCESS"


# ------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize("result", ["UNSTABLE", "FAILURE", "ABORTED", "NOT_BUILT"])
def test_unsuccessful_build_fails(gateways, jk, token_path, result):
    svc = start_with_actions(gateways, f"jk-{result.lower()}", jenkins_catalog(jk, token_path))
    jk.script(result=result, queue_polls=1, build_polls=1)
    job_id = submit(svc, "deploy_app", "web-1")
    j = wait_terminal(svc, job_id, 20)
    b = jk.only_build()
    assert j["status"] == "FAILED", j
    assert (j["error"] or "").startswith(f"jenkins build #{b.number} ended {result}"), j["error"]
    assert j["external"] == build_ext(jk, b)
    assert_no_more(jk, "POST", TRIGGER, 1)


def test_queue_item_cancelled_in_jenkins_fails(gateways, jk, token_path):
    svc = start_with_actions(gateways, "jk-qcancelled", jenkins_catalog(jk, token_path))
    jk.script(hold_queue=True)
    job_id = submit(svc, "deploy_app", "web-1")
    assert jk.wait_for(lambda: len(jk.builds) == 1, 15), jk.describe()
    b = jk.only_build()
    wait_job(svc, job_id, lambda j: j.get("external") is not None, 10, "external recorded")
    b.cancelled = True
    j = wait_terminal(svc, job_id, 15)
    assert j["status"] == "FAILED", j
    assert f"jenkins queue item {b.item} was cancelled" in (j["error"] or ""), j["error"]


def test_failed_attempt_is_retried_when_attempts_remain(gateways, jk, token_path):
    svc = start_with_actions(gateways, "jk-retry", jenkins_catalog(jk, token_path, policy={"max_attempts": 2}))
    jk.result_queue.extend(["FAILURE", "SUCCESS"])
    jk.script(queue_polls=1, build_polls=1)
    job_id = submit(svc, "deploy_app", "web-1")
    j = wait_terminal(svc, job_id, 30)
    assert j["status"] == "SUCCESS", j
    assert j["attempts"] == 2, j
    assert len(jk.triggers()) == 2


# ------------------------------------------------------------------------------ cancel, timeout


def test_cancel_while_queued_cancels_the_queue_item(gateways, jk, token_path):
    svc = start_with_actions(gateways, "jk-cancel-q", jenkins_catalog(jk, token_path))
    jk.script(hold_queue=True)
    job_id = submit(svc, "deploy_app", "web-1")
    j = wait_job(svc, job_id, lambda j: j.get("external") is not None and j["status"] == "RUNNING", 15, "RUNNING with external")
    b = jk.only_build()
    assert jk.wait_for(lambda: jk.count("GET", rf"/queue/item/{b.item}/api/json") >= 1, 10)
    r = cancel_job(svc, job_id)
    assert r.status_code in (200, 202), r.text
    assert jk.wait_for(lambda: len(jk.cancel_items()) >= 1, 10), f"no cancelItem; requests:\n{jk.describe()}"
    c = jk.cancel_items()[0]
    assert c.path == "/queue/cancelItem"
    assert c.query == {"id": str(b.item)}, c.raw_path
    assert c.headers.get("authorization") == jk.expected_auth()
    j = wait_terminal(svc, job_id, 15)
    assert j["status"] == "CANCELED", j
    assert not jk.stops()
    assert_no_more(jk, "POST", TRIGGER, 1)


def test_cancel_while_building_stops_the_build(gateways, jk, token_path):
    svc = start_with_actions(gateways, "jk-cancel-b", jenkins_catalog(jk, token_path))
    jk.script(queue_polls=1, hold_build=True)
    job_id = submit(svc, "deploy_app", "web-1")
    j = wait_job(svc, job_id, lambda j: (j.get("external") or {}).get("id", "").startswith(JOB + "#"), 15,
                 "external updated to the build")
    b = jk.only_build()
    r = cancel_job(svc, job_id)
    assert r.status_code in (200, 202), r.text
    assert jk.wait_for(lambda: len(jk.stops()) >= 1, 10), f"no stop; requests:\n{jk.describe()}"
    s = jk.stops()[0]
    assert s.path == f"{JOB_PATH}/{b.number}/stop", s.path
    assert s.headers.get("authorization") == jk.expected_auth()
    j = wait_terminal(svc, job_id, 15)
    assert j["status"] == "CANCELED", j
    assert not jk.cancel_items()


def test_timeout_stops_the_build_and_fails(gateways, jk, token_path):
    cat = jenkins_catalog(jk, token_path, policy={"timeout_ms": 1500})
    svc = start_with_actions(gateways, "jk-timeout", cat)
    jk.script(queue_polls=1, hold_build=True)
    t0 = time.monotonic()
    job_id = submit(svc, "deploy_app", "web-1")
    j = wait_terminal(svc, job_id, 20)
    assert j["status"] == "FAILED", j
    assert "timed out after 1500 ms" in (j["error"] or ""), j
    assert time.monotonic() - t0 >= 1.3
    assert jk.wait_for(lambda: len(jk.stops()) >= 1, 5), f"timeout did not stop the build:\n{jk.describe()}"
    assert jk.only_build().stopped


def test_timeout_while_queued_cancels_the_item(gateways, jk, token_path):
    cat = jenkins_catalog(jk, token_path, policy={"timeout_ms": 1200})
    svc = start_with_actions(gateways, "jk-timeout-q", cat)
    jk.script(hold_queue=True)
    job_id = submit(svc, "deploy_app", "web-1")
    j = wait_terminal(svc, job_id, 20)
    assert j["status"] == "FAILED", j
    assert "timed out after 1200 ms" in (j["error"] or ""), j
    assert jk.wait_for(lambda: len(jk.cancel_items()) >= 1, 5), f"no cancelItem:\n{jk.describe()}"
    assert jk.cancel_items()[0].query == {"id": str(jk.only_build().item)}


# --------------------------------------------------------------------------- error classes


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_trigger_4xx_is_permanent(gateways, jk, token_path, status):
    cat = jenkins_catalog(jk, token_path, policy={"max_attempts": 3})
    svc = start_with_actions(gateways, f"jk-perm-{status}", cat)
    jk.trigger_answers.set_always((status, {}, f"<html><body>Error {status}</body></html>"))
    job_id = submit(svc, "deploy_app", "web-1")
    j = wait_terminal(svc, job_id, 20)
    assert j["status"] == "FAILED", j
    assert j["error"], j
    assert j["external"] is None, j
    assert_no_more(jk, "POST", TRIGGER, 1, settle=1.0)


def test_wrong_token_gets_401_and_is_permanent(gateways, jk, secret_file):
    path = secret_file("not-the-token\n", name="wrong")
    svc = start_with_actions(gateways, "jk-401", jenkins_catalog(jk, path, policy={"max_attempts": 3}))
    job_id = submit(svc, "deploy_app", "web-1")
    j = wait_terminal(svc, job_id, 20)
    assert j["status"] == "FAILED", j
    assert_no_more(jk, "POST", TRIGGER, 1, settle=1.0)
    assert_secret_absent(svc, "not-the-token", [job_id])


@pytest.mark.parametrize("status,headers", [(503, {}), (502, {}), (429, {"Retry-After": "1"})])
def test_trigger_transient_error_is_retried(gateways, jk, token_path, status, headers):
    cat = jenkins_catalog(jk, token_path, policy={"max_attempts": 3})
    svc = start_with_actions(gateways, f"jk-transient-{status}", cat)
    jk.trigger_answers.push((status, headers, "<html><body>busy</body></html>"))
    jk.script(queue_polls=1, build_polls=1)
    job_id = submit(svc, "deploy_app", "web-1")
    j = wait_terminal(svc, job_id, 30)
    assert j["status"] == "SUCCESS", j
    trig = jk.triggers()
    assert len(trig) == 2, jk.describe()
    assert trig[1].form == trig[0].form
    if headers:
        assert trig[1].at - trig[0].at >= 0.9, f"retried {trig[1].at - trig[0].at:.3f} s after Retry-After: 1"


def test_transient_poll_errors_keep_polling(gateways, jk, token_path):
    svc = start_with_actions(gateways, "jk-pollerr", jenkins_catalog(jk, token_path, policy={"max_attempts": 3}))
    jk.poll_answers.push((502, {}, "bad gateway"), (503, {}, "busy"))
    jk.script(queue_polls=1, build_polls=1)
    job_id = submit(svc, "deploy_app", "web-1")
    j = wait_terminal(svc, job_id, 30)
    assert j["status"] == "SUCCESS", j
    assert j["attempts"] == 1, j
    assert len(jk.triggers()) == 1


def test_nested_folders_map_to_job_path(gateways, jk, token_path):
    svc = start_with_actions(gateways, "jk-nested", jenkins_catalog(jk, token_path, job="team/infra/rollout"))
    jk.script(queue_polls=1, build_polls=1)
    job_id = submit(svc, "deploy_app", "web-1")
    j = wait_terminal(svc, job_id, 20)
    assert [r.path for r in jk.triggers()] == ["/job/team/job/infra/job/rollout/buildWithParameters"], jk.describe()
    assert j["status"] == "SUCCESS", j
    b = jk.only_build()
    assert j["external"] == {"system": "jenkins", "id": f"team/infra/rollout#{b.number}", "url": jk.build_url(b)}


def test_missing_template_parameter_is_422_and_nothing_is_triggered(gateways, jk, token_path):
    cat = jenkins_catalog(jk, token_path, parameters={"TARGET": "{{ target }}", "REASON": "why: {{ parameters.reason }}"})
    svc = start_with_actions(gateways, "jk-missing", cat)
    from conftest import post_job
    r = post_job(svc, "deploy_app", "web-1", {"other": 1})
    assert r.status_code == 422, r.text
    detail = r.json().get("detail", "")
    assert detail.startswith("parameters:"), detail
    assert "'reason'" in detail and "jenkins.parameters" in detail, detail
    assert str(r.json().get("type", "")).endswith("validation"), r.text
    time.sleep(0.5)
    assert not jk.requests, jk.describe()
