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
SUITE=live-tests
source "$HERE/../lib/suite.sh"

suite_require_bin
suite_require_postgres
# test_traces.py decodes the gateway's OTLP/HTTP protobuf exports.
suite_pip pytest requests yaml=pyyaml opentelemetry.proto=opentelemetry-proto
suite_pytest "${LIVE_TIMEOUT:-720}" "$HERE" -s "$@"
