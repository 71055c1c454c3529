//! `POST /api/feedback`: feedback from front ends without a Kafka client.
//!
//! Guarantees:
//! - The body is one event (a JSON object) or a JSON array of at most [`MAX_EVENTS`] events,
//!   at most [`MAX_BODY_BYTES`] in all (more: 413). Each event is checked by the pipeline's own
//!   decoder ([`crate::decode::decode`]), so whatever is accepted here is stored by the
//!   pipeline, never dead-lettered.
//! - All or nothing: if any event is invalid, nothing is published and the 400 lists the first
//!   [`MAX_LISTED_ERRORS`] invalid events with their index, reason code and detail, plus
//!   `invalid_count`, the number of all of them. An array longer than [`MAX_EVENTS`] is refused
//!   while it is read, at its first surplus element, so a body of many tiny items costs no
//!   more than one of the allowed size.
//! - With `LIKERATE_INGEST_TOKEN` set, the request needs `Authorization: Bearer <token>`
//!   (401 otherwise), checked before the body is read.
//! - Every published event has an `event_id`: an event without one gets a time-ordered (v7)
//!   UUID before it is published, so the id returned here is the id it is stored under.
//!   (Ordered ids land at the right end of the `event_id` index instead of on a random page
//!   of it: docs/design.md, "Storage at scale".) Events that carry an `event_id` are
//!   published byte for byte; the others get the id as their first
//!   member, every other member kept as written (unknown fields the decoder ignored included,
//!   whatever JSON they hold).
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

/// Largest request body: room for [`MAX_EVENTS`] events of a few hundred bytes, or several
/// events of the contract's largest size ([`MAX_EVENT_BYTES`] each).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Most events in one request (CONTRACT section 6).
pub const MAX_EVENTS: usize = 1000;

/// Most invalid events listed in a 400: enough to fix a client, small enough that a body of
/// thousands of broken items answers with a small body.
pub const MAX_LISTED_ERRORS: usize = 100;

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
pub struct Outgoing<'a> {
    event_id: Uuid,
    key: Option<String>,
    payload: Cow<'a, [u8]>,
}

impl Outgoing<'_> {
    /// The id the event is published (and stored) under.
    pub fn event_id(&self) -> Uuid {
        self.event_id
    }

    /// The bytes published.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
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
    /// All invalid events, of which `errors` lists the first [`MAX_LISTED_ERRORS`].
    invalid_count: usize,
}

impl Refused {
    fn bad_request(error: &'static str, detail: String) -> Refused {
        Refused {
            status: StatusCode::BAD_REQUEST,
            error,
            detail,
            errors: Vec::new(),
            invalid_count: 0,
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        if self.errors.is_empty() {
            return ApiError::new(self.status, self.error, self.detail).into_response();
        }
        let body = serde_json::json!({
            "error": self.error,
            "detail": self.detail,
            "errors": self.errors,
            "invalid_count": self.invalid_count,
        });
        (self.status, Json(body)).into_response()
    }
}

/// The events of the body: the elements of an array, or the body itself.
fn split(body: &[u8]) -> Result<Vec<&[u8]>, Refused> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'[') {
        return Ok(vec![body]);
    }
    let too_many = std::cell::Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    let items = serde::Deserializer::deserialize_seq(&mut de, Items(&too_many))
        .and_then(|items| de.end().map(|()| items));
    let items = match items {
        Ok(items) => items,
        Err(_) if too_many.get() => {
            return Err(Refused::bad_request(
                "too_many_events",
                format!("the array holds more than {MAX_EVENTS} events"),
            ))
        }
        Err(e) => {
            return Err(Refused::bad_request(
                "invalid_json",
                format!("the body is not a JSON array of events: {e}"),
            ))
        }
    };
    if items.is_empty() {
        return Err(Refused::bad_request(
            "invalid_event",
            "the array holds no event".into(),
        ));
    }
    Ok(items.into_iter().map(|r| r.get().as_bytes()).collect())
}

/// Reads the elements of the top-level array as raw slices, and stops with an error at the
/// first element past [`MAX_EVENTS`] (setting the flag, so the caller can tell it from a
/// syntax error).
struct Items<'f>(&'f std::cell::Cell<bool>);

impl<'de, 'f> serde::de::Visitor<'de> for Items<'f> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if items.len() == MAX_EVENTS {
                self.0.set(true);
                return Err(serde::de::Error::custom("too many events"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// What is wrong with a body's events: the first [`MAX_LISTED_ERRORS`] and how many in all.
struct InvalidEvents {
    listed: Vec<Invalid>,
    count: usize,
}

/// Decodes every event; all valid or what is wrong.
fn validate<'a>(topic: &str, items: &[&'a [u8]]) -> Result<Vec<Outgoing<'a>>, InvalidEvents> {
    let received_at = Utc::now();
    let mut valid = Vec::with_capacity(items.len());
    let mut invalid = InvalidEvents {
        listed: Vec::new(),
        count: 0,
    };
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
                    let id = Uuid::now_v7();
                    match with_event_id(raw, id) {
                        Ok(payload) => (id, Cow::Owned(payload)),
                        Err(e) => {
                            invalid.add(index, "invalid_json", e.to_string());
                            continue;
                        }
                    }
                } else {
                    (event.event_id, Cow::Borrowed(*raw))
                };
                valid.push(Outgoing {
                    event_id,
                    key: event.conversation_id.map(|c| c.as_str().to_owned()),
                    payload,
                });
            }
            Err(e) => invalid.add(index, e.reason.code(), e.detail),
        }
    }
    if invalid.count == 0 {
        Ok(valid)
    } else {
        Err(invalid)
    }
}

impl InvalidEvents {
    fn add(&mut self, index: usize, reason: &'static str, detail: String) {
        self.count += 1;
        if self.listed.len() < MAX_LISTED_ERRORS {
            self.listed.push(Invalid {
                index,
                reason,
                detail,
            });
        }
    }
}

/// The event with `event_id` set (it was absent or null): the id first, then every other
/// member exactly as written. The members are read as raw JSON, never as values, so whatever
/// the decoder let through in fields it ignores (a lone surrogate escape, a number beyond
/// `f64`) is carried over instead of failing a second parse.
fn with_event_id(raw: &[u8], id: Uuid) -> Result<Vec<u8>, serde_json::Error> {
    let members: RawMembers<'_> = serde_json::from_slice(raw)?;
    let mut out = Vec::with_capacity(raw.len() + 60);
    out.extend_from_slice(format!(r#"{{"event_id":"{id}""#).as_bytes());
    for (key, value) in members.0 {
        // A key that is not valid text (a lone surrogate) cannot be `event_id`.
        let name: Option<Cow<'_, str>> = serde_json::from_str(key.get()).ok();
        if name.as_deref() == Some("event_id") {
            continue;
        }
        out.push(b',');
        out.extend_from_slice(key.get().as_bytes());
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Ok(out)
}

/// The members of a JSON object in order, keys and values as raw JSON.
struct RawMembers<'a>(Vec<(&'a RawValue, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for RawMembers<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = RawMembers<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<&'de RawValue, &'de RawValue>()? {
                    members.push(entry);
                }
                Ok(RawMembers(members))
            }
        }
        deserializer.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The whole check of a `POST /api/feedback` body, without publishing: the events to
/// publish, or the refusal. (Also the entry point of the `post_body` fuzz target.)
pub fn prepare<'a>(topic: &str, body: &'a [u8]) -> Result<Vec<Outgoing<'a>>, Refused> {
    let items = split(body)?;
    validate(topic, &items).map_err(|invalid| {
        let first = invalid
            .listed
            .first()
            .map(|e| format!(" (first: event {}: {}: {})", e.index, e.reason, e.detail))
            .unwrap_or_default();
        let detail = format!(
            "{} of {} events are invalid, nothing was published{first}",
            invalid.count,
            items.len()
        );
        Refused {
            errors: invalid.listed,
            invalid_count: invalid.count,
            ..Refused::bad_request("invalid_event", detail)
        }
    })
}

pub async fn post(
    _: crate::http::api::IngestAuthorized,
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
            invalid_count: 0,
        }
    })?;
    // One event (not an array) larger than the contract allows is refused like an oversize
    // body; inside an array, such an event is one of the invalid events (`too_large`).
    let is_array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if !is_array && body.len() > MAX_EVENT_BYTES {
        return Err(Refused {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            error: "invalid_body",
            detail: format!("the event is larger than {MAX_EVENT_BYTES} bytes"),
            errors: Vec::new(),
            invalid_count: 0,
        });
    }
    let publisher = &state.api.publisher;
    let events = prepare(&publisher.topic, &body)?;
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
            invalid_count: 0,
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
        assert_eq!(out[0].event_id.get_version(), Some(uuid::Version::SortRand));
        assert!(
            out[0].event_id < out[1].event_id,
            "in the order they were given"
        );
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
        let got: Vec<(usize, &str)> = errors.listed.iter().map(|e| (e.index, e.reason)).collect();
        assert_eq!(
            got,
            vec![(1, "missing_field"), (2, "not_object"), (4, "not_object")]
        );
    }

    #[test]
    fn bad_reasons_and_comments_are_refused_naming_the_field() {
        let with = |extra: &str| EVENT.replacen('{', &format!("{{{extra},"), 1);
        for good in [
            r#""reason":"Wrong","comment":"<b>no</b>""#,
            r#""reason":"Not \"helpful\" <b>","comment":"x""#,
            r#""reason":"  ""#,
        ] {
            assert!(prepare("t", with(good).as_bytes()).is_ok(), "{good}");
        }
        let long = format!(r#""comment":"{}""#, "x".repeat(4001));
        let long_reason = format!(r#""reason":"{}""#, "x".repeat(65));
        for (extra, reason, field) in [
            (long_reason.as_str(), "out_of_range", "reason"),
            (r#""reason":"a\u0000b""#, "nul_character", "reason"),
            (r#""reason":7"#, "invalid_type", "reason"),
            (long.as_str(), "out_of_range", "comment"),
            (r#""comment":["x"]"#, "invalid_type", "comment"),
        ] {
            let Err(refused) = prepare("t", with(extra).as_bytes()) else {
                panic!("{extra} accepted")
            };
            assert_eq!(refused.status, StatusCode::BAD_REQUEST);
            assert_eq!(refused.errors[0].reason, reason, "{extra}");
            assert!(refused.errors[0].detail.starts_with(field), "{extra}");
            assert!(
                refused.detail.contains(&format!("{reason}: {field}")),
                "{}",
                refused.detail
            );
        }
    }
}
