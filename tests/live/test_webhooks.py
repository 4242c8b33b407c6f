"""Webhooks (Standard Webhooks) to a loopback receiver: signed once-delivery carrying the job JSON,
retries with backoff and one stable webhook-id, secret rotation (one signature per secret), the
durable outbox across SIGKILL, the destination checks (private addresses, host allowlist, malformed
URLs, resolved address at delivery), give-up without following redirects, the deliveries endpoint,
the metric, an action's default callback_url, and exactly-once delivery with two PostgreSQL replicas."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
import yaml

from conftest import (PROBLEM, body, get_job, matching_signatures, metric_sample, new_secret, parse_ts, start_gw, submit,
                      verify_signature, wait_terminal, wait_until, webhook_id_of)

METRIC = "automation_webhook_deliveries_total"


def write_secrets(tmp_path: Path, *secrets: str) -> str:
    p = tmp_path / "webhook-secrets"
    p.write_text("".join(s + "\n" for s in secrets))
    os.chmod(p, 0o600)
    return str(p)


def hook_env(secret_file: str, **extra) -> dict:
    env = {"GATEWAY_WEBHOOK_SECRET_FILE": secret_file, "GATEWAY_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
           "GATEWAY_WEBHOOK_ALLOW_PRIVATE": "true", "GATEWAY_WEBHOOK_RETRY_BASE_MS": 100}
    env.update(extra)
    return env


def post_with_callback(svc, url: str, target: str = "wh", duration_ms: int = 5, **kw) -> requests.Response:
    return requests.post(svc.url + "/v1/jobs", json=body(target=target, duration_ms=duration_ms, callback_url=url, **kw),
                         timeout=20)


def submit_cb(svc, url: str, **kw) -> str:
    r = post_with_callback(svc, url, **kw)
    if r.status_code != 202:
        pytest.fail(f"POST /v1/jobs with callback_url {url}: {r.status_code} {r.text[:800]}", pytrace=False)
    return r.json()["job_id"]


def deliveries(svc, job_id: str) -> dict:
    r = requests.get(f"{svc.url}/v1/jobs/{job_id}/deliveries", timeout=10)
    assert r.status_code == 200, f"GET /v1/jobs/{job_id}/deliveries: {r.status_code} {r.text[:500]}"
    return r.json()


def wait_deliveries(svc, job_id: str, pred, within: float, what: str) -> dict:
    last = {}
    deadline = time.monotonic() + within
    while True:
        last = deliveries(svc, job_id)
        if pred(last):
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"deliveries of {job_id}: {what} not reached within {within} s; last: {json.dumps(last)}",
                        pytrace=False)
        time.sleep(0.1)


def outcome(svc, name: str) -> float:
    return metric_sample(svc.metrics(), METRIC, {"outcome": name}) or 0.0


def signature_problems(secret: str, req: dict) -> str | None:
    # Verified at receipt time (the receiver recorded it).
    return verify_signature(secret, req["headers"], req["body"], now=req["t"])


# -------------------------------------------------------------------------------------- delivery


def test_delivered_once_signed_with_the_job_json(gateways, receiver, tmp_path):
    secret = new_secret()
    svc = start_gw(gateways, "gw", "sqlite", env=hook_env(write_secrets(tmp_path, secret)))
    url = receiver.url("/hooks/job?source=live")
    job_id = submit_cb(svc, url, target="wh-once")
    plain_id = submit(svc, body(target="wh-none", duration_ms=5))
    job = wait_terminal(svc, job_id)
    assert job.get("callback_url") == url, f"GET job callback_url {job.get('callback_url')!r}"
    assert wait_until(lambda: len(receiver.snapshot()) >= 1, within=15), "no webhook within 15 s of the job's end"
    time.sleep(1.0)
    reqs = receiver.snapshot()
    assert len(reqs) == 1, f"{len(reqs)} webhook requests (want 1): {[r['headers'].get('webhook-id') for r in reqs]}"
    req = reqs[0]
    assert req["path"] == "/hooks/job?source=live", req["path"]
    assert req["headers"].get("content-type", "").startswith("application/json"), req["headers"]
    assert req["headers"].get("webhook-id") == webhook_id_of(job_id), req["headers"].get("webhook-id")
    problem = signature_problems(secret, req)
    assert problem is None, f"signature check: {problem}; headers {req['headers']}"
    payload = json.loads(req["body"])
    assert payload.get("type") == "job.finished", payload
    ts = parse_ts(payload.get("timestamp"))
    assert abs(ts - req["t"]) < 60, f"payload timestamp {payload.get('timestamp')} vs receipt"
    assert payload.get("data") == get_job(svc, job_id), \
        f"data differs from GET /v1/jobs/{job_id}:\n{payload.get('data')}\n{get_job(svc, job_id)}"

    d = deliveries(svc, job_id)
    assert d.get("callback_url") == url and d.get("state") == "delivered" and d.get("next_attempt_at") is None, d
    atts = d.get("attempts") or []
    assert len(atts) == 1, d
    a = atts[0]
    assert a.get("attempt") == 1 and a.get("status_code") == 200 and a.get("error") is None, a
    assert isinstance(a.get("latency_ms"), int) and 0 <= a["latency_ms"] < 10_000, a
    parse_ts(a.get("at"))

    wait_terminal(svc, plain_id)
    assert get_job(svc, plain_id).get("callback_url", "absent") is None, "a job without callback: callback_url not null"
    d = deliveries(svc, plain_id)
    assert d == {"callback_url": None, "state": None, "next_attempt_at": None, "attempts": []}, d
    assert outcome(svc, "success") == 1 and outcome(svc, "error") == 0 and outcome(svc, "gave_up") == 0, \
        [l for l in svc.metrics().splitlines() if METRIC in l]


def test_failing_receiver_retried_with_backoff_until_one_success(gateways, receiver, tmp_path):
    secret = new_secret()
    svc = start_gw(gateways, "gw", "sqlite", env=hook_env(write_secrets(tmp_path, secret)))
    receiver.answer = lambda req: 500 if len(receiver.snapshot()) < 5 else 200
    job_id = submit_cb(svc, receiver.url("/retry"), target="wh-retry")
    wait_terminal(svc, job_id)
    assert wait_until(lambda: len(receiver.snapshot()) >= 1, within=15), "no first try within 15 s"
    mid = deliveries(svc, job_id)
    seen_mid = len(receiver.snapshot())
    if seen_mid < 6:
        assert mid.get("state") == "pending", f"after {seen_mid} failed tries: {mid}"
        parse_ts(mid.get("next_attempt_at"))
    assert wait_until(lambda: len(receiver.snapshot()) >= 6, within=30), \
        f"{len(receiver.snapshot())} tries within 30 s (want 6: 5 x 500 then 200); deliveries {deliveries(svc, job_id)}"
    time.sleep(1.5)
    reqs = receiver.snapshot()
    assert [r["status"] for r in reqs] == [500] * 5 + [200], f"answers {[r['status'] for r in reqs]} (want 5 x 500, 200)"
    ids = {r["headers"].get("webhook-id") for r in reqs}
    assert ids == {webhook_id_of(job_id)}, f"webhook-ids {ids}"
    for n, r in enumerate(reqs, 1):
        problem = signature_problems(secret, r)
        assert problem is None, f"try {n}: {problem}"
    bodies = {json.loads(r["body"])["data"]["job_id"] for r in reqs}
    assert bodies == {job_id}
    gaps = [b["t"] - a["t"] for a, b in zip(reqs, reqs[1:])]
    print(f"\n[live] webhook retry gaps (base 100 ms): {[round(g, 2) for g in gaps]} s")

    d = deliveries(svc, job_id)
    atts = d.get("attempts") or []
    assert d.get("state") == "delivered" and d.get("next_attempt_at") is None, d
    assert [a.get("attempt") for a in atts] == [1, 2, 3, 4, 5, 6], d
    assert [a.get("status_code") for a in atts] == [500] * 5 + [200], d
    assert all(a.get("error") is None for a in atts[-1:]), d
    assert outcome(svc, "success") == 1 and outcome(svc, "error") == 5 and outcome(svc, "gave_up") == 0, \
        [l for l in svc.metrics().splitlines() if METRIC in l]
    # The delay doubles from GATEWAY_WEBHOOK_RETRY_BASE_MS per failure: 0.1, 0.2, 0.4, 0.8, 1.6 s (each within
    # -20 % / +0.5 s of scheduling slack).
    nominal = [0.1 * 2 ** i for i in range(5)]
    off = [(round(g, 2), n) for g, n in zip(gaps, nominal) if not (0.8 * n - 0.02 <= g <= n + 0.5)]
    assert not off, f"retry gaps {[round(g, 2) for g in gaps]} s with GATEWAY_WEBHOOK_RETRY_BASE_MS=100 " \
                    f"(want ~{nominal}); off: {off}"


def test_two_secrets_give_two_signatures_each_verifying_with_its_own_key(gateways, receiver, tmp_path):
    old, new = new_secret(), new_secret()
    svc = start_gw(gateways, "gw", "sqlite", env=hook_env(write_secrets(tmp_path, old, new)))
    job_id = submit_cb(svc, receiver.url("/rotation"), target="wh-rotate")
    wait_terminal(svc, job_id)
    assert wait_until(lambda: len(receiver.snapshot()) >= 1, within=15), "no webhook within 15 s"
    req = receiver.snapshot()[0]
    sigs = req["headers"].get("webhook-signature", "").split(" ")
    assert len(sigs) == 2 and all(s.startswith("v1,") for s in sigs), f"webhook-signature {sigs!r} (want two v1 entries)"
    m_old = matching_signatures(old, req["headers"], req["body"])
    m_new = matching_signatures(new, req["headers"], req["body"])
    assert len(m_old) == 1 and len(m_new) == 1 and m_old != m_new, \
        f"old key matches {m_old}, new key matches {m_new} of {sigs}"
    assert signature_problems(old, req) is None and signature_problems(new, req) is None
    other = new_secret()
    assert not matching_signatures(other, req["headers"], req["body"]), "an unrelated key verifies (checker broken)"


@pytest.mark.parametrize("backend", ["sqlite", "pg"])
def test_pending_deliveries_survive_sigkill(gateways, receiver, tmp_path, request, backend):
    """Five jobs' webhooks fail (500) and one try is in flight (the receiver holds it 4 s) when the gateway
    is SIGKILLed; after a restart with the receiver fixed, every one is delivered (within 60 s)."""
    secret = new_secret()
    env = hook_env(write_secrets(tmp_path, secret), GATEWAY_WEBHOOK_RETRY_BASE_MS=1000, GATEWAY_WEBHOOK_TIMEOUT_MS=2000)
    svc = start_gw(gateways, "gw", backend, request, env=env)
    failing = threading.Event()
    failing.set()
    in_flight = threading.Event()

    def answer(req):
        if not failing.is_set():
            return 200
        if req["path"].endswith("/slow"):
            in_flight.set()
            time.sleep(4)
        return 500

    receiver.answer = answer
    jobs = [submit_cb(svc, receiver.url(f"/durable/{i}"), target=f"wh-kill-{i}") for i in range(4)]
    jobs.append(submit_cb(svc, receiver.url("/durable/slow"), target="wh-kill-slow"))
    for j in jobs:
        wait_terminal(svc, j)
    want_ids = {webhook_id_of(j) for j in jobs}
    fast_ids = {webhook_id_of(j) for j in jobs[:4]}
    assert wait_until(lambda: in_flight.is_set() and
                      {r["headers"].get("webhook-id") for r in receiver.snapshot()} >= fast_ids, within=15), \
        "not every job's webhook was tried within 15 s"
    os.kill(svc.pid, signal.SIGKILL)
    killed_at = time.time()
    svc.proc.wait(timeout=10)
    failing.clear()
    svc2 = start_gw(gateways, "gw", backend, request, env=env, database_url=svc.env["DATABASE_URL"])

    def delivered() -> set[str]:
        return {r["headers"].get("webhook-id") for r in receiver.snapshot()
                if r["status"] == 200 and not r.get("answer_lost")}

    if not wait_until(lambda: delivered() >= want_ids, within=60):
        missing = [j for j in jobs if webhook_id_of(j) not in delivered()]
        tries = {j: [(round(r["t"] - killed_at, 2), r["status"]) for r in receiver.by_id(webhook_id_of(j))] for j in missing}
        killed_iso = datetime.fromtimestamp(killed_at, timezone.utc).isoformat(timespec="milliseconds")
        pytest.fail(f"after the SIGKILL at {killed_iso} and the restart, delivered {len(delivered() & want_ids)} of 5 "
                    f"within 60 s; missing: "
                    + "; ".join(f"job {j}: deliveries {json.dumps(deliveries(svc2, j))}, tries (s after the kill, "
                                f"status) {tries[j]}" for j in missing), pytrace=False)
    first_ok = {}
    for r in receiver.snapshot():
        if r["status"] == 200 and not r.get("answer_lost"):
            first_ok.setdefault(r["headers"].get("webhook-id"), r["t"] - killed_at)
    print(f"\n[live] {backend}: webhooks delivered after the SIGKILL + restart at +"
          f"{sorted(round(v, 1) for v in first_ok.values())} s (the in-flight one: "
          f"+{first_ok[webhook_id_of(jobs[-1])]:.1f} s)")
    time.sleep(1.0)
    ok = [r["headers"].get("webhook-id") for r in receiver.snapshot() if r["status"] == 200]
    assert sorted(ok) == sorted(want_ids), f"successful deliveries per webhook-id: {ok}"
    for j in jobs:
        d = deliveries(svc2, j)
        assert d.get("state") == "delivered" and (d.get("attempts") or [{}])[-1].get("status_code") == 200, d
    for r in receiver.snapshot():
        assert signature_problems(secret, r) is None


# ------------------------------------------------------------------------------------ admission


def test_callback_destinations_are_checked_at_post(gateways, receiver, tmp_path):
    secret_file = write_secrets(tmp_path, new_secret())
    # Webhooks not configured: any callback_url is refused.
    plain = start_gw(gateways, "plain", "sqlite", env={"GATEWAY_WORKERS": 0})
    r = post_with_callback(plain, receiver.url())
    assert r.status_code == 422 and r.headers.get("content-type", "").startswith(PROBLEM), \
        f"callback_url without a webhook secret file: {r.status_code} {r.text[:300]}"

    # Private destinations refused by default (the hosts themselves are allowed).
    strict = start_gw(gateways, "strict", "sqlite", env={
        "GATEWAY_WORKERS": 0, "GATEWAY_WEBHOOK_SECRET_FILE": secret_file,
        "GATEWAY_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1,10.0.0.1,169.254.169.254,100.64.0.1,0.0.0.0,*.corp"})
    bad = []
    for url in (receiver.url(), "http://10.0.0.1/hook", "http://169.254.169.254/latest", "http://100.64.0.1/h",
                "http://0.0.0.0/h"):
        r = post_with_callback(strict, url)
        if r.status_code != 422 or not r.headers.get("content-type", "").startswith(PROBLEM):
            bad.append(f"{url} without ALLOW_PRIVATE: {r.status_code} (want 422)")
    for url in ("https://evil.example.com/hook", "https://corp.example/x"):
        r = post_with_callback(strict, url)
        if r.status_code != 422:
            bad.append(f"{url} (host not allowed): {r.status_code} (want 422)")
    for url in ("ftp://hooks.corp/x", "hooks.corp/x", "http://", "not a url"):
        r = post_with_callback(strict, url)
        if r.status_code != 422:
            bad.append(f"{url[:60]!r} (malformed): {r.status_code} (want 422)")
    # Over 2048 characters: 422 (spec) or 400 (README: "field over its length" is a 400); never accepted.
    r = post_with_callback(strict, "https://hooks.corp/" + "a" * 2100)
    if r.status_code not in (400, 422) or not r.headers.get("content-type", "").startswith(PROBLEM):
        bad.append(f"a 2119-character callback_url: {r.status_code} (want 422 or 400 problem)")
    r = post_with_callback(strict, "https://hooks.corp/" + "a" * (2048 - len("https://hooks.corp/")))
    if r.status_code != 202:
        bad.append(f"a 2048-character callback_url: {r.status_code} {r.text[:200]} (want 202)")
    r = post_with_callback(strict, "https://hooks.corp/hook")  # a name matching *.corp: accepted (never run: no workers)
    if r.status_code != 202:
        bad.append(f"https://hooks.corp/hook (allowed by *.corp): {r.status_code} {r.text[:200]} (want 202)")
    else:
        j = r.json()["job_id"]
        if get_job(strict, j).get("callback_url") != "https://hooks.corp/hook":
            bad.append(f"GET job callback_url {get_job(strict, j).get('callback_url')!r}")
    assert not bad, "\n".join(bad)

    # ALLOW_PRIVATE lifts the address check, not the host allowlist; a pattern may carry a port.
    loose = start_gw(gateways, "loose", "sqlite", env={
        "GATEWAY_WORKERS": 0, "GATEWAY_WEBHOOK_SECRET_FILE": secret_file, "GATEWAY_WEBHOOK_ALLOW_PRIVATE": "true",
        "GATEWAY_WEBHOOK_ALLOWED_HOSTS": f"hooks.example.com,127.0.0.1:{receiver.port}"})
    r = post_with_callback(loose, receiver.url())
    assert r.status_code == 202, f"{receiver.url()} allowed by 127.0.0.1:{receiver.port} + ALLOW_PRIVATE: {r.status_code} {r.text[:300]}"
    other = f"http://127.0.0.1:{receiver.port + 1 if receiver.port < 65535 else receiver.port - 1}/hook"
    r = post_with_callback(loose, other)
    assert r.status_code == 422, f"{other} (port not in the allowlist): {r.status_code}"
    only_name = start_gw(gateways, "only-name", "sqlite", env={
        "GATEWAY_WORKERS": 0, "GATEWAY_WEBHOOK_SECRET_FILE": secret_file, "GATEWAY_WEBHOOK_ALLOW_PRIVATE": "true",
        "GATEWAY_WEBHOOK_ALLOWED_HOSTS": "hooks.example.com"})
    r = post_with_callback(only_name, receiver.url())
    assert r.status_code == 422, f"127.0.0.1 not in GATEWAY_WEBHOOK_ALLOWED_HOSTS=hooks.example.com: {r.status_code}"


def test_name_resolving_to_loopback_is_refused_at_delivery(gateways, receiver, tmp_path):
    """Without ALLOW_PRIVATE, a host name (allowed by the list) that resolves to 127.0.0.1 must never be
    called: refused at delivery on the resolved address (or already at POST)."""
    names = ["localhost"]
    host = socket.gethostname()
    try:
        if host != "localhost" and socket.gethostbyname(host).startswith("127."):
            names.append(host)
    except OSError:
        pass
    svc = start_gw(gateways, "gw", "sqlite", env={
        "GATEWAY_WEBHOOK_SECRET_FILE": write_secrets(tmp_path, new_secret()),
        "GATEWAY_WEBHOOK_ALLOWED_HOSTS": ",".join(names), "GATEWAY_WEBHOOK_RETRY_BASE_MS": 100})
    job_id, refused_at_post = None, []
    for name in names:
        r = post_with_callback(svc, f"http://{name}:{receiver.port}/resolved", target="wh-resolve")
        if r.status_code == 202:
            job_id = r.json()["job_id"]
            break
        assert r.status_code == 422, f"{name}: {r.status_code} {r.text[:300]}"
        refused_at_post.append(name)
    if job_id is None:
        print(f"\n[live] loopback names refused already at POST: {refused_at_post}")
        time.sleep(1.0)
    else:
        wait_terminal(svc, job_id)
        d = wait_deliveries(svc, job_id, lambda d: len(d.get("attempts") or []) >= 1, within=15, what="a first attempt")
        time.sleep(1.0)
        a = d["attempts"][0]
        assert a.get("status_code") is None and a.get("error"), f"attempt {a} (want no status and an error)"
        assert d.get("state") in ("pending", "failed"), d
    assert not receiver.snapshot(), f"the receiver on loopback got {len(receiver.snapshot())} requests through a " \
                                    f"name resolving to 127.0.0.1 (refused without ALLOW_PRIVATE)"


def test_gives_up_without_following_redirects(gateways, receiver, tmp_path):
    svc = start_gw(gateways, "gw", "sqlite", env=hook_env(write_secrets(tmp_path, new_secret()),
                                                          GATEWAY_WEBHOOK_RETRY_BASE_MS=200,
                                                          GATEWAY_WEBHOOK_GIVE_UP_AFTER_S=2))
    receiver.answer = lambda req: 302 if req["path"] == "/redirect" else 200
    receiver.extra_headers = lambda req: {"Location": receiver.url("/elsewhere")} if req["path"] == "/redirect" else {}
    job_id = submit_cb(svc, receiver.url("/redirect"), target="wh-giveup")
    wait_terminal(svc, job_id)
    d = wait_deliveries(svc, job_id, lambda d: d.get("state") == "failed", within=20, what="state failed")
    time.sleep(1.0)
    paths = [r["path"] for r in receiver.snapshot()]
    assert "/elsewhere" not in paths, f"the redirect was followed: {paths}"
    assert paths and set(paths) == {"/redirect"}, paths
    atts = d.get("attempts") or []
    assert atts and all(a.get("status_code") == 302 for a in atts), d
    assert len(atts) == len(paths), f"{len(atts)} attempts recorded, {len(paths)} requests received"
    assert d.get("next_attempt_at") is None, d
    time.sleep(1.0)
    assert len(receiver.snapshot()) == len(paths), "tries continued after giving up"
    assert outcome(svc, "gave_up") == 1 and outcome(svc, "success") == 0, \
        [l for l in svc.metrics().splitlines() if METRIC in l]


def test_action_default_callback_url_from_the_actions_file(gateways, receiver, tmp_path):
    secret = new_secret()
    catalog = {"actions": {"health_check": {"runner": "simulated", "callback_url": receiver.url("/default")},
                           "restart_service": {"runner": "simulated"}}}
    path = tmp_path / "actions.yaml"
    path.write_text(yaml.safe_dump(catalog))
    svc = start_gw(gateways, "gw", "sqlite", env=hook_env(write_secrets(tmp_path, secret),
                                                          GATEWAY_ACTIONS_FILE=str(path)))
    j1 = submit(svc, body("health_check", "wh-default", duration_ms=5))
    j2 = submit(svc, body("restart_service", "wh-nodefault", duration_ms=5))
    assert get_job(svc, j1).get("callback_url") == receiver.url("/default"), get_job(svc, j1)
    wait_terminal(svc, j1)
    wait_terminal(svc, j2)
    assert wait_until(lambda: len(receiver.snapshot()) >= 1, within=15), "the action's default callback was not called"
    time.sleep(1.0)
    reqs = receiver.snapshot()
    assert [r["headers"].get("webhook-id") for r in reqs] == [webhook_id_of(j1)], reqs
    assert signature_problems(secret, reqs[0]) is None
    assert get_job(svc, j2).get("callback_url") is None


def test_two_postgres_replicas_deliver_each_job_exactly_once(gateways, receiver, tmp_path, pg_db):
    secret = new_secret()
    env = hook_env(write_secrets(tmp_path, secret))
    a = gateways.start("replica-a", pg_db.url, env)
    b = gateways.start("replica-b", pg_db.url, env)
    jobs = [submit_cb(a if i % 2 else b, receiver.url(f"/two/{i}"), target=f"wh-two-{i}") for i in range(20)]
    for j in jobs:
        wait_terminal(a, j)
    want = {webhook_id_of(j) for j in jobs}
    assert wait_until(lambda: {r["headers"].get("webhook-id") for r in receiver.snapshot()} >= want, within=20), \
        f"{len({r['headers'].get('webhook-id') for r in receiver.snapshot()} & want)} of 20 delivered within 20 s"
    time.sleep(2.0)
    counts: dict[str, int] = {}
    for r in receiver.snapshot():
        counts[r["headers"].get("webhook-id")] = counts.get(r["headers"].get("webhook-id"), 0) + 1
        assert signature_problems(secret, r) is None
    twice = {k: v for k, v in counts.items() if v != 1}
    assert not twice and set(counts) == want, f"deliveries per webhook-id not exactly one: {twice or counts}"
    total = outcome(a, "success") + outcome(b, "success")
    print(f"\n[live] two replicas: deliveries by A {outcome(a, 'success'):.0f}, by B {outcome(b, 'success'):.0f}")
    assert total == 20, f"success metric summed over the replicas: {total} (want 20)"
    for j in jobs:
        d = deliveries(b, j)
        assert d.get("state") == "delivered" and len(d.get("attempts") or []) == 1, d
