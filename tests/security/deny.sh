#!/usr/bin/env bash
# Supply-chain gate: `cargo deny check licenses bans sources` with the committed deny.toml
# (offline checks only: no advisory database is fetched).
#
#   bash tests/security/deny.sh
#
# Installs cargo-deny (crates.io, `cargo install --locked`) when `cargo deny --version` fails.
# Exits non-zero when a check fails.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
log() { printf '[deny] %s\n' "$*" >&2; }

if ! cargo deny --version >/dev/null 2>&1; then
  log "cargo-deny is missing: cargo install --locked cargo-deny (takes several minutes)"
  timeout 1800 cargo install --locked cargo-deny
fi
cargo deny --version >&2

cd "$REPO"
[ -f deny.toml ] || { log "deny.toml is missing at $REPO"; exit 1; }
# cargo-deny reads the metadata of every platform's dependencies, so they must be on disk even
# where this machine's build never needed them; fetching them is the only network use here.
timeout 600 cargo fetch --locked --manifest-path "$REPO/Cargo.toml" >&2
set +e
timeout 600 cargo deny --offline --workspace --manifest-path "$REPO/Cargo.toml" check --show-stats licenses bans sources
rc=$?
set -e
if [ "$rc" -eq 0 ]; then
  log "licenses, bans, sources: ok"
else
  log "FAILED (exit $rc)"
fi
exit "$rc"
