# Shared steps of the black-box suites' run.sh (faults, runners, live, ui), sourced after `set -euo
# pipefail` with SUITE set to the log prefix. Every step fails loudly; nothing is ever skipped.

PYTHON="${PYTHON:-python3}"

suite_log() { printf '[%s] %s\n' "$SUITE" "$*" >&2; }

# GATEWAY_BIN must name the built service binary; exported as an absolute path.
suite_require_bin() {
  if [ -z "${GATEWAY_BIN:-}" ]; then
    suite_log "GATEWAY_BIN is not set: point it at the built service binary, e.g. /var/tmp/ag-target/debug/automation-gateway"
    exit 1
  fi
  if [ ! -x "$GATEWAY_BIN" ]; then
    suite_log "GATEWAY_BIN=$GATEWAY_BIN is not an executable file"
    exit 1
  fi
  GATEWAY_BIN="$(cd "$(dirname "$GATEWAY_BIN")" && pwd)/$(basename "$GATEWAY_BIN")"
  export GATEWAY_BIN
}

# The local PostgreSQL (127.0.0.1:5432, trust, user postgres) and its client tools.
suite_require_postgres() {
  local tool
  for tool in psql createdb dropdb; do
    command -v "$tool" >/dev/null 2>&1 || { suite_log "$tool is missing (install postgresql-client)"; exit 1; }
  done
  timeout 10 psql -h 127.0.0.1 -U postgres -d postgres -X -tAc 'SELECT 1' >/dev/null \
    || { suite_log "PostgreSQL at 127.0.0.1:5432 (user postgres, trust) does not answer"; exit 1; }
}

# Installs missing Python packages by name; each argument is `module` or `module=package`.
suite_pip() {
  local spec module missing=() imports=()
  for spec in "$@"; do
    module="${spec%%=*}"
    imports+=("$module")
    "$PYTHON" -c "import $module" 2>/dev/null || missing+=("${spec#*=}")
  done
  if ((${#missing[@]})); then
    suite_log "pip install ${missing[*]}"
    timeout 900 "$PYTHON" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
    hash -r
  fi
  local joined
  joined="$(IFS=,; echo "${imports[*]}")"
  "$PYTHON" -c "import $joined" || { suite_log "python packages missing after install"; exit 1; }
}

# Runs pytest on the suite's folder within `timeout` seconds: no test collected, or the time
# running out, fails the run. Usage: suite_pytest TIMEOUT DIR [pytest args...]
suite_pytest() {
  local limit="$1" dir="$2"
  shift 2
  suite_log "service $("$GATEWAY_BIN" --version 2>/dev/null || echo '?'), binary $GATEWAY_BIN"
  cd "$(cd "$dir/../.." && pwd)"
  set +e
  timeout "$limit" "$PYTHON" -m pytest -p no:cacheprovider -rA "$dir" "$@"
  local rc=$?
  set -e
  if [ "$rc" -eq 5 ]; then
    suite_log "pytest collected no tests: failing"
    exit 1
  fi
  if [ "$rc" -eq 124 ]; then
    suite_log "FAILED: the suite did not finish within $limit s"
    exit 1
  fi
  [ "$rc" -eq 0 ] && suite_log "all tests passed" || suite_log "FAILED (pytest exit $rc)"
  return "$rc"
}
