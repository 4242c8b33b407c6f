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
SUITE=ui-tests
source "$HERE/../lib/suite.sh"

suite_require_bin

# --- Debian packages: the browser and its driver (same version, from the same archive) ---------
export CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
export CHROMEDRIVER_BIN="${CHROMEDRIVER_BIN:-/usr/bin/chromedriver}"
if [ ! -x "$CHROMIUM_BIN" ] || [ ! -x "$CHROMEDRIVER_BIN" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  suite_log "apt-get install chromium chromium-driver"
  if ! DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y chromium chromium-driver >/dev/null; then
    suite_log "apt-get update (a package was missing from the lists)"
    timeout 600 $SUDO apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y chromium chromium-driver >/dev/null
  fi
  hash -r
fi
[ -x "$CHROMIUM_BIN" ] || { suite_log "$CHROMIUM_BIN is missing after installing chromium"; exit 1; }
[ -x "$CHROMEDRIVER_BIN" ] || { suite_log "$CHROMEDRIVER_BIN is missing after installing chromium-driver"; exit 1; }

suite_pip pytest requests yaml=pyyaml selenium

# Selenium Manager must not try to download a browser or driver (no internet here).
export SE_OFFLINE=1
export UI_ARTIFACTS="${UI_ARTIFACTS:-$HERE/artifacts}"
mkdir -p "$UI_ARTIFACTS"
rm -f "$UI_ARTIFACTS"/*.png "$UI_ARTIFACTS"/FAILED-* "$UI_ARTIFACTS"/chromedriver.log  # this run's only
suite_log "$("$CHROMIUM_BIN" --version 2>/dev/null | tail -n 1), $("$CHROMEDRIVER_BIN" --version 2>/dev/null | cut -d' ' -f1-2)"
suite_log "screenshots in $UI_ARTIFACTS"
suite_pytest "${UI_TIMEOUT:-1200}" "$HERE" "$@"
