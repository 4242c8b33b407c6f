#!/usr/bin/env bash
# Fault tests against the built service binary (issue 10):
#   test_disk_full.py   a full filesystem (3 MiB tmpfs), the SQLite size cap, a PostgreSQL COMMIT failing
#                       for one poisoned row, PostgreSQL backends terminated under load;
#   test_slowloris.py   silent / one-byte / HTTP/2-preface connections, idle keep-alive HTTP/1.1 and h2c,
#                       the connection cap, the soft RLIMIT_NOFILE;
#   test_lease_loss.py  a paused (SIGSTOP) worker that lost its lease stops its runs on resume;
#   test_retention.py   retention of finished jobs on SQLite and PostgreSQL.
#
#   GATEWAY_BIN=/var/tmp/ag-target/debug/automation-gateway bash tests/faults/run.sh [extra pytest args]
#
# Needs root (tmpfs mount), psql/createdb/dropdb and a PostgreSQL server at 127.0.0.1:5432 (trust auth,
# user postgres; each test makes and drops its own database). Installs what it needs by package name,
# idempotently (pip: pytest, requests, h2). Never skips: a missing tool or GATEWAY_BIN fails the run.
# Only 127.0.0.1 is contacted.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
log() { printf '[fault-tests] %s\n' "$*" >&2; }

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

for tool in psql createdb dropdb mount umount; do
  command -v "$tool" >/dev/null 2>&1 || { log "$tool is missing (install postgresql-client / mount)"; exit 1; }
done
if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (the full-disk test mounts a tmpfs)"
  exit 1
fi
timeout 10 psql -h 127.0.0.1 -U postgres -d postgres -X -tAc 'SELECT 1' >/dev/null \
  || { log "PostgreSQL at 127.0.0.1:5432 (user postgres, trust) does not answer"; exit 1; }

PIP_PKGS=()
"$PYTHON" -c 'import pytest' 2>/dev/null || PIP_PKGS+=(pytest)
"$PYTHON" -c 'import requests' 2>/dev/null || PIP_PKGS+=(requests)
"$PYTHON" -c 'import h2' 2>/dev/null || PIP_PKGS+=(h2)
if ((${#PIP_PKGS[@]})); then
  log "pip install ${PIP_PKGS[*]}"
  timeout 900 "$PYTHON" -m pip install --quiet --disable-pip-version-check "${PIP_PKGS[@]}"
  hash -r
fi
"$PYTHON" -c 'import pytest, requests, h2' || { log "python packages missing after install"; exit 1; }
log "service $("$GATEWAY_BIN" --version 2>/dev/null || echo '?'), binary $GATEWAY_BIN"

cd "$REPO"
set +e
timeout 900 "$PYTHON" -m pytest -p no:cacheprovider -rA -s "$HERE" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  log "pytest collected no tests: failing"
  exit 1
fi
if [ "$rc" -eq 124 ]; then
  log "FAILED: the suite did not finish within 900 s"
  exit 1
fi
[ "$rc" -eq 0 ] && log "all fault tests passed" || log "FAILED (pytest exit $rc)"
exit "$rc"
