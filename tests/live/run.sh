#!/usr/bin/env bash
# Live-jobs tests (issue 13) against the built service binary: the event log of every job kind (SQLite
# and PostgreSQL), SSE streams (wire format, Last-Event-ID resume under load, filters, heartbeats,
# auth), cross-replica stream latency on PostgreSQL, the memory cost of 1000 idle streams, long-poll,
# signed webhooks (retries, rotation, durable outbox across SIGKILL, allowlists, two replicas) and the
# `jobs` CLI:
#
#   GATEWAY_BIN=/var/tmp/ag-live-bin/automation-gateway bash tests/live/run.sh [extra pytest args]
#   e.g. ... run.sh -k 'webhook or cli'
#
# Installs what it needs by package name, idempotently (pip: pytest, requests, pyyaml, opentelemetry-proto). Never skips:
# a missing GATEWAY_BIN, tool or package fails the run, and so does collecting no tests. Needs
# psql/createdb/dropdb and a PostgreSQL server at 127.0.0.1:5432 (trust auth, user postgres; each test
# makes and drops its own database). Only 127.0.0.1 is contacted. The whole run is bounded by
# LIVE_TIMEOUT seconds (default 720).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
SUITE_TIMEOUT="${LIVE_TIMEOUT:-720}"
log() { printf '[live-tests] %s\n' "$*" >&2; }

if [ -z "${GATEWAY_BIN:-}" ]; then
  log "GATEWAY_BIN is not set: point it at the built service binary, e.g. /var/tmp/ag-live-bin/automation-gateway"
  exit 1
fi
if [ ! -x "$GATEWAY_BIN" ]; then
  log "GATEWAY_BIN=$GATEWAY_BIN is not an executable file"
  exit 1
fi
GATEWAY_BIN="$(cd "$(dirname "$GATEWAY_BIN")" && pwd)/$(basename "$GATEWAY_BIN")"
export GATEWAY_BIN

for tool in psql createdb dropdb; do
  command -v "$tool" >/dev/null 2>&1 || { log "$tool is missing (install postgresql-client)"; exit 1; }
done
timeout 10 psql -h 127.0.0.1 -U postgres -d postgres -X -tAc 'SELECT 1' >/dev/null \
  || { log "PostgreSQL at 127.0.0.1:5432 (user postgres, trust) does not answer"; exit 1; }

PIP_PKGS=()
"$PYTHON" -c 'import pytest' 2>/dev/null || PIP_PKGS+=(pytest)
"$PYTHON" -c 'import requests' 2>/dev/null || PIP_PKGS+=(requests)
"$PYTHON" -c 'import yaml' 2>/dev/null || PIP_PKGS+=(pyyaml)
# test_traces.py decodes the gateway's OTLP/HTTP protobuf exports.
"$PYTHON" -c 'import opentelemetry.proto' 2>/dev/null || PIP_PKGS+=(opentelemetry-proto)
if ((${#PIP_PKGS[@]})); then
  log "pip install ${PIP_PKGS[*]}"
  timeout 900 "$PYTHON" -m pip install --quiet --disable-pip-version-check "${PIP_PKGS[@]}"
  hash -r
fi
"$PYTHON" -c 'import pytest, requests, yaml, opentelemetry.proto' || { log "python packages missing after install"; exit 1; }
log "service $("$GATEWAY_BIN" --version 2>/dev/null || echo '?'), binary $GATEWAY_BIN"

cd "$REPO"
set +e
timeout "$SUITE_TIMEOUT" "$PYTHON" -m pytest -p no:cacheprovider -rA -s "$HERE" "$@"
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
[ "$rc" -eq 0 ] && log "all live tests passed" || log "FAILED (pytest exit $rc)"
exit "$rc"
