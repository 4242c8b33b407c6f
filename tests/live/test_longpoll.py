"""Long-poll: GET /v1/jobs/{id}?wait=DUR answers as soon as the job is terminal, or when the wait ends
with the current job; DUR is 500ms / 30s / 1m / plain seconds, at most 60 s (so 2m is a 400 too),
anything else a 400."""

from __future__ import annotations

import time
import uuid

import requests

from conftest import PROBLEM, body, get_job, start_gw, submit, wait_status


def timed_get(svc, job_id: str, wait: str, timeout: float = 75.0):
    t0 = time.monotonic()
    r = requests.get(f"{svc.url}/v1/jobs/{job_id}", params={"wait": wait}, timeout=timeout)
    return r, time.monotonic() - t0


def test_long_poll_answers_at_the_terminal_status_or_at_the_end_of_the_wait(gateways):
    svc = start_gw(gateways, "gw", "sqlite")
    long_id = submit(svc, body(target="lp-long", duration_ms=30_000))
    wait_status(svc, long_id, "RUNNING", within=10)

    quick = submit(svc, body(target="lp-quick", duration_ms=1000))
    r, dt = timed_get(svc, quick, "5s")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "SUCCESS", f"?wait=5s on a 1 s job answered {r.json()['status']} after {dt:.2f} s"
    assert 0.6 <= dt <= 1.8, f"?wait=5s on a job finishing ~1 s later answered after {dt:.2f} s"
    assert r.json() == get_job(svc, quick), "the long-poll answer differs from GET without wait"

    r, dt = timed_get(svc, long_id, "5s")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "RUNNING", r.json()
    assert 4.8 <= dt <= 6.0, f"?wait=5s on a running 30 s job answered after {dt:.2f} s (want ~5 s)"
    plain = get_job(svc, long_id)
    assert set(r.json()) == set(plain), f"keys {sorted(r.json())} vs {sorted(plain)}"

    for wait, lo, hi in (("500ms", 0.45, 1.3), ("1", 0.95, 1.8)):
        r, dt = timed_get(svc, long_id, wait)
        assert r.status_code == 200 and r.json()["status"] == "RUNNING", f"?wait={wait}: {r.status_code} {r.text[:300]}"
        assert lo <= dt <= hi, f"?wait={wait} on a running job answered after {dt:.2f} s"

    # 1m (the maximum) is accepted and ends early when the job ends; a terminal job answers at once.
    quick2 = submit(svc, body(target="lp-quick2", duration_ms=1000))
    r, dt = timed_get(svc, quick2, "1m")
    assert r.status_code == 200 and r.json()["status"] == "SUCCESS", f"?wait=1m: {r.status_code} {r.text[:300]}"
    assert dt <= 1.8, f"?wait=1m on a job finishing ~1 s later answered after {dt:.2f} s"
    for wait in ("60s", "30s", "60"):
        r, dt = timed_get(svc, quick2, wait)
        assert r.status_code == 200 and r.json()["status"] == "SUCCESS", f"?wait={wait}: {r.status_code} {r.text[:300]}"
        assert dt < 0.5, f"?wait={wait} on a finished job took {dt:.2f} s"

    r, dt = timed_get(svc, str(uuid.uuid4()), "5s")
    assert r.status_code == 404 and dt < 1.0, f"?wait=5s on an unknown job: {r.status_code} after {dt:.2f} s"

    for wait in ("61s", "61", "2m", "60001ms", "2h", "garbage", "-1", "5 s", "1.5x"):
        r, dt = timed_get(svc, long_id, wait, timeout=10)
        assert r.status_code == 400, f"?wait={wait!r}: {r.status_code} after {dt:.2f} s (want 400)"
        assert r.headers.get("content-type", "").startswith(PROBLEM), r.headers
        assert dt < 1.0, f"?wait={wait!r}: the 400 took {dt:.2f} s"


def test_long_poll_on_another_replica_sees_the_job_end(gateways, pg_db):
    """The job runs on A; the long-poll is served by B (GATEWAY_WORKERS=0) on the same database."""
    a = gateways.start("replica-a", pg_db.url)
    b = gateways.start("replica-b", pg_db.url, {"GATEWAY_WORKERS": 0})
    job_id = submit(a, body(target="lp-xr", duration_ms=1000))
    r, dt = timed_get(b, job_id, "10s")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "SUCCESS", f"?wait=10s on B answered {r.json()['status']} after {dt:.2f} s"
    assert dt <= 2.0, f"?wait=10s on replica B for a job A finishes ~1 s later answered after {dt:.2f} s"
