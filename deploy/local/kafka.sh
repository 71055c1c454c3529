#!/usr/bin/env bash
# Apache Kafka (KRaft) for the demo, the tests and the benchmarks, from Maven Central.
#   deploy/local/kafka.sh install    # once: mvn copies Kafka's jars into ~/.cache (about 1 min)
#   deploy/local/kafka.sh start      # one node (broker + controller) on 127.0.0.1:9092
#   deploy/local/kafka.sh cluster    # three nodes on 127.0.0.1:19092-19094, replication 3,
#                                    # min.insync.replicas=2
#   deploy/local/kafka.sh stop       # ends what start and cluster started
#   deploy/local/kafka.sh node ID DIR PORT CONTROLLER_PORT VOTERS
#                                    # one node in the foreground (exec), for test harnesses
#                                    # that kill and freeze single brokers
#   deploy/local/kafka.sh classpath  # prints the jar folder (installs first)
# The version is pinned in deploy/local/kafka/pom.xml. Data and logs live in the state folder
# ($LIKERATE_STATE_DIR, default ~/.local/state/likerate); the jars in
# ${XDG_CACHE_HOME:-~/.cache}/likerate/kafka-VERSION. Java 17 and Maven come from Debian when
# missing. LIKERATE_KAFKA_HEAP sets the heap of each node (default 512m).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib.sh"
POM="$HERE/kafka/pom.xml"
VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/likerate/kafka-$VERSION"
LIBS="$CACHE/libs"

install() {
  if [ -f "$CACHE/.complete" ]; then return 0; fi
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  say "installing Apache Kafka $VERSION from Maven Central into $CACHE (once, about a minute)"
  rm -rf "$LIBS"
  mvn -q -B -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$LIBS" || die "mvn could not fetch Kafka $VERSION (see above)"
  touch "$CACHE/.complete"
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# One node: writes its properties, formats its storage once, then becomes the JVM (exec), so a
# caller's pid is the broker's pid.
node() {
  local id=$1 dir=$2 port=$3 cport=$4 voters=$5
  local n; n=$(tr ',' '\n' <<<"$voters" | wc -l)
  local rf=$(( n < 3 ? n : 3 )) isr=$(( n < 2 ? 1 : 2 ))
  mkdir -p "$dir"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=4
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
unclean.leader.election.enable=false
log.retention.hours=168
log.segment.bytes=268435456
PROPS
  local java_opts=(-Xms128m "-Xmx${LIKERATE_KAFKA_HEAP:-512m}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$HERE/kafka/log4j2.properties" "-Dkafka.logs.dir=$dir")
  if [ ! -f "$dir/data/meta.properties" ]; then
    # Every node of a cluster must be formatted with the same id: derive it from the voters.
    local hex cid; hex=$(printf '%s' "$voters" | sha256sum | head -c 32)
    cid=$(printf "$(sed 's/../\\x&/g' <<<"$hex")" | base64 | tr '+/' '-_' | tr -d '=')
    java "${java_opts[@]}" -cp "$LIBS/*" kafka.tools.StorageTool format \
      --cluster-id "$cid" --config "$dir/server.properties" --ignore-formatted >/dev/null
  fi
  exec java "${java_opts[@]}" -cp "$LIBS/*" kafka.Kafka "$dir/server.properties"
}

# Starts nodes 1..N in the background under $STATE_DIR/NAME and waits until each listens.
start_nodes() {
  local name=$1 count=$2 base=$3 cbase=$4
  local voters="" i
  for i in $(seq 1 "$count"); do voters+="${voters:+,}$i@127.0.0.1:$((cbase + i - 1))"; done
  if listening "$base"; then say "a broker is already listening on 127.0.0.1:$base"; return 0; fi
  say "starting Apache Kafka $VERSION ($count node(s), KRaft) on 127.0.0.1:$base, state in $STATE_DIR/$name"
  for i in $(seq 1 "$count"); do
    local dir="$STATE_DIR/$name/node-$i"
    mkdir -p "$dir"
    nohup "$HERE/kafka.sh" node "$i" "$dir" $((base + i - 1)) $((cbase + i - 1)) "$voters" \
      > "$dir/server.log" 2>&1 &
    echo $! > "$dir/pid"
  done
  for i in $(seq 1 "$count"); do
    local port=$((base + i - 1)) t
    for t in $(seq 1 600); do listening "$port" && break; sleep 0.1; done
    listening "$port" || die "Kafka node $i did not start (see $STATE_DIR/$name/node-$i/server.log)"
  done
  say "Kafka is listening on $(seq -s, "$base" $((base + count - 1)) | sed 's/\([0-9]*\)/127.0.0.1:\1/g')"
}

stop_nodes() {
  local name=$1 pidfile pid
  for pidfile in "$STATE_DIR/$name"/node-*/pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null && say "stopping Kafka node $(basename "$(dirname "$pidfile")") of $name"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

case "${1:-start}" in
  install) install ;;
  classpath) install >&2; echo "$LIBS" ;;
  node) shift; install >&2; node "$@" ;;
  start) install; start_nodes kafka 1 "${LIKERATE_KAFKA_PORT:-9092}" "${LIKERATE_KAFKA_CONTROLLER_PORT:-9093}" ;;
  cluster) install; start_nodes kafka-cluster 3 19092 19192 ;;
  stop) stop_nodes kafka; stop_nodes kafka-cluster ;;
  *) die "usage: $0 install|start|cluster|stop|classpath|node ID DIR PORT CONTROLLER_PORT VOTERS" ;;
esac
