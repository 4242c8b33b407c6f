"""Per-target concurrency (issue 12, `concurrency: {per_target: N}`).

An `http` runner action points at a loopback endpoint (fakes/overlap.py) that holds each request
~150 ms and records, per target, when each request started and ended and the most in progress at
once. 20 jobs for target t1 and a few for other targets are posted back to back:

- every job ends SUCCESS, each reached the endpoint exactly once;
- per_target 1: never two t1 requests at once (nor two of any other target), t1 jobs run in the
  order they were posted, and the other targets' jobs are not held behind t1's (they all start while
  t1 jobs are still pending);
- the same on two PostgreSQL replicas sharing one database (jobs posted alternately to both; both
  replicas execute some: both logs have "job attempt started");
- per_target 2: up to two t1 requests at once, never three.

Every wait is bounded; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import pytest
import requests

from conftest import REQUESTED_BY, TERMINAL, field_of, message_of, start_with_actions, wait_statuses
from fakes.overlap import OverlapEndpoint

ACTION = "probe_target"
DELAY = 0.15


@pytest.fixture
def endpoint():
    ep = OverlapEndpoint(delay=DELAY)
    yield ep
    ep.close()


def catalog(ep: OverlapEndpoint, per_target: int) -> dict:
    return {ACTION: {
        "runner": "http",
        "description": "Probe a target over HTTP (concurrency test)",
        "concurrency": {"per_target": per_target},
        "policy": {"timeout_ms": 30000},
        "http": {"method": "GET", "url": ep.url + "/work/{{ target }}?job={{ job_id }}", "expect_status": [200]},
    }}


def post_all(svcs: list, plan: list[str]) -> list[tuple[str, str]]:
    """Posts one job per target in `plan`, in order, round-robin over `svcs`; returns [(job_id, target)]."""
    sessions = [requests.Session() for _ in svcs]
    out = []
    try:
        for i, target in enumerate(plan):
            k = i % len(svcs)
            r = sessions[k].post(svcs[k].url + "/v1/jobs", timeout=20, json={
                "action": ACTION, "target": target, "requested_by": REQUESTED_BY, "parameters": {}})
            assert r.status_code == 202, f"POST #{i} ({target}): {r.status_code} {r.text[:500]}"
            body = r.json()
            out.append((str(body.get("job_id") or body.get("id")), target))
    finally:
        for s in sessions:
            s.close()
    return out


def check_run(ep: OverlapEndpoint, svc, jobs: list[tuple[str, str]], limits: dict[str, int], within: float) -> list[str]:
    """Waits for every job to finish; returns what breaks the per-target rules."""
    ids = [j for j, _ in jobs]
    final = wait_statuses(svc, ids, TERMINAL, within=within)
    errors = []
    bad = {j: s for j, s in final.items() if s != "SUCCESS"}
    if bad:
        errors.append(f"{len(bad)} of {len(ids)} jobs did not end SUCCESS within {within} s: "
                      f"{dict(list(bad.items())[:8])}")
    visits = ep.snapshot()
    by_job: dict[str, int] = {}
    for v in visits:
        by_job[v.job] = by_job.get(v.job, 0) + 1
    twice = {j: n for j, n in by_job.items() if n > 1}
    if twice:
        errors.append(f"jobs that reached the endpoint more than once: {twice}")
    missing = [j for j in ids if j not in by_job]
    if missing and not bad:
        errors.append(f"SUCCESS jobs that never reached the endpoint: {missing[:5]}")
    for target in sorted({t for _, t in jobs}):
        vs = [v for v in visits if v.target == target]
        if vs:
            print(f"[runners] {target}: {len(vs)} requests from {min(v.start for v in vs) - visits[0].start:.2f} s "
                  f"to {max(v.end or v.start for v in vs) - visits[0].start:.2f} s, at most "
                  f"{ep.max_overlap.get(target, 0)} at once")
    for target, limit in limits.items():
        got = ep.max_overlap.get(target, 0)
        if got > limit:
            errors.append(f"target {target}: {got} requests at once (per_target {limit})")
    return errors


def check_order_and_independence(ep: OverlapEndpoint, jobs: list[tuple[str, str]], slow: str) -> list[str]:
    errors = []
    posted = [j for j, t in jobs if t == slow]
    started = [v.job for v in sorted(ep.of(slow), key=lambda v: v.start)]
    if started != [j for j in posted if j in started]:
        errors.append(f"target {slow}: jobs did not start in the order they were posted "
                      f"(posted {[p[:8] for p in posted]}, started {[s[:8] for s in started]})")
    slow_starts = [v.start for v in ep.of(slow)]
    if not slow_starts:
        return errors + [f"no request for target {slow}"]
    last_slow = max(slow_starts)
    for target in sorted({t for _, t in jobs} - {slow}):
        late = [v for v in ep.of(target) if v.start > last_slow]
        if late:
            errors.append(f"target {target}: {len(late)} of its jobs started only after every {slow} job had "
                          f"started (held behind {slow})")
    return errors


def test_per_target_one_on_sqlite(gateways, endpoint):
    svc = start_with_actions(gateways, "conc-sqlite", catalog(endpoint, 1))
    plan = ["t1"] * 20 + ["t2"] * 4
    jobs = post_all([svc], plan)
    errors = check_run(endpoint, svc, jobs, {"t1": 1, "t2": 1}, within=45)
    errors += check_order_and_independence(endpoint, jobs, "t1")
    if endpoint.max_overlap.get("t1", 0) < 1:
        errors.append("no t1 request reached the endpoint")
    assert svc.alive(), f"the gateway died; log:\n{svc.tail()}"
    assert not errors, "per_target 1 (SQLite):\n" + "\n".join(errors) + "\ntimeline:\n" + endpoint.timeline()


def test_per_target_one_across_two_postgres_replicas(gateways, pg_db, endpoint):
    # One worker each: a replica runs one job at a time, so with three targets free the other
    # replica must take some (otherwise one fast replica may claim everything and the
    # cross-replica limit would go untested).
    one = {"GATEWAY_WORKERS": "1"}
    a = start_with_actions(gateways, "conc-a", catalog(endpoint, 1), database_url=pg_db.url, env=one)
    b = start_with_actions(gateways, "conc-b", catalog(endpoint, 1), database_url=pg_db.url, env=one)
    plan = ["t1"] * 20 + ["t2"] * 4 + ["t3"] * 4
    jobs = post_all([a, b], plan)
    errors = check_run(endpoint, a, jobs, {"t1": 1, "t2": 1, "t3": 1}, within=60)
    errors += check_order_and_independence(endpoint, jobs, "t1")
    ids = {j for j, _ in jobs}
    for name, svc in (("A", a), ("B", b)):
        ran = {str(field_of(l, "job_id")) for l in svc.log_lines() if message_of(l) == "job attempt started"} & ids
        if not ran:
            errors.append(f"replica {name} executed none of the jobs (no 'job attempt started' line): "
                          f"the test needs both replicas executing")
        else:
            print(f"[runners] replica {name} started {len(ran)} of {len(ids)} jobs")
    assert a.alive() and b.alive(), f"a replica died; A:\n{a.tail(2000)}\nB:\n{b.tail(2000)}"
    assert not errors, "per_target 1 (two PostgreSQL replicas):\n" + "\n".join(errors) + "\ntimeline:\n" + endpoint.timeline()


def test_per_target_two_allows_two_and_no_more(gateways, endpoint):
    endpoint.delay = 0.3
    svc = start_with_actions(gateways, "conc-two", catalog(endpoint, 2))
    jobs = post_all([svc], ["t1"] * 10 + ["t2"] * 2)
    errors = check_run(endpoint, svc, jobs, {"t1": 2, "t2": 2}, within=45)
    got = endpoint.max_overlap.get("t1", 0)
    if got != 2:
        errors.append(f"target t1: at most {got} requests at once (per_target 2 with 10 jobs of 300 ms: want 2)")
    assert svc.alive(), f"the gateway died; log:\n{svc.tail()}"
    assert not errors, "per_target 2 (SQLite):\n" + "\n".join(errors) + "\ntimeline:\n" + endpoint.timeline()
