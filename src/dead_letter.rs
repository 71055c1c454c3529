//! Dead letters: records that are not valid events go to the dead-letter topic with the
//! original bytes and key, and headers saying why and where they came from.
//!
//! Guarantee: [`DeadLetters::publish`] returns only when the broker has acknowledged every
//! dead letter (acks=all, idempotent producer); until then it retries with backoff, so the
//! source partition never moves past a record whose dead letter is not durable.

use crate::config::KafkaConfig;
use crate::kafka;
use crate::source::Rejected;
use crate::telemetry::Metrics;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::time::Duration;

/// The header names (docs/contract.md section 2).
pub const HEADER_ERROR: &str = "likerate-error";
pub const HEADER_DETAIL: &str = "likerate-error-detail";
pub const HEADER_TOPIC: &str = "likerate-source-topic";
pub const HEADER_PARTITION: &str = "likerate-source-partition";
pub const HEADER_OFFSET: &str = "likerate-source-offset";

/// One record to dead-letter, with its origin.
pub struct DeadLetter<'a> {
    pub rejected: &'a Rejected,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    source_topic: String,
    dlq_topic: String,
    metrics: Metrics,
}

impl DeadLetters {
    pub fn new(
        config: &KafkaConfig,
        metrics: Metrics,
    ) -> Result<DeadLetters, rdkafka::error::KafkaError> {
        Ok(DeadLetters {
            producer: kafka::producer_config(config).create()?,
            source_topic: config.topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            metrics,
        })
    }

    /// Publishes all, retrying each failed one with backoff until the broker acknowledges it.
    pub async fn publish(&self, letters: &[DeadLetter<'_>]) {
        let mut backoff = Duration::from_millis(100);
        let mut pending: Vec<&DeadLetter<'_>> = letters.iter().collect();
        loop {
            let sends = pending.iter().map(|l| self.send_one(l));
            let results = futures::future::join_all(sends).await;
            let failed: Vec<&DeadLetter<'_>> = pending
                .iter()
                .zip(results)
                .filter_map(|(l, ok)| (!ok).then_some(*l))
                .collect();
            if failed.is_empty() {
                break;
            }
            self.metrics.dlq_publish_failures(failed.len() as u64);
            tracing::warn!(
                failed = failed.len(),
                retry_in = ?backoff,
                "dead letters not acknowledged by the broker: the partition waits"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
            pending = failed;
        }
        for l in letters {
            self.metrics.dead_letter(l.rejected.error.reason.code());
        }
    }

    async fn send_one(&self, letter: &DeadLetter<'_>) -> bool {
        let r = letter.rejected;
        let partition = letter.partition.to_string();
        let offset = letter.offset.to_string();
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(header(HEADER_ERROR, r.error.reason.code()))
            .insert(header(HEADER_DETAIL, &r.error.detail))
            .insert(header(HEADER_TOPIC, &self.source_topic))
            .insert(header(HEADER_PARTITION, &partition))
            .insert(header(HEADER_OFFSET, &offset));
        let mut record = FutureRecord::to(&self.dlq_topic)
            .payload(&r.payload)
            .headers(headers);
        if let Some(key) = &r.key {
            record = record.key(key);
        }
        match self
            .producer
            .send(record, Timeout::After(Duration::from_secs(5)))
            .await
        {
            Ok(_) => true,
            Err((e, _)) => {
                tracing::warn!(error = %e, partition = letter.partition, offset = letter.offset, "dead letter send failed");
                false
            }
        }
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
