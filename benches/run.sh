#!/usr/bin/env bash
# Builds meshgate and the load generator in release mode, then measures direct vs meshgate (splice and
# buffered relay) in one run. Extra arguments go to meshgate-bench (--rounds, --seconds, --bulk-mib,
# --clients, --workers). The table is printed and written to benches/results/latest.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p meshgate -p meshgate-bench
mkdir -p benches/results
./target/release/meshgate-bench --out benches/results/latest.md "$@"
