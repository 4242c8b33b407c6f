#!/usr/bin/env bash
# Console tests (issue 13: the job console at /ui) in a real browser: Selenium drives headless
# Debian Chromium through chromium-driver against the built service binary, each test with its own
# gateway on SQLite in a temp dir on a free 127.0.0.1 port:
#
#   GATEWAY_BIN=/var/tmp/ag-live-bin/automation-gateway bash tests/ui/run.sh [extra pytest args]
#
# Installs what it needs by package name, idempotently (apt: chromium, chromium-driver; pip: selenium,
# pytest, requests, pyyaml). Never skips: a missing GATEWAY_BIN, browser, driver or package fails the
# run, and so does collecting no tests. Selenium Manager never downloads anything (SE_OFFLINE=1, the
# driver and browser paths are given). Screenshots of every view go to $UI_ARTIFACTS (default
# tests/ui/artifacts/). Only 127.0.0.1 is contacted.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
SUITE_TIMEOUT="${UI_TIMEOUT:-1200}"
log() { printf '[ui-tests] %s\n' "$*" >&2; }

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

# --- Debian packages: the browser and its driver (same version, from the same archive) ---------
export CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
export CHROMEDRIVER_BIN="${CHROMEDRIVER_BIN:-/usr/bin/chromedriver}"
if [ ! -x "$CHROMIUM_BIN" ] || [ ! -x "$CHROMEDRIVER_BIN" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  log "apt-get install chromium chromium-driver"
  if ! DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y chromium chromium-driver >/dev/null; then
    log "apt-get update (a package was missing from the lists)"
    timeout 600 $SUDO apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y chromium chromium-driver >/dev/null
  fi
  hash -r
fi
[ -x "$CHROMIUM_BIN" ] || { log "$CHROMIUM_BIN is missing after installing chromium"; exit 1; }
[ -x "$CHROMEDRIVER_BIN" ] || { log "$CHROMEDRIVER_BIN is missing after installing chromium-driver"; exit 1; }

# --- Python packages ----------------------------------------------------------------------------
PIP_PKGS=()
"$PYTHON" -c 'import pytest' 2>/dev/null || PIP_PKGS+=(pytest)
"$PYTHON" -c 'import requests' 2>/dev/null || PIP_PKGS+=(requests)
"$PYTHON" -c 'import yaml' 2>/dev/null || PIP_PKGS+=(pyyaml)
"$PYTHON" -c 'import selenium' 2>/dev/null || PIP_PKGS+=(selenium)
if ((${#PIP_PKGS[@]})); then
  log "pip install ${PIP_PKGS[*]}"
  timeout 900 "$PYTHON" -m pip install --quiet --disable-pip-version-check "${PIP_PKGS[@]}"
  hash -r
fi
"$PYTHON" -c 'import pytest, requests, yaml, selenium' || { log "python packages missing after install"; exit 1; }

# Selenium Manager must not try to download a browser or driver (no internet here).
export SE_OFFLINE=1
export UI_ARTIFACTS="${UI_ARTIFACTS:-$HERE/artifacts}"
mkdir -p "$UI_ARTIFACTS"
rm -f "$UI_ARTIFACTS"/*.png "$UI_ARTIFACTS"/FAILED-* "$UI_ARTIFACTS"/chromedriver.log  # this run's only
log "service $("$GATEWAY_BIN" --version 2>/dev/null || echo '?'), binary $GATEWAY_BIN"
log "$("$CHROMIUM_BIN" --version 2>/dev/null | tail -n 1), $("$CHROMEDRIVER_BIN" --version 2>/dev/null | cut -d' ' -f1-2)"
log "screenshots in $UI_ARTIFACTS"

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
[ "$rc" -eq 0 ] && log "all console tests passed" || log "FAILED (pytest exit $rc)"
exit "$rc"
