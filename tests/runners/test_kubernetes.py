"""The `kubernetes` runner (rollout restart), black-box: the gateway binary with its real kube client,
pointed by KUBECONFIG at fakes.kube.FakeKubeApi (plain HTTP on 127.0.0.1, bearer token), whose
scripted controller advances the status after the PATCH.

What is checked (issue 12 spec, "kubernetes"; what `kubectl rollout restart` and `rollout status` do):
- the GET before, then exactly one PATCH: path /apis/apps/v1/namespaces/NS/PLURAL/NAME, query
  fieldManager=kubectl-rollout, Content-Type application/strategic-merge-patch+json, body exactly
  the kubectl.kubernetes.io/restartedAt annotation (RFC 3339, within a minute of now), bearer token;
- wait: true -> RUNNING while the rollout is not done (observedGeneration behind, new pods not all
  updated/available, an old pod still counted, StatefulSet revisions differing), SUCCESS only after
  the controller completed; wait: false -> SUCCESS right after the PATCH; `external` and the result;
- permanent failures, each after one attempt although max_attempts is 3: paused Deployment (no
  PATCH), ProgressDeadlineExceeded, a missing object (404), a target of the wrong shape;
- transient 5xx/429 while polling are retried inside the attempt (still one PATCH);
- cancel of a waiting job -> CANCELED and polling stops; the attempt timeout -> FAILED "timed out".

An opt-in test runs against a real cluster: only when KUBECONFIG and AG_REAL_CLUSTER_DEPLOYMENT=ns/name
are set in the test environment (it really restarts that Deployment); otherwise it is reported as
skipped with the reason. That is the only skip in this file.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time

import pytest
import requests

from conftest import cancel_job, field_of, get_job, post_job, start_with_actions, submit, wait_terminal
from fakes.kube import Controller, FakeKubeApi

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
STRATEGIC = "application/strategic-merge-patch+json"
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
BAD_SHAPE = "target must be namespace/name or kind/namespace/name"
POLL_MS = 100


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def kube():
    f = FakeKubeApi()
    yield f
    f.close()


def catalog(poll_ms: int = POLL_MS) -> dict:
    return {
        "restart": {
            "runner": "kubernetes",
            "description": "rollout restart, waiting for the rollout",
            "policy": {"timeout_ms": 30000, "max_attempts": 3, "backoff_ms": 200},
            "kubernetes": {"wait": True, "poll_interval_ms": poll_ms},
        },
        "restart_nowait": {
            "runner": "kubernetes",
            "policy": {"timeout_ms": 30000, "max_attempts": 3, "backoff_ms": 200},
            "kubernetes": {"wait": False},
        },
        "restart_short": {
            "runner": "kubernetes",
            "policy": {"timeout_ms": 1500, "max_attempts": 1},
            "kubernetes": {"wait": True, "poll_interval_ms": poll_ms},
        },
    }


def start(gateways, kube: FakeKubeApi, tmp_path, name: str = "gw"):
    kubeconfig = kube.write_kubeconfig(tmp_path / "kube" / "config")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return start_with_actions(gateways, name, catalog(), env={"KUBECONFIG": kubeconfig, "HOME": str(home)})


# ------------------------------------------------------------------------------------- helpers


def wait_patch(kube: FakeKubeApi, key, svc, within: float = 15.0):
    ok = kube.rec.wait_for(lambda: len(kube.patches(key)) >= 1, within=within)
    assert ok, (f"no PATCH of {kube.path_of(key)} within {within} s; requests:\n{kube.describe()}\n"
                f"gateway log tail:\n{svc.tail(3000)}")
    return kube.patches(key)[0]


def wait_gets_after(kube: FakeKubeApi, key, after: float, n: int, within: float = 10.0) -> None:
    ok = kube.rec.wait_for(lambda: sum(1 for r in kube.requests_for(key, "GET") if r.at > after) >= n, within=within)
    assert ok, f"fewer than {n} GETs of {kube.path_of(key)} (polls) within {within} s; requests:\n{kube.describe()}"


def parse_rfc3339(s: str) -> dt.datetime:
    assert isinstance(s, str) and RFC3339.match(s), f"restartedAt {s!r} is not an RFC 3339 date-time"
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def assert_restart_patch(req, kube: FakeKubeApi, key) -> str:
    """The PATCH is exactly kubectl's rollout restart; returns the restartedAt value."""
    assert req.method == "PATCH"
    assert req.path == kube.path_of(key), req
    assert req.query_list == {"fieldManager": ["kubectl-rollout"]}, f"query of {req.raw_path!r}"
    ct = req.headers.get("content-type", "")
    assert ct.split(";")[0].strip() == STRATEGIC, f"Content-Type {ct!r}"
    assert req.headers.get("authorization") == f"Bearer {kube.token}", "PATCH without the kubeconfig's bearer token"
    body = req.json
    assert isinstance(body, dict), f"PATCH body is not JSON: {req.body[:300]!r}"
    ts = (((body.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("annotations", {}).get(RESTARTED_AT)
    assert body == {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: ts}}}}}, \
        f"PATCH body is not exactly the restartedAt annotation: {body}"
    when = parse_rfc3339(ts)
    now = dt.datetime.now(dt.timezone.utc)
    assert abs((now - when).total_seconds()) < 60, f"restartedAt {ts} is not within a minute of now ({now.isoformat()})"
    return ts


def assert_no_retry(svc, job_id: str, kube: FakeKubeApi, settle: float = 1.0) -> dict:
    """After a terminal status: nothing more happens (no second attempt), attempts == 1."""
    n = len(kube.rec.snapshot())
    time.sleep(settle)
    j = get_job(svc, job_id)
    assert j["attempts"] == 1, f"a permanent failure was retried: attempts {j['attempts']}; job {j}"
    extra = kube.rec.snapshot()[n:]
    assert not [r for r in extra if r.method == "PATCH"], f"PATCH after the job ended: {extra}"
    return j


def assert_result(j: dict, kind: str, ns: str, name: str, ts: str, generation: int = 2) -> None:
    """The spec's result keys with their values; the only extra key tolerated is `url` (= external.url)."""
    res = j.get("result") or {}
    want = {"kind": kind, "namespace": ns, "name": name, "restartedAt": ts, "generation": generation}
    assert {k: res.get(k) for k in want} == want, f"result {res}"
    extra = {k: v for k, v in res.items() if k not in want}
    assert set(extra) <= {"url"}, f"result has keys the spec does not list: {extra}"
    if "url" in extra:
        assert extra["url"] == (j.get("external") or {}).get("url"), f"result url {extra['url']!r} != external url"


def job_now(svc, job_id: str) -> dict:
    """GET the job; a connection failure is reported with the process state and the log tail."""
    try:
        return get_job(svc, job_id)
    except requests.RequestException as e:
        pytest.fail(f"GET /v1/jobs/{job_id}: {e}; gateway pid {svc.pid} alive={svc.alive()} "
                    f"returncode={svc.proc.returncode}\nlog tail:\n{svc.tail(4000)}", pytrace=False)


def assert_running(svc, job_id: str, why: str) -> dict:
    j = job_now(svc, job_id)
    assert j["status"] == "RUNNING", f"job is {j['status']} while {why}; job {j}\nlog tail:\n{svc.tail(2000)}"
    return j


def assert_authenticated(kube: FakeKubeApi) -> None:
    bad = kube.unauthenticated()
    assert not bad, f"requests without 'Authorization: Bearer {kube.token}': {bad}"


# ------------------------------------------------------------------------------- wait: true


KINDS_CASES = [
    # target, kind in external/result, plural, namespace, name
    pytest.param("shop/web", "deployment", "shop", "web", id="deployment-ns-name"),
    pytest.param("deployments/shop/api", "deployment", "shop", "api", id="deployments-plural"),
    pytest.param("StatefulSet/db/pg", "statefulset", "db", "pg", id="statefulset"),
    pytest.param("daemonset/kube-system/node-agent", "daemonset", "kube-system", "node-agent", id="daemonset"),
]


@pytest.mark.parametrize("target,kind,ns,name", KINDS_CASES)
def test_restart_waits_for_the_rollout(gateways, kube, tmp_path, target, kind, ns, name):
    key = kube.add(kind, ns, name, replicas=3, script=Controller.manual())
    kube.add("deployment", ns, "bystander")  # never touched
    svc = start(gateways, kube, tmp_path)
    t0 = time.monotonic()
    job_id = submit(svc, "restart", target)
    patch = wait_patch(kube, key, svc)
    ts = assert_restart_patch(patch, kube, key)

    gets_before = [r for r in kube.requests_for(key, "GET") if r.at < patch.at]
    assert gets_before, f"no GET of the object before the PATCH (paused check); requests:\n{kube.describe()}"

    # Right after the PATCH the status still shows the previous rollout, finished, with the old
    # observedGeneration: not done.
    wait_gets_after(kube, key, patch.at, 3)
    j = assert_running(svc, job_id, "observedGeneration is behind the patched generation")
    ext = j.get("external")
    assert ext == {"system": "kubernetes", "id": f"{kind}/{ns}/{name}@2",
                   "url": f"{kube.url}/apis/apps/v1/namespaces/{ns}/{kind}s/{name}"}, \
        f"external not recorded (as specified) while the rollout is polled: {ext}"

    kube.step(key, "observed")
    t = time.monotonic()
    wait_gets_after(kube, key, t, 3)
    assert_running(svc, job_id, "the controller has updated only one pod")

    kube.step(key, "surge")
    t = time.monotonic()
    wait_gets_after(kube, key, t, 3)
    assert_running(svc, job_id, {
        "deployment": "an old pod is still counted in status.replicas",
        "statefulset": "currentRevision != updateRevision",
        "daemonset": "numberAvailable < desiredNumberScheduled",
    }[kind])

    kube.step(key, "complete")
    done_at = time.monotonic()
    j = wait_terminal(svc, job_id, within=10)
    assert j["status"] == "SUCCESS", f"job {j}\nrequests:\n{kube.describe()}\nlog tail:\n{svc.tail(3000)}"
    assert time.monotonic() - t0 < 30
    last_get = max(r.at for r in kube.requests_for(key, "GET"))
    assert last_get >= done_at, "SUCCESS without a GET that saw the completed rollout"
    assert j["attempts"] == 1
    assert j["error"] in (None, ""), j
    assert_result(j, kind, ns, name, ts)
    assert j["external"] == ext

    assert len(kube.patches(key)) == 1, f"PATCHes: {kube.patches(key)}"
    assert len(kube.all_patches()) == 1, f"other objects were patched: {kube.all_patches()}"
    obj = kube.obj(key)
    assert obj["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT] == ts
    assert obj["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true", \
        "the patch replaced the template annotations instead of merging"
    assert_authenticated(kube)

    lines = svc.lines_with("external run recorded")
    mine = [l for l in lines if field_of(l, "job_id") == job_id]
    assert mine, f"no 'external run recorded' log line for {job_id}; lines: {lines}"
    assert field_of(mine[0], "system") == "kubernetes"
    assert field_of(mine[0], "external_id") == ext["id"]
    assert field_of(mine[0], "url") == ext["url"]
    assert kube.token not in svc.log_text(), "the kubeconfig token appears in the gateway's log"


def test_restart_scripted_controller_after_polls(gateways, kube, tmp_path):
    """The controller completes on the 6th GET after the PATCH: SUCCESS needs at least 6 polls."""
    key = kube.add("deployment", "shop", "cart", replicas=2, script=Controller.after_polls(6))
    svc = start(gateways, kube, tmp_path)
    job_id = submit(svc, "restart", "shop/cart")
    j = wait_terminal(svc, job_id, within=20)
    assert j["status"] == "SUCCESS", f"job {j}\nrequests:\n{kube.describe()}\nlog tail:\n{svc.tail(3000)}"
    patch = kube.patches(key)[0]
    polls = [r for r in kube.requests_for(key, "GET") if r.at > patch.at]
    assert len(polls) >= 6, f"SUCCESS after only {len(polls)} polls (the rollout completed at the 6th)"
    assert kube.phase(key) == "complete"
    assert j["result"]["generation"] == 2


def test_restart_scripted_controller_after_ms(gateways, kube, tmp_path):
    """Time-based controller (observed at once, surge at 600 ms, complete at 1200 ms)."""
    key = kube.add("statefulset", "db", "redis", replicas=3, script=Controller.after_ms(1200))
    svc = start(gateways, kube, tmp_path)
    job_id = submit(svc, "restart", "statefulset/db/redis")
    j = wait_terminal(svc, job_id, within=20)
    assert j["status"] == "SUCCESS", f"job {j}\nrequests:\n{kube.describe()}\nlog tail:\n{svc.tail(3000)}"
    done = kube.phase_time(key, "complete")
    assert done is not None, "SUCCESS before the fake controller completed the rollout"
    assert "complete" in kube.served_phases(key), "no GET saw the completed rollout"
    patch = kube.patches(key)[0]
    polls = [r for r in kube.requests_for(key, "GET") if patch.at < r.at < done]
    span = done - patch.at
    assert len(polls) <= span / (POLL_MS / 1000) + 4, \
        f"{len(polls)} polls in {span:.2f} s with poll_interval_ms {POLL_MS}: not paced by the interval"
    assert len(polls) >= 4, f"only {len(polls)} polls in {span:.2f} s with poll_interval_ms {POLL_MS}"


def test_restart_without_wait_succeeds_right_after_the_patch(gateways, kube, tmp_path):
    key = kube.add("deployment", "shop", "web", replicas=3, script=Controller.never())
    svc = start(gateways, kube, tmp_path)
    job_id = submit(svc, "restart_nowait", "shop/web")
    patch = wait_patch(kube, key, svc)
    ts = assert_restart_patch(patch, kube, key)
    j = wait_terminal(svc, job_id, within=5)
    assert j["status"] == "SUCCESS", f"wait: false must not wait for the rollout (which never completes): job {j}"
    assert_result(j, "deployment", "shop", "web", ts)
    assert j["external"] == {"system": "kubernetes", "id": "deployment/shop/web@2",
                             "url": f"{kube.url}/apis/apps/v1/namespaces/shop/deployments/web"}
    assert len(kube.patches(key)) == 1
    assert_authenticated(kube)


# ---------------------------------------------------------------------------- permanent failures


def test_paused_deployment_fails_without_a_patch(gateways, kube, tmp_path):
    key = kube.add("deployment", "shop", "frozen", paused=True)
    svc = start(gateways, kube, tmp_path)
    job_id = submit(svc, "restart", "shop/frozen")
    j = wait_terminal(svc, job_id, within=15)
    assert j["status"] == "FAILED", j
    assert "paused" in (j["error"] or ""), f"error does not say the deployment is paused: {j['error']!r}"
    assert "can't restart paused deployment" in j["error"], j["error"]
    assert kube.requests_for(key, "GET"), "the gateway did not read the deployment"
    assert kube.patches(key) == [], f"a paused deployment was patched: {kube.patches(key)}"
    assert_no_retry(svc, job_id, kube)
    assert kube.all_patches() == []
    assert kube.obj(key)["metadata"]["generation"] == 1


def test_progress_deadline_exceeded_fails(gateways, kube, tmp_path):
    key = kube.add("deployment", "shop", "stuck", script=Controller.deadline_after_ms(800))
    svc = start(gateways, kube, tmp_path)
    job_id = submit(svc, "restart", "shop/stuck")
    patch = wait_patch(kube, key, svc)
    assert_restart_patch(patch, kube, key)
    j = wait_terminal(svc, job_id, within=15)
    assert j["status"] == "FAILED", f"job {j}\nrequests:\n{kube.describe()}"
    err = j["error"] or ""
    assert "exceeded its progress deadline" in err, err
    assert "deployment/shop/stuck" in err, err
    assert kube.phase_time(key, "deadline") is not None
    assert_no_retry(svc, job_id, kube)
    assert len(kube.patches(key)) == 1, "ProgressDeadlineExceeded is permanent: no second restart"


def test_missing_object_fails_permanently(gateways, kube, tmp_path):
    kube.add("deployment", "shop", "web")
    svc = start(gateways, kube, tmp_path)
    job_id = submit(svc, "restart", "shop/ghost")
    j = wait_terminal(svc, job_id, within=15)
    assert j["status"] == "FAILED", j
    err = (j["error"] or "").lower()
    assert any(w in err for w in ("not found", "notfound", "404")), f"error does not say not found: {j['error']!r}"
    assert [r for r in kube.rec.snapshot() if r.path.endswith("/deployments/ghost") and r.method == "GET"], \
        f"the gateway did not ask for the object; requests:\n{kube.describe()}"
    assert_no_retry(svc, job_id, kube)
    assert kube.all_patches() == []


def test_bad_target_shapes_fail_with_a_clear_message(gateways, kube, tmp_path):
    kube.add("deployment", "shop", "web")
    svc = start(gateways, kube, tmp_path)
    shapes = ["web", "a/b/c/d", "deployment//web", "pod/shop/web"]
    ids = {}
    for t in shapes:
        r = post_job(svc, "restart", t)
        assert r.status_code == 202, f"{t}: {r.status_code} {r.text[:500]} (the spec: a job failure, not a 422)"
        ids[t] = r.json()["job_id"]
    for t, job_id in ids.items():
        j = wait_terminal(svc, job_id, within=15)
        assert j["status"] == "FAILED", f"target {t!r}: {j}"
        err = j["error"] or ""
        if t == "pod/shop/web":
            assert err.startswith("kubernetes:") and (BAD_SHAPE in err or "pod" in err), f"target {t!r}: {err!r}"
        else:
            assert BAD_SHAPE in err, f"target {t!r}: error {err!r}"
        assert j["attempts"] == 1, f"target {t!r}: a permanent failure was retried: {j}"
    time.sleep(0.5)
    touched = [r for r in kube.rec.snapshot() if r.path.startswith("/apis/apps/")]
    assert touched == [], f"bad targets reached the API: {touched}"


# --------------------------------------------------------------------- transient, cancel, timeout


def test_transient_errors_while_polling_are_retried_inside_the_attempt(gateways, kube, tmp_path):
    key = kube.add("deployment", "shop", "flaky", script=Controller.manual())
    svc = start(gateways, kube, tmp_path)
    job_id = submit(svc, "restart", "shop/flaky")
    patch = wait_patch(kube, key, svc)
    kube.fail_next_gets(key, [500, 503, 429])
    kube.step(key, "complete")
    j = wait_terminal(svc, job_id, within=15)
    assert j["status"] == "SUCCESS", f"job {j}\nrequests:\n{kube.describe()}\nlog tail:\n{svc.tail(3000)}"
    polls = [r for r in kube.requests_for(key, "GET") if r.at > patch.at]
    assert len(polls) >= 4, f"only {len(polls)} polls after the PATCH (3 were answered with errors)"
    assert len(kube.patches(key)) == 1, f"a transient poll error restarted the rollout again: {kube.patches(key)}"
    assert j["attempts"] == 1, j


def test_5xx_before_the_patch_is_retried_by_policy(gateways, kube, tmp_path):
    """A 500 on the first GET is transient: retried (by policy, or inside the attempt: the read is
    idempotent), the job succeeds with exactly one PATCH. (kube-rs itself retries 429/503/504.)"""
    key = kube.add("deployment", "shop", "web", script=Controller.never())
    kube.fail_next_gets(key, [500])
    svc = start(gateways, kube, tmp_path)
    job_id = submit(svc, "restart_nowait", "shop/web")
    j = wait_terminal(svc, job_id, within=15)
    assert j["status"] == "SUCCESS", f"job {j}\nrequests:\n{kube.describe()}"
    assert j["attempts"] in (1, 2), j
    assert len(kube.requests_for(key, "GET")) >= 2, kube.describe()
    assert len(kube.patches(key)) == 1, kube.describe()


def test_forbidden_patch_is_permanent(gateways, kube, tmp_path):
    """RBAC without `patch`: the API answers 403 -> FAILED at once (4xx other than 408/429)."""
    key = kube.add("deployment", "shop", "web", script=Controller.never())
    kube.fail_next_patches(key, [403, 403, 403])
    svc = start(gateways, kube, tmp_path)
    job_id = submit(svc, "restart", "shop/web")
    j = wait_terminal(svc, job_id, within=15)
    assert j["status"] == "FAILED", f"job {j}\nrequests:\n{kube.describe()}"
    err = (j["error"] or "").lower()
    assert "forbidden" in err or "403" in err, f"error does not say forbidden: {j['error']!r}"
    assert_no_retry(svc, job_id, kube)
    assert len(kube.patches(key)) == 1, f"a 403 was retried: {kube.patches(key)}"
    assert kube.obj(key)["metadata"]["generation"] == 1


def test_cancel_while_waiting(gateways, kube, tmp_path):
    key = kube.add("deployment", "shop", "slow", script=Controller.manual())
    svc = start(gateways, kube, tmp_path)
    job_id = submit(svc, "restart", "shop/slow")
    patch = wait_patch(kube, key, svc)
    wait_gets_after(kube, key, patch.at, 2)
    assert_running(svc, job_id, "the rollout is in progress")
    r = cancel_job(svc, job_id)
    assert r.status_code in (200, 202), f"cancel: {r.status_code} {r.text[:500]}"
    j = wait_terminal(svc, job_id, within=10)
    assert j["status"] == "CANCELED", j
    n = len(kube.requests_for(key))
    time.sleep(10 * POLL_MS / 1000)
    later = kube.requests_for(key)[n:]
    assert len(later) <= 1, f"polling went on after CANCELED: {later}"
    assert [r.method for r in kube.rec.snapshot() if r.method not in ("GET",)] == ["PATCH"], \
        f"cancel of a rollout sends nothing remote: {kube.describe()}"
    assert j["external"] and j["external"]["system"] == "kubernetes"


def test_attempt_timeout_fails_the_job(gateways, kube, tmp_path):
    key = kube.add("deployment", "shop", "endless", script=Controller.never())
    svc = start(gateways, kube, tmp_path)
    t0 = time.monotonic()
    job_id = submit(svc, "restart_short", "shop/endless")
    wait_patch(kube, key, svc)
    j = wait_terminal(svc, job_id, within=15)
    elapsed = time.monotonic() - t0
    assert j["status"] == "FAILED", j
    assert "timed out after 1500 ms" in (j["error"] or ""), j["error"]
    assert elapsed >= 1.4, f"timed out after {elapsed:.2f} s, before the 1500 ms timeout"
    assert len(kube.patches(key)) == 1
    n = len(kube.requests_for(key))
    time.sleep(10 * POLL_MS / 1000)
    assert len(kube.requests_for(key)[n:]) <= 1, "polling went on after the timeout"


# ---------------------------------------------------------------------- opt-in: a real cluster

REAL = os.environ.get("AG_REAL_CLUSTER_DEPLOYMENT", "")
REAL_KUBECONFIG = os.environ.get("KUBECONFIG", "")


@pytest.mark.skipif(not (REAL_KUBECONFIG and re.fullmatch(r"[a-z0-9.-]+/[a-z0-9.-]+", REAL)),
                    reason="opt-in real-cluster test: set KUBECONFIG and AG_REAL_CLUSTER_DEPLOYMENT=namespace/name "
                           "(that Deployment is really restarted)")
def test_real_cluster_rollout_restart_opt_in(gateways, tmp_path):
    """REAL CLUSTER (opt-in). Restarts the Deployment AG_REAL_CLUSTER_DEPLOYMENT through the gateway,
    with the test environment's KUBECONFIG, waits for the rollout and checks the annotation landed."""
    ns, name = REAL.split("/")
    cat = {"restart": {"runner": "kubernetes", "policy": {"timeout_ms": 600000, "max_attempts": 1},
                       "kubernetes": {"wait": True, "poll_interval_ms": 2000}}}
    svc = start_with_actions(gateways, "real", cat, env={"KUBECONFIG": REAL_KUBECONFIG})
    before = dt.datetime.now(dt.timezone.utc)
    job_id = submit(svc, "restart", f"{ns}/{name}")
    j = wait_terminal(svc, job_id, within=620)
    assert j["status"] == "SUCCESS", f"job {j}\nlog tail:\n{svc.tail(3000)}"
    res = j["result"]
    assert res["kind"] == "deployment" and res["namespace"] == ns and res["name"] == name, res
    when = parse_rfc3339(res["restartedAt"])
    assert abs((when - before).total_seconds()) < 120
    assert j["external"]["system"] == "kubernetes"
    assert j["external"]["id"] == f"deployment/{ns}/{name}@{res['generation']}"
