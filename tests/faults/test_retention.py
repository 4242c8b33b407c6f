"""Retention (GATEWAY_RETENTION_DAYS, GATEWAY_RETENTION_INTERVAL_SECS) on SQLite and PostgreSQL:
finished jobs older than the retention are deleted with their job_events rows; newer ones and
jobs not yet terminal (however old) stay; the metrics count it; the idempotency key of a deleted
job is free again. GATEWAY_RETENTION_DAYS=0 deletes nothing.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
import uuid

import pytest
import requests

from conftest import TERMINAL, job_body, metric_value, psql, wait_statuses, wait_until

DAY_US = 86_400 * 1_000_000


def now_us() -> int:
    return int(time.time() * 1_000_000)


class Db:
    """Direct access to the gateway's tables, the way an operator would look."""

    def __init__(self, backend: str, tmp_path, pg_name: str | None):
        self.backend = backend
        self.path = tmp_path / "gw.db"
        self.pg_name = pg_name

    @property
    def url(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite://{self.path}?mode=rwc"
        return f"postgres://postgres@127.0.0.1:5432/{self.pg_name}"

    def _sqlite(self, sql: str, args_per_id: list[tuple]) -> list:
        con = sqlite3.connect(self.path, timeout=15)
        try:
            out = []
            for args in args_per_id:
                out.extend(con.execute(sql, args).fetchall())
            con.commit()
            return out
        finally:
            con.close()

    @staticmethod
    def _id_args(job_id: str) -> tuple:
        # The store binds uuids as 16-byte blobs; accept a text representation too.
        u = uuid.UUID(job_id)
        return (u.bytes, str(u))

    def set_column(self, ids: list[str], column: str, value: int):
        if self.backend == "sqlite":
            self._sqlite(f"UPDATE jobs SET {column} = ? WHERE id = ? OR id = ?", [(value, *self._id_args(j)) for j in ids])
        else:
            lit = ",".join(f"'{uuid.UUID(j)}'" for j in ids)
            psql(self.pg_name, f"UPDATE jobs SET {column} = {value} WHERE id IN ({lit})")

    def count(self, table: str, id_col: str, ids: list[str]) -> int:
        if self.backend == "sqlite":
            rows = self._sqlite(f"SELECT COUNT(*) FROM {table} WHERE {id_col} = ? OR {id_col} = ?", [self._id_args(j) for j in ids])
            return sum(r[0] for r in rows)
        lit = ",".join(f"'{uuid.UUID(j)}'" for j in ids)
        return int(psql(self.pg_name, f"SELECT COUNT(*) FROM {table} WHERE {id_col} IN ({lit})")[0][0])


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path):
    if request.param == "sqlite":
        yield Db("sqlite", tmp_path, None)
    else:
        pg = request.getfixturevalue("pg_db")
        yield Db("postgres", tmp_path, pg.name)


def create_jobs(svc, n: int, run: str) -> tuple[list[str], dict[str, tuple[str, dict]]]:
    ids, keyed = [], {}
    for i in range(n):
        body = job_body("health_check", f"ret-{i % 5}", duration_ms=1, n=i)
        headers = {}
        if i % 3 == 0:
            headers["Idempotency-Key"] = f"retention-{run}-{i}"
        r = svc.post(body, headers=headers)
        assert r.status_code == 202, f"{r.status_code} {r.text[:200]}"
        j = r.json()["job_id"]
        ids.append(j)
        if headers:
            keyed[j] = (headers["Idempotency-Key"], body)
    return ids, keyed


def test_retention_deletes_old_finished_jobs_and_their_events_only(db, gateways):
    svc = gateways.start("retention", db.url, {"GATEWAY_RETENTION_DAYS": "1", "GATEWAY_RETENTION_INTERVAL_SECS": "1",
                                                "GATEWAY_SHUTDOWN_GRACE_SECS": "1"})
    run = secrets.token_hex(4)
    ids, keyed = create_jobs(svc, 30, run)
    # A job that is not terminal, made to look two days old: never deleted while it runs.
    r = svc.post({"action": "restart_service", "target": "ret-long", "requested_by": "faults@example.com",
                  "parameters": {"simulate": {"duration_ms": 120_000, "fail": False}}})
    assert r.status_code == 202, r.text
    long_id = r.json()["job_id"]
    final = wait_statuses(svc, ids, TERMINAL, within=20)
    assert all(s in TERMINAL for s in final.values()), f"jobs not terminal: {final}"
    assert wait_statuses(svc, [long_id], ["RUNNING"], within=10)[long_id] == "RUNNING"

    old, young = ids[:20], ids[20:]
    assert db.count("job_events", "job_id", old) >= 20, "every created job has a 'created' event"
    two_days_ago = now_us() - 2 * DAY_US
    db.set_column([long_id], "created_at", two_days_ago)
    db.set_column([long_id], "run_at", two_days_ago)
    db.set_column([long_id], "started_at", two_days_ago)
    db.set_column(old, "finished_at", two_days_ago)
    aged_at = time.monotonic()

    errors = []
    gone = wait_until(lambda: all(svc.get_job(j).status_code == 404 for j in old), within=10, every=0.5)
    if not gone:
        still = [j for j in old if svc.get_job(j).status_code != 404]
        errors.append(f"{len(still)} of 20 jobs finished 2 days ago still readable 10 s later (GATEWAY_RETENTION_DAYS=1)")
    else:
        print(f"[faults] retention ({db.backend}): 20 old jobs gone after {time.monotonic() - aged_at:.1f} s")
        events = db.count("job_events", "job_id", old)
        if events:
            errors.append(f"{events} job_events rows of the deleted jobs remain")
    kept = [j for j in young + [long_id] if svc.get_job(j).status_code != 200]
    if kept:
        errors.append(f"jobs that must stay were deleted: {kept} (the RUNNING one is {long_id})")
    if svc.get_job(long_id).status_code == 200 and db.count("jobs", "id", [long_id]) != 1:
        errors.append("the RUNNING job is gone from the database")

    m = requests.get(svc.url + "/metrics", timeout=10).text
    deleted = metric_value(m, "automation_jobs_deleted_total")
    size = metric_value(m, "automation_database_size_bytes")
    if deleted is None or deleted < 20:
        errors.append(f"automation_jobs_deleted_total = {deleted} (want >= 20)")
    if size is None or size <= 0:
        errors.append(f"automation_database_size_bytes = {size} (want > 0)")

    old_keyed = [j for j in old if j in keyed]
    assert old_keyed, "some deleted jobs had an Idempotency-Key"
    if gone:
        for j in old_keyed[:3]:
            key, body = keyed[j]
            r = svc.post(body, headers={"Idempotency-Key": key})
            if r.status_code != 202 or r.json().get("job_id") == j:
                errors.append(f"re-POST with the key of deleted job {j}: {r.status_code} {r.text[:200]} (want 202 and a new job_id)")
    # A key of a job that was kept still returns that job.
    young_keyed = [j for j in young if j in keyed]
    if young_keyed:
        key, body = keyed[young_keyed[0]]
        r = svc.post(body, headers={"Idempotency-Key": key})
        if r.status_code != 202 or r.json().get("job_id") != young_keyed[0]:
            errors.append(f"re-POST with the key of a kept job: {r.status_code} {r.text[:200]} (want its job_id {young_keyed[0]})")
    assert svc.alive(), f"the service died; log:\n{svc.tail()}"
    assert not errors, f"retention ({db.backend}):\n" + "\n".join(errors)


def test_retention_zero_keeps_everything(db, gateways):
    svc = gateways.start("retention0", db.url, {"GATEWAY_RETENTION_DAYS": "0", "GATEWAY_RETENTION_INTERVAL_SECS": "1"})
    ids, _ = create_jobs(svc, 6, secrets.token_hex(4))
    final = wait_statuses(svc, ids, TERMINAL, within=20)
    assert all(s in TERMINAL for s in final.values()), final
    events_before = db.count("job_events", "job_id", ids)
    db.set_column(ids, "finished_at", now_us() - 400 * DAY_US)
    time.sleep(3.5)
    missing = [j for j in ids if svc.get_job(j).status_code != 200]
    assert not missing, f"GATEWAY_RETENTION_DAYS=0 deleted jobs: {missing}"
    assert db.count("job_events", "job_id", ids) == events_before, "GATEWAY_RETENTION_DAYS=0 deleted job_events rows"
