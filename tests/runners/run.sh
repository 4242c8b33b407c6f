#!/usr/bin/env bash
# Runner tests (issue 12: actions catalog file + remote runners) against the built service binary,
# with loopback wire-format fakes of AWX, Jenkins, GitHub Actions, the Kubernetes API, HTTP endpoints:
#
#   GATEWAY_BIN=/var/tmp/ag-runners-bin/automation-gateway bash tests/runners/run.sh [extra pytest args]
#   e.g. ... run.sh -k 'awx or jenkins or github'
#
# Installs what it needs by package name, idempotently (pip: pytest, requests, pyyaml). Never skips:
# a missing GATEWAY_BIN or package fails the run, and so does collecting no tests. The PostgreSQL tests
# need a server at 127.0.0.1:5432 (trust auth, user postgres) and psql/createdb/dropdb. Only 127.0.0.1
# is contacted.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
SUITE_TIMEOUT="${RUNNERS_TIMEOUT:-1200}"
log() { printf '[runner-tests] %s\n' "$*" >&2; }

if [ -z "${GATEWAY_BIN:-}" ]; then
  log "GATEWAY_BIN is not set: point it at the built service binary, e.g. /var/tmp/ag-runners-bin/automation-gateway"
  exit 1
fi
if [ ! -x "$GATEWAY_BIN" ]; then
  log "GATEWAY_BIN=$GATEWAY_BIN is not an executable file"
  exit 1
fi
GATEWAY_BIN="$(cd "$(dirname "$GATEWAY_BIN")" && pwd)/$(basename "$GATEWAY_BIN")"
export GATEWAY_BIN

PIP_PKGS=()
"$PYTHON" -c 'import pytest' 2>/dev/null || PIP_PKGS+=(pytest)
"$PYTHON" -c 'import requests' 2>/dev/null || PIP_PKGS+=(requests)
"$PYTHON" -c 'import yaml' 2>/dev/null || PIP_PKGS+=(pyyaml)
if ((${#PIP_PKGS[@]})); then
  log "pip install ${PIP_PKGS[*]}"
  timeout 900 "$PYTHON" -m pip install --quiet --disable-pip-version-check "${PIP_PKGS[@]}"
  hash -r
fi
"$PYTHON" -c 'import pytest, requests, yaml' || { log "python packages missing after install"; exit 1; }
log "service $("$GATEWAY_BIN" --version 2>/dev/null || echo '?'), binary $GATEWAY_BIN"

cd "$REPO"
set +e
timeout "$SUITE_TIMEOUT" "$PYTHON" -m pytest -p no:cacheprovider -rA "$HERE" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  log "pytest collected no tests: failing"
  exit 1
fi
if [ "$rc" -eq 124 ]; then
  log "FAILED: the suite did not finish within $SUITE_TIMEOUT s"
  exit 1
fi
[ "$rc" -eq 0 ] && log "all runner tests passed" || log "FAILED (pytest exit $rc)"
exit "$rc"
