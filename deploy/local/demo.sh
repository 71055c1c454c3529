#!/usr/bin/env bash
# Quick start, the main job on local defaults: PostgreSQL (installed from Debian and started if
# needed), Apache Kafka 4 in KRaft mode (installed once from Maven Central, one node on
# 127.0.0.1:9092), likerate (release build) and demo traffic from `likerate produce` (Math
# answers liked less, so its alert fires). The Kafka download and the build run side by side.
# Ctrl-C stops likerate and the traffic; `deploy/local/kafka.sh stop` stops the broker.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

# Every Debian package first, in one apt run (the steps below then run side by side).
need=(gcc make pkg-config libssl-dev postgresql postgresql-client)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
apt_install "${need[@]}"
command -v cargo >/dev/null || die "cargo is missing: install Rust with rustup (https://rustup.rs)"

deploy/local/kafka.sh install > "$STATE_DIR/kafka-install.log" 2>&1 &
kafka_install=$!
say "building likerate (release; Kafka downloads meanwhile, log in $STATE_DIR/kafka-install.log)"
cargo build --release --quiet
wait "$kafka_install" || die "installing Kafka failed (see $STATE_DIR/kafka-install.log)"
deploy/local/postgres.sh
deploy/local/kafka.sh start
bin="${CARGO_TARGET_DIR:-target}/release/likerate"

say "demo traffic: 20 events/s, Math at a 60% like rate, the rest at 92%"
"$bin" produce --count 0 --rate 20 --like-ratio 0.92 --subject-like-ratio Math=0.6 \
  --revotes 0.03 --duplicates 0.01 --invalid 0.005 > "$STATE_DIR/produce.log" 2>&1 &
producer=$!
trap 'kill $producer 2>/dev/null || true' EXIT

say "likerate run: http://127.0.0.1:8080/metrics, /api/feedback/stats, /readyz (Ctrl-C to stop)"
"$bin" run
