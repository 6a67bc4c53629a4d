# syntax=docker/dockerfile:1
#
# The broadcast-router image: the router binary and the example plugins,
# running as a non-root user on a distroless base (no shell, no package
# manager). Build from the repository root:
#
#     docker build -t broadcast-router:0.1.0 .
#
# Layout (what deploy/ relies on):
#   /usr/local/bin/broadcast-router      the binary (ENTRYPOINT)
#   /etc/broadcast-router/config/        router.toml: a copy of deploy/router.toml;
#                                        Kubernetes mounts the ConfigMap here
#   /etc/broadcast-router/plugins/       shard_filter.wasm, hmac_sign.wasm,
#                                        quorum_merge.wasm (router.toml names
#                                        them as ../plugins/NAME.wasm)
#   /var/cache/broadcast-router/         compiled-plugin cache, owned by the user
#
# The toolchain matches `rust-version` in Cargo.toml.
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
# Cargo's registry and the target directory live in cache mounts, so a
# rebuild after a source change compiles only what changed; the results are
# copied to /out in the same step, since cache mounts are not in the image.
RUN --mount=type=cache,id=broadcast-router-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=broadcast-router-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=broadcast-router-target,target=/src/target,sharing=locked \
    set -eux; \
    cargo build --release --locked --bin broadcast-router; \
    bash plugins/build.sh; \
    mkdir -p /out/usr/local/bin /out/etc/broadcast-router/config \
        /out/etc/broadcast-router/plugins /out/var/cache/broadcast-router; \
    cp target/release/broadcast-router /out/usr/local/bin/; \
    for plugin in shard_filter hmac_sign quorum_merge; do \
        cp "plugins/build/${plugin}.wasm" /out/etc/broadcast-router/plugins/; \
    done; \
    cp deploy/router.toml /out/etc/broadcast-router/config/router.toml; \
    /out/usr/local/bin/broadcast-router --version

# glibc and libgcc from Debian 12, like the builder; user 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder --chown=0:0 /out/usr/local/bin/broadcast-router /usr/local/bin/broadcast-router
COPY --from=builder --chown=0:0 /out/etc/broadcast-router /etc/broadcast-router
COPY --from=builder --chown=65532:65532 /out/var/cache/broadcast-router /var/cache/broadcast-router
ENV BROADCAST_ROUTER_CONFIG=/etc/broadcast-router/config/router.toml
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/broadcast-router"]
CMD ["serve"]

LABEL org.opencontainers.image.title="broadcast-router" \
      org.opencontainers.image.description="Deliver one HTTP request to every replica of a Kubernetes workload and report every pod's outcome." \
      org.opencontainers.image.licenses="Apache-2.0"
