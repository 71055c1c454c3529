#!/usr/bin/env python3
"""Copies likerate's event topic into the envelope topic the Kafka Connect peer reads.

    connect-peer-envelope.py BROKERS SOURCE_TOPIC ENVELOPE_TOPIC

Called by `deploy/local/connect-peer.sh envelope` (which makes the virtualenv with
confluent-kafka); see the top of that script for why the peer needs it. Every record of
SOURCE_TOPIC, from the beginning up to the end offsets seen at start, is written to
ENVELOPE_TOPIC with the same key, the same partition number and the value wrapped byte for
byte as {"schema": SCHEMA, "payload": <original value>}: the form Kafka's JsonConverter reads
with schemas.enable=true. The original bytes are not parsed nor changed, so a record that is
not valid JSON stays invalid (Connect skips it: errors.tolerance=all). ENVELOPE_TOPIC is
created with SOURCE_TOPIC's partition count if it does not exist; if it does exist it must
have at least as many partitions. Prints one line:
    envelope: N records from SOURCE to ENVELOPE in S s
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def field(name, type_, optional, logical=None):
    f = {"field": name, "type": type_, "optional": optional}
    if logical:
        f["name"] = logical
        f["version"] = 1
    return f


# The Connect schema of likerate's event (src/produce.rs, src/decode.rs). event_id and
# created_at carry Debezium's logical names, so the Debezium JDBC sink binds them as
# uuid and timestamptz (io.debezium.data.Uuid, io.debezium.time.ZonedTimestamp: an ISO-8601
# string with an offset, as `likerate produce` writes). Fields the payload lacks are null;
# fields the schema lacks are ignored.
SCHEMA = {
    "type": "struct",
    "name": "likerate.Feedback",
    "optional": False,
    "fields": [
        field("event_id", "string", False, "io.debezium.data.Uuid"),
        field("subject_id", "string", False),
        field("assistant_message", "string", False),
        field("user_question", "string", True),
        field("rating", "int16", False),
        field("message_index", "int32", True),
        field("created_at", "string", False, "io.debezium.time.ZonedTimestamp"),
        field("model", "string", True),
        field("conversation_id", "string", True),
        field("vote_id", "string", True),
    ],
}
PREFIX = b'{"schema":' + json.dumps(SCHEMA, separators=(",", ":")).encode() + b',"payload":'


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: connect-peer-envelope.py BROKERS SOURCE_TOPIC ENVELOPE_TOPIC")
    brokers, source, target = sys.argv[1:]
    admin = AdminClient({"bootstrap.servers": brokers})
    topics = admin.list_topics(timeout=30).topics
    if source not in topics or topics[source].error is not None:
        sys.exit(f"envelope: topic {source} not found on {brokers}")
    partitions = sorted(topics[source].partitions)
    if target not in topics:
        fut = admin.create_topics([NewTopic(target, num_partitions=len(partitions))])[target]
        fut.result()
    elif len(topics[target].partitions) < len(partitions):
        sys.exit(f"envelope: {target} has fewer partitions than {source}")

    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "likerate-peer-envelope",
        "enable.auto.commit": False,
        "fetch.max.bytes": 64 << 20,
        "max.partition.fetch.bytes": 16 << 20,
    })
    ends = {}
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(source, p), timeout=30)
        if high > low:
            ends[p] = (low, high)
    consumer.assign([TopicPartition(source, p, low) for p, (low, _) in ends.items()])

    producer = Producer({
        "bootstrap.servers": brokers,
        "linger.ms": 20,
        "batch.size": 1 << 20,
        "compression.type": "none",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1 << 20,
    })
    failed = []

    def delivered(err, _msg):
        if err is not None:
            failed.append(err)

    started = time.monotonic()
    count = 0
    pending = dict(ends)
    while pending:
        for msg in consumer.consume(10_000, timeout=1.0):
            if msg.error():
                raise KafkaException(msg.error())
            p = msg.partition()
            if p not in pending:
                continue
            value = msg.value()
            wrapped = None if value is None else PREFIX + value + b"}"
            while True:
                try:
                    producer.produce(target, wrapped, msg.key(), partition=p,
                                     on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.1)
            count += 1
            if msg.offset() + 1 >= pending[p][1]:
                del pending[p]
        producer.poll(0)
        if failed:
            sys.exit(f"envelope: producing to {target} failed: {failed[0]}")
    if producer.flush(60) > 0 or failed:
        sys.exit(f"envelope: producing to {target} failed: {failed[0] if failed else 'timeout'}")
    consumer.close()
    print(f"envelope: {count} records from {source} to {target} in "
          f"{time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
