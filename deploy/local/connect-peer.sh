#!/usr/bin/env bash
# The peer of the pipeline benchmark (issue 13, item 5): what users would deploy instead of
# likerate, Debezium's JDBC sink connector on Kafka Connect (standalone mode), upserting the
# same events on event_id into a table of the shape of likerate's `feedback`.
#
#   deploy/local/connect-peer.sh install
#       once, cached: the Connect worker's jars and the connector's plugin folder, by mvn, from
#       deploy/local/connect-peer/pom.xml (where the versions are pinned) into
#       ${XDG_CACHE_HOME:-~/.cache}/likerate/connect-peer-kafkaK-debeziumD-pgP/
#       {worker,plugins/debezium-connector-jdbc}; Java 17 and Maven from Debian if missing.
#
#   PEER_BROKERS=127.0.0.1:9092 deploy/local/connect-peer.sh envelope SOURCE_TOPIC ENVELOPE_TOPIC
#       copies likerate's topic into the topic the peer reads (see "Why an envelope topic"),
#       same keys and partitions; prints `envelope: N records from SOURCE to ENVELOPE in S s`.
#       Makes a virtualenv with confluent-kafka from PyPI once, under the cache folder.
#
#   PEER_BROKERS=127.0.0.1:9092 PEER_TOPIC=feedback-envelope \
#   PEER_DATABASE_URL=postgres://postgres@127.0.0.1:5432/peer_bench PEER_EXPECTED=200000 \
#     deploy/local/connect-peer.sh run
#       creates the table if missing (it must then be empty), starts Connect standalone with the
#       connector, waits until the table holds PEER_EXPECTED rows, stops Connect and prints, on
#       stdout, one line about start-up and then the result as the last line:
#         peer: Connect took T s to start (JVM launch to sink task started); first row F s later
#         peer: N events in S s = R events/s
#       The rate's interval runs from the moment the (first) sink task had started, taken from
#       Connect's log, to the write of the last row (ingested_at, clock_timestamp()); it holds
#       the consumer's group join and first fetch, not the JVM's start nor plugin loading.
#       On a failure or timeout it prints `peer: failed: REASON` on stderr and exits 1; the JVM
#       is stopped in every case.
#
# Settings of `run` (environment):
#   PEER_BROKERS       bootstrap servers (required)
#   PEER_TOPIC         the envelope topic to read (required)
#   PEER_DATABASE_URL  postgres://[user[:password]@]host[:port]/database[?params] (required;
#                      turned into jdbc:postgresql://host:port/database?params for the connector)
#   PEER_EXPECTED      distinct events to wait for (required)
#   PEER_TABLE         default feedback_peer
#   PEER_GROUP         the connector's consumer group, default likerate-peer; a new group reads
#                      the topic from its beginning, an existing one resumes
#   PEER_TIMEOUT       seconds, default 600, from the JVM's launch
#   PEER_TASKS         tasks.max, default 1 (on 2 cores 2 and 4 tasks measured slower, see below)
#   PEER_BATCH         batch.size and the consumer's max.poll.records, default 2000
#   PEER_UNNEST        1 (default): dialect.postgres.unnest.insert.enabled, one INSERT ... SELECT
#                      FROM UNNEST(...) ON CONFLICT per batch; 0: a JDBC batch of single-row upserts
#   PEER_HEAP          the worker's -Xmx, default 1g
#   PEER_INDEXES       1 (default): the peer table gets the secondary indexes likerate's feedback
#                      has for the same reads (subject and rating, created_at, conversation_id,
#                      vote_id); 0: only the primary key and the unique event_id
#   PEER_REPLAY        1: the table may already hold rows (a replay of the same topic); then the
#                      run waits until PEER_EXPECTED rows have been written (inserted or updated)
#                      since it started, to show that upserts change no row count
#   LIKERATE_STATE_DIR where Connect's properties, offsets file and log go (run-TIME/ under
#                      $STATE_DIR/connect-peer, default ~/.local/state/likerate)
#
# Why an envelope topic. Debezium's JDBC sink needs each record's value as a Connect Struct with
# a schema: it reads the value schema's name and builds the primary key from the value Struct
# (KafkaDebeziumSinkRecord.isFlattened/getKeyStruct), so schemaless JSON (JsonConverter with
# schemas.enable=false gives a Map and no schema) fails. Kafka 4.1's JsonConverter can only take
# the schema from each message, {"schema": ..., "payload": ...} with schemas.enable=true (Kafka
# 4.2 adds schema.content, KIP-1054, for a fixed schema given in the configuration; 4.1.1 does
# not have it), and neither Kafka nor Debezium ships an SMT that turns a schemaless map into a
# Struct. The other common routes need software this setup cannot run (a schema registry with
# Avro or JSON Schema converters, or ksqlDB re-serialising the topic). So the peer reads a second
# topic holding the same events, each wrapped byte for byte in the envelope that a producer
# writing for Connect would send; `envelope` makes it from likerate's topic, outside the timed
# run. The consequence for the comparison: each record the peer reads carries 747 bytes of
# schema besides the event (an event of `likerate produce` is roughly 0.5 to 1.2 KB, so about
# twice the bytes likerate reads), which JsonConverter parses per record; that cost is part of
# what a Connect user on Kafka 4.1 pays.
#
# The connector: insert.mode=upsert, primary.key.mode=record_value, primary.key.fields=event_id;
# SMTs that ship with Kafka rename assistant_message to message_content (ReplaceField) and add
# kafka_topic, kafka_partition and kafka_offset (InsertField), so the table has the columns of
# likerate's feedback. use.reduction.buffer=true keeps the last record of an event_id within a
# batch (an UNNEST upsert cannot touch a row twice). errors.tolerance=all skips records the
# converter or the SMTs reject (no dead-letter topic); a row the database rejects (say a rating
# of 2) stops the task, and the run then fails. What the peer does not do, that likerate does:
# vote supersession (feedback_vote), the rollups, dead letters with their reasons, redaction,
# and the other checks of src/decode.rs.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib.sh"
POM="$HERE/connect-peer/pom.xml"
prop() { sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" "$POM"; }
KAFKA_VERSION=$(prop kafka.version)
DEBEZIUM_VERSION=$(prop debezium.version)
PG_VERSION=$(prop postgresql.version)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/likerate/connect-peer-kafka$KAFKA_VERSION-debezium$DEBEZIUM_VERSION-pg$PG_VERSION"
WORKER="$CACHE/worker"
PLUGINS="$CACHE/plugins"
CONNECTOR="io.debezium.connector.jdbc.JdbcSinkConnector"

fail() { printf 'peer: failed: %s\n' "$*" >&2; exit 1; }

install() {
  if [ -f "$CACHE/.complete" ]; then return 0; fi
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  say "installing Kafka Connect $KAFKA_VERSION and Debezium's JDBC sink $DEBEZIUM_VERSION into $CACHE (once)"
  rm -rf "$WORKER" "$PLUGINS" "$CACHE/download"
  mvn -q -B -f "$POM" -P worker dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$WORKER" || die "mvn could not fetch Kafka Connect $KAFKA_VERSION (see above)"
  mvn -q -B -f "$POM" -P plugin dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$CACHE/download" || die "mvn could not fetch the Debezium JDBC sink (see above)"
  mkdir -p "$PLUGINS"
  tar -xzf "$CACHE/download/debezium-connector-jdbc-$DEBEZIUM_VERSION-plugin.tar.gz" -C "$PLUGINS"
  # The pinned PostgreSQL driver replaces the one the archive bundles.
  rm -f "$PLUGINS"/debezium-connector-jdbc/postgresql-*.jar
  cp "$CACHE/download/postgresql-$PG_VERSION.jar" "$PLUGINS/debezium-connector-jdbc/"
  rm -rf "$CACHE/download"
  touch "$CACHE/.complete"
}

# A virtualenv with confluent-kafka for the envelope script.
venv() {
  local v="$CACHE/venv"
  if [ ! -x "$v/bin/python" ] || ! "$v/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
    command -v python3 >/dev/null || apt_install python3
    python3 -m venv "$v" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$v"; }
    say "installing confluent-kafka into $v (once)"
    "$v/bin/pip" install -q 'confluent-kafka==2.*' || die "pip could not install confluent-kafka"
  fi
  echo "$v/bin/python"
}

envelope() {
  [ $# -eq 2 ] || die "usage: PEER_BROKERS=HOST:PORT $0 envelope SOURCE_TOPIC ENVELOPE_TOPIC"
  : "${PEER_BROKERS:?set PEER_BROKERS}"
  mkdir -p "$CACHE"
  local py; py=$(venv)
  "$py" "$HERE/connect-peer-envelope.py" "$PEER_BROKERS" "$1" "$2"
}

# postgres://user:password@host:port/db?params -> three lines: JDBC URL, user, password.
jdbc_url() {
  python3 - "$1" <<'PY'
import sys
from urllib.parse import urlsplit, unquote
u = urlsplit(sys.argv[1])
if u.scheme not in ("postgres", "postgresql") or not u.hostname or len(u.path) < 2:
    sys.exit(1)
host = u.hostname if ":" not in u.hostname else f"[{u.hostname}]"
url = f"jdbc:postgresql://{host}:{u.port or 5432}{u.path}" + (f"?{u.query}" if u.query else "")
print(url)
print(unquote(u.username or "postgres"))
print(unquote(u.password or ""))
PY
}

run() {
  : "${PEER_BROKERS:?set PEER_BROKERS}" "${PEER_TOPIC:?set PEER_TOPIC}"
  : "${PEER_DATABASE_URL:?set PEER_DATABASE_URL}" "${PEER_EXPECTED:?set PEER_EXPECTED}"
  local table="${PEER_TABLE:-feedback_peer}" group="${PEER_GROUP:-likerate-peer}"
  local timeout="${PEER_TIMEOUT:-600}" tasks="${PEER_TASKS:-1}" batch="${PEER_BATCH:-2000}"
  local unnest="${PEER_UNNEST:-1}" heap="${PEER_HEAP:-1g}" indexes="${PEER_INDEXES:-1}"
  local replay="${PEER_REPLAY:-0}" expected="$PEER_EXPECTED"
  [[ "$expected" =~ ^[0-9]+$ ]] || fail "PEER_EXPECTED must be a number"
  [[ "$table" =~ ^[a-z_][a-z0-9_]*$ ]] || fail "PEER_TABLE must be a plain lower-case identifier"
  install
  command -v psql >/dev/null || apt_install postgresql-client
  local conn url user password
  conn=$(jdbc_url "$PEER_DATABASE_URL") || fail "PEER_DATABASE_URL is not a postgres://host/database URL"
  { read -r url; read -r user; read -r password || true; } <<<"$conn"
  sql() { psql "$PEER_DATABASE_URL" -XqtA -v ON_ERROR_STOP=1 "$@"; }

  sql >/dev/null 2>&1 -c 'SELECT 1' || fail "cannot connect to $PEER_DATABASE_URL"
  # The shape of likerate's feedback (schemas/migrations/0001_feedback.sql), its columns and
  # constraints; ingested_at is clock_timestamp() so the last row tells when it was written.
  sql <<SQL || fail "could not create table $table"
SET client_min_messages = warning;
CREATE TABLE IF NOT EXISTS $table (
    id              bigserial    PRIMARY KEY,
    subject_id      varchar(64)  NOT NULL,
    message_content text         NOT NULL,
    user_question   text,
    rating          smallint     NOT NULL CHECK (rating BETWEEN -1 AND 1),
    message_index   integer,
    created_at      timestamptz  NOT NULL,
    event_id        uuid         NOT NULL UNIQUE,
    model           varchar(128),
    conversation_id varchar(128),
    vote_id         varchar(128),
    kafka_topic     text         NOT NULL,
    kafka_partition integer      NOT NULL,
    kafka_offset    bigint       NOT NULL,
    ingested_at     timestamptz  NOT NULL DEFAULT clock_timestamp()
);
SQL
  if [ "$indexes" = 1 ]; then
    sql <<SQL || fail "could not create the indexes of $table"
SET client_min_messages = warning;
CREATE INDEX IF NOT EXISTS ${table}_subject_rating ON $table (subject_id, rating);
CREATE INDEX IF NOT EXISTS ${table}_created ON $table (created_at);
CREATE INDEX IF NOT EXISTS ${table}_conversation ON $table (conversation_id) WHERE conversation_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS ${table}_vote ON $table (vote_id) WHERE vote_id IS NOT NULL;
SQL
  fi
  local before since
  before=$(sql -c "SELECT count(*) FROM $table")
  if [ "$before" != 0 ] && [ "$replay" != 1 ]; then
    fail "table $table already holds $before rows (drop it, use another PEER_TABLE, or PEER_REPLAY=1)"
  fi
  # Rows written by this run: their xmin is at least this transaction id (no wraparound here).
  since=$(sql -c "SELECT txid_current() % 4294967296")

  local dir
  dir="$STATE_DIR/connect-peer/run-$(date +%Y%m%d-%H%M%S)-$$"
  mkdir -p "$dir"
  cat > "$dir/worker.properties" <<PROPS
bootstrap.servers=$PEER_BROKERS
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=true
offset.storage.file.filename=$dir/connect.offsets
offset.flush.interval.ms=10000
plugin.path=$PLUGINS
plugin.discovery=service_load
listeners=http://127.0.0.1:0
connector.client.config.override.policy=All
consumer.max.poll.records=$batch
consumer.max.partition.fetch.bytes=8388608
consumer.fetch.max.bytes=67108864
PROPS
  cat > "$dir/connector.properties" <<PROPS
name=likerate-peer
connector.class=$CONNECTOR
tasks.max=$tasks
topics=$PEER_TOPIC
consumer.override.group.id=$group
connection.url=$url
connection.username=$user
connection.password=$password
connection.pool.min_size=1
connection.pool.max_size=$tasks
insert.mode=upsert
primary.key.mode=record_value
primary.key.fields=event_id
schema.evolution=none
collection.name.format=$table
batch.size=$batch
use.reduction.buffer=true
dialect.postgres.unnest.insert.enabled=$([ "$unnest" = 1 ] && echo true || echo false)
errors.tolerance=all
errors.log.enable=true
transforms=rename,coordinates
transforms.rename.type=org.apache.kafka.connect.transforms.ReplaceField\$Value
transforms.rename.renames=assistant_message:message_content
transforms.coordinates.type=org.apache.kafka.connect.transforms.InsertField\$Value
transforms.coordinates.topic.field=kafka_topic
transforms.coordinates.partition.field=kafka_partition
transforms.coordinates.offset.field=kafka_offset
PROPS
  chmod 600 "$dir/connector.properties"
  cat > "$dir/log4j2.properties" <<'PROPS'
appenders = file
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:peer.log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{UNIX_MILLIS} [%d{ISO8601}] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRefs = file
rootLogger.appenderRef.file.ref = file
PROPS
  local log="$dir/connect.log"
  say "starting Kafka Connect $KAFKA_VERSION standalone with $CONNECTOR (tasks.max=$tasks, batch $batch, unnest $unnest); log $log"
  local launched pid
  launched=$(date +%s%3N)
  java -Xms256m "-Xmx$heap" -XX:+UseG1GC -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$dir/log4j2.properties" "-Dpeer.log=$log" \
    -cp "$WORKER/*" org.apache.kafka.connect.cli.ConnectStandalone \
    "$dir/worker.properties" "$dir/connector.properties" > "$dir/stdout.log" 2>&1 &
  pid=$!
  # shellcheck disable=SC2064
  trap "stop_jvm $pid" EXIT
  local deadline=$(( $(date +%s) + timeout )) started="" written=0
  while :; do
    kill -0 "$pid" 2>/dev/null || fail "Connect exited early: $(tail -n 3 "$dir/stdout.log" | tr '\n' ' ') (see $log)"
    if [ -f "$log" ] && grep -q -E 'Task threw an uncaught and unrecoverable exception|Failed to start (task|connector)|Stopping due to error' "$log"; then
      fail "the connector failed: $(grep -m1 -E ' ERROR ' "$log" | cut -c1-300) (see $log)"
    fi
    if [ -z "$started" ] && [ -f "$log" ]; then
      started=$(grep -m1 'Sink task finished initialization and start' "$log" | cut -d' ' -f1 || true)
    fi
    # Counting rows scans the table, so a fresh table is first probed through its primary key
    # (every new row has an id above the ones before, so max(id) >= the count); a replay is
    # counted once a second.
    if [ -n "$started" ] && { [ "$before" != 0 ] || [ "$(sql -c "SELECT coalesce(max(id), 0) FROM $table" 2>/dev/null || echo 0)" -ge "$expected" ]; }; then
      written=$(sql -c "SELECT count(*) FROM $table WHERE xmin::text::bigint >= $since" 2>/dev/null || echo 0)
      [ "$written" -ge "$expected" ] && break
      [ "$before" = 0 ] || sleep 0.8
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      written=$(sql -c "SELECT count(*) FROM $table WHERE xmin::text::bigint >= $since" 2>/dev/null || echo "?")
      fail "timeout after ${timeout}s: $written of $expected rows written (see $log)"
    fi
    sleep 0.2
  done
  local first end
  # Replayed rows keep their ingested_at (the upsert sets only the record's columns): then the
  # last write is taken as now.
  if [ "$before" = 0 ]; then
    read -r first end < <(sql -F' ' -c "SELECT (extract(epoch FROM min(ingested_at)) * 1000)::bigint,
      (extract(epoch FROM max(ingested_at)) * 1000)::bigint FROM $table")
  else
    first=$started; end=$(date +%s%3N)
  fi
  stop_jvm "$pid"
  trap - EXIT
  local total distinct
  read -r total distinct < <(sql -F' ' -c "SELECT count(*), count(DISTINCT event_id) FROM $table")
  [ "$total" = "$distinct" ] || fail "$total rows but $distinct distinct event ids in $table"
  awk -v l="$launched" -v s="$started" -v f="$first" -v e="$end" -v n="$expected" -v w="$written" 'BEGIN {
    printf "peer: Connect took %.1f s to start (JVM launch to sink task started)", (s - l) / 1000
    if (f > s) printf "; first row %.1f s later", (f - s) / 1000
    printf "\n"
    d = (e - s) / 1000; if (d <= 0) d = 0.001
    printf "peer: %d events in %.1f s = %.0f events/s\n", n, d, n / d
  }'
}

stop_jvm() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

case "${1:-}" in
  install) install ;;
  envelope) shift; envelope "$@" ;;
  run) run ;;
  *) die "usage: $0 install | envelope SOURCE_TOPIC ENVELOPE_TOPIC | run (settings: see the top of $0)" ;;
esac
