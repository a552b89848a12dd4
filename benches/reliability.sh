#!/usr/bin/env bash
# The reliability runs behind docs/reliability.md, against the release binary on loopback:
#   benches/reliability.sh soak [--minutes 30]     mixed load + reloads + catalog churn (default 30 min)
#   benches/reliability.sh faults [--seconds 20]   honest load beside each fault, phase by phase
# Reports go to stdout and benches/results/{soak,faults}.md. Fuzzing: scripts/fuzz.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
# Hundreds of client and backend sockets; glommio locks memory for its rings.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
ulimit -l unlimited 2>/dev/null || ulimit -l 65536 2>/dev/null || true
cargo build --release -p meshgate -p meshgate-bench
exec ./target/release/meshgate-soak "$@"
