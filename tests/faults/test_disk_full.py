"""Writes that cannot be made durable: a full disk (a real 3 MiB tmpfs), the SQLite size cap
(GATEWAY_SQLITE_MAX_SIZE_MB), a PostgreSQL COMMIT that fails for one poisoned row, and PostgreSQL
backends terminated under load.

What a user checks: a POST is never 202 unless the job is stored (every 202'd id is readable, also
after a restart); a refused POST is a retryable 503 problem+json with Retry-After (storage-full
type when the disk or the cap is full), never a 500; /readyz reports failing writes and recovers
by itself; one poisoned row fails only its own request.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import secrets
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import (PROBLEM, TERMINAL, job_body, problem_violations, wait_statuses, wait_until)

STORAGE_FULL = "#problem-storage-full"
BLOB_CHARS = 30_000
MiB = 1024 * 1024


def big_body(i: int) -> dict:
    # ~30 KB of incompressible-looking text in the parameters.
    return job_body("health_check", f"disk-{i % 7}", blob=secrets.token_hex(BLOB_CHARS // 2), n=i)


def readyz(svc) -> tuple[int, dict]:
    try:
        r = requests.get(svc.url + "/readyz", timeout=5)
    except requests.RequestException as e:
        return -1, {"error": str(e)}
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, {"text": r.text[:200]}


def mentions_failing_writes(body: dict) -> bool:
    reason = str(body.get("reason") or "").lower()
    return "storage" in reason or "writ" in reason


def fill_until_refused(svc, max_posts: int, after_failure: int = 20):
    """POSTs ~30 KB jobs until the first non-202, then `after_failure` more. Returns
    (accepted ids, failures [(i, response)], readiness right after each failure, transport errors)."""
    accepted: list[str] = []
    failures: list[tuple[int, requests.Response]] = []
    ready_after_failure: list[tuple[int, dict]] = []
    transport: list[str] = []
    first_failure = None
    for i in range(max_posts):
        if first_failure is not None and i >= first_failure + after_failure + 1:
            break
        try:
            r = svc.post(big_body(i), timeout=40)
        except requests.RequestException as e:
            transport.append(f"POST {i}: {e}")
            if first_failure is None:
                first_failure = i
            continue
        if r.status_code == 202:
            accepted.append(r.json()["job_id"])
            continue
        failures.append((i, r))
        if first_failure is None:
            first_failure = i
        ready_after_failure.append(readyz(svc))
    return accepted, failures, ready_after_failure, transport


def check_failures(failures, ready_after_failure, transport, errors: list[str]):
    for i, r in failures:
        bad = problem_violations(r, STORAGE_FULL)
        if bad:
            errors.append(f"POST {i} refused badly: {'; '.join(bad)}; body {r.text[:300]!r}")
    errors.extend(f"transport error (the service must answer): {t}" for t in transport)
    if ready_after_failure:
        st, body = ready_after_failure[0]
        if st != 503 or body.get("status") != "not_ready" or not mentions_failing_writes(body):
            errors.append(f"/readyz right after the first refused write: {st} {body} (want 503 not_ready, reason about failing writes/storage)")


def check_readable(svc, ids, errors: list[str], what: str) -> set[str]:
    """GET every id; records those not 200 in `errors`; returns them."""
    missing: dict[str, str] = {}
    for j in ids:
        try:
            r = svc.get_job(j)
            if r.status_code != 200:
                missing[j] = str(r.status_code)
        except requests.RequestException as e:
            missing[j] = str(e)
    if missing:
        errors.append(f"{what}: {len(missing)} of {len(ids)} 202'd jobs not readable (GET), e.g. "
                      f"{[f'{j}: {s}' for j, s in list(missing.items())[:4]]}")
    return set(missing)


def post_small_until_202(svc, within: float) -> tuple[bool, str]:
    last = ""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            r = svc.post(job_body("health_check", "after-recovery"), timeout=10)
            if r.status_code == 202:
                return True, r.json()["job_id"]
            last = f"{r.status_code} {r.text[:200]}"
        except requests.RequestException as e:
            last = str(e)
        time.sleep(0.3)
    return False, last


# ------------------------------------------------------------------------------ a. real full disk


@pytest.fixture
def tmpfs_dir():
    d = Path(tempfile.mkdtemp(prefix="ag-fault-tmpfs-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(d)], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        os.rmdir(d)
        pytest.fail(f"cannot mount a 3 MiB tmpfs at {d} (this test needs root and mount): {r.stderr.strip()}", pytrace=False)
    try:
        yield d
    finally:
        if subprocess.run(["umount", str(d)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=30)
        try:
            os.rmdir(d)
        except OSError:
            pass


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def write_filler(path: Path, size: int):
    chunk = b"\xa5" * MiB
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())


def test_sqlite_on_a_full_filesystem_refuses_with_503_and_recovers_by_itself(tmpfs_dir, gateways):
    url = f"sqlite://{tmpfs_dir}/gw.db?mode=rwc"
    svc = gateways.start("diskfull", url, {"GATEWAY_SIM_DURATION_MS": "1-5"})
    filler = tmpfs_dir / "filler"
    write_filler(filler, max(0, free_bytes(tmpfs_dir) - MiB))
    print(f"[faults] tmpfs free after filler: {free_bytes(tmpfs_dir)} bytes")
    errors: list[str] = []

    accepted, failures, ready_after, transport = fill_until_refused(svc, max_posts=300)
    print(f"[faults] full disk: {len(accepted)} accepted, {len(failures)} refused, statuses "
          f"{sorted({r.status_code for _, r in failures})}, readyz after failures {[s for s, _ in ready_after]}")
    assert failures or transport, f"the disk never filled up: {len(accepted)} jobs of 30 KB accepted on a ~1 MiB free tmpfs"
    assert svc.alive(), f"the service died on a full disk; log:\n{svc.tail()}"
    check_failures(failures, ready_after, transport, errors)
    # Every 202 so far is a stored job, even while the disk is full.
    check_readable(svc, accepted, errors, "while the disk is full")

    filler.unlink()
    t0 = time.monotonic()
    recovered = wait_until(lambda: readyz(svc)[0] == 200, within=15, every=0.2)
    if not recovered:
        errors.append(f"/readyz not 200 within 15 s of freeing the disk: {readyz(svc)}")
    ok, detail = post_small_until_202(svc, within=max(1.0, 15 - (time.monotonic() - t0)))
    if ok:
        accepted.append(detail)
    else:
        errors.append(f"no 202 within 15 s of freeing the disk: last answer {detail}")
    for k in range(3):
        r = svc.post(job_body("health_check", "after-recovery"), timeout=20)
        if r.status_code == 202:
            accepted.append(r.json()["job_id"])
        else:
            errors.append(f"POST after recovery #{k}: {r.status_code} {r.text[:200]}")

    unreadable = check_readable(svc, accepted, errors, "after recovery")
    # Results written while the disk was full are retried with a backoff: allow for it.
    final = wait_statuses(svc, [j for j in accepted if j not in unreadable], TERMINAL, within=45)
    open_jobs = {j: s for j, s in final.items() if s not in TERMINAL}
    if open_jobs:
        errors.append(f"{len(open_jobs)} readable 202'd jobs not terminal within 45 s, e.g. {list(open_jobs.items())[:5]}")

    rc = svc.stop()
    again = gateways.start("diskfull", url, {"GATEWAY_SIM_DURATION_MS": "1-5"})
    check_readable(again, accepted, errors, f"after a restart (first exit code {rc})")
    assert not errors, "full disk:\n" + "\n".join(errors)


# ------------------------------------------------------------------------- b. the SQLite size cap


def test_sqlite_size_cap_behaves_like_a_full_disk(tmp_path, gateways):
    url = f"sqlite://{tmp_path}/capped.db?mode=rwc"
    svc = gateways.start("sizecap", url, {"GATEWAY_SQLITE_MAX_SIZE_MB": "1"})
    errors: list[str] = []

    # 150 x 30 KB = 4.5 MB: far past a 1 MiB cap.
    accepted, failures, ready_after, transport = fill_until_refused(svc, max_posts=150)
    size = sum(p.stat().st_size for p in tmp_path.glob("capped.db*"))
    print(f"[faults] size cap: {len(accepted)} accepted, {len(failures)} refused, statuses "
          f"{sorted({r.status_code for _, r in failures})}, files {size} bytes")
    assert failures or transport, (
        f"GATEWAY_SQLITE_MAX_SIZE_MB=1 did not cap the database: all {len(accepted)} POSTs of 30 KB got 202 "
        f"(database files now {size} bytes)")
    assert svc.alive(), f"the service died at the size cap; log:\n{svc.tail()}"
    check_failures(failures, ready_after, transport, errors)
    check_readable(svc, accepted, errors, "at the cap")

    svc.stop()
    again = gateways.start("sizecap", url, {"GATEWAY_SQLITE_MAX_SIZE_MB": "0"})
    check_readable(again, accepted, errors, "after a restart without the cap")
    for k in range(3):
        r = again.post(big_body(1000 + k))
        if r.status_code != 202:
            errors.append(f"POST after lifting the cap #{k}: {r.status_code} {r.text[:200]}")
    assert not errors, "size cap:\n" + "\n".join(errors)


# ---------------------------------------------------------------- c. PostgreSQL: a failing COMMIT

POISON_TRIGGER = """
CREATE FUNCTION ag_fault_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.target = 'poison' THEN
    RAISE EXCEPTION 'poisoned row % refused at commit', NEW.id;
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ag_fault_poison AFTER INSERT ON jobs
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ag_fault_poison();
"""


def test_postgres_a_poisoned_row_failing_at_commit_fails_only_its_own_request(pg_db, gateways):
    svc = gateways.start("poison", pg_db.url)
    pg_db.sql(POISON_TRIGGER)
    total, clients = 300, 50
    poison = {i for i in range(total) if i % 10 == 3}

    def one(i: int):
        target = "poison" if i in poison else f"clean-{i % 13}"
        try:
            r = svc.post(job_body("health_check", target), timeout=40)
            return i, r.status_code, dict(r.headers), r.text
        except requests.RequestException as e:
            return i, None, {}, str(e)

    with cf.ThreadPoolExecutor(clients) as ex:
        results = list(ex.map(one, range(total)))

    errors: list[str] = []
    accepted = {}
    poison_202 = [i for i, st, _, _ in results if i in poison and st == 202]
    if poison_202:
        errors.append(f"{len(poison_202)} poisoned requests got 202: {poison_202[:10]}")
    clean_refused = []
    for i, st, headers, text in results:
        if st == 202:
            accepted[i] = json.loads(text)["job_id"]
            continue
        ct = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
        if st is None or st < 500 or not ct.startswith(PROBLEM):
            errors.append(f"request {i} ({'poison' if i in poison else 'clean'}): {st} {ct!r} {text[:200]!r} (want 202 or a 5xx problem+json)")
        if i not in poison:
            clean_refused.append(f"{i}: {st}")
    print(f"[faults] poison: {len(accepted)} accepted, {len(clean_refused)} clean requests refused")
    if clean_refused:
        errors.append(f"{len(clean_refused)} of {total - len(poison)} clean requests were refused with the poisoned batch "
                      f"(want 202: a batch that fails at COMMIT is retried request by request), e.g. {clean_refused[:8]}")

    ids = list(accepted.values())
    stored = pg_db.existing_ids(ids)
    if stored != set(ids):
        errors.append(f"{len(set(ids) - stored)} 202'd jobs are not in the database: {sorted(set(ids) - stored)[:5]}")
    unreadable = [j for j in ids if svc.get_job(j).status_code != 200]
    if unreadable:
        errors.append(f"{len(unreadable)} 202'd jobs not readable: {unreadable[:5]}")
    # The writer recovered: normal POSTs go through.
    for k in range(5):
        r = svc.post(job_body("health_check", "after-poison"))
        if r.status_code != 202:
            errors.append(f"POST after the poison #{k}: {r.status_code} {r.text[:200]}")
    assert svc.alive(), f"the service died; log:\n{svc.tail()}"
    assert not errors, "poisoned commit:\n" + "\n".join(errors)


# ------------------------------------------------------- d. PostgreSQL: backends terminated mid-load


def test_postgres_backends_terminated_under_load_answer_503_and_lose_no_202(pg_db, gateways):
    svc = gateways.start("terminate", pg_db.url)
    stop = threading.Event()
    lock = threading.Lock()
    accepted: list[str] = []
    refused: list[tuple[int, str, requests.Response]] = []
    transport: list[str] = []
    terminated = [0]

    def client(c: int):
        n = 0
        while not stop.is_set():
            n += 1
            try:
                r = svc.post(job_body("health_check", f"term-{c}"), timeout=30)
            except requests.RequestException as e:
                with lock:
                    transport.append(f"client {c}: {e}")
                time.sleep(0.05)
                continue
            with lock:
                if r.status_code == 202:
                    accepted.append(r.json()["job_id"])
                else:
                    refused.append((c, f"{c}-{n}", r))
            if r.status_code != 202:
                time.sleep(0.05)

    def terminator():
        while not stop.is_set():
            rows = pg_db.sql(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{pg_db.name}' AND pid <> pg_backend_pid()")
            terminated[0] += sum(1 for r in rows if r and r[0] == "t")
            time.sleep(0.15)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(8)]
    killer = threading.Thread(target=terminator, daemon=True)
    for t in threads:
        t.start()
    killer.start()
    time.sleep(10)
    stop.set()
    for t in threads + [killer]:
        t.join(timeout=40)
    assert not any(t.is_alive() for t in threads + [killer]), "load threads did not stop within 40 s"
    print(f"[faults] terminate: {terminated[0]} backends terminated, {len(accepted)} accepted, {len(refused)} refused "
          f"({sorted({r.status_code for _, _, r in refused})}), {len(transport)} transport errors")
    assert terminated[0] > 0, "no backend was terminated: the test did not exercise anything"

    errors: list[str] = []
    for c, tag, r in refused:
        bad = problem_violations(r)
        if bad:
            errors.append(f"POST {tag} refused badly: {'; '.join(bad)}; body {r.text[:200]!r}")
    errors.extend(f"transport error (the service must answer): {t}" for t in transport[:10])

    ok, detail = post_small_until_202(svc, within=15)
    if not ok:
        errors.append(f"no 202 within 15 s after the terminations stopped: last answer {detail}")
    stored = pg_db.existing_ids(accepted)
    if stored != set(accepted):
        missing = sorted(set(accepted) - stored)
        errors.append(f"{len(missing)} 202'd jobs are not in the database: {missing[:5]}")
    unreadable = []
    for j in accepted:
        try:
            st = svc.get_job(j).status_code
        except requests.RequestException as e:
            st = str(e)
        if st != 200:
            unreadable.append(f"{j}: {st}")
    if unreadable:
        errors.append(f"{len(unreadable)} 202'd jobs not readable: {unreadable[:5]}")
    assert svc.alive(), f"the service died; log:\n{svc.tail()}"
    assert not errors, "terminated backends:\n" + "\n".join(errors)
