"""A worker that lost its lease (its process was paused with SIGSTOP past GATEWAY_LEASE_SECS) stops the
run at once when it resumes, logging WARN "job attempt stopped: lease lost" with the job_id, and
never reports the job finished: the job stays FAILED "worker lost" (restart_service: on_lost=fail).
Two replicas on one PostgreSQL database, and a single SQLite process.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from conftest import field_of, level_of, message_of, wait_statuses

LEASE_SECS = 3
RUN_MS = 15_000
LEASE_LOST = "job attempt stopped: lease lost"


def long_job(svc, i: int) -> str:
    r = svc.post({"action": "restart_service", "target": f"lease-{i}", "requested_by": "faults@example.com",
                  "parameters": {"simulate": {"duration_ms": RUN_MS, "fail": False}}})
    assert r.status_code == 202, f"{r.status_code} {r.text[:200]}"
    return r.json()["job_id"]


def lease_lost_ids(svc) -> set[str]:
    return {str(field_of(l, "job_id")) for l in svc.log_lines()
            if LEASE_LOST in message_of(l) and level_of(l) == "WARN"}


def finished_ids(svc) -> set[str]:
    return {str(field_of(l, "job_id")) for l in svc.log_lines() if message_of(l) == "job finished"}


def started_ids(svc) -> set[str]:
    return {str(field_of(l, "job_id")) for l in svc.log_lines() if message_of(l) == "job attempt started"}


def test_paused_replica_stops_its_runs_when_it_resumes_after_losing_its_leases(pg_db, gateways):
    env = {"GATEWAY_LEASE_SECS": LEASE_SECS, "GATEWAY_WORKERS": 4}
    a = gateways.start("replica-a", pg_db.url, env)
    ids = [long_job(a, i) for i in range(3)]
    running = wait_statuses(a, ids, ["RUNNING"], within=10)
    assert all(s == "RUNNING" for s in running.values()), f"jobs not RUNNING on A: {running}"
    runs_end_at = time.monotonic() + RUN_MS / 1000
    b = gateways.start("replica-b", pg_db.url, env)

    os.kill(a.pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        recovered = wait_statuses(b, ids, ["FAILED"], within=7.5)
        time.sleep(max(0.0, stopped_at + 8 - time.monotonic()))
    finally:
        os.kill(a.pid, signal.SIGCONT)
    resumed_at = time.monotonic()
    assert all(s == "FAILED" for s in recovered.values()), f"B did not recover A's jobs while A was stopped: {recovered}"

    errors = []
    a.wait_log(lambda _l: set(ids) <= lease_lost_ids(a), within=2.0)
    lost = lease_lost_ids(a)
    took = time.monotonic() - resumed_at
    missing = [j for j in ids if j not in lost]
    if missing:
        errors.append(f"A logged no WARN {LEASE_LOST!r} within 2 s of SIGCONT for {len(missing)} of 3 jobs: {missing} "
                      f"(A's lines about them since: {[message_of(l) for l in a.log_lines() if field_of(l, 'job_id') in ids][-8:]})")
    # Let the simulated runs' full length pass: a worker that kept running would report now.
    time.sleep(max(0.0, runs_end_at + 2.5 - time.monotonic()))
    done = finished_ids(a) & set(ids)
    if done:
        errors.append(f"A logged 'job finished' for jobs whose lease it lost: {sorted(done)}")
    ran_on_b = started_ids(b) & set(ids)
    if ran_on_b:
        errors.append(f"B ran restart_service jobs again (on_lost=fail): {sorted(ran_on_b)}")
    for j in ids:
        job = b.get_job(j).json()
        if job.get("status") != "FAILED" or "worker lost" not in str(job.get("error")):
            errors.append(f"job {j} is {job.get('status')} {job.get('error')!r} (want FAILED, worker lost)")
    assert a.alive() and b.alive(), f"a replica died; A:\n{a.tail(2000)}\nB:\n{b.tail(2000)}"
    print(f"[faults] lease lost lines {len(lost & set(ids))}/3 within {took:.1f} s of SIGCONT")
    assert not errors, "lease loss (PostgreSQL, two replicas):\n" + "\n".join(errors)


def test_paused_sqlite_process_stops_its_run_and_fails_the_job_on_resume(tmp_path, gateways):
    svc = gateways.start("sqlite-lease", f"sqlite://{tmp_path}/gw.db?mode=rwc", {"GATEWAY_LEASE_SECS": LEASE_SECS})
    job = long_job(svc, 0)
    st = wait_statuses(svc, [job], ["RUNNING"], within=10)
    assert st[job] == "RUNNING", st

    os.kill(svc.pid, signal.SIGSTOP)
    try:
        time.sleep(5)
    finally:
        os.kill(svc.pid, signal.SIGCONT)
    resumed_at = time.monotonic()

    errors = []
    if not svc.wait_log(lambda _l: job in lease_lost_ids(svc), within=2.0):
        errors.append(f"no WARN {LEASE_LOST!r} for {job} within 2 s of SIGCONT "
                      f"(its lines: {[message_of(l) for l in svc.log_lines() if field_of(l, 'job_id') == job]})")
    final = wait_statuses(svc, [job], ["SUCCESS", "FAILED", "CANCELED"], within=10)
    got = svc.get_job(job).json()
    if got.get("status") != "FAILED" or "worker lost" not in str(got.get("error")):
        errors.append(f"job ended {got.get('status')} {got.get('error')!r} {time.monotonic() - resumed_at:.1f} s after "
                      f"SIGCONT (want FAILED, worker lost, within 10 s); polled {final}")
    assert svc.alive(), f"the service died; log:\n{svc.tail()}"
    assert not errors, "lease loss (SQLite):\n" + "\n".join(errors)
