#!/usr/bin/env bash
# Quick start, the whole test suite: installs what the tests need (Debian packages for the
# build, PostgreSQL, Java and Maven, Prometheus and Alertmanager, Chromium; Apache Kafka from
# Maven Central), starts PostgreSQL, then runs formatting and lint checks, the configuration
# checks of deploy/ and grafana/, smoke runs of the pipeline benchmark and of its scale mode,
# every Rust test against the real services, then 60 s of fuzzing per fuzz target
# (deploy/local/fuzz.sh) and schemathesis against the OpenAPI document
# (deploy/local/schemathesis.sh). The test binaries
# start their own Kafka nodes (one per binary, and a three-node cluster for
# tests/kafka_faults.rs) on free ports, and so does the schemathesis run.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

need=(gcc make pkg-config libssl-dev python3-venv chromium)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
apt_install "${need[@]}"
deploy/local/postgres.sh
deploy/local/observability.sh
deploy/local/kafka.sh install
rustup component add rustfmt clippy >/dev/null 2>&1 || true

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
say "configuration checks (promtool, amtool, compose, Kubernetes, Grafana)"
bash deploy/check-deploy.sh
say "benchmark smoke run (small N, so the benchmark cannot rot; figures are not checked)"
LIKERATE_BENCH_EVENTS=20000 LIKERATE_BENCH_BACKLOG=50000 LIKERATE_BENCH_LATENCY_SECS=5 \
  LIKERATE_BENCH_LATENCY_WARMUP=2 LIKERATE_BENCH_BACKLOG_SECS=5 bash deploy/local/bench.sh
say "scale benchmark smoke run (200,000 stored rows, 20,000 events; figures are not checked)"
LIKERATE_BENCH_SCALE=200000 LIKERATE_BENCH_EVENTS=20000 LIKERATE_BENCH_EXPORT_ROWS=20000 \
  LIKERATE_BENCH_READ_SAMPLES=50 LIKERATE_BENCH_READ_BUDGET=3 bash deploy/local/bench.sh scale
say "cargo test (PostgreSQL, Apache Kafka, Prometheus, Alertmanager, Chromium)"
out="$STATE_DIR/test-output.log"
set +e
cargo test --all-targets -- --test-threads 2 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
failed=()
say "fuzzing the decoder and the POST body (cargo fuzz, 60 s each)"
LIKERATE_FUZZ_SECS=60 bash deploy/local/fuzz.sh || failed+=(fuzzing)
say "schemathesis: the whole API against its OpenAPI document"
bash deploy/local/schemathesis.sh || failed+=(schemathesis)
set -e
# One closing line over every test binary (the bench binaries run last and print no count).
awk '/^test result:/ {p += $4; f += $6} END {printf "tests: %d passed, %d failed\n", p, f}' "$out"
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}"
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
