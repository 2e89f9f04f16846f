# syntax=docker/dockerfile:1
#
# awork-gateway container image: a release build on Debian 12 (bookworm), run on distroless
# cc-debian12 (glibc and libgcc only: the binary uses rustls with ring, no OpenSSL) as the
# unprivileged user 65532, with state only under the volume /var/lib/awork-gateway.
#
#   DOCKER_BUILDKIT=1 docker build -t awork-gateway .
#   docker run --rm -p 127.0.0.1:8080:8080 -p 127.0.0.1:9090:9090 -e AWORK_API_KEY \
#     -v "$PWD/gateway.toml:/etc/awork-gateway/gateway.toml:ro" awork-gateway
#
# The root filesystem can be read-only (`--read-only`): the gateway writes nothing but OAuth
# tokens, into the volume.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
# The image ships the profile-guided build that bench/compare.sh measures: bench/pgo.sh builds
# an instrumented gateway, trains it against nginx with wrk, and builds again with the counts
# (+6-9 % req/s, bench/README.md). Its tools stay in this stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl nginx python3 wrk \
    && rm -rf /var/lib/apt/lists/* \
    && rustup component add llvm-tools
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench/quota_load.rs bench/lib.sh bench/pgo.sh ./bench/
# The registry, git checkouts and target/ live in BuildKit cache mounts, so a rebuild after a
# source change compiles only this crate (twice: instrumented, then optimised); the binary is
# copied out of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    bench/pgo.sh --seconds 5 \
    && install -D -m 0755 target/pgo/awork-gateway /out/awork-gateway \
    && install -d -m 0700 /out/state

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="awork-gateway" \
      org.opencontainers.image.description="Authenticating gateway for the awork API: callers without secrets, one place for keys, the workspace quota kept." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=build /out/awork-gateway /usr/local/bin/awork-gateway
COPY deploy/docker/gateway.toml /etc/awork-gateway/gateway.toml
COPY --from=build --chown=65532:65532 --chmod=0700 /out/state /var/lib/awork-gateway

ENV AWORK_GATEWAY_CONFIG=/etc/awork-gateway/gateway.toml \
    RUST_LOG=info
USER 65532:65532
WORKDIR /var/lib/awork-gateway
VOLUME ["/var/lib/awork-gateway"]
# 8080: the API for callers; 9090: /healthz /readyz /metrics /status (keep it private).
EXPOSE 8080 9090
# Reads server.admin_listen from AWORK_GATEWAY_CONFIG and probes /healthz on loopback.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/awork-gateway", "healthcheck"]
# SIGTERM drains in-flight requests (server.drain_timeout) and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/awork-gateway"]
CMD ["serve"]
