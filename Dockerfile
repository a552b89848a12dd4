# syntax=docker/dockerfile:1
# meshgate's container image: one static-config gateway per container, built from this repository.
#
#   docker build -t meshgate .
#   docker run --rm --network host --ulimit memlock=-1 \
#       --security-opt seccomp=unconfined \
#       -v "$PWD/my-catalog:/etc/meshgate/catalog:ro" meshgate
#
# meshgate runs on io_uring, which Docker's default seccomp profile blocks (since Docker 25.0), and
# glommio locks a little memory per core: docs/container.md explains both flags and a narrower seccomp
# profile than "unconfined".

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# The shipped plugins are compiled to Wasm by crates/plugin/build.rs during the build.
RUN rustup target add wasm32-unknown-unknown
WORKDIR /src
COPY . .
# The binary is copied out of the cached target directory within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p meshgate \
    && install -D -m 0755 target/release/meshgate /out/meshgate

# Same Debian release as the build stage: the binary needs only its glibc.
FROM debian:${DEBIAN_RELEASE}-slim
COPY --from=build /out/meshgate /usr/local/bin/meshgate
COPY configs/container/ /etc/meshgate/
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin meshgate
USER 10001
# 8443: mesh traffic (what other datacenters dial); 19000: /metrics, /ready, /routes.
EXPOSE 8443 19000
# SIGTERM drains: /ready turns 503, listeners close, live connections get drain_timeout_secs.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/meshgate"]
CMD ["gateway", "--config", "/etc/meshgate/gateway.toml"]
