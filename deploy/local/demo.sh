#!/usr/bin/env bash
# Quick start, the main job on local defaults: PostgreSQL (installed and started if needed),
# the tansu broker (built once with cargo install if needed), likerate (release build), and
# demo traffic from `likerate produce` (Math answers liked less, so its alert fires).
# Ctrl-C stops likerate and the traffic; `deploy/local/tansu.sh stop` stops the broker.
set -euo pipefail
cd "$(dirname "$0")/../.."
. deploy/local/lib.sh

apt_install gcc make pkg-config libssl-dev
deploy/local/postgres.sh
deploy/local/tansu.sh start
say "building likerate (release)"
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/likerate"

say "demo traffic: 20 events/s, Math at a 60% like rate, the rest at 92%"
"$bin" produce --count 0 --rate 20 --like-ratio 0.92 --subject-like-ratio Math=0.6 \
  --revotes 0.03 --duplicates 0.01 --invalid 0.005 > "$STATE_DIR/produce.log" 2>&1 &
producer=$!
trap 'kill $producer 2>/dev/null || true' EXIT

say "likerate run: http://127.0.0.1:8080/metrics, /api/feedback/stats, /readyz (Ctrl-C to stop)"
"$bin" run
