//! Kafka client settings and topic creation, shared by the source, the dead-letter sink and
//! `likerate produce`.
//!
//! Guarantees: likerate's own client properties come first and the user's pass-through
//! properties (`LIKERATE_KAFKA_OPTION_*`) are applied last, so SASL/TLS and tuning always win;
//! the two that exactly-once dead letters rest on are set after them (the dead-letter
//! producer's `transactional.id`, the dead-letter readers' `isolation.level`). Producers wait
//! for all in-sync replicas and are idempotent, so a retried send is not duplicated by the
//! broker.

use crate::config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

fn base(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", "likerate");
    c
}

fn finish(mut c: ClientConfig, config: &KafkaConfig) -> ClientConfig {
    for (key, value) in &config.options {
        c.set(key, value);
    }
    c
}

/// The consumer: manual offset store, auto-commit of stored offsets, bounded prefetch.
pub fn consumer_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = base(config);
    c.set("group.id", &config.group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2000")
        // The poll thread never blocks longer than a drain (20s by default); a short interval
        // also bounds how long a rebalance waits for a member that died without leaving.
        .set("max.poll.interval.ms", "60000")
        // librdkafka buffers up to 100,000 messages / 64 MiB per partition by default.
        .set("queued.min.messages", "2000")
        .set("queued.max.messages.kbytes", "4096")
        // Once a partition's queue holds queued.min.messages, librdkafka waits this long
        // before fetching it again (default 1 s): with the small queue above, that wait, not
        // the broker, capped consumption at 12 to 16k events/s (benches/pipeline.rs).
        .set("fetch.queue.backoff.ms", "10")
        // How long the broker may hold an empty fetch (default 500 ms). Kafka answers as soon as
        // a record arrives (fetch.min.bytes 1), so this only bounds how long an idle fetch,
        // and with it a shutdown or rebalance, waits for the broker.
        .set("fetch.wait.max.ms", "50")
        .set("fetch.max.bytes", "4194304")
        .set("statistics.interval.ms", "5000");
    finish(c, config)
}

/// A producer that waits for all in-sync replicas.
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = base(config);
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .set("compression.type", "lz4");
    finish(c, config)
}

/// The dead-letter publisher's producer: transactional, with one id per outbox queue
/// (`crate::dead_letter`), so that a publisher taking over fences the one before it and a send
/// whose outcome is unknown is aborted, never visible. Where ACLs apply, the principal needs
/// `Write` and `Describe` on the transactional id.
pub fn transactional_producer_config(config: &KafkaConfig, transactional_id: &str) -> ClientConfig {
    let mut c = producer_config(config);
    c.set("transactional.id", transactional_id);
    c
}

/// A reader of the dead-letter topic (the publisher's scan, `likerate dlq replay`): it assigns
/// partitions itself (the group id is there only because librdkafka refuses an assignment
/// without one; it never joins it), commits nothing, and reads committed records only: a dead
/// letter of an aborted transaction was never published.
pub fn dead_letter_reader_config(config: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = consumer_config(config);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("statistics.interval.ms", "0")
        .set("isolation.level", "read_committed");
    c
}

/// Creates the feedback and dead-letter topics when they are missing; existing topics are
/// left as they are. Their replication factor is the cluster's `default.replication.factor`
/// (replication -1, Kafka 2.4 and later), so a three-broker cluster set up for durability gets
/// three replicas and a single development broker one. Bounded: a broker that does not answer
/// fails this within 30 seconds.
pub async fn ensure_topics(config: &KafkaConfig) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = finish(base(config), config).create()?;
    let admin = std::sync::Arc::new(admin);
    let probe = admin.clone();
    let metadata = tokio::task::spawn_blocking(move || {
        probe.inner().fetch_metadata(None, Duration::from_secs(30))
    })
    .await
    .expect("metadata task")?;
    let existing: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    let topics: Vec<NewTopic<'_>> = [&config.topic, &config.dlq_topic]
        .into_iter()
        .filter(|t| !existing.contains(&t.as_str()))
        .map(|t| NewTopic::new(t, config.topic_partitions, TopicReplication::Fixed(-1)))
        .collect();
    if topics.is_empty() {
        return Ok(());
    }
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&topics, &options).await?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                tracing::error!(topic = %name, error = %code, "topic creation failed");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

/// The topic's `retention.ms`: `None` when it keeps records forever (-1). Bounded like
/// [`ensure_topics`].
pub async fn retention(config: &KafkaConfig, topic: &str) -> Result<Option<Duration>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = finish(base(config), config).create()?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let resource = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| KafkaError::AdminOpCreation("no answer to DescribeConfigs".into()))?
        .map_err(KafkaError::AdminOp)?;
    let value = resource
        .get("retention.ms")
        .and_then(|e| e.value.as_deref())
        .ok_or_else(|| KafkaError::AdminOpCreation(format!("topic {topic} has no retention.ms")))?;
    let ms: i64 = value.parse().map_err(|_| {
        KafkaError::AdminOpCreation(format!(
            "topic {topic}: retention.ms {value:?} is not a number"
        ))
    })?;
    Ok(u64::try_from(ms).ok().map(Duration::from_millis))
}
