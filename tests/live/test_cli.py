"""The `jobs` CLI of the same binary against a running gateway: submit/wait exit codes (0 SUCCESS,
1 FAILED, 2 CANCELED, 3 timeout, 4 usage, 5 HTTP/auth/connection), --param parsing (JSON or string,
dotted keys nest), --output json, logs --follow, GATEWAY_URL / --url, GATEWAY_TOKEN / token files."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest
import requests

from conftest import (FAST_RETRY_POLICY, bearer, body, clean_env, free_port, gateway_bin, get_events, get_job, kinds,
                      start_gw, submit, tokens_file, wait_status, wait_terminal, wait_until)


def cli(args: list[str], url: str | None, env: dict | None = None, timeout: float = 40.0) -> subprocess.CompletedProcess:
    e = dict(env or {})
    if url is not None:
        e["GATEWAY_URL"] = url
    try:
        return subprocess.run([gateway_bin(), "jobs", *args], env=clean_env(**e), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as ex:
        pytest.fail(f"`jobs {' '.join(args)}` still running after {timeout} s; stdout {ex.stdout!r}", pytrace=False)


def show(p: subprocess.CompletedProcess) -> str:
    return f"exit {p.returncode}\nstdout: {p.stdout[-1500:]!r}\nstderr: {p.stderr[-1500:]!r}"


def json_lines(text: str) -> list[dict]:
    return [json.loads(l) for l in text.splitlines() if l.strip()]


@pytest.fixture
def gw(gateways):
    return start_gw(gateways, "gw", "sqlite", env={"GATEWAY_ACTION_POLICY": FAST_RETRY_POLICY})


def test_submit_wait_exit_codes(gw):
    p = cli(["submit", "health_check", "cli-ok", "--param", "simulate.duration_ms=100", "--wait"], gw.url)
    assert p.returncode == 0, show(p)
    assert "SUCCESS" in p.stdout, show(p)

    t0 = time.monotonic()
    p = cli(["submit", "health_check", "cli-fail", "--param", "simulate.duration_ms=10", "--param", "simulate.fail=true",
             "--wait"], gw.url)
    assert p.returncode == 1, show(p)
    assert "FAILED" in p.stdout + p.stderr, show(p)
    assert time.monotonic() - t0 < 20

    t0 = time.monotonic()
    p = cli(["submit", "health_check", "cli-timeout", "--param", "simulate.duration_ms=20000", "--wait", "--timeout", "1s"],
            gw.url)
    took = time.monotonic() - t0
    assert p.returncode == 3, show(p)
    assert 0.9 <= took <= 6, f"--timeout 1s returned after {took:.1f} s"

    # Canceled while waiting.
    proc = subprocess.Popen([gateway_bin(), "jobs", "submit", "health_check", "cli-cancel", "--param",
                             "simulate.duration_ms=20000", "--wait"], env=clean_env(GATEWAY_URL=gw.url),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        found = {}

        def submitted() -> bool:
            items = requests.get(gw.url + "/v1/jobs", params={"target": "cli-cancel"}, timeout=5).json()["items"]
            if items:
                found["id"] = items[0]["job_id"]
            return bool(items)

        assert wait_until(submitted, within=10), "the CLI did not submit the job within 10 s"
        wait_status(gw, found["id"], "RUNNING", within=10)
        time.sleep(0.3)
        r = requests.post(f"{gw.url}/v1/jobs/{found['id']}/cancel", timeout=15)
        assert r.status_code in (200, 202), r.text
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 2, f"submit --wait of a job canceled meanwhile: exit {proc.returncode}\n{out!r}\n{err!r}"

    # jobs wait on existing jobs.
    ok = submit(gw, body(target="cli-w-ok", duration_ms=5))
    bad = submit(gw, body(target="cli-w-bad", duration_ms=5, fail=True))
    long = submit(gw, body(target="cli-w-long", duration_ms=20000))
    for job_id, code in ((ok, 0), (bad, 1), (found["id"], 2)):
        p = cli(["wait", job_id], gw.url)
        assert p.returncode == code, f"jobs wait {job_id}: " + show(p)
    t0 = time.monotonic()
    p = cli(["wait", long, "--timeout", "1s"], gw.url)
    assert p.returncode == 3 and time.monotonic() - t0 < 6, show(p)
    p = cli(["cancel", long], gw.url)
    assert p.returncode == 0, show(p)
    assert wait_terminal(gw, long, within=10)["status"] == "CANCELED"


def test_params_output_json_get_list_logs(gw):
    p = cli(["submit", "health_check", "cli-params", "--param", "a=1", "--param", "b=hello", "--param", 'c={"x":[1,2]}',
             "--param", "d.e.f=true", "--param", "d.e.g=word", "--param", 'g="quoted"', "--param", "s=1.5",
             "--param", "n=null", "--param", "simulate.duration_ms=5", "--output", "json"], gw.url)
    assert p.returncode == 0, show(p)
    accepted = json.loads(p.stdout)
    job_id = accepted.get("job_id")
    assert job_id and accepted.get("status") == "PENDING", accepted
    job = wait_terminal(gw, job_id)
    want = {"a": 1, "b": "hello", "c": {"x": [1, 2]}, "d": {"e": {"f": True, "g": "word"}}, "g": "quoted", "s": 1.5,
            "n": None, "simulate": {"duration_ms": 5}}
    assert job["parameters"] == want, f"parameters {job['parameters']} (want {want})"
    assert job["status"] == "SUCCESS"

    p = cli(["submit", "health_check", "cli-human", "--param", "simulate.duration_ms=5"], gw.url)
    assert p.returncode == 0, show(p)
    human_id = p.stdout.strip()
    assert str(uuid.UUID(human_id)) == human_id, f"human submit printed {p.stdout!r} (want the job id)"
    assert get_job(gw, human_id)["target"] == "cli-human"

    p = cli(["get", job_id, "--output", "json"], gw.url)
    assert p.returncode == 0, show(p)
    assert json.loads(p.stdout) == get_job(gw, job_id), show(p)
    p = cli(["get", job_id], gw.url)
    assert p.returncode == 0 and job_id in p.stdout and "SUCCESS" in p.stdout, show(p)

    p = cli(["list", "--target", "cli-params", "--output", "json"], gw.url)
    assert p.returncode == 0, show(p)
    listed = json.loads(p.stdout)
    assert job_id in json.dumps(listed) and human_id not in json.dumps(listed), show(p)
    p = cli(["list", "--action", "health_check", "--status", "SUCCESS", "--limit", "1", "--output", "json"], gw.url)
    assert p.returncode == 0, show(p)
    json.loads(p.stdout)

    p = cli(["logs", job_id, "--output", "json"], gw.url)
    assert p.returncode == 0, show(p)
    assert json_lines(p.stdout) == get_events(gw, job_id), show(p)


def test_logs_follow_prints_every_event_until_the_terminal_one(gw):
    job_id = submit(gw, body(target="cli-follow", duration_ms=1500))
    t0 = time.monotonic()
    p = cli(["logs", job_id, "--follow", "--output", "json"], gw.url, timeout=20)
    took = time.monotonic() - t0
    assert p.returncode == 0, show(p)
    evs = get_events(gw, job_id)
    assert kinds(evs) == ["created", "claimed", "finished"], evs
    assert json_lines(p.stdout) == evs, show(p)
    assert took >= 1.0, f"--follow returned after {took:.2f} s, before the 1.5 s job ended"

    job_id = submit(gw, body(target="cli-follow-h", duration_ms=800))
    p = cli(["logs", job_id, "--follow"], gw.url, timeout=20)
    assert p.returncode == 0, show(p)
    out = p.stdout
    pos = [out.find(k) for k in ("created", "claimed", "finished")]
    assert all(x >= 0 for x in pos) and pos == sorted(pos), f"human --follow output lacks events in order:\n{out}"


def test_usage_and_connection_errors(gw):
    for args in (["submit"], ["submit", "health_check"], ["frobnicate"], [],
                 ["submit", "health_check", "t", "--output", "xml"], ["submit", "health_check", "t", "--param", "novalue"],
                 ["wait", str(uuid.uuid4()), "--timeout", "banana"], ["list", "--limit", "abc"]):
        p = cli(args, gw.url)
        assert p.returncode == 4, f"jobs {' '.join(args)}: " + show(p)
    assert requests.get(gw.url + "/v1/jobs", timeout=5).json()["items"] == [], "a usage error submitted a job"

    dead = f"http://127.0.0.1:{free_port()}"
    for args in (["get", str(uuid.uuid4())], ["submit", "health_check", "cli-dead"], ["list"]):
        p = cli(args, dead, timeout=30)
        assert p.returncode == 5, f"jobs {' '.join(args)} against {dead} (nothing listening): " + show(p)
    p = cli(["get", str(uuid.uuid4())], gw.url)
    assert p.returncode == 5, "jobs get of an unknown job (404): " + show(p)
    p = cli(["submit", "no_such_action", "t"], gw.url)
    assert p.returncode == 5, "jobs submit of an unknown action (422): " + show(p)

    # --url flag instead of GATEWAY_URL.
    p = cli(["list", "--url", gw.url, "--output", "json"], None)
    assert p.returncode == 0, show(p)


def test_tokens_from_env_and_files(gateways, tmp_path):
    tf = tokens_file(tmp_path / "tokens.yaml", [
        {"name": "cli-bot", "token": "tok-cli", "actions": ["*"], "can_read": True, "can_cancel": True}])
    svc = start_gw(gateways, "gw", "sqlite", env={"GATEWAY_AUTH_TOKENS_FILE": tf})
    p = cli(["list"], svc.url)
    assert p.returncode == 5, "no token against an authenticated gateway (401): " + show(p)
    p = cli(["list"], svc.url, env={"GATEWAY_TOKEN": "wrong"})
    assert p.returncode == 5, "a wrong GATEWAY_TOKEN (401): " + show(p)
    p = cli(["submit", "health_check", "cli-token", "--param", "simulate.duration_ms=5", "--wait", "--output", "json"],
            svc.url, env={"GATEWAY_TOKEN": "tok-cli"})
    assert p.returncode == 0, show(p)
    items = requests.get(svc.url + "/v1/jobs", params={"target": "cli-token"}, headers=bearer("tok-cli"),
                         timeout=5).json()["items"]
    assert len(items) == 1, items
    evs = get_events(svc, items[0]["job_id"], headers=bearer("tok-cli"))
    assert evs[0]["event"] == "created" and evs[0]["actor"] == "cli-bot", evs[0]

    token_path = tmp_path / "cli-token"
    token_path.write_text("tok-cli\n")
    p = cli(["list", "--token-file", str(token_path), "--output", "json"], svc.url)
    assert p.returncode == 0, "--token-file: " + show(p)
    assert items[0]["job_id"] in p.stdout
    p = cli(["list", "--output", "json"], svc.url, env={"GATEWAY_TOKEN_FILE": str(token_path)})
    assert p.returncode == 0, "GATEWAY_TOKEN_FILE: " + show(p)
