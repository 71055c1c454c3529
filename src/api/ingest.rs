//! `POST /api/feedback`: feedback from front ends without a Kafka client.
//!
//! Guarantees:
//! - The body is one event (a JSON object) or a JSON array of events, at most
//!   [`MAX_BODY_BYTES`] in all (more: 413). Each event is checked by the pipeline's own
//!   decoder ([`crate::decode::decode`]), so whatever is accepted here is stored by the
//!   pipeline, never dead-lettered.
//! - All or nothing: if any event is invalid, nothing is published and the 400 lists every
//!   invalid event with its index, reason code and detail.
//! - Every published event has an `event_id`: an event without one gets a random (v4) UUID
//!   before it is published, so the id returned here is the id it is stored under. Events that
//!   carry an `event_id` are published byte for byte; the others are re-encoded with the id
//!   added (same fields and values, key order may change).
//! - 202 is answered only when the broker acknowledged every event from all in-sync replicas
//!   (`acks=all`, idempotent producer), keyed by `conversation_id`. If the broker does not
//!   acknowledge them all, the answer is 503 and some events may have been published: a retry
//!   can duplicate those that had no `event_id`, so clients that retry should set it.

use crate::config::KafkaConfig;
use crate::decode::{decode, Origin, MAX_EVENT_BYTES};
use crate::http::{ApiError, AppState};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::Utc;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Largest request body: the contract's largest event.
pub const MAX_BODY_BYTES: usize = MAX_EVENT_BYTES;

/// Longest a send waits for room in the producer's queue before it fails.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// The producer of `POST /api/feedback`, shared by all requests (librdkafka batches their
/// events together).
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: Arc<str>,
}

impl Publisher {
    pub fn new(kafka: &KafkaConfig) -> Result<Publisher, KafkaError> {
        Ok(Publisher {
            producer: crate::kafka::producer_config(kafka).create()?,
            topic: kafka.topic.as_str().into(),
        })
    }
}

/// One valid event, ready to publish.
struct Outgoing<'a> {
    event_id: Uuid,
    key: Option<String>,
    payload: Cow<'a, [u8]>,
}

/// An invalid event: its position and why.
#[derive(serde::Serialize)]
struct Invalid {
    index: usize,
    reason: &'static str,
    detail: String,
}

/// A refused request: `{"error", "detail"}`, plus `errors` listing each invalid event.
pub struct Refused {
    status: StatusCode,
    error: &'static str,
    detail: String,
    errors: Vec<Invalid>,
}

impl Refused {
    fn bad_request(error: &'static str, detail: String) -> Refused {
        Refused {
            status: StatusCode::BAD_REQUEST,
            error,
            detail,
            errors: Vec::new(),
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        if self.errors.is_empty() {
            return ApiError::new(self.status, self.error, self.detail).into_response();
        }
        let body =
            serde_json::json!({"error": self.error, "detail": self.detail, "errors": self.errors});
        (self.status, Json(body)).into_response()
    }
}

/// The events of the body: the elements of an array, or the body itself.
fn split(body: &[u8]) -> Result<Vec<&[u8]>, Refused> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'[') {
        return Ok(vec![body]);
    }
    let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
        Refused::bad_request(
            "invalid_json",
            format!("the body is not a JSON array of events: {e}"),
        )
    })?;
    if items.is_empty() {
        return Err(Refused::bad_request(
            "invalid_event",
            "the array holds no event".into(),
        ));
    }
    Ok(items.into_iter().map(|r| r.get().as_bytes()).collect())
}

/// Decodes every event; all valid or the list of what is wrong.
fn validate<'a>(topic: &str, items: &[&'a [u8]]) -> Result<Vec<Outgoing<'a>>, Vec<Invalid>> {
    let received_at = Utc::now();
    let mut valid = Vec::with_capacity(items.len());
    let mut invalid = Vec::new();
    for (index, raw) in items.iter().enumerate() {
        // Partition -1 never exists in Kafka, so the id derived here for an event without
        // `event_id` cannot collide with a real record's; it is replaced below anyway.
        let origin = Origin {
            topic,
            partition: -1,
            offset: index as i64,
            received_at,
        };
        match decode(raw, origin) {
            Ok(event) => {
                let derived = crate::event::derived_event_id(topic, -1, index as i64);
                let (event_id, payload) = if event.event_id == derived {
                    let id = Uuid::new_v4();
                    (id, Cow::Owned(with_event_id(raw, id)))
                } else {
                    (event.event_id, Cow::Borrowed(*raw))
                };
                valid.push(Outgoing {
                    event_id,
                    key: event.conversation_id.map(|c| c.as_str().to_owned()),
                    payload,
                });
            }
            Err(e) => invalid.push(Invalid {
                index,
                reason: e.reason.code(),
                detail: e.detail,
            }),
        }
    }
    if invalid.is_empty() {
        Ok(valid)
    } else {
        Err(invalid)
    }
}

/// The event re-encoded with `event_id` set (absent or null before).
fn with_event_id(raw: &[u8], id: Uuid) -> Vec<u8> {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(raw).expect("the decoder accepted it as a JSON object");
    object.insert("event_id".into(), id.to_string().into());
    serde_json::to_vec(&object).expect("a JSON value serializes")
}

pub async fn post(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Refused> {
    let body = body.map_err(|e| {
        let status = e.status();
        let detail = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the body is larger than {MAX_BODY_BYTES} bytes")
        } else {
            e.body_text()
        };
        Refused {
            status,
            error: "invalid_body",
            detail,
            errors: Vec::new(),
        }
    })?;
    let items = split(&body)?;
    let publisher = &state.api.publisher;
    let events = validate(&publisher.topic, &items).map_err(|errors| {
        let detail = errors
            .iter()
            .map(|e| format!("event {}: {}: {}", e.index, e.reason, e.detail))
            .collect::<Vec<_>>()
            .join("; ");
        let detail = format!(
            "{} of {} events are invalid, nothing was published: {detail}",
            errors.len(),
            items.len()
        );
        Refused {
            errors,
            ..Refused::bad_request("invalid_event", detail)
        }
    })?;
    let sends = events.iter().map(|e| {
        let mut record = FutureRecord::<str, [u8]>::to(&publisher.topic).payload(&e.payload);
        if let Some(key) = &e.key {
            record = record.key(key.as_str());
        }
        publisher.producer.send(record, QUEUE_TIMEOUT)
    });
    let results = futures::future::join_all(sends).await;
    let failed: Vec<KafkaError> = results
        .into_iter()
        .filter_map(|r| r.err().map(|(e, _)| e))
        .collect();
    if let Some(first) = failed.first() {
        tracing::warn!(failed = failed.len(), events = events.len(), error = %first, "POST /api/feedback: publishing failed");
        return Err(Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "publish_failed",
            detail: format!(
                "the broker did not acknowledge {} of {} events ({first}); retrying may duplicate events sent without event_id",
                failed.len(),
                events.len()
            ),
            errors: Vec::new(),
        });
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "event_ids": ids })),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"subject_id":"Math","assistant_message":"4","rating":1,"created_at":"2026-02-05T10:30:00Z","conversation_id":"c1"}"#;

    fn origin(offset: i64) -> Origin<'static> {
        Origin {
            topic: "elsewhere",
            partition: 0,
            offset,
            received_at: Utc::now(),
        }
    }

    #[test]
    fn events_without_id_get_one_that_the_pipeline_keeps() {
        let with_null = EVENT.replacen('{', r#"{"event_id":null,"#, 1);
        let items = [EVENT.as_bytes(), with_null.as_bytes()];
        let out = validate("t", &items).unwrap_or_else(|_| panic!("valid"));
        for o in &out {
            // The pipeline decodes the published bytes to the id answered.
            let stored = decode(&o.payload, origin(7)).unwrap();
            assert_eq!(stored.event_id, o.event_id);
            assert_eq!(o.key.as_deref(), Some("c1"));
        }
        assert_ne!(out[0].event_id, out[1].event_id);
    }

    #[test]
    fn events_with_id_are_published_byte_for_byte() {
        let id = Uuid::new_v4();
        let event = EVENT.replacen('{', &format!(r#"{{"event_id":"{id}", "#), 1);
        let out = validate("t", &[event.as_bytes()]).unwrap_or_else(|_| panic!("valid"));
        assert_eq!(out[0].event_id, id);
        assert_eq!(&*out[0].payload, event.as_bytes());
    }

    #[test]
    fn every_invalid_event_is_reported() {
        let body = format!(r#"[{EVENT}, {{"subject_id":"Math"}}, 5, {EVENT}, "x"]"#);
        let items = split(body.as_bytes()).unwrap_or_else(|_| panic!("an array"));
        assert_eq!(items.len(), 5);
        let Err(errors) = validate("t", &items) else {
            panic!("invalid events pass")
        };
        let got: Vec<(usize, &str)> = errors.iter().map(|e| (e.index, e.reason)).collect();
        assert_eq!(
            got,
            vec![(1, "missing_field"), (2, "not_object"), (4, "not_object")]
        );
    }
}
