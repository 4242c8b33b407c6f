"""Issue 10, item 11: database passwords never reach stdout/stderr: the user-info password,
`?password=` and `?sslpassword=` (the start-up line shows REDACTED instead), and the secret of an
unparseable URL or a URL with a bad scheme (the process exits non-zero with a readable message).

PostgreSQL on 127.0.0.1:5432 with trust authentication, so any password is ignored by the server.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import requests

from conftest import clean_env, free_port, gateway_bin, pg_create_db, pg_drop_db, start_service

SECRET = "hunter2"


@pytest.fixture(scope="module")
def pg_db():
    name = pg_create_db()
    yield name
    pg_drop_db(name)


def _starting_line(text: str) -> dict:
    for ln in text.splitlines():
        try:
            rec = json.loads(ln)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("message") == "starting":
            return rec
    raise AssertionError(f"no start-up line in the log:\n{text[:2000]}")


def _exercise(svc):
    r = requests.post(
        svc.url + "/v1/jobs",
        data=b'{"action":"health_check","target":"secrets","requested_by":"security-tests","parameters":{}}',
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 202, r.text
    assert requests.get(f"{svc.url}/v1/jobs/{r.json()['job_id']}", timeout=10).status_code == 200
    assert requests.get(f"{svc.url}/v1/jobs?limit=5", timeout=10).status_code == 200


@pytest.mark.parametrize(
    "case,url_tail,redactions",
    [
        ("userinfo-password", "postgres://postgres:hunter2pw@127.0.0.1:5432/{db}?sslmode=disable", 1),
        ("query-password-and-sslpassword", "postgres://postgres@127.0.0.1:5432/{db}?password=hunter2q&sslpassword=hunter2s", 2),
    ],
)
def test_item11_database_password_never_logged(tmp_path, pg_db, case, url_tail, redactions):
    url = url_tail.format(db=pg_db)
    svc = start_service(tmp_path, f"item11-{case}", tokens=False, extra_env={"DATABASE_URL": url})
    try:
        _exercise(svc)
    finally:
        svc.stop()
    text = svc.log_text()
    hits = [ln for ln in text.splitlines() if SECRET in ln]
    assert not hits, f"{case}: the password is in the output: {hits[0][:400]}"
    cfg = json.dumps(_starting_line(text))
    assert cfg.count("REDACTED") >= redactions, f"{case}: the start-up line should show REDACTED for each of {redactions} secret(s): {cfg[:600]}"


@pytest.mark.parametrize(
    "case,args,env_url",
    [
        ("unparseable-url", ["serve"], "postgres://u:hunter2x@[bad/db"),
        ("bad-scheme", ["serve"], "postgresx://u:hunter2y@h/db"),
        ("bad-scheme-flag", ["--database-url", "postgresx://u:hunter2z@h/db", "serve"], None),
        ("bad-port", ["serve"], "postgres://u:hunter2w@127.0.0.1:notaport/db"),
    ],
)
def test_item11_bad_database_url_fails_without_echoing_the_password(tmp_path, case, args, env_url):
    env = clean_env()
    env.update(GATEWAY_LISTEN=f"127.0.0.1:{free_port()}", RUST_LOG="info")
    if env_url is not None:
        env["DATABASE_URL"] = env_url
    try:
        p = subprocess.run([gateway_bin(), *args], env=env, cwd=tmp_path, capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{case}: still running after 20 s; output: {(e.stdout or b'')[-1000:]!r} {(e.stderr or b'')[-1000:]!r}")
    out = p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    assert p.returncode != 0, f"{case}: exit code 0; output:\n{out[-1500:]}"
    hits = [ln for ln in out.splitlines() if SECRET in ln]
    assert not hits, f"{case}: the password is echoed (exit {p.returncode}): {hits[0][:400]}"
    assert "database" in out.lower(), f"{case}: the error does not say what is wrong (exit {p.returncode}):\n{out[-1500:]}"
