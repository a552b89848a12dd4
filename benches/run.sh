#!/usr/bin/env bash
# The comparison suite: meshgate vs HAProxy, nginx (ssl_preread) and sniproxy vs a direct connection, in
# one run, on loopback. Installs the peers from Debian packages, builds in release mode, runs
# meshgate-bench, and writes the tables to benches/results/latest.md.
#   benches/run.sh            full run (about 15 minutes on 2 cores)
#   benches/run.sh --quick    one short round of everything (about 2 minutes)
# Other options go to meshgate-bench: --rounds N --seconds S --bulk-mib M --idle 4000,9000 --routes 10,10000
# Then meshgate-sidecars (the sidecar vs `consul connect proxy` and stunnel4; --quick is passed on) writes
# benches/results/sidecars.md; then meshgate-control-bench (one catalog change among 10,000 services)
# writes benches/results/control.md, then adds a row for the same catalog in a Consul agent.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for bin in haproxy nginx sniproxy stunnel4; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(nginx-stream)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Package post-install scripts may try to start the daemons; there is nothing to start them here.
    apt-get install -y -qq haproxy nginx-light libnginx-mod-stream sniproxy stunnel4 >/dev/null
fi

# The idle-connection test holds tens of thousands of sockets on both sides of each router.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Widen the ephemeral port range for the run, and put it back afterwards: left wide, clients' TIME_WAIT
# sockets squat on ports that servers (the demo's 9090, say) later want to bind.
if [ -w /proc/sys/net/ipv4/ip_local_port_range ]; then
    saved_range=$(cat /proc/sys/net/ipv4/ip_local_port_range)
    trap 'echo "$saved_range" > /proc/sys/net/ipv4/ip_local_port_range' EXIT
    echo "1024 65535" > /proc/sys/net/ipv4/ip_local_port_range
fi

cargo build --release -p meshgate -p meshgate-bench
mkdir -p benches/results
./target/release/meshgate-bench --out benches/results/latest.md "$@"
# The sidecar against its peers (Consul 1.8.7 is installed under target/tools on first use).
sidecar_args=()
for arg in "$@"; do
    [ "$arg" = --quick ] && sidecar_args+=(--quick)
done
./target/release/meshgate-sidecars --out benches/results/sidecars.md "${sidecar_args[@]}"
# The control plane: one catalog change among 10,000 services (file catalog; --quick is passed on).
control_args=()
for arg in "$@"; do
    [ "$arg" = --quick ] && control_args+=(--quick)
done
./target/release/meshgate-control-bench --out benches/results/control.md "${control_args[@]}"
# The same with the catalog in a Consul 1.8.7 dev agent (default limits), as a second row.
./target/release/meshgate-control-bench --consul --changes 20 --label "meshgate, Consul" --append \
    --out benches/results/control.md "${control_args[@]}"
