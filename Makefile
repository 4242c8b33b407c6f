# automation-gateway: `make run` serves on :8000 with SQLite; `make test` installs what the tests
# need and runs every test (Rust unit + integration on SQLite and PostgreSQL, lint, deployment
# bundle checks with real Helm, Prometheus and Alertmanager).

SHELL := /bin/bash
CARGO ?= cargo
# Where cargo puts binaries (honours CARGO_TARGET_DIR).
TARGET_DIR = $(shell $(CARGO) metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

.PHONY: run release-gateway test lint test-rust test-deploy test-security test-faults test-runners test-live test-ui check-postgres openapi bench bench-smoke

# The shipped gateway binary links glibc statically (static-pie): the shared libraries' pages stay
# out of its resident set (about 1 MB less idle RSS). `--target` with the host triple makes cargo
# apply the flag to the gateway only, not to build scripts and proc-macros. The Dockerfile does
# the same.
HOST := $(shell rustc -vV | sed -n 's/^host: //p')
RELEASE_GATEWAY = $(TARGET_DIR)/$(HOST)/release/automation-gateway

run: release-gateway
	"$(RELEASE_GATEWAY)"

release-gateway:
	RUSTFLAGS="$$RUSTFLAGS -C target-feature=+crt-static" $(CARGO) build --release --locked --target $(HOST) --bin automation-gateway

## The README's test command.
test: lint check-postgres test-rust bench-smoke test-deploy test-security test-faults test-runners test-live test-ui
	@echo "make test: all suites passed"

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	@if $(CARGO) tree -d --depth 0 --locked | grep -i opentelemetry; then \
		echo "error: an opentelemetry crate appears twice in Cargo.lock"; exit 1; \
	else echo "cargo tree -d: no duplicate opentelemetry crates"; fi

# The integration tests create (and drop) their own databases on this server.
check-postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || { \
		echo "error: PostgreSQL is not answering on 127.0.0.1:5432 (the tests need it; see README)"; exit 1; }

test-rust:
	$(CARGO) test --workspace --locked -- --test-threads 4

test-deploy:
	$(CARGO) build --locked --bin automation-gateway
	GATEWAY_BIN="$(TARGET_DIR)/debug/automation-gateway" bash tests/deploy/run.sh

# Fuzzing from the OpenAPI document (schemathesis), hostile input, token leaks, and
# `cargo deny check licenses bans sources`.
test-security:
	$(CARGO) build --locked --bin automation-gateway
	GATEWAY_BIN="$(TARGET_DIR)/debug/automation-gateway" bash tests/security/run.sh
	bash tests/security/deny.sh

# Faults, for real: a full disk (tmpfs; needs root) and the SQLite size cap, failing PostgreSQL
# commits and terminated backends, silent and slow connections by the thousand, SIGSTOPped
# replicas, retention.
test-faults:
	$(CARGO) build --locked --bin automation-gateway
	GATEWAY_BIN="$(TARGET_DIR)/debug/automation-gateway" bash tests/faults/run.sh

# The runners against wire-format fakes of AWX, Jenkins, GitHub Actions and the Kubernetes API on
# 127.0.0.1 (plus http and command), crash resume with SIGKILL/SIGSTOP, per-target concurrency on
# SQLite and two PostgreSQL replicas, and the actions file's checks.
test-runners:
	$(CARGO) build --locked --bin automation-gateway
	GATEWAY_BIN="$(TARGET_DIR)/debug/automation-gateway" bash tests/runners/run.sh

# Following jobs live: the event log on both backends, SSE streams (resume, cross-replica latency,
# 1 000 idle streams' memory), long-poll, signed webhooks from the outbox (with SIGKILL), traces
# against a local OTLP receiver, and the `jobs` command line.
test-live:
	$(CARGO) build --locked --bin automation-gateway
	GATEWAY_BIN="$(TARGET_DIR)/debug/automation-gateway" bash tests/live/run.sh

# The job console in a real browser: headless Chromium driven by Selenium (installs the Debian
# chromium and chromium-driver packages when missing); screenshots in tests/ui/artifacts/.
test-ui:
	$(CARGO) build --locked --bin automation-gateway
	GATEWAY_BIN="$(TARGET_DIR)/debug/automation-gateway" bash tests/ui/run.sh

# Regenerates the committed OpenAPI document (a test fails when it drifts).
openapi:
	$(CARGO) run --quiet -- openapi > openapi.json

# The full benchmark (about 8 minutes): builds the release gateway, prints every figure.
bench: release-gateway
	$(CARGO) build --release --locked -p bench
	"$(TARGET_DIR)/release/bench" --full --gateway "$(RELEASE_GATEWAY)"

# A short run of every benchmark path on the debug build, so the benchmark cannot rot.
bench-smoke:
	$(CARGO) build --locked -p automation-gateway -p bench
	"$(TARGET_DIR)/debug/bench" --smoke
