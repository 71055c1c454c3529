#!/usr/bin/env bash
# Installs the tansu broker (Apache Kafka protocol, Apache-2.0) into ~/.cargo/bin if it is
# missing, and with `start` runs it on 127.0.0.1:9092 with in-memory storage.
#   deploy/local/tansu.sh install   # only install (11 to 16 minutes on 2 cores, once)
#   deploy/local/tansu.sh start     # install if needed, start unless already listening
#   deploy/local/tansu.sh stop
set -euo pipefail
. "$(dirname "$0")/lib.sh"
TANSU="$HOME/.cargo/bin/tansu"
PORT="${LIKERATE_TANSU_PORT:-9092}"

install() {
  if [ -x "$TANSU" ]; then return 0; fi
  say "building tansu 0.6 with cargo install (once; 11 to 16 minutes on 2 cores)"
  # Without --locked newer dependencies break its build; its default features hold no
  # storage engine, dynostore brings the memory engine.
  cargo install tansu --version '^0.6' --locked --features dynostore
}

listening() { (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; }

case "${1:-start}" in
  install) install ;;
  start)
    install
    if listening; then say "a broker is listening on 127.0.0.1:$PORT"; exit 0; fi
    say "starting tansu on 127.0.0.1:$PORT (memory storage: data is lost when it stops)"
    nohup "$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$PORT" \
      --storage-engine memory://tansu/ > "$STATE_DIR/tansu.log" 2>&1 &
    echo $! > "$STATE_DIR/tansu.pid"
    for _ in $(seq 1 100); do listening && break; sleep 0.1; done
    listening || die "tansu did not start (see $STATE_DIR/tansu.log)"
    ;;
  stop)
    if [ -f "$STATE_DIR/tansu.pid" ]; then kill "$(cat "$STATE_DIR/tansu.pid")" 2>/dev/null || true; rm -f "$STATE_DIR/tansu.pid"; fi
    ;;
  *) die "usage: $0 install|start|stop" ;;
esac
