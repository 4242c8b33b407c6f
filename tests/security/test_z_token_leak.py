"""The service logs captured while authentication was on (the fuzz run with the admin token and the
hostile-input run, which also sent unknown and malformed tokens) never contain a token.

Runs after test_fuzz.py and test_hostile.py (pytest runs files in name order) and fails when their
logs are missing, so it cannot pass vacuously."""

from __future__ import annotations

import json

from conftest import ADMIN_TOKEN, UNKNOWN_TOKEN


def test_token_never_logged(log_dir):
    logs = {p.name: p.read_text(errors="replace") for p in sorted(log_dir.glob("*.tokens.log"))}
    assert {"fuzz-auth.tokens.log", "hostile.tokens.log"} <= set(logs), (
        f"the logs of the authenticated runs are missing (run the whole directory): {sorted(logs)}"
    )
    secrets = {
        "admin token": ADMIN_TOKEN,
        "admin token without prefix": ADMIN_TOKEN.removeprefix("agw_"),
        "unknown token": UNKNOWN_TOKEN,
        "unknown token without prefix": UNKNOWN_TOKEN.removeprefix("agw_"),
    }
    for name, text in logs.items():
        lines = text.splitlines()
        assert len(lines) > 10, f"{name}: suspiciously short log ({len(lines)} lines)"
        for what, secret in secrets.items():
            # Also a fragment: half of the token is already too much.
            for frag in (secret, secret[: len(secret) // 2], secret[len(secret) // 2 :]):
                hits = [ln for ln in lines if frag in ln]
                assert not hits, f"{name}: the {what} (or a half of it) is in the log: {hits[0][:300]}"
        print(f"\n[token-leak] {name}: {len(lines)} log lines, no token")

    # The logs are the right ones: audited actions by the token's identity, and refused attempts.
    hostile = [json.loads(ln) for ln in logs["hostile.tokens.log"].splitlines() if ln.startswith("{")]
    assert any(e.get("identity") == "security-admin" for e in hostile), "no line names the token's identity"
    # test_hostile.py sent 5 refused authentications (unknown token, mangled token, wrong scheme, ...).
    failed = [e for e in hostile if "auth" in str(e.get("event", "")) and "fail" in str(e.get("event", "")) + str(e.get("message", "")).lower()]
    assert len(failed) >= 5, f"the refused authentications are not logged (found {len(failed)})"
    assert all(e.get("request_id") for e in failed), "failed authentications are logged without a request id"
