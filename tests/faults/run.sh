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
SUITE=fault-tests
source "$HERE/../lib/suite.sh"

suite_require_bin
suite_require_postgres
for tool in mount umount; do
  command -v "$tool" >/dev/null 2>&1 || { suite_log "$tool is missing (install mount)"; exit 1; }
done
if [ "$(id -u)" -ne 0 ]; then
  suite_log "must run as root (the full-disk test mounts a tmpfs)"
  exit 1
fi
suite_pip pytest requests h2
suite_pytest 900 "$HERE" -s "$@"
