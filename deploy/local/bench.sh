#!/usr/bin/env bash
# The pipeline benchmark of docs/benchmarks.md: PostgreSQL (installed and started if needed),
# Apache Kafka (installed once from Maven Central; the benchmark starts a node of its own on a
# free port, so it does not share a broker with anyone), the release build of likerate, then
# `cargo bench --bench pipeline`.
#   deploy/local/bench.sh                              # N = 1,000,000 events, 10M backlog
#   LIKERATE_BENCH_EVENTS=20000 LIKERATE_BENCH_BACKLOG=50000 LIKERATE_BENCH_LATENCY_SECS=5 \
#     LIKERATE_BENCH_LATENCY_WARMUP=2 deploy/local/bench.sh  # smoke run (CI)
#   deploy/local/bench.sh scale                        # scale mode (issue 14): 10M stored
#                                                      # rows, 300k events
#   LIKERATE_BENCH_SCALE=200000 LIKERATE_BENCH_EVENTS=20000 LIKERATE_BENCH_EXPORT_ROWS=20000 \
#     LIKERATE_BENCH_READ_SAMPLES=50 LIKERATE_BENCH_READ_BUDGET=3 \
#     deploy/local/bench.sh scale                      # its smoke run (CI)
# Settings (environment): LIKERATE_BENCH_EVENTS, LIKERATE_BENCH_BACKLOG (0 skips that phase),
# LIKERATE_BENCH_BACKLOG_BUDGET (s), LIKERATE_BENCH_BACKLOG_SECS, LIKERATE_BENCH_LATENCY_SECS,
# LIKERATE_BENCH_LATENCY_FRACTION (0.5), LIKERATE_BENCH_LATENCY_WARMUP (s, 15),
# LIKERATE_BENCH_COPY_ROUNDS (2),
# LIKERATE_BENCH_BROKERS (use this broker instead), LIKERATE_BENCH_PG, LIKERATE_BENCH_KEEP=1,
# LIKERATE_BENCH_EVENT_IDS=v7 (time-ordered event ids instead of random v4 ones);
# scale mode: LIKERATE_BENCH_SCALE (stored rows), LIKERATE_BENCH_EVENTS (default 300,000 there),
# LIKERATE_BENCH_EXPORT_ROWS (1,000,000), LIKERATE_BENCH_READ_SAMPLES (1000),
# LIKERATE_BENCH_READ_BUDGET (60 s per read shape). The method of
# both modes opens benches/pipeline.rs and benches/pipeline/scale.rs.
# The output is also written to $STATE_DIR/bench-<time>.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
  "") ;;
  scale) export LIKERATE_BENCH_MODE=scale ;;
  *) echo "usage: $0 [scale]" >&2; exit 2 ;;
esac
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
say "cargo bench --bench pipeline${LIKERATE_BENCH_MODE:+ (mode $LIKERATE_BENCH_MODE)} (output also in $log)"
cargo bench --quiet --bench pipeline 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
