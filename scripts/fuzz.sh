#!/usr/bin/env bash
# Runs every fuzz target of crates/fuzz for MINUTES (default 30) each, all at once at low CPU priority,
# then merges what they found into the committed corpora and prints one line per target: executions,
# coverage (libFuzzer's `cov` edges and `ft` features), corpus size, crashes. Crash inputs are copied into
# the corpus, so `cargo test -p meshgate-fuzz` fails on them until they are fixed.
#   scripts/fuzz.sh [MINUTES] [TARGET...]
# Needs the nightly toolchain and cargo-fuzz (installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(client_hello sni_name route_table config catalog)

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.12.0

cd crates/fuzz
cargo +nightly fuzz build --release >/dev/null
work=../../target/fuzz-run
rm -rf "$work"
mkdir -p "$work"
pids=()
for t in "${targets[@]}"; do
    mkdir -p "$work/$t/corpus" "$work/$t/crashes"
    # The committed corpus stays read-only during the run; new inputs go to the scratch directory first.
    nice -n 19 "fuzz/target/x86_64-unknown-linux-gnu/release/$t" \
        "$work/$t/corpus" "corpus/$t" \
        -max_total_time=$((minutes * 60)) -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -artifact_prefix="$work/$t/crashes/" >"$work/$t/log" 2>&1 &
    pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || status=1
done

printf '%-14s %8s %14s %10s %8s %8s %8s %8s\n' target minutes executions exec/s cov ft corpus crashes
for t in "${targets[@]}"; do
    log="$work/$t/log"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | grep -E 'cov: ' | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    crashes=$(find "$work/$t/crashes" -type f | wc -l)
    # Keep the smallest set of inputs that covers everything either corpus covered.
    mkdir -p "$work/$t/merged"
    "fuzz/target/x86_64-unknown-linux-gnu/release/$t" -merge=1 "$work/$t/merged" "corpus/$t" \
        "$work/$t/corpus" >"$work/$t/merge.log" 2>&1
    for f in "$work/$t/merged"/*; do
        [ -e "corpus/$t/$(basename "$f")" ] || cp "$f" "corpus/$t/"
    done
    for f in "$work/$t/crashes"/*; do
        [ -e "$f" ] && cp "$f" "corpus/$t/regression-$(basename "$f")"
    done
    printf '%-14s %8s %14s %10s %8s %8s %8s %8s\n' "$t" "$minutes" "${execs:-?}" "${rate:-?}" \
        "${cov:-?}" "${ft:-?}" "$(find "corpus/$t" -type f | wc -l)" "$crashes"
    [ "$crashes" -eq 0 ] || status=1
done
echo "logs: target/fuzz-run/<target>/log"
exit $status
