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
SUITE=runner-tests
source "$HERE/../lib/suite.sh"

suite_require_bin
suite_pip pytest requests yaml=pyyaml
suite_pytest "${RUNNERS_TIMEOUT:-1200}" "$HERE" "$@"
