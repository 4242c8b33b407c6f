"""The event log (GET /v1/jobs/{id}/events) of each kind of job, on SQLite and PostgreSQL: the exact
sequence of events, their status/actor/detail per the spec's table, strictly increasing ids, `at`
never going backwards, and exactly one terminal event, last.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
import requests

from conftest import (FAST_RETRY_POLICY, bearer, body, event_shape_errors, fmt_events, get_events, get_job, kinds,
                      order_errors, parse_ts, start_gw, submit, tokens_file, wait_events, wait_status, wait_terminal)

BACKENDS = ["sqlite", "pg"]


def is_uuid(v) -> bool:
    try:
        uuid.UUID(str(v))
        return True
    except ValueError:
        return False


def check_common(evs: list[dict], job: dict) -> list[str]:
    bad = order_errors(evs)
    for e in evs:
        bad += event_shape_errors(e, job)
    return bad


def terminal_events(svc, job_id: str, within: float = 10.0) -> list[dict]:
    return wait_events(svc, job_id, lambda evs: any(e.get("event") in ("finished", "canceled") for e in evs), within,
                       "a terminal event")


@pytest.mark.parametrize("backend", BACKENDS)
def test_successful_job_has_created_claimed_finished(gateways, request, backend):
    svc = start_gw(gateways, "gw", backend, request)
    r = requests.post(svc.url + "/v1/jobs", json=body(target="ev-ok", duration_ms=60), timeout=20)
    assert r.status_code == 202, r.text
    job_id, request_id = r.json()["job_id"], r.headers.get("x-request-id")
    job = wait_terminal(svc, job_id)
    assert job["status"] == "SUCCESS", job
    evs = terminal_events(svc, job_id)
    ctx = f"events:\n{fmt_events(evs)}"
    assert kinds(evs) == ["created", "claimed", "finished"], ctx
    bad = check_common(evs, job)
    created, claimed, finished = evs
    want = [("PENDING", "anonymous"), ("RUNNING", "gateway"), ("SUCCESS", "gateway")]
    for e, (status, actor) in zip(evs, want):
        if (e["status"], e["actor"]) != (status, actor):
            bad.append(f"{e['event']}: status/actor {e['status']}/{e['actor']} (want {status}/{actor})")
    if created["detail"] != {}:
        bad.append(f"created.detail {created['detail']} (want {{}})")
    if request_id and created.get("request_id") != request_id:
        bad.append(f"created.request_id {created.get('request_id')!r} != the POST's x-request-id {request_id!r}")
    d = claimed["detail"]
    if d.get("attempt") != 1 or not is_uuid(d.get("replica")):
        bad.append(f"claimed.detail {d} (want attempt 1 and a replica uuid)")
    d = finished["detail"]
    if d.get("attempt") != 1 or d.get("status") != "SUCCESS" or d.get("error") is not None:
        bad.append(f"finished.detail {d} (want attempt 1, status SUCCESS, error null)")
    if not isinstance(d.get("duration_ms"), int) or not 50 <= d["duration_ms"] < 10_000:
        bad.append(f"finished.detail.duration_ms {d.get('duration_ms')!r} (the run took 60 ms)")
    assert not bad, "\n".join(bad) + "\n" + ctx


@pytest.mark.parametrize("backend", BACKENDS)
def test_job_failing_three_attempts_has_the_full_sequence(gateways, request, backend):
    svc = start_gw(gateways, "gw", backend, request, env={"GATEWAY_ACTION_POLICY": FAST_RETRY_POLICY})
    job_id = submit(svc, target="ev-fail", duration_ms=20, fail=True)
    job = wait_terminal(svc, job_id, within=30)
    assert job["status"] == "FAILED" and job.get("attempts") == 3, job
    evs = terminal_events(svc, job_id)
    ctx = f"events:\n{fmt_events(evs)}"
    want = ["created", "claimed", "attempt_failed", "retry_scheduled", "claimed", "attempt_failed", "retry_scheduled",
            "claimed", "finished"]
    assert kinds(evs) == want, ctx
    bad = check_common(evs, job)
    statuses = ["PENDING", "RUNNING", "RUNNING", "PENDING", "RUNNING", "RUNNING", "PENDING", "RUNNING", "FAILED"]
    if [e["status"] for e in evs] != statuses:
        bad.append(f"statuses {[e['status'] for e in evs]} (want {statuses})")
    actors = [e["actor"] for e in evs]
    if actors != ["anonymous"] + ["gateway"] * 8:
        bad.append(f"actors {actors}")
    claims = [e for e in evs if e["event"] == "claimed"]
    if [c["detail"].get("attempt") for c in claims] != [1, 2, 3]:
        bad.append(f"claimed attempts {[c['detail'].get('attempt') for c in claims]} (want 1, 2, 3)")
    if not all(is_uuid(c["detail"].get("replica")) for c in claims):
        bad.append(f"claimed replicas {[c['detail'].get('replica') for c in claims]}")
    for n, e in enumerate([e for e in evs if e["event"] == "attempt_failed"], 1):
        if e["detail"].get("attempt") != n or not (isinstance(e["detail"].get("error"), str) and e["detail"]["error"]):
            bad.append(f"attempt_failed #{n}: detail {e['detail']} (want attempt {n} and an error)")
    for n, e in enumerate([e for e in evs if e["event"] == "retry_scheduled"], 1):
        d = e["detail"]
        if d.get("attempt") != n:
            bad.append(f"retry_scheduled #{n}: attempt {d.get('attempt')} (want {n}, the attempt that failed)")
        try:
            if parse_ts(d.get("run_at")) < parse_ts(e["at"]) - 0.001:
                bad.append(f"retry_scheduled #{n}: run_at {d.get('run_at')} before the event's at {e['at']}")
        except AssertionError as err:
            bad.append(f"retry_scheduled #{n}: {err}")
    d = evs[-1]["detail"]
    if d.get("attempt") != 3 or d.get("status") != "FAILED" or not (isinstance(d.get("error"), str) and d["error"]):
        bad.append(f"finished.detail {d} (want attempt 3, status FAILED, an error)")
    if not isinstance(d.get("duration_ms"), int) or d["duration_ms"] < 0:
        bad.append(f"finished.detail.duration_ms {d.get('duration_ms')!r}")
    assert not bad, "\n".join(bad) + "\n" + ctx


@pytest.mark.parametrize("backend", BACKENDS)
def test_pending_job_canceled_has_created_then_canceled_by_the_caller(gateways, request, backend, tmp_path):
    tf = tokens_file(tmp_path / "tokens.yaml", [
        {"name": "submitter", "token": "tok-submitter", "actions": ["health_check"], "can_read": True, "can_cancel": False},
        {"name": "canceler", "token": "tok-canceler", "actions": [], "scope": ["*"], "can_read": True, "can_cancel": True},
    ])
    svc = start_gw(gateways, "gw", backend, request, env={"GATEWAY_WORKERS": 0, "GATEWAY_AUTH_TOKENS_FILE": tf})
    job_id = submit(svc, body(target="ev-cancel-pending", duration_ms=50), headers=bearer("tok-submitter"))
    r = requests.post(f"{svc.url}/v1/jobs/{job_id}/cancel", headers=bearer("tok-canceler"), timeout=10)
    assert r.status_code == 200 and r.json().get("status") == "CANCELED", f"cancel: {r.status_code} {r.text[:500]}"
    cancel_request_id = r.headers.get("x-request-id")
    job = get_job(svc, job_id, headers=bearer("tok-canceler"))
    evs = get_events(svc, job_id, headers=bearer("tok-canceler"))
    ctx = f"events:\n{fmt_events(evs)}"
    assert kinds(evs) == ["created", "canceled"], ctx
    bad = check_common(evs, job)
    created, canceled = evs
    if (created["status"], created["actor"]) != ("PENDING", "submitter"):
        bad.append(f"created: status/actor {created['status']}/{created['actor']} (want PENDING/submitter)")
    if (canceled["status"], canceled["actor"]) != ("CANCELED", "canceler"):
        bad.append(f"canceled: status/actor {canceled['status']}/{canceled['actor']} (want CANCELED/canceler)")
    if canceled["detail"].get("attempt") is not None or canceled["detail"].get("duration_ms") is not None:
        bad.append(f"canceled.detail {canceled['detail']} (want attempt null and duration_ms null: it never ran)")
    if cancel_request_id and canceled.get("request_id") != cancel_request_id:
        bad.append(f"canceled.request_id {canceled.get('request_id')!r} != the cancel's x-request-id {cancel_request_id!r}")
    assert not bad, "\n".join(bad) + "\n" + ctx


@pytest.mark.parametrize("backend", BACKENDS)
def test_running_job_canceled_has_cancel_requested_then_canceled_by_the_gateway(gateways, request, backend):
    svc = start_gw(gateways, "gw", backend, request)
    job_id = submit(svc, target="ev-cancel-running", duration_ms=20_000)
    wait_status(svc, job_id, "RUNNING", within=10)
    t0 = time.monotonic()
    r = requests.post(f"{svc.url}/v1/jobs/{job_id}/cancel", timeout=15)
    assert r.status_code in (200, 202), f"cancel: {r.status_code} {r.text[:500]}"
    job = wait_status(svc, job_id, "CANCELED", within=10)
    evs = terminal_events(svc, job_id)
    ctx = f"events:\n{fmt_events(evs)}"
    assert kinds(evs) == ["created", "claimed", "cancel_requested", "canceled"], ctx
    bad = check_common(evs, job)
    req, canceled = evs[2], evs[3]
    if (req["status"], req["actor"], req["detail"]) != ("RUNNING", "anonymous", {}):
        bad.append(f"cancel_requested: status/actor/detail {req['status']}/{req['actor']}/{req['detail']} "
                   "(want RUNNING/anonymous/{})")
    if (canceled["status"], canceled["actor"]) != ("CANCELED", "gateway"):
        bad.append(f"canceled: status/actor {canceled['status']}/{canceled['actor']} (want CANCELED/gateway)")
    d = canceled["detail"]
    if d.get("attempt") != 1 or not isinstance(d.get("duration_ms"), int) or not 0 <= d["duration_ms"] < 20_000:
        bad.append(f"canceled.detail {d} (want attempt 1 and the run's duration_ms)")
    assert time.monotonic() - t0 < 10
    assert not bad, "\n".join(bad) + "\n" + ctx


LEASE_SECS = 2


def test_lost_lease_on_postgres_shows_lease_lost_then_retry_or_failure(gateways, pg_db):
    """Replica A runs a health_check (on_lost retry) and a restart_service (on_lost fail) job; A is
    SIGKILLed; B recovers both once the lease expires."""
    env = {"GATEWAY_LEASE_SECS": LEASE_SECS, "GATEWAY_ACTION_POLICY": FAST_RETRY_POLICY}
    a = gateways.start("replica-a", pg_db.url, env)
    retry_id = submit(a, body("health_check", "ev-lease-retry", duration_ms=3_000))
    fail_id = submit(a, body("restart_service", "ev-lease-fail", duration_ms=3_000))
    wait_status(a, retry_id, "RUNNING", within=10)
    wait_status(a, fail_id, "RUNNING", within=10)
    b = gateways.start("replica-b", pg_db.url, env)
    os.kill(a.pid, signal.SIGKILL)
    a.proc.wait(timeout=10)

    retried = wait_terminal(b, retry_id, within=25)
    failed = wait_terminal(b, fail_id, within=25)
    assert retried["status"] == "SUCCESS", retried
    assert failed["status"] == "FAILED" and "worker lost" in str(failed.get("error")), failed

    evs = terminal_events(b, retry_id)
    ctx = f"health_check events:\n{fmt_events(evs)}"
    assert kinds(evs) == ["created", "claimed", "lease_lost", "retry_scheduled", "claimed", "finished"], ctx
    bad = check_common(evs, retried)
    a_replica = evs[1]["detail"].get("replica")
    b_replica = evs[4]["detail"].get("replica")
    lost = evs[2]
    if not (is_uuid(a_replica) and is_uuid(b_replica) and a_replica != b_replica):
        bad.append(f"claimed replicas {a_replica} then {b_replica} (want two different uuids)")
    if (lost["status"], lost["actor"]) != ("RUNNING", "gateway"):
        bad.append(f"lease_lost: status/actor {lost['status']}/{lost['actor']} (want RUNNING/gateway)")
    if lost["detail"].get("attempt") != 1 or lost["detail"].get("recovered_by") != b_replica:
        bad.append(f"lease_lost.detail {lost['detail']} (want attempt 1, recovered_by {b_replica})")
    if evs[3]["status"] != "PENDING" or evs[3]["detail"].get("attempt") != 1:
        bad.append(f"retry_scheduled: {evs[3]}")
    if evs[4]["detail"].get("attempt") != 2 or evs[5]["detail"].get("attempt") != 2 or evs[5]["status"] != "SUCCESS":
        bad.append(f"second claim/finish: {evs[4]['detail']} / {evs[5]['detail']}")
    assert not bad, "\n".join(bad) + "\n" + ctx

    evs = terminal_events(b, fail_id)
    ctx = f"restart_service events:\n{fmt_events(evs)}"
    assert kinds(evs) == ["created", "claimed", "lease_lost", "finished"], ctx
    bad = check_common(evs, failed)
    lost, fin = evs[2], evs[3]
    if lost["detail"].get("attempt") != 1 or lost["detail"].get("recovered_by") != b_replica:
        bad.append(f"lease_lost.detail {lost['detail']} (want attempt 1, recovered_by {b_replica})")
    if evs[1]["detail"].get("replica") != a_replica:
        bad.append(f"restart_service claimed by {evs[1]['detail'].get('replica')}, health_check by {a_replica} (both on A)")
    d = fin["detail"]
    if fin["status"] != "FAILED" or d.get("status") != "FAILED" or "worker lost" not in str(d.get("error")) \
            or d.get("attempt") != 1:
        bad.append(f"finished: status {fin['status']} detail {d} (want FAILED, attempt 1, 'worker lost')")
    assert not bad, "\n".join(bad) + "\n" + ctx
