# syntax=docker/dockerfile:1
# meshgate's container image: one static-config gateway (or sidecar) per container.
#
#   docker build -t meshgate .                       # builds from source (needs the rust image)
#   docker run --rm --network host --ulimit memlock=8388608 --user 10001 --read-only \
#       --security-opt seccomp=deploy/seccomp/meshgate.json \
#       -v "$PWD/my-catalog:/etc/meshgate/catalog:ro" meshgate
#
# meshgate runs on io_uring, which the runtimes' default seccomp profiles block: deploy/seccomp/meshgate.json
# is the default profile plus the three io_uring calls. glommio locks a little memory per core (memlock).
# docs/container.md explains both flags.
#
# Stages:
#   build      compiles from source, strips the binary, keeps its debug info beside it
#   debug-info `docker build --target debug-info -o out .` exports meshgate.debug (gdb finds it by its
#              .gnu_debuglink; the image carries only the stripped binary)
#   prebuilt   takes a binary built outside (CI: `cargo xtask image` puts the stripped release binary in
#              target/image/): `--target prebuilt`
#   runtime    the default: the binary from `build`
# Both images are the same: the binary, the C library it links, /etc/passwd naming uid 10001, and
# configs/container/ as /etc/meshgate. No shell, no package manager (`meshgate health` is the
# HEALTHCHECK, so no curl either).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie
# Where the C library comes from. The default is the public image; a machine without a registry makes
# one from Debian's packages (`mmdebstrap --variant=minbase trixie base.tar && podman import base.tar
# localhost/debian-minbase:trixie`, what `cargo xtask image` does) and passes --build-arg BASE=that.
ARG BASE=debian:${DEBIAN_RELEASE}-slim

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# The shipped plugins are compiled to Wasm by crates/plugin/build.rs during the build.
RUN rustup target add wasm32-unknown-unknown
WORKDIR /src
COPY . .
# The binary is copied out of the cached target directory within the same step: stripped, with its
# debug info in meshgate.debug and a link to it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p meshgate \
    && install -D -m 0755 target/release/meshgate /out/meshgate \
    && objcopy --only-keep-debug /out/meshgate /out/meshgate.debug \
    && objcopy --strip-all --add-gnu-debuglink=/out/meshgate.debug /out/meshgate

FROM scratch AS debug-info
COPY --from=build /out/meshgate.debug /meshgate.debug

# The root filesystem of the image: the binary and exactly the shared objects `ldd` says it loads
# (the C library, libgcc_s and the dynamic loader), taken from BASE so they match the build's glibc.
FROM ${BASE} AS rootfs-base
RUN mkdir -p /rootfs/usr/local/bin /rootfs/etc /rootfs/tmp \
    && echo 'meshgate:x:10001:10001:meshgate:/nonexistent:/nonexistent' > /rootfs/etc/passwd \
    && echo 'meshgate:x:10001:' > /rootfs/etc/group

FROM rootfs-base AS rootfs-prebuilt
COPY target/image/meshgate /rootfs/usr/local/bin/meshgate
RUN ldd /rootfs/usr/local/bin/meshgate | grep -o '/[^ ]*' | xargs -I{} cp -L --parents {} /rootfs

FROM rootfs-base AS rootfs-build
COPY --from=build /out/meshgate /rootfs/usr/local/bin/meshgate
RUN ldd /rootfs/usr/local/bin/meshgate | grep -o '/[^ ]*' | xargs -I{} cp -L --parents {} /rootfs

FROM scratch AS common
COPY configs/container/ /etc/meshgate/
USER 10001:10001
# 8443: mesh traffic (what other datacenters dial); 19000: /metrics, /ready, /routes.
EXPOSE 8443 19000
# /ready answers 200 once every core listens and a table is loaded, 503 while draining.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/meshgate", "health", "--admin", "127.0.0.1:19000"]
# SIGTERM drains: /ready turns 503, listeners close, live connections get drain_timeout_secs.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/meshgate"]
CMD ["gateway", "--config", "/etc/meshgate/gateway.toml"]

FROM common AS prebuilt
COPY --from=rootfs-prebuilt /rootfs/ /

FROM common AS runtime
COPY --from=rootfs-build /rootfs/ /
