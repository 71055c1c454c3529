#!/usr/bin/env bash
# Property test of the whole HTTP API against its own OpenAPI document: schemathesis (PyPI,
# pinned, in a venv under ~/.cache/likerate) with all its checks and a fixed seed.
#   deploy/local/schemathesis.sh                 # builds likerate, starts it on a fresh
#                                                # database and topics, tests it, stops it
#   deploy/local/schemathesis.sh http://HOST:PORT  # tests a running likerate
# LIKERATE_SCHEMATHESIS_EXAMPLES (default 150 per operation) bounds the run: 1829 cases in about
# 45 s on two cores, about 70 s with the Kafka node it starts. LIKERATE_EXPORT_TOKEN / LIKERATE_INGEST_TOKEN, when set, are sent as the bearer
# token (the export token: the ingest route is open unless the target sets one). When it starts
# likerate itself, PostgreSQL is 127.0.0.1:5432 (deploy/local/postgres.sh; another port with
# LIKERATE_TEST_PG_PORT, as for the tests) and the broker is
# LIKERATE_KAFKA_BROKERS or, without it, a Kafka node of its own on free ports (deploy/local/
# kafka.sh node), stopped at the end.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib.sh"
ROOT="$(cd "$HERE/../.." && pwd)"
VERSION=4.32.5
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/likerate/schemathesis-venv"
EXAMPLES="${LIKERATE_SCHEMATHESIS_EXAMPLES:-150}"
PG_PORT="${LIKERATE_TEST_PG_PORT:-5432}"
export PATH="$HOME/.cargo/bin:$PATH"

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$VERSION"; then
  say "installing schemathesis $VERSION into $VENV (once)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$VERSION"
fi

URL="${1:-}"
PID=""
DB=""
KAFKA_PID=""
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  if [ -n "$KAFKA_PID" ]; then kill "$KAFKA_PID" 2>/dev/null || true; wait "$KAFKA_PID" 2>/dev/null || true; fi
  if [ -n "$DB" ]; then psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" postgres >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

if [ -z "$URL" ]; then
  cd "$ROOT"
  cargo build -q --bin likerate
  if [ -z "${LIKERATE_KAFKA_BROKERS:-}" ]; then
    read -r port cport < <(python3 -c 'import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))')
    dir="$STATE_DIR/schemathesis-kafka"
    rm -rf "$dir"
    say "starting a Kafka node for the run on 127.0.0.1:$port (log in $dir.log)"
    bash "$HERE/kafka.sh" node 1 "$dir" "$port" "$cport" "1@127.0.0.1:$cport" > "$dir.log" 2>&1 &
    KAFKA_PID=$!
    for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || die "Kafka did not start (see $dir.log)"
    export LIKERATE_KAFKA_BROKERS="127.0.0.1:$port"
  fi
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/likerate"
  id="st$(date +%s)$$"
  DB="likerate_$id"
  export LIKERATE_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/$DB"
  export LIKERATE_KAFKA_TOPIC="fe-$id" LIKERATE_DLQ_TOPIC="fe-$id-dlq" LIKERATE_KAFKA_GROUP="g-$id"
  export LIKERATE_HTTP_ADDR=127.0.0.1:0
  export LIKERATE_EXPORT_TOKEN="${LIKERATE_EXPORT_TOKEN:-schemathesis-token-0123456789}"
  LOG="$STATE_DIR/schemathesis-likerate.log"
  "$BIN" run > "$LOG" 2>&1 &
  PID=$!
  for _ in $(seq 1 300); do
    addr=$(sed -n 's/.*likerate running.*http=\([0-9.:]*\).*/\1/p' "$LOG" | head -1)
    [ -n "$addr" ] && break
    kill -0 "$PID" 2>/dev/null || die "likerate exited at start (see $LOG)"
    sleep 0.1
  done
  [ -n "${addr:-}" ] || die "likerate did not start (see $LOG)"
  URL="http://$addr"
fi

headers=()
if [ -n "${LIKERATE_EXPORT_TOKEN:-}" ]; then
  headers=(-H "Authorization: Bearer $LIKERATE_EXPORT_TOKEN")
fi
# One worker: with two, schemathesis' threads call ast.parse at once (hypothesis describing a
# filter), which CPython 3.11 answers with "SystemError: AST constructor recursion depth
# mismatch" (an error inside schemathesis, not a finding).
say "schemathesis against $URL/api/openapi.json: all checks, seed 1, $EXAMPLES examples per operation"
"$VENV/bin/st" run "$URL/api/openapi.json" --url "$URL" -c all --seed 1 \
  --generation-deterministic -n "$EXAMPLES" -w 1 --request-timeout 30 "${headers[@]}"
