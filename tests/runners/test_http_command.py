"""The `http` and `command` runners, black-box (issue 12 spec, "http" and "command").

http, against a loopback fakes.recorder.Recorder endpoint: method, URL templated with the target and
parameters (each value percent-encoded except `A-Z a-z 0-9 - . _ ~ : @`: `a/b` -> `a%2Fb`,
`web-1.svc:8080` kept), headers, a JSON body mapping (a whole-placeholder value keeps its JSON
type), a text body, token_file -> Bearer; expect_status; 4xx permanent (one request although
max_attempts is 3), 503 retried, 429 retried no sooner than Retry-After; result = status + first
4096 bytes of the body; cancel of a slow request; the attempt timeout.

command: argv templates (a parameter with spaces, quotes, `$(...)`, `;`, backticks arrives as ONE
argv element, unchanged: no shell), the child's environment is only the listed variables (+PATH),
working_dir, exit 0 -> SUCCESS with the stdout/stderr tails, exit 3 -> FAILED "status 3" with the
stderr tail (and retried as an ordinary failed attempt), killed by a signal, max_output_bytes, a
command not found is permanent, cancel and timeout kill the whole process group (a background
grandchild included).

Both: a POST whose parameters lack a key a template names -> 422 problem naming the parameter.
Policies are short so the file runs fast; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from conftest import (PROBLEM, cancel_job, free_port, get_job, post_job, start_with_actions, submit,
                      wait_terminal)
from fakes.recorder import Recorder

REQUESTED_BY = "runners@example.com"
FAST_RETRY = {"timeout_ms": 10000, "max_attempts": 3, "backoff_ms": 100}


# ============================================================================================ http


@pytest.fixture
def endpoint():
    rec = Recorder()
    rec.release = threading.Event()   # set at teardown: frees handlers that block
    yield rec
    rec.release.set()
    rec.close()


@pytest.fixture
def http_token(secret_file):
    tok = "httptok-" + os.urandom(8).hex()
    return tok, secret_file(tok + "\n")   # the trailing newline is trimmed by the gateway


def http_catalog(base: str, token_path: str) -> dict:
    return {
        "http_post": {
            "runner": "http",
            "policy": {"timeout_ms": 10000, "max_attempts": 1},
            "http": {
                "method": "POST",
                "url": base + "/hooks/{{ target }}/run?q={{ parameters.q }}&job={{job_id}}",
                "headers": {"X-Job-Id": "{{ job_id }}", "X-Requested-By": "by {{ requested_by }}",
                            "X-Action": "{{action}}"},
                "body": {"target": "{{ target }}", "count": "{{ parameters.count }}", "flag": "{{ parameters.flag }}",
                         "obj": "{{ parameters.obj }}", "text": "n={{ parameters.count }}", "lit": 5,
                         "meta": {"by": "{{ requested_by }}"}},
                "token_file": token_path,
            },
        },
        "http_get": {"runner": "http", "policy": {"timeout_ms": 10000},
                     "http": {"url": base + "/t/{{ target }}/end"}},
        "http_text": {"runner": "http", "policy": {"timeout_ms": 10000},
                      "http": {"method": "PUT", "url": base + "/text",
                               "body": "hello {{ target }} n={{ parameters.n }} by {{requested_by}}"}},
        "http_text_ct": {"runner": "http", "policy": {"timeout_ms": 10000},
                         "http": {"method": "POST", "url": base + "/ct",
                                  "headers": {"Content-Type": "application/x-ndjson"},
                                  "body": "{\"t\":\"{{ target }}\"}\n"}},
        "http_expect": {"runner": "http", "policy": {"timeout_ms": 10000},
                        "http": {"url": base + "/expect", "expect_status": [201, 204]}},
        "http_expect3": {"runner": "http", "policy": dict(FAST_RETRY),
                         "http": {"url": base + "/e3", "expect_status": [201]}},
        "http_retry3": {"runner": "http", "policy": dict(FAST_RETRY), "http": {"url": base + "/r3"}},
        "http_slow": {"runner": "http", "policy": {"timeout_ms": 20000, "max_attempts": 1},
                      "http": {"url": base + "/slow"}},
        "http_closed": {"runner": "http", "policy": dict(FAST_RETRY),
                        "http": {"url": f"http://127.0.0.1:{free_port()}/nobody-listens"}},
        "http_timeout": {"runner": "http", "policy": {"timeout_ms": 1000, "max_attempts": 1},
                         "http": {"url": base + "/slow"}},
    }


def start_http(gateways, endpoint, http_token):
    return start_with_actions(gateways, "gw", http_catalog(endpoint.url, http_token[1]))


def wait_requests(rec: Recorder, method: str, path_regex: str, n: int, within: float = 15.0):
    ok = rec.wait_for(lambda: rec.count(method, path_regex) >= n, within=within)
    assert ok, f"fewer than {n} {method} {path_regex} within {within} s; requests:\n{rec.describe()}"
    return rec.matching(method, path_regex)


def settle_count(rec: Recorder, method: str, path_regex: str, settle: float = 1.0) -> int:
    time.sleep(settle)
    return rec.count(method, path_regex)


def test_http_post_templates_json_body_headers_and_bearer(gateways, endpoint, http_token):
    endpoint.route("POST", r"/hooks/.*", lambda req: (200, {"Content-Type": "application/json"}, {"ok": True}))
    svc = start_http(gateways, endpoint, http_token)
    params = {"q": "a b&c/d?e", "count": 3, "flag": True, "obj": {"k": [1, "two"]}}
    job_id = submit(svc, "http_post", "a/b", params)
    j = wait_terminal(svc, job_id, within=15)
    assert j["status"] == "SUCCESS", f"job {j}\nrequests:\n{endpoint.describe()}\nlog tail:\n{svc.tail(3000)}"
    reqs = endpoint.matching("POST", r"/hooks/.*")
    assert len(reqs) == 1, endpoint.describe()
    r = reqs[0]
    assert r.path.lower() == "/hooks/a%2fb/run", f"path {r.path!r} (target 'a/b' must be one segment: a%2Fb)"
    raw_query = r.raw_path.split("?", 1)[1]
    assert "q=a%20b%26c%2fd%3fe" in raw_query.lower(), f"query {raw_query!r}: q not percent-encoded"
    assert r.query == {"q": "a b&c/d?e", "job": job_id}, r.query
    assert r.headers.get("x-job-id") == job_id
    assert r.headers.get("x-requested-by") == f"by {REQUESTED_BY}"
    assert r.headers.get("x-action") == "http_post"
    assert r.headers.get("authorization") == f"Bearer {http_token[0]}", \
        f"Authorization {r.headers.get('authorization')!r} (token file content, trimmed)"
    assert r.content_type.split(";")[0].strip() == "application/json", r.content_type
    assert r.json == {"target": "a/b", "count": 3, "flag": True, "obj": {"k": [1, "two"]}, "text": "n=3", "lit": 5,
                      "meta": {"by": REQUESTED_BY}}, f"body {r.body[:500]!r}"
    assert j["result"] == {"status": 200, "body": '{"ok": true}'}, j["result"]
    assert j.get("external") is None, f"http runs are not resumable: external {j.get('external')}"
    assert http_token[0] not in svc.log_text(), "the token appears in the gateway's log"


@pytest.mark.parametrize("target,segment", [
    ("a/b", "a%2fb"),
    ("web-1.svc:8080", "web-1.svc:8080"),
    ("ops@db_1.x", "ops@db_1.x"),
    ("x/../../admin", "x%2f..%2f..%2fadmin"),
])
def test_http_url_target_escaping(gateways, endpoint, http_token, target, segment):
    endpoint.route("GET", r"/t/.*", lambda req: (200, {}, "fine"))
    svc = start_http(gateways, endpoint, http_token)
    job_id = submit(svc, "http_get", target)
    j = wait_terminal(svc, job_id, within=15)
    assert j["status"] == "SUCCESS", f"job {j}\nrequests:\n{endpoint.describe()}"
    reqs = endpoint.matching("GET", r"/t/.*")
    assert len(reqs) == 1, endpoint.describe()
    assert reqs[0].raw_path.lower() == f"/t/{segment}/end", f"{target!r} -> {reqs[0].raw_path!r}"
    if ":" in target or "@" in target:
        assert segment in reqs[0].raw_path, f"':' and '@' must be kept as is: {reqs[0].raw_path!r}"
    assert j["result"] == {"status": 200, "body": "fine"}
    assert "authorization" not in reqs[0].headers, "no token_file: no Authorization header"


def test_http_text_body(gateways, endpoint, http_token):
    endpoint.route("PUT", r"/text", lambda req: (200, {}, "stored"))
    endpoint.route("POST", r"/ct", lambda req: (200, {}, "ok"))
    svc = start_http(gateways, endpoint, http_token)
    a = submit(svc, "http_text", "web-1", {"n": 3})
    b = submit(svc, "http_text_ct", "web-2")
    for job_id in (a, b):
        j = wait_terminal(svc, job_id, within=15)
        assert j["status"] == "SUCCESS", f"job {j}\nrequests:\n{endpoint.describe()}"
    r = endpoint.matching("PUT", r"/text")[0]
    assert r.body == f"hello web-1 n=3 by {REQUESTED_BY}".encode(), r.body
    assert r.content_type.replace(" ", "").lower() == "text/plain;charset=utf-8", r.content_type
    r = endpoint.matching("POST", r"/ct")[0]
    assert r.body == b'{"t":"web-2"}\n', r.body
    assert r.content_type == "application/x-ndjson", f"headers set a Content-Type; sent {r.content_type!r}"


def test_http_expect_status_success_and_default_2xx(gateways, endpoint, http_token):
    endpoint.route("GET", r"/expect", lambda req: (204, {}, None))
    endpoint.route("GET", r"/t/.*", lambda req: (202, {}, "accepted"))
    svc = start_http(gateways, endpoint, http_token)
    a = submit(svc, "http_expect", "x")
    b = submit(svc, "http_get", "y")
    ja, jb = wait_terminal(svc, a, within=15), wait_terminal(svc, b, within=15)
    assert ja["status"] == "SUCCESS" and ja["result"] == {"status": 204, "body": ""}, ja
    assert jb["status"] == "SUCCESS" and jb["result"] == {"status": 202, "body": "accepted"}, jb


def test_http_unexpected_2xx_is_an_ordinary_failed_attempt(gateways, endpoint, http_token):
    endpoint.route("GET", r"/e3", lambda req: (200, {}, "not created"))
    svc = start_http(gateways, endpoint, http_token)
    job_id = submit(svc, "http_expect3", "x")
    j = wait_terminal(svc, job_id, within=20)
    assert j["status"] == "FAILED", j
    err = j["error"] or ""
    assert err.startswith(f"http: GET {endpoint.url}/e3 answered 200"), err
    assert "expected" in err and "201" in err, err
    assert settle_count(endpoint, "GET", r"/e3", 0.5) == 3, f"not retried up to max_attempts 3:\n{endpoint.describe()}"
    assert j["attempts"] == 3


def test_http_4xx_is_permanent(gateways, endpoint, http_token):
    endpoint.route("GET", r"/r3", lambda req: (404, {}, "no such thing"))
    svc = start_http(gateways, endpoint, http_token)
    job_id = submit(svc, "http_retry3", "x")
    j = wait_terminal(svc, job_id, within=15)
    assert j["status"] == "FAILED", j
    assert "answered 404" in (j["error"] or ""), j["error"]
    assert settle_count(endpoint, "GET", r"/r3", 1.0) == 1, \
        f"a 4xx was retried although permanent:\n{endpoint.describe()}"
    assert get_job(svc, job_id)["attempts"] == 1


def test_http_503_is_retried(gateways, endpoint, http_token):
    n = [0]

    def flaky(req):
        n[0] += 1
        return (503, {}, "busy") if n[0] <= 2 else (200, {}, "finally")

    endpoint.route("GET", r"/r3", flaky)
    svc = start_http(gateways, endpoint, http_token)
    job_id = submit(svc, "http_retry3", "x")
    j = wait_terminal(svc, job_id, within=20)
    assert j["status"] == "SUCCESS", f"job {j}\nrequests:\n{endpoint.describe()}"
    assert j["result"] == {"status": 200, "body": "finally"}
    assert j["attempts"] == 3, j
    assert endpoint.count("GET", r"/r3") == 3


def test_http_503_every_time_fails_after_max_attempts(gateways, endpoint, http_token):
    endpoint.route("GET", r"/r3", lambda req: (503, {}, "busy"))
    svc = start_http(gateways, endpoint, http_token)
    job_id = submit(svc, "http_retry3", "x")
    j = wait_terminal(svc, job_id, within=20)
    assert j["status"] == "FAILED", j
    assert f"http: GET {endpoint.url}/r3 answered 503" in (j["error"] or ""), j["error"]
    assert settle_count(endpoint, "GET", r"/r3", 0.5) == 3


def test_http_429_waits_for_retry_after(gateways, endpoint, http_token):
    n = [0]

    def limited(req):
        n[0] += 1
        return (429, {"Retry-After": "1"}, "slow down") if n[0] == 1 else (200, {}, "ok")

    endpoint.route("GET", r"/r3", limited)
    svc = start_http(gateways, endpoint, http_token)
    job_id = submit(svc, "http_retry3", "x")
    j = wait_terminal(svc, job_id, within=20)
    assert j["status"] == "SUCCESS", f"job {j}\nrequests:\n{endpoint.describe()}"
    reqs = endpoint.matching("GET", r"/r3")
    assert len(reqs) == 2
    gap = reqs[1].at - reqs[0].at
    assert gap >= 0.95, f"retried {gap:.3f} s after a 429 with Retry-After: 1 (backoff_ms is 100)"


def test_http_result_keeps_the_first_4096_bytes(gateways, endpoint, http_token):
    body = "".join(f"{i:07d}\n" for i in range(1500))   # 12 000 bytes
    endpoint.route("GET", r"/t/.*", lambda req: (200, {}, body))
    svc = start_http(gateways, endpoint, http_token)
    job_id = submit(svc, "http_get", "big")
    j = wait_terminal(svc, job_id, within=15)
    assert j["status"] == "SUCCESS", j
    assert j["result"]["status"] == 200
    got = j["result"]["body"]
    assert got == body[:4096], f"result body: {len(got)} chars, starts {got[:40]!r}, ends {got[-40:]!r}"


def test_http_connect_error_is_transient(gateways, endpoint, http_token):
    svc = start_http(gateways, endpoint, http_token)
    job_id = submit(svc, "http_closed", "x")
    j = wait_terminal(svc, job_id, within=20)
    assert j["status"] == "FAILED", j
    assert j["attempts"] == 3, f"a connect error is transient (retried up to max_attempts 3): {j}"
    assert (j["error"] or "").startswith("http"), j["error"]


def test_http_token_file_is_read_at_each_use(gateways, endpoint, http_token):
    endpoint.route("POST", r"/hooks/.*", lambda req: (200, {}, "ok"))
    svc = start_http(gateways, endpoint, http_token)
    params = {"q": "1", "count": 1, "flag": False, "obj": None}
    j1 = wait_terminal(svc, submit(svc, "http_post", "a", params), within=15)
    Path(http_token[1]).write_text("rotated-token-2\n")
    j2 = wait_terminal(svc, submit(svc, "http_post", "b", params), within=15)
    assert j1["status"] == j2["status"] == "SUCCESS", (j1, j2)
    auth = [r.headers.get("authorization") for r in endpoint.matching("POST", r"/hooks/.*")]
    assert auth == [f"Bearer {http_token[0]}", "Bearer rotated-token-2"], auth
    reqs = endpoint.matching("POST", r"/hooks/.*")
    assert reqs[0].json["obj"] is None, "a whole-placeholder null stays null"


def _slow(endpoint):
    def handler(req):
        endpoint.release.wait(30)
        return 200, {}, "too late"
    return handler


def test_http_cancel_drops_a_slow_request(gateways, endpoint, http_token):
    endpoint.route("GET", r"/slow", _slow(endpoint))
    svc = start_http(gateways, endpoint, http_token)
    job_id = submit(svc, "http_slow", "x")
    wait_requests(endpoint, "GET", r"/slow", 1)
    j = get_job(svc, job_id)
    assert j["status"] == "RUNNING", j
    t = time.monotonic()
    r = cancel_job(svc, job_id)
    assert r.status_code in (200, 202), f"cancel: {r.status_code} {r.text[:500]}"
    j = wait_terminal(svc, job_id, within=10)
    assert j["status"] == "CANCELED", j
    assert time.monotonic() - t < 6, "cancel waited for the slow request to answer"
    assert settle_count(endpoint, "GET", r"/slow", 0.5) == 1


def test_http_attempt_timeout(gateways, endpoint, http_token):
    endpoint.route("GET", r"/slow", _slow(endpoint))
    svc = start_http(gateways, endpoint, http_token)
    t = time.monotonic()
    job_id = submit(svc, "http_timeout", "x")
    j = wait_terminal(svc, job_id, within=15)
    elapsed = time.monotonic() - t
    assert j["status"] == "FAILED", j
    assert "timed out after 1000 ms" in (j["error"] or ""), j["error"]
    assert 0.9 <= elapsed < 8, f"FAILED after {elapsed:.2f} s with timeout_ms 1000"


def test_http_missing_template_parameter_is_422_at_post(gateways, endpoint, http_token):
    svc = start_http(gateways, endpoint, http_token)
    r = post_job(svc, "http_post", "a", {"count": 1, "flag": False, "obj": {}})
    assert r.status_code == 422, f"{r.status_code} {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith(PROBLEM), r.headers.get("content-type")
    p = r.json()
    assert str(p.get("type", "")).endswith("validation"), p
    detail = p.get("detail", "")
    assert detail.startswith("parameters:"), detail
    assert "'q'" in detail, f"detail does not name the missing parameter 'q': {detail!r}"
    assert "http.url" in detail, f"detail does not say which template needs it: {detail!r}"
    time.sleep(0.3)
    assert endpoint.requests == [], "a refused job reached the endpoint"


# ========================================================================================= command

PY = "/usr/bin/python3"
DUMP_ARGV = "import json,sys; sys.stdout.write(json.dumps(sys.argv[1:]))"

TREE_SH = """#!/bin/sh
# child: writes its pid, starts a background grandchild (which writes its own pid), waits
echo $$ > "$1/child.pid.tmp" && mv "$1/child.pid.tmp" "$1/child.pid"
/bin/sh -c 'echo $$ > "$1/grandchild.pid.tmp" && mv "$1/grandchild.pid.tmp" "$1/grandchild.pid"; exec /usr/bin/sleep 120' grandchild "$1" &
wait
"""

FAIL_SH = ('echo run >> "$1"; printf HEAD-MARK >&2; i=0; while [ $i -lt 100 ]; do printf 0123456789 >&2; '
           'i=$((i+1)); done; printf TAIL-MARK >&2; echo some-stdout; exit 3')

CAP_SH = ('i=0; while [ $i -lt 100 ]; do printf "%09d\\n" $i; printf "E%08d\\n" $i >&2; i=$((i+1)); done')


def command_catalog(tmp: Path) -> dict:
    tree = tmp / "tree.sh"
    tree.write_text(TREE_SH)
    tree.chmod(tree.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    wd = tmp / "wd"
    wd.mkdir(exist_ok=True)
    return {
        "cmd_args": {"runner": "command", "policy": {"timeout_ms": 10000},
                     "command": {"argv": [PY, "-c", DUMP_ARGV, "{{ target }}", "--reason={{ parameters.reason }}",
                                          "{{ parameters.evil }}", "{{ parameters.n }}", "{{ parameters.empty }}",
                                          "{{ job_id }}", "{{action}}/{{requested_by}}"]}},
        "cmd_env": {"runner": "command", "policy": {"timeout_ms": 10000},
                    "command": {"argv": ["/usr/bin/env"], "env": {"GREETING": "hello world", "EMPTY": ""}}},
        "cmd_env_path": {"runner": "command", "policy": {"timeout_ms": 10000},
                         "command": {"argv": ["env"], "env": {"PATH": "/bin:/usr/bin", "ONE": "1"}}},
        "cmd_ok": {"runner": "command", "policy": {"timeout_ms": 10000},
                   "command": {"argv": ["/bin/sh", "-c", "echo out-line; echo err-line >&2"]}},
        "cmd_wd": {"runner": "command", "policy": {"timeout_ms": 10000},
                   "command": {"argv": ["/bin/pwd"], "working_dir": str(wd)}},
        "cmd_fail": {"runner": "command", "policy": {"timeout_ms": 10000, "max_attempts": 1},
                     "command": {"argv": ["/bin/sh", "-c", FAIL_SH, "sh", "{{ parameters.counter }}"]}},
        "cmd_fail2": {"runner": "command", "policy": {"timeout_ms": 10000, "max_attempts": 2, "backoff_ms": 100},
                      "command": {"argv": ["/bin/sh", "-c", FAIL_SH, "sh", "{{ parameters.counter }}"]}},
        "cmd_cap": {"runner": "command", "policy": {"timeout_ms": 10000},
                    "command": {"argv": ["/bin/sh", "-c", CAP_SH], "max_output_bytes": 100}},
        "cmd_signal": {"runner": "command", "policy": {"timeout_ms": 10000},
                       "command": {"argv": ["/bin/sh", "-c", "kill -TERM $$; sleep 5"]}},
        "cmd_missing": {"runner": "command", "policy": dict(FAST_RETRY),
                        "command": {"argv": ["ag-no-such-command-3f9a"]}},
        "cmd_tree": {"runner": "command", "policy": {"timeout_ms": 30000, "max_attempts": 1},
                     "command": {"argv": [str(tree), "{{ parameters.dir }}"]}},
        "cmd_tree_timeout": {"runner": "command", "policy": {"timeout_ms": 1500, "max_attempts": 1},
                             "command": {"argv": [str(tree), "{{ parameters.dir }}"]}},
    }


@pytest.fixture
def cmd_gw(gateways, tmp_path):
    d = tmp_path / "cmd"
    d.mkdir()
    return start_with_actions(gateways, "gw", command_catalog(d), env={"AG_TEST_LEAK_MARKER": "must-not-leak"})


def test_command_argv_templates_are_single_elements_no_shell(cmd_gw, tmp_path):
    pwned = tmp_path / "pwned"
    evil = (f"it's \"quoted\" $(touch {pwned}) ; touch {pwned}2 && echo `touch {pwned}3` | cat > {pwned}4 "
            f"*  ~ $HOME \\n")
    params = {"reason": "two words", "evil": evil, "n": 3, "empty": ""}
    job_id = submit(cmd_gw, "cmd_args", "web-1:8080", params)
    j = wait_terminal(cmd_gw, job_id, within=15)
    assert j["status"] == "SUCCESS", f"job {j}\nlog tail:\n{cmd_gw.tail(3000)}"
    argv = json.loads(j["result"]["stdout"])
    assert argv == ["web-1:8080", "--reason=two words", evil, "3", "", job_id, f"cmd_args/{REQUESTED_BY}"], argv
    for suffix in ("", "2", "3", "4"):
        assert not Path(f"{pwned}{suffix}").exists(), "a parameter was run by a shell"
    assert j["result"]["exit_code"] == 0
    assert j["result"]["stderr"] == ""


def _env_lines(stdout: str) -> dict:
    return dict(line.split("=", 1) for line in stdout.splitlines() if line)


def test_command_env_is_only_the_listed_variables_plus_path(cmd_gw):
    a = submit(cmd_gw, "cmd_env", "x")
    b = submit(cmd_gw, "cmd_env_path", "x")
    ja, jb = wait_terminal(cmd_gw, a, within=15), wait_terminal(cmd_gw, b, within=15)
    assert ja["status"] == "SUCCESS", ja
    assert _env_lines(ja["result"]["stdout"]) == {"GREETING": "hello world", "EMPTY": "",
                                                  "PATH": "/usr/local/bin:/usr/bin:/bin"}, ja["result"]["stdout"]
    assert jb["status"] == "SUCCESS", f"'env' on the child's PATH: {jb}"
    assert _env_lines(jb["result"]["stdout"]) == {"PATH": "/bin:/usr/bin", "ONE": "1"}, jb["result"]["stdout"]
    assert "must-not-leak" not in ja["result"]["stdout"] + jb["result"]["stdout"]


def test_command_exit_0_and_working_dir(cmd_gw, tmp_path):
    a = submit(cmd_gw, "cmd_ok", "x")
    b = submit(cmd_gw, "cmd_wd", "x")
    ja, jb = wait_terminal(cmd_gw, a, within=15), wait_terminal(cmd_gw, b, within=15)
    assert ja["status"] == "SUCCESS", ja
    assert ja["result"] == {"exit_code": 0, "stdout": "out-line\n", "stderr": "err-line\n"}, ja["result"]
    assert ja.get("external") is None
    assert jb["status"] == "SUCCESS", jb
    assert jb["result"]["stdout"] == os.path.realpath(tmp_path / "cmd" / "wd") + "\n", jb["result"]


def test_command_exit_3_fails_with_the_stderr_tail(cmd_gw, tmp_path):
    counter = tmp_path / "runs-1"
    job_id = submit(cmd_gw, "cmd_fail", "x", {"counter": str(counter)})
    j = wait_terminal(cmd_gw, job_id, within=15)
    assert j["status"] == "FAILED", j
    err = j["error"] or ""
    prefix = "command exited with status 3: "
    assert err.startswith(prefix), err[:200]
    assert "status 3" in err
    assert err.rstrip().endswith("TAIL-MARK"), f"error does not end with the stderr tail: ...{err[-80:]!r}"
    assert "HEAD-MARK" not in err, "more than the last 512 bytes of stderr in the error"
    assert len(err) <= len(prefix) + 512 + 16, f"error is {len(err)} chars"
    assert "some-stdout" not in err
    assert j["attempts"] == 1
    assert counter.read_text().count("run") == 1


def test_command_failure_is_retried_as_an_ordinary_failed_attempt(cmd_gw, tmp_path):
    counter = tmp_path / "runs-2"
    job_id = submit(cmd_gw, "cmd_fail2", "x", {"counter": str(counter)})
    j = wait_terminal(cmd_gw, job_id, within=20)
    assert j["status"] == "FAILED", j
    assert j["attempts"] == 2, j
    assert counter.read_text().count("run") == 2


def test_command_output_cap(cmd_gw):
    job_id = submit(cmd_gw, "cmd_cap", "x")
    j = wait_terminal(cmd_gw, job_id, within=15)
    assert j["status"] == "SUCCESS", j
    out = "".join(f"{i:09d}\n" for i in range(100))
    err = "".join(f"E{i:08d}\n" for i in range(100))
    assert j["result"]["stdout"] == out[-100:], j["result"]["stdout"]
    assert j["result"]["stderr"] == err[-100:], j["result"]["stderr"]


def test_command_killed_by_signal(cmd_gw):
    job_id = submit(cmd_gw, "cmd_signal", "x")
    j = wait_terminal(cmd_gw, job_id, within=15)
    assert j["status"] == "FAILED", j
    assert "command killed by signal 15" in (j["error"] or ""), j["error"]


def test_command_not_found_is_permanent(cmd_gw):
    job_id = submit(cmd_gw, "cmd_missing", "x")
    j = wait_terminal(cmd_gw, job_id, within=15)
    assert j["status"] == "FAILED", j
    assert "ag-no-such-command-3f9a" in (j["error"] or ""), j["error"]
    time.sleep(1.0)
    assert get_job(cmd_gw, job_id)["attempts"] == 1, "command not found was retried (it is permanent)"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")   # a zombie has been killed (only its reaping is left)


def _read_pid(p: Path, within: float) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if p.exists():
            txt = p.read_text().strip()
            if txt.isdigit():
                return int(txt)
        time.sleep(0.05)
    raise AssertionError(f"{p} not written within {within} s")


class Tree:
    """The pids of one cmd_tree run; kills leftovers at the end (the processes this test started)."""

    def __init__(self, d: Path):
        self.d = d
        self.pids: list[int] = []

    def wait_started(self, svc) -> tuple[int, int]:
        try:
            child = _read_pid(self.d / "child.pid", 15)
            grand = _read_pid(self.d / "grandchild.pid", 15)
        except AssertionError as e:
            raise AssertionError(f"{e}\nlog tail:\n{svc.tail(3000)}") from None
        self.pids = [child, grand]
        assert _alive(child) and _alive(grand), "the process tree did not start"
        return child, grand

    def wait_dead(self, within: float = 5.0) -> list[int]:
        deadline = time.monotonic() + within
        while True:
            alive = [p for p in self.pids if _alive(p)]
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(0.05)

    def cleanup(self):
        for p in self.pids:
            if _alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def tree(tmp_path):
    d = tmp_path / "tree"
    d.mkdir()
    t = Tree(d)
    yield t
    t.cleanup()


def test_command_cancel_kills_the_process_group(cmd_gw, tree):
    job_id = submit(cmd_gw, "cmd_tree", "x", {"dir": str(tree.d)})
    child, grand = tree.wait_started(cmd_gw)
    assert get_job(cmd_gw, job_id)["status"] == "RUNNING"
    r = cancel_job(cmd_gw, job_id)
    assert r.status_code in (200, 202), f"cancel: {r.status_code} {r.text[:500]}"
    j = wait_terminal(cmd_gw, job_id, within=10)
    assert j["status"] == "CANCELED", j
    alive = tree.wait_dead(5.0)
    assert not alive, (f"still alive after cancel: {alive} (child {child}, grandchild {grand}): "
                       "the whole process group must be killed")


def test_command_timeout_kills_the_process_group(cmd_gw, tree):
    t = time.monotonic()
    job_id = submit(cmd_gw, "cmd_tree_timeout", "x", {"dir": str(tree.d)})
    child, grand = tree.wait_started(cmd_gw)
    j = wait_terminal(cmd_gw, job_id, within=15)
    elapsed = time.monotonic() - t
    assert j["status"] == "FAILED", j
    assert "timed out after 1500 ms" in (j["error"] or ""), j["error"]
    assert elapsed < 10, f"FAILED only after {elapsed:.1f} s"
    alive = tree.wait_dead(5.0)
    assert not alive, f"still alive after the timeout: {alive} (child {child}, grandchild {grand})"


def test_command_missing_template_parameter_is_422_at_post(cmd_gw, tmp_path):
    r = post_job(cmd_gw, "cmd_args", "x", {"evil": "e", "n": 1, "empty": ""})
    assert r.status_code == 422, f"{r.status_code} {r.text[:500]}"
    assert r.headers.get("content-type", "").startswith(PROBLEM)
    p = r.json()
    assert str(p.get("type", "")).endswith("validation"), p
    detail = p.get("detail", "")
    assert detail.startswith("parameters:"), detail
    assert "'reason'" in detail, f"detail does not name the missing parameter 'reason': {detail!r}"
    assert "command.argv" in detail, f"detail does not say which template needs it: {detail!r}"
    ok = post_job(cmd_gw, "cmd_args", "x", {"reason": "r", "evil": "e", "n": 1, "empty": ""})
    assert ok.status_code == 202, ok.text
    wait_terminal(cmd_gw, ok.json()["job_id"], within=15)
