#!/usr/bin/env bash
# The pipeline benchmark of docs/benchmarks.md: PostgreSQL (installed and started if needed),
# Apache Kafka (installed once from Maven Central; the benchmark starts a node of its own on a
# free port, so it does not share a broker with anyone), the release build of likerate, then
# `cargo bench --bench pipeline`.
#   deploy/local/bench.sh                              # N = 1,000,000 events, 10M backlog
#   LIKERATE_BENCH_EVENTS=20000 LIKERATE_BENCH_BACKLOG=50000 LIKERATE_BENCH_LATENCY_SECS=5 \
#     deploy/local/bench.sh                            # smoke run (CI)
# Settings (environment): LIKERATE_BENCH_EVENTS, LIKERATE_BENCH_BACKLOG (0 skips that phase),
# LIKERATE_BENCH_BACKLOG_BUDGET (s), LIKERATE_BENCH_BACKLOG_SECS, LIKERATE_BENCH_LATENCY_SECS,
# LIKERATE_BENCH_LATENCY_FRACTION (0.5), LIKERATE_BENCH_COPY_ROUNDS (2),
# LIKERATE_BENCH_BROKERS (use this broker instead), LIKERATE_BENCH_PG, LIKERATE_BENCH_KEEP=1.
# The output is also written to $STATE_DIR/bench-<time>.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

apt_install gcc make pkg-config libssl-dev
deploy/local/postgres.sh
deploy/local/kafka.sh install
say "building likerate (release)"
cargo build --release --quiet
export LIKERATE_BIN="${CARGO_TARGET_DIR:-target}/release/likerate"
LIKERATE_BIN="$(cd "$(dirname "$LIKERATE_BIN")" && pwd)/likerate"
export LIKERATE_BIN
log="$STATE_DIR/bench-$(date +%Y%m%d-%H%M%S).log"
say "cargo bench --bench pipeline (output also in $log)"
cargo bench --quiet --bench pipeline 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
