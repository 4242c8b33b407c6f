# syntax=docker/dockerfile:1.7
# automation-gateway container image, for linux/amd64 and linux/arm64.
#
#   docker build -t automation-gateway:dev --build-arg GIT_COMMIT="$(git rev-parse --short=12 HEAD)" .
#
# Multi-arch (BuildKit; QEMU emulates the other architecture's build stage):
#   docker buildx create --use
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg GIT_COMMIT="$(git rev-parse --short=12 HEAD)" \
#     -t ghcr.io/OWNER/automation-gateway:0.1.0 --push .
#
# Build stage: the locked release build with glibc linked statically (static-pie, as `make
# release-gateway` builds it), so the runtime stage needs no libc at all. It runs on the target
# platform (emulated for the foreign one) because the static link needs that architecture's libc.a,
# which the native Rust image already carries; a cross toolchain would have to be installed instead.
# Runtime stage: distroless static (CA certificates, tzdata, /etc/passwd; no libc, no shell, no
# package manager), running as the numeric non-root user 65532 ("nonroot"). No secret is baked in:
# DATABASE_URL and tokens come from the environment / mounted Secrets at run time.
#
# Base images are pinned by the digest of their multi-arch index (the tag says what it is, the digest
# which one); bump both together, in a reviewed change.

FROM docker.io/library/rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS build
# Set by BuildKit for each platform of --platform.
ARG TARGETPLATFORM
ARG TARGETARCH
# The commit `automation-gateway --version` names: the context has no .git (.dockerignore), so
# build.rs reads it from the environment.
ARG GIT_COMMIT=""
WORKDIR /src
# Everything the workspace needs (see .dockerignore for what stays out).
COPY . .
# One cache per architecture: build scripts and dependencies compiled for one must never be reused
# by the other.
RUN --mount=type=cache,id=cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=cargo-target-${TARGETARCH},target=/src/target,sharing=locked \
    case "${TARGETARCH}" in \
      amd64) triple=x86_64-unknown-linux-gnu ;; \
      arm64) triple=aarch64-unknown-linux-gnu ;; \
      *) echo "unsupported platform ${TARGETPLATFORM}: build for linux/amd64 or linux/arm64" >&2; exit 1 ;; \
    esac \
 && GIT_COMMIT="${GIT_COMMIT}" RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "$triple" --bin automation-gateway \
 && install -D -m 0755 "target/$triple/release/automation-gateway" /out/automation-gateway \
 && install -d -m 0750 /out/data

FROM gcr.io/distroless/static-debian12:nonroot@sha256:d093aa3e30dbadd3efe1310db061a14da60299baff8450a17fe0ccc514a16639 AS runtime
LABEL org.opencontainers.image.title="automation-gateway" \
      org.opencontainers.image.description="Durable job-control plane: REST API for automation actions with Prometheus metrics" \
      org.opencontainers.image.source="https://github.com/example-org/automation-gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/automation-gateway /usr/local/bin/automation-gateway
# /data holds the default SQLite database; with a read-only root filesystem mount a volume here.
COPY --from=build --chown=65532:65532 /out/data /data
WORKDIR /data
ENV GATEWAY_LISTEN=0.0.0.0:8000 \
    DATABASE_URL=sqlite:///data/automation-gateway.db?mode=rwc \
    RUST_LOG=info
USER 65532:65532
EXPOSE 8000
# Liveness/readiness are Kubernetes probes on /healthz and /readyz (the image has no shell or curl
# for a Docker HEALTHCHECK; see charts/automation-gateway/README.md, checkov CKV_DOCKER_2). The
# Compose stack checks health with the binary's own client (`jobs list`), in exec form.
ENTRYPOINT ["/usr/local/bin/automation-gateway"]
CMD ["serve"]
