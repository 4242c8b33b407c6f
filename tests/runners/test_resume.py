"""Crash resume of a remote run (issue 12, "Exactly-once launch and crash resume").

An AWX action (`on_lost: fail`, so resuming must win over the lost-job policy) launches a run on a
loopback AWX fake that keeps it `running` until the test finishes it. Once the gateway has recorded the
run (`external` on the job) and is polling it, its process is lost:

- SQLite: SIGKILL, the fake finishes the run (`successful`, and in a second case `failed`), a new process
  on the same database file resumes the job: it ends with the remote run's status, the fake saw ONE
  launch, the new process logs "job attempt resumed" (never "job attempt started" for it).
- SQLite, SIGTERM instead: the run is handed over, not canceled; the next process resumes it.
- SQLite, `concurrency: {per_target: 1}`: the resumed run keeps its target's slot (a second job for the
  target waits until it ends).
- PostgreSQL, two replicas with a 2 s lease: SIGKILL the replica running the job; the other one resumes
  it: one launch, the true final status.
- PostgreSQL, SIGSTOP instead: the other replica resumes and finishes the job; on SIGCONT the paused
  replica stops its attempt ("job attempt stopped: lease lost"), the job keeps the other replica's
  outcome (the fake reports `failed` by then, so a late report of the paused one would show), still one
  launch, and no cancel reached the fake.

(A crash between sending the launch and storing its answer is not tested: it cannot be timed reliably.)
The AWX fake here is a minimal one of this file's own, built on fakes.recorder.Recorder.
Every wait is bounded; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from conftest import (field_of, get_job, message_of, post_job, start_with_actions, wait_job, wait_terminal)
from fakes.recorder import Recorder

PREFIX = "/api/v2"
TEMPLATE_ID = 42
POLL_MS = 200
LEASE_SECS = 2          # the smallest GATEWAY_LEASE_SECS the binary accepts
ACTION = "deploy_app"
RESUMED = "job attempt resumed"
STARTED = "job attempt started"
LEASE_LOST = "job attempt stopped: lease lost"


# ------------------------------------------------------------------------------ minimal AWX fake


class MiniAwx:
    """Launch answers 201 with a new job id; the job stays `running` until finish(job, status).
    Launch and poll need `Authorization: Bearer <TOKEN>` (else 401, as AWX)."""

    TOKEN = "awx-resume-token"

    def __init__(self):
        self.rec = Recorder()
        self.url = self.rec.url
        self._lock = threading.Lock()
        self._next = 1000
        self.status: dict[int, str] = {}
        self.rec.route("POST", rf"{PREFIX}/job_templates/(\d+)/launch/", self._launch)
        self.rec.route("GET", rf"{PREFIX}/jobs/(\d+)/", self._job)
        self.rec.route("GET", rf"{PREFIX}/jobs/(\d+)/stdout/", self._stdout)
        self.rec.route("POST", rf"{PREFIX}/jobs/(\d+)/cancel/", self._cancel)

    def _authorized(self, req) -> bool:
        return req.headers.get("authorization") == f"Bearer {self.TOKEN}"

    def _launch(self, req):
        if not self._authorized(req):
            return 401, {}, {"detail": "Authentication credentials were not provided."}
        with self._lock:
            self._next += 1
            job = self._next
            self.status[job] = "running"
        return 201, {}, {"job": job, "id": job, "status": "pending", "ignored_fields": {},
                         "url": f"{PREFIX}/jobs/{job}/", "type": "job"}

    def _job(self, req):
        if not self._authorized(req):
            return 401, {}, {"detail": "Authentication credentials were not provided."}
        job = int(req.match.group(1))
        with self._lock:
            st = self.status.get(job)
        if st is None:
            return 404, {}, {"detail": "Not found."}
        return 200, {}, {"id": job, "type": "job", "status": st, "failed": st in ("failed", "error"),
                         "finished": None if st in ("pending", "running") else "2026-01-01T00:00:00Z"}

    def _stdout(self, req):
        job = int(req.match.group(1))
        return 200, {"Content-Type": "text/plain"}, f"PLAY [all]\nTASK [deploy]\nfatal: [web]: marker-{job}-boom\n"

    def _cancel(self, req):
        return 202, {}, None

    def finish(self, job: int, status: str) -> None:
        with self._lock:
            self.status[job] = status

    # what the fake saw
    def launches(self) -> list:
        return self.rec.matching("POST", rf"{PREFIX}/job_templates/\d+/launch/")

    def polls(self, job: int, since: float = 0.0) -> list:
        return [r for r in self.rec.matching("GET", rf"{PREFIX}/jobs/{job}/") if r.at >= since]

    def cancels(self) -> list:
        return self.rec.matching("POST", rf"{PREFIX}/jobs/\d+/cancel/")

    def close(self):
        self.rec.close()


@pytest.fixture
def awx():
    fake = MiniAwx()
    yield fake
    fake.close()


def catalog_for(awx: MiniAwx, token_path: str) -> dict:
    return {ACTION: {
        "runner": "awx",
        "description": "Deploy through AWX (resume test)",
        "policy": {"on_lost": "fail", "max_attempts": 1, "timeout_ms": 120000},
        "awx": {"url": awx.url, "token_file": token_path, "job_template_id": TEMPLATE_ID,
                "extra_vars": {"target_host": "{{ target }}"}, "poll_interval_ms": POLL_MS},
    }}


def submit(svc, target: str) -> str:
    r = post_job(svc, ACTION, target, {})
    assert r.status_code == 202, f"POST {ACTION}: {r.status_code} {r.text[:500]}"
    body = r.json()
    return str(body.get("job_id") or body.get("id"))


def ids_with(svc, message: str) -> list[str]:
    """job_ids of the log lines whose message is exactly `message`."""
    return [str(field_of(l, "job_id")) for l in svc.log_lines() if message_of(l) == message]


def launched_and_polled(svc, awx: MiniAwx, job_id: str) -> int:
    """Waits until the job's `external` is recorded and the fake is being polled; returns the AWX job id."""
    job = wait_job(svc, job_id, lambda j: j.get("external"), within=15, what="`external` recorded")
    ext = job["external"]
    assert ext.get("system") == "awx", f"external {ext}"
    awx_job = int(ext.get("id"))
    assert ext.get("url") == f"{awx.url}/#/jobs/playbook/{awx_job}", f"external {ext}"
    assert job.get("status") == "RUNNING", f"job with external is {job.get('status')}"
    assert awx.rec.wait_for(lambda: len(awx.polls(awx_job)) >= 2, within=10), \
        f"the gateway does not poll AWX job {awx_job}; fake saw:\n{awx.rec.describe()}"
    return awx_job


def kill9(svc) -> float:
    os.kill(svc.pid, signal.SIGKILL)
    svc.proc.wait(timeout=10)
    return time.monotonic()


def check_outcome(job: dict, outcome: str, awx_job: int, awx: MiniAwx) -> list[str]:
    errors = []
    want = "SUCCESS" if outcome == "successful" else "FAILED"
    if job.get("status") != want:
        errors.append(f"job ended {job.get('status')} (want {want}, the remote run's status {outcome!r}); "
                      f"error {job.get('error')!r}, result {job.get('result')!r}")
    if "worker lost" in str(job.get("error")):
        errors.append(f"the lost-job policy settled the job instead of a resume: error {job.get('error')!r}")
    if want == "SUCCESS":
        res = job.get("result") or {}
        if not (isinstance(res, dict) and res.get("status") == "successful" and str(res.get("id")) == str(awx_job)):
            errors.append(f"result {res!r} (want system awx, id {awx_job}, status successful)")
    else:
        err = str(job.get("error"))
        if f"awx job {awx_job} ended failed" not in err:
            errors.append(f"error {err!r} does not say 'awx job {awx_job} ended failed'")
        if f"marker-{awx_job}-boom" not in err:
            errors.append(f"error {err!r} lacks the stdout tail of the failed run")
    ext = job.get("external") or {}
    if str(ext.get("id")) != str(awx_job):
        errors.append(f"external changed to {ext!r} (was AWX job {awx_job})")
    n = len(awx.launches())
    if n != 1:
        errors.append(f"the fake saw {n} launches (want exactly 1):\n{awx.rec.describe()}")
    return errors


# ------------------------------------------------------------------------------------- SQLite


@pytest.mark.parametrize("outcome", ["successful", "failed"])
def test_sqlite_sigkill_then_restart_resumes_the_remote_run(gateways, awx, secret_file, outcome):
    catalog = catalog_for(awx, secret_file(MiniAwx.TOKEN + "\n"))
    a = start_with_actions(gateways, "resume-sqlite", catalog)
    job_id = submit(a, f"web-{outcome}")
    awx_job = launched_and_polled(a, awx, job_id)
    assert job_id in ids_with(a, STARTED), f"first process did not log {STARTED!r} for {job_id}"
    killed_at = kill9(a)

    awx.finish(awx_job, outcome)
    b = start_with_actions(gateways, "resume-sqlite", catalog)   # same name: same SQLite file
    job = wait_terminal(b, job_id, within=20)

    errors = check_outcome(job, outcome, awx_job, awx)
    if not awx.polls(awx_job, since=killed_at):
        errors.append(f"the new process never polled AWX job {awx_job}")
    if job_id not in ids_with(b, RESUMED):
        errors.append(f"the new process did not log {RESUMED!r} for {job_id}; its lines about the job: "
                      f"{[message_of(l) for l in b.log_lines() if field_of(l, 'job_id') == job_id]}")
    if job_id in ids_with(b, STARTED):
        errors.append(f"the new process logged {STARTED!r} for {job_id} (a resume logs {RESUMED!r})")
    assert b.alive(), f"the new process died; log:\n{b.tail()}"
    assert not errors, f"SQLite resume ({outcome}):\n" + "\n".join(errors)


def test_sqlite_sigterm_hands_the_run_over_to_the_next_process(gateways, awx, secret_file):
    """Graceful shutdown does not cancel a recorded remote run: the next process resumes it."""
    catalog = catalog_for(awx, secret_file(MiniAwx.TOKEN + "\n"))
    a = start_with_actions(gateways, "handover-sqlite", catalog)
    job_id = submit(a, "web-handover")
    awx_job = launched_and_polled(a, awx, job_id)
    a.stop(timeout=30)            # SIGTERM (the harness sets a 2 s shutdown grace)
    errors = []
    if awx.cancels():
        errors.append(f"graceful shutdown sent a cancel to AWX: {awx.cancels()}")

    b = start_with_actions(gateways, "handover-sqlite", catalog)
    # The run is still going on AWX: the job must still be RUNNING under the new process.
    early = get_job(b, job_id)
    if early.get("status") != "RUNNING":
        errors.append(f"after the handover (run still going) the job is {early.get('status')} "
                      f"{early.get('error')!r} (want RUNNING)")
    stopped_at = time.monotonic()
    if not awx.rec.wait_for(lambda: len(awx.polls(awx_job, since=stopped_at)) >= 1, within=15):
        errors.append(f"the new process did not poll AWX job {awx_job} within 15 s")
    awx.finish(awx_job, "successful")
    job = wait_terminal(b, job_id, within=20)
    errors += check_outcome(job, "successful", awx_job, awx)
    if awx.cancels():
        errors.append(f"a cancel reached AWX: {awx.cancels()}")
    if job_id not in ids_with(b, RESUMED):
        errors.append(f"the new process did not log {RESUMED!r} for {job_id}")
    if job_id in ids_with(b, STARTED):
        errors.append(f"the new process logged {STARTED!r} for {job_id} (a resume logs {RESUMED!r})")
    assert b.alive(), f"the new process died; log:\n{b.tail()}"
    assert not errors, "SQLite handover on SIGTERM:\n" + "\n".join(errors)


def test_resumed_run_keeps_its_per_target_slot(gateways, awx, secret_file):
    """With `concurrency: {per_target: 1}`, a run resumed after SIGKILL still holds its target's slot: a
    second job for the same target stays PENDING until the resumed run ends, then runs (2 launches in all)."""
    catalog = catalog_for(awx, secret_file(MiniAwx.TOKEN + "\n"))
    catalog[ACTION]["concurrency"] = {"per_target": 1}
    a = start_with_actions(gateways, "slot-sqlite", catalog)
    first = submit(a, "web-slot")
    awx_first = launched_and_polled(a, awx, first)
    second = submit(a, "web-slot")
    time.sleep(1.0)
    errors = []
    st = get_job(a, second).get("status")
    if st != "PENDING" or len(awx.launches()) != 1:
        errors.append(f"before the crash: second job {st}, {len(awx.launches())} launches (want PENDING, 1)")
    killed_at = kill9(a)

    b = start_with_actions(gateways, "slot-sqlite", catalog)
    if not awx.rec.wait_for(lambda: len(awx.polls(awx_first, since=killed_at)) >= 2, within=15):
        errors.append(f"the new process did not poll the resumed AWX job {awx_first}")
    time.sleep(1.0)
    st = get_job(b, second).get("status")
    if st != "PENDING" or len(awx.launches()) != 1:
        errors.append(f"while the resumed run held the target's only slot: second job {st}, "
                      f"{len(awx.launches())} launches (want PENDING, 1)")
    awx.finish(awx_first, "successful")
    done = wait_terminal(b, first, within=20)
    if done.get("status") != "SUCCESS":
        errors.append(f"the resumed job ended {done.get('status')} {done.get('error')!r}")
    if not awx.rec.wait_for(lambda: len(awx.launches()) >= 2, within=10):
        errors.append("the second job was not launched within 10 s of the resumed run's end")
    else:
        j2 = wait_job(b, second, lambda j: j.get("external"), within=10, what="`external` of the second job")
        awx.finish(int(j2["external"]["id"]), "successful")
        j2 = wait_terminal(b, second, within=20)
        if j2.get("status") != "SUCCESS":
            errors.append(f"the second job ended {j2.get('status')} {j2.get('error')!r}")
    if len(awx.launches()) != 2:
        errors.append(f"{len(awx.launches())} launches in all (want 2: one per job)")
    assert b.alive(), f"the new process died; log:\n{b.tail()}"
    assert not errors, "per-target slot of a resumed run (SQLite):\n" + "\n".join(errors)


# --------------------------------------------------------------------------------- PostgreSQL


def test_postgres_replica_resumes_the_run_of_a_killed_replica(gateways, awx, secret_file, pg_db):
    catalog = catalog_for(awx, secret_file(MiniAwx.TOKEN + "\n"))
    env = {"GATEWAY_LEASE_SECS": LEASE_SECS}
    a = start_with_actions(gateways, "replica-a", catalog, database_url=pg_db.url, env=env)
    job_id = submit(a, "web-pg-kill")
    awx_job = launched_and_polled(a, awx, job_id)
    assert job_id in ids_with(a, STARTED), f"replica A did not log {STARTED!r} for {job_id}"
    b = start_with_actions(gateways, "replica-b", catalog, database_url=pg_db.url, env=env)

    killed_at = kill9(a)
    # B polls the very same run once A's lease has expired (while it is still running on AWX).
    polled = awx.rec.wait_for(lambda: len(awx.polls(awx_job, since=killed_at + 0.2)) >= 2, within=20)
    awx.finish(awx_job, "successful")
    job = wait_terminal(b, job_id, within=20)

    errors = check_outcome(job, "successful", awx_job, awx)
    if not polled:
        errors.append(f"replica B did not poll AWX job {awx_job} within 20 s of A's SIGKILL (lease {LEASE_SECS} s)")
    if job_id not in ids_with(b, RESUMED):
        errors.append(f"replica B did not log {RESUMED!r} for {job_id}; its lines about the job: "
                      f"{[message_of(l) for l in b.log_lines() if field_of(l, 'job_id') == job_id]}")
    if job_id in ids_with(b, STARTED):
        errors.append(f"replica B logged {STARTED!r} for {job_id} (a resume logs {RESUMED!r})")
    assert b.alive(), f"replica B died; log:\n{b.tail()}"
    assert not errors, "PostgreSQL resume after SIGKILL:\n" + "\n".join(errors)


def test_postgres_paused_replica_loses_the_run_to_the_other_and_does_not_touch_it(gateways, awx, secret_file, pg_db):
    catalog = catalog_for(awx, secret_file(MiniAwx.TOKEN + "\n"))
    env = {"GATEWAY_LEASE_SECS": LEASE_SECS}
    a = start_with_actions(gateways, "replica-a", catalog, database_url=pg_db.url, env=env)
    job_id = submit(a, "web-pg-stop")
    awx_job = launched_and_polled(a, awx, job_id)
    assert job_id in ids_with(a, STARTED), f"replica A did not log {STARTED!r} for {job_id}"
    b = start_with_actions(gateways, "replica-b", catalog, database_url=pg_db.url, env=env)

    errors = []
    os.kill(a.pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        if not awx.rec.wait_for(lambda: len(awx.polls(awx_job, since=stopped_at + 0.5)) >= 2, within=20):
            errors.append(f"replica B did not poll AWX job {awx_job} within 20 s of A's SIGSTOP")
        if not b.wait_log(lambda _l: job_id in ids_with(b, RESUMED), within=5):
            errors.append(f"replica B did not log {RESUMED!r} for {job_id}")
        awx.finish(awx_job, "successful")
        done_on_b = wait_terminal(b, job_id, within=20)
        # From now on AWX says "failed": a late report by A would turn the job FAILED.
        awx.finish(awx_job, "failed")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    resumed_at = time.monotonic()

    if not a.wait_log(lambda _l: job_id in ids_with(a, LEASE_LOST), within=5):
        errors.append(f"replica A did not log {LEASE_LOST!r} for {job_id} within 5 s of SIGCONT; its lines about "
                      f"the job: {[message_of(l) for l in a.log_lines() if field_of(l, 'job_id') == job_id]}")
    time.sleep(max(0.0, resumed_at + 3 * POLL_MS / 1000 + 1.0 - time.monotonic()))  # A's next polls would be due

    errors += check_outcome(done_on_b, "successful", awx_job, awx)
    now = get_job(b, job_id)
    if now.get("status") != done_on_b.get("status") or now.get("result") != done_on_b.get("result") \
            or now.get("error") != done_on_b.get("error"):
        errors.append(f"the job changed after A resumed: was {done_on_b.get('status')} {done_on_b.get('result')!r} "
                      f"{done_on_b.get('error')!r}, now {now.get('status')} {now.get('result')!r} {now.get('error')!r}")
    n = len(awx.launches())
    if n != 1:
        errors.append(f"the fake saw {n} launches after A resumed (want 1)")
    if awx.cancels():
        errors.append(f"a cancel reached AWX: {awx.cancels()}")
    finished_by_a = [l for l in a.log_lines() if field_of(l, "job_id") == job_id and message_of(l) == "job finished"]
    if finished_by_a:
        errors.append(f"replica A logged 'job finished' for the job it lost: {finished_by_a}")
    assert a.alive() and b.alive(), f"a replica died; A:\n{a.tail(2000)}\nB:\n{b.tail(2000)}"
    assert not errors, "PostgreSQL resume after SIGSTOP:\n" + "\n".join(errors)
