#!/usr/bin/env bash
# Records link/startup-symbols.txt: the functions a release gateway executes while it starts, idles
# and serves a few jobs, on SQLite and on PostgreSQL, in the order first seen. build.rs hands the
# list to the linker (LLD's --symbol-ordering-file) so those functions sit together at the start of
# .text: the idle resident set then holds ~5 MB of packed code instead of ~11 MB of pages scattered
# through 18 MB. Re-record after dependency upgrades or large changes (stale names are skipped, so
# an old list only costs memory):
#
#   make release-gateway
#   bash link/record-startup-symbols.sh "$CARGO_TARGET_DIR"/x86_64-unknown-linux-gnu/release/automation-gateway
#   make release-gateway
#
# Needs valgrind (callgrind; installed with apt-get when missing), curl, and PostgreSQL on
# 127.0.0.1:5432 (trust auth) for the PostgreSQL phases.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BIN="${1:-}"
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "usage: $0 PATH-TO-RELEASE-automation-gateway" >&2; exit 2; }
command -v valgrind >/dev/null || apt-get install -y --no-install-recommends valgrind >/dev/null
PG="postgres://postgres@127.0.0.1:5432"
PORT=31999
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"; dropdb -h 127.0.0.1 -U postgres --if-exists agsymbols 2>/dev/null || true' EXIT

# One phase: the gateway under callgrind until it is ready and has idled 3 s (then, with LOAD=1,
# 30 jobs posted and awaited, a list, the metrics, readiness and one job's events); SIGTERM makes it
# exit normally, so callgrind writes its profile.
phase() {
  local name=$1; shift
  env "$@" GATEWAY_LISTEN=127.0.0.1:$PORT RUST_LOG=warn \
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$WORK/$name.out" "$BIN" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 240); do curl -sf 127.0.0.1:$PORT/healthz >/dev/null && break; sleep 0.5; done
  sleep 3
  if [ "${LOAD:-}" = 1 ]; then
    local id=""
    for i in $(seq 30); do
      id=$(curl -s -XPOST 127.0.0.1:$PORT/v1/jobs -H 'content-type: application/json' \
        -d "{\"action\":\"health_check\",\"target\":\"t$i\",\"requested_by\":\"symbols\"}" | sed -E 's/.*"job_id":"([^"]+)".*/\1/')
      curl -s "127.0.0.1:$PORT/v1/jobs/$id?wait=5s" >/dev/null
    done
    curl -s "127.0.0.1:$PORT/v1/jobs?limit=5" >/dev/null
    curl -s 127.0.0.1:$PORT/metrics >/dev/null
    curl -s 127.0.0.1:$PORT/readyz >/dev/null
    curl -s "127.0.0.1:$PORT/v1/jobs/$id/events" >/dev/null
  fi
  kill -TERM "$pid"
  wait "$pid" || true
  echo "[symbols] $name: $(grep -h 'I   refs' "$WORK/$name.log")" >&2
}

createdb -h 127.0.0.1 -U postgres agsymbols
phase sqlite_idle DATABASE_URL="sqlite://$WORK/a.db?mode=rwc" GATEWAY_WORKERS=0
phase pg_idle DATABASE_URL="$PG/agsymbols" GATEWAY_WORKERS=0
LOAD=1 phase sqlite_load DATABASE_URL="sqlite://$WORK/b.db?mode=rwc" GATEWAY_WORKERS=4 GATEWAY_SIM_DURATION_MS=1
LOAD=1 phase pg_load DATABASE_URL="$PG/agsymbols" GATEWAY_WORKERS=4 GATEWAY_SIM_DURATION_MS=1

# The executed functions (callgrind's fn= names, recursion suffixes dropped) that are code symbols
# of the binary, each once, phases in order.
nm --defined-only "$BIN" | awk '$2 ~ /^[tTwW]$/ {print $3}' | sort -u >"$WORK/symbols"
for name in sqlite_idle pg_idle sqlite_load pg_load; do
  sed -nE "s/^c?fn=\([0-9]+\) (.*)$/\1/p" "$WORK/$name.out" | sed -E "s/'[0-9]+$//"
done | awk 'NR==FNR {known[$0]=1; next} known[$0] && !seen[$0]++' "$WORK/symbols" - >"$HERE/startup-symbols.txt"
echo "[symbols] $(wc -l <"$HERE/startup-symbols.txt") functions in $HERE/startup-symbols.txt" >&2
