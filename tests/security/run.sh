#!/usr/bin/env bash
# Security tests against the built service binary:
#   a. schemathesis fuzzing from the service's own /openapi.json, without and with a bearer token
#      (zero 5xx, zero schema / status code / content type violations, >= 1000 requests in total);
#   b. hostile input: 10 MB bodies, deep nesting, invalid UTF-8, huge headers, slowloris and silent
#      connections, floods (other clients served, process unharmed, RSS back near idle);
#   c. no token string in the logs captured during (a) and (b) with tokens.
#
#   GATEWAY_BIN=/var/tmp/ag-target/debug/automation-gateway bash tests/security/run.sh [extra pytest args]
#
# Installs what it needs by package name, idempotently (pip: schemathesis, pytest, requests). Never
# skips: a missing tool or GATEWAY_BIN fails the run. Only 127.0.0.1 is contacted.
# Knobs: AG_FUZZ_MAX_EXAMPLES (per operation, default 100), AG_FUZZ_MAX_TIME_SECS (per run, default 60).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SUITE=security-tests
source "$HERE/../lib/suite.sh"

suite_require_bin
suite_pip schemathesis pytest requests
# The schemathesis CLI of the same Python (its entry point may not be on PATH).
ST_BIN="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")/st"
if [ -x "$ST_BIN" ]; then export PATH="$(dirname "$ST_BIN"):$PATH"; fi
command -v st >/dev/null 2>&1 || { suite_log "the schemathesis CLI (st) is missing after install"; exit 1; }
suite_log "schemathesis $(st --version 2>/dev/null | awk '{print $NF}')"

# Logs of every service started by the tests (the token-leak test reads the authenticated ones).
export AG_SECURITY_LOG_DIR="${AG_SECURITY_LOG_DIR:-$(mktemp -d /tmp/ag-security-logs.XXXXXX)}"
rm -f "$AG_SECURITY_LOG_DIR"/*.log
suite_log "service logs in $AG_SECURITY_LOG_DIR"

suite_pytest 1800 "$HERE" -s "$@"
