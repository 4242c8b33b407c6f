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
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
log() { printf '[security-tests] %s\n' "$*" >&2; }

if [ -z "${GATEWAY_BIN:-}" ]; then
  log "GATEWAY_BIN is not set: point it at the built service binary, e.g. /var/tmp/ag-target/debug/automation-gateway"
  exit 1
fi
if [ ! -x "$GATEWAY_BIN" ]; then
  log "GATEWAY_BIN=$GATEWAY_BIN is not an executable file"
  exit 1
fi
GATEWAY_BIN="$(cd "$(dirname "$GATEWAY_BIN")" && pwd)/$(basename "$GATEWAY_BIN")"
export GATEWAY_BIN

PIP_PKGS=()
"$PYTHON" -c 'import schemathesis' 2>/dev/null || PIP_PKGS+=(schemathesis)
"$PYTHON" -c 'import pytest' 2>/dev/null || PIP_PKGS+=(pytest)
"$PYTHON" -c 'import requests' 2>/dev/null || PIP_PKGS+=(requests)
if ((${#PIP_PKGS[@]})); then
  log "pip install ${PIP_PKGS[*]}"
  timeout 900 "$PYTHON" -m pip install --quiet --disable-pip-version-check "${PIP_PKGS[@]}"
  hash -r
fi
"$PYTHON" -c 'import schemathesis, pytest, requests' || { log "python packages missing after install"; exit 1; }
# The schemathesis CLI of the same Python (its entry point may not be on PATH).
ST_BIN="$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")/st"
if [ -x "$ST_BIN" ]; then export PATH="$(dirname "$ST_BIN"):$PATH"; fi
command -v st >/dev/null 2>&1 || { log "the schemathesis CLI (st) is missing after install"; exit 1; }
log "schemathesis $(st --version 2>/dev/null | awk '{print $NF}'), service $("$GATEWAY_BIN" --version 2>/dev/null || echo '?')"

# Logs of every service started by the tests (the token-leak test reads the authenticated ones).
export AG_SECURITY_LOG_DIR="${AG_SECURITY_LOG_DIR:-$(mktemp -d /tmp/ag-security-logs.XXXXXX)}"
rm -f "$AG_SECURITY_LOG_DIR"/*.log
log "service logs in $AG_SECURITY_LOG_DIR"

cd "$REPO"
set +e
timeout 1800 "$PYTHON" -m pytest -p no:cacheprovider -rA -s "$HERE" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  log "pytest collected no tests: failing"
  exit 1
fi
[ "$rc" -eq 0 ] && log "all security tests passed" || log "FAILED (pytest exit $rc)"
exit "$rc"
