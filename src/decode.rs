//! Decode: the bytes of one Kafka record become a [`FeedbackEvent`] or a [`DecodeError`].
//!
//! Guarantees:
//! - Every deviation from docs/contract.md section 2 is a [`DecodeError`] carrying a [`Reason`] code
//!   (a short, fixed string: the `likerate-error` header and the `reason` metric label) and a
//!   human detail. Nothing panics and nothing is dropped: the caller dead-letters the original
//!   bytes.
//! - The payload is parsed where it lies: strings without escapes are borrowed from the record
//!   until the final owned values are built.
//! - Duplicate keys are refused (`duplicate_field`) rather than resolved by "last one wins":
//!   two values for one field mean the producer is confused, and guessing would store a vote
//!   nobody can vouch for. `assistant_message` and its alias `message_content` count as one key.
//! - `null` in an optional field means absent; in a required field it is `missing_field`.
//! - Nesting deeper than 128 levels is `invalid_json` (serde_json's recursion limit), so a
//!   hostile document cannot overflow the stack.

use crate::event::{
    clamp_created_at, derived_event_id, Comment, FeedbackEvent, Label, Rating, ReasonTag,
    SubjectId, Text, TextError,
};
use chrono::{DateTime, Utc};
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use uuid::Uuid;

/// Largest accepted value (docs/contract.md section 2).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// Why a record was refused. The codes are part of the contract with operators: they appear
/// in the `likerate-error` header, in `likerate_dead_letters_total{reason}` and in
/// `likerate dlq replay --reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Empty,
    TooLarge,
    InvalidUtf8,
    InvalidJson,
    NotObject,
    DuplicateField,
    MissingField,
    InvalidType,
    OutOfRange,
    InvalidTimestamp,
    InvalidEventId,
    NulCharacter,
    /// `reason` outside the tag grammar of releases before migration 0008 (which accepted only
    /// `[a-z0-9_-]`). No longer given: any text of at most 64 characters is a reason now. The
    /// code stays so that `likerate dlq replay --reason invalid_reason` can bring back the votes
    /// that the old grammar dead-lettered.
    InvalidReason,
    /// PostgreSQL refused the row as data although it passed decoding (set by the sink).
    DbRejected,
}

impl Reason {
    pub const ALL: [Reason; 14] = [
        Reason::Empty,
        Reason::TooLarge,
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::NotObject,
        Reason::DuplicateField,
        Reason::MissingField,
        Reason::InvalidType,
        Reason::OutOfRange,
        Reason::InvalidTimestamp,
        Reason::InvalidEventId,
        Reason::NulCharacter,
        Reason::InvalidReason,
        Reason::DbRejected,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::Empty => "empty",
            Reason::TooLarge => "too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotObject => "not_object",
            Reason::DuplicateField => "duplicate_field",
            Reason::MissingField => "missing_field",
            Reason::InvalidType => "invalid_type",
            Reason::OutOfRange => "out_of_range",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::InvalidEventId => "invalid_event_id",
            Reason::NulCharacter => "nul_character",
            Reason::InvalidReason => "invalid_reason",
            Reason::DbRejected => "db_rejected",
        }
    }

    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A record that is not a valid feedback event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct DecodeError {
    pub reason: Reason,
    pub detail: String,
}

impl DecodeError {
    pub fn new(reason: Reason, detail: impl Into<String>) -> DecodeError {
        DecodeError {
            reason,
            detail: detail.into(),
        }
    }
}

/// Where the record came from: used to derive `event_id` when the event has none, and the
/// time it was received, against which `created_at` is clamped.
#[derive(Clone, Copy, Debug)]
pub struct Origin<'t> {
    pub topic: &'t str,
    pub partition: i32,
    pub offset: i64,
    pub received_at: DateTime<Utc>,
}

/// Decodes one record value.
pub fn decode(payload: &[u8], origin: Origin<'_>) -> Result<FeedbackEvent, DecodeError> {
    if payload.is_empty() {
        return Err(DecodeError::new(Reason::Empty, "the record value is empty"));
    }
    if payload.len() > MAX_EVENT_BYTES {
        return Err(DecodeError::new(
            Reason::TooLarge,
            format!(
                "the value is {} bytes, at most {MAX_EVENT_BYTES} allowed",
                payload.len()
            ),
        ));
    }
    let text = std::str::from_utf8(payload).map_err(|e| {
        DecodeError::new(
            Reason::InvalidUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    if let Some(at) = too_deep(payload) {
        return Err(DecodeError::new(
            Reason::InvalidJson,
            format!("nesting deeper than {MAX_DEPTH} levels at byte {at}"),
        ));
    }
    let first = text.trim_start().as_bytes().first().copied();
    if first != Some(b'{') {
        return Err(match serde_json::from_str::<IgnoredAny>(text) {
            Ok(_) => DecodeError::new(
                Reason::NotObject,
                format!("expected a JSON object, got {}", json_kind(first)),
            ),
            Err(e) => DecodeError::new(Reason::InvalidJson, e.to_string()),
        });
    }
    let fields = match serde_json::from_str::<RawFields<'_>>(text) {
        Ok(fields) => fields,
        Err(e) => return Err(DecodeError::new(Reason::InvalidJson, e.to_string())),
    };
    fields.into_event(origin)
}

/// Deepest nesting accepted, as serde_json's own limit for the fields it decodes.
const MAX_DEPTH: usize = 128;

/// The byte where nesting first exceeds [`MAX_DEPTH`]. serde_json skips unknown fields without
/// a depth limit, so the bound is checked here, in one pass that ignores string contents.
fn too_deep(payload: &[u8]) -> Option<usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in payload.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(i);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

fn json_kind(first: Option<u8>) -> &'static str {
    match first {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}

/// The known fields as raw JSON slices, found in one pass over the object. Typing happens
/// afterwards, field by field, so a type error names its field and a later syntax error in the
/// same document still wins (the document as a whole is then `invalid_json`).
#[derive(Default)]
struct RawFields<'a> {
    event_id: Option<&'a RawValue>,
    subject_id: Option<&'a RawValue>,
    assistant_message: Option<&'a RawValue>,
    user_question: Option<&'a RawValue>,
    rating: Option<&'a RawValue>,
    message_index: Option<&'a RawValue>,
    created_at: Option<&'a RawValue>,
    model: Option<&'a RawValue>,
    conversation_id: Option<&'a RawValue>,
    vote_id: Option<&'a RawValue>,
    reason: Option<&'a RawValue>,
    comment: Option<&'a RawValue>,
    duplicate: Option<String>,
}

impl<'de: 'a, 'a> Deserialize<'de> for RawFields<'a> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor(std::marker::PhantomData))
    }
}

struct FieldsVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for FieldsVisitor<'a> {
    type Value = RawFields<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a feedback event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = RawFields::default();
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let slot = match key.0.as_ref() {
                "event_id" => &mut fields.event_id,
                "subject_id" => &mut fields.subject_id,
                "assistant_message" | "message_content" => &mut fields.assistant_message,
                "user_question" => &mut fields.user_question,
                "rating" => &mut fields.rating,
                "message_index" => &mut fields.message_index,
                "created_at" => &mut fields.created_at,
                "model" => &mut fields.model,
                "conversation_id" => &mut fields.conversation_id,
                "vote_id" => &mut fields.vote_id,
                "reason" => &mut fields.reason,
                "comment" => &mut fields.comment,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value = map.next_value::<&'de RawValue>()?;
            if slot.replace(value).is_some() && fields.duplicate.is_none() {
                fields.duplicate = Some(key.0.into_owned());
            }
        }
        Ok(fields)
    }
}

/// A JSON string, borrowed from the payload when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(V(std::marker::PhantomData))
    }
}

/// The JSON type of a raw value, for error details.
fn raw_kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'-' | b'0'..=b'9') => "a number",
        first => json_kind(first.copied()),
    }
}

fn invalid_type(field: &str, expected: &str, raw: &RawValue) -> DecodeError {
    DecodeError::new(
        Reason::InvalidType,
        format!("{field} must be {expected}, got {}", raw_kind(raw)),
    )
}

fn is_null(raw: Option<&RawValue>) -> bool {
    raw.is_some_and(|r| r.get() == "null")
}

/// A present, non-null value, or `missing_field`.
fn required<'a>(field: &str, raw: Option<&'a RawValue>) -> Result<&'a RawValue, DecodeError> {
    match raw {
        Some(r) if r.get() != "null" => Ok(r),
        _ => Err(DecodeError::new(
            Reason::MissingField,
            format!("{field} is required"),
        )),
    }
}

/// A present, non-null value, or `None` for absent and `null`.
fn optional(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|r| !is_null(Some(r)))
}

fn string<'a>(field: &str, raw: &'a RawValue) -> Result<Cow<'a, str>, DecodeError> {
    serde_json::from_str::<Str<'a>>(raw.get())
        .map(|s| s.0)
        .map_err(|e| {
            if e.is_data() {
                invalid_type(field, "a string", raw)
            } else {
                // A lone surrogate escape is a syntax error of the string itself.
                DecodeError::new(Reason::InvalidJson, format!("{field}: {e}"))
            }
        })
}

/// An integer field. JSON has one number type, and JSON Schema (the event's schema) counts
/// `1.0` and `1e0` as the integer 1, so a number with a zero fraction is that integer too;
/// `2.5` is `invalid_type`, an integer beyond `i64` is `out_of_range`.
fn integer(field: &str, raw: &RawValue) -> Result<i64, DecodeError> {
    let out_of_range = || DecodeError::new(Reason::OutOfRange, format!("{field} is out of range"));
    let Ok(n) = serde_json::from_str::<serde_json::Number>(raw.get()) else {
        return Err(invalid_type(field, "an integer", raw));
    };
    if let Some(v) = n.as_i64() {
        return Ok(v);
    }
    if n.is_u64() {
        return Err(out_of_range());
    }
    match n.as_f64() {
        // -2^63 <= f < 2^63: exactly the f64 values that are i64s (i64::MIN is -2^63 exactly).
        Some(f) if f.fract() == 0.0 && (i64::MIN as f64..-(i64::MIN as f64)).contains(&f) => {
            Ok(f as i64)
        }
        Some(f) if f.fract() == 0.0 => Err(out_of_range()),
        _ => Err(invalid_type(field, "an integer", raw)),
    }
}

fn text_error(field: &str, err: TextError) -> DecodeError {
    let reason = match err {
        TextError::Nul => Reason::NulCharacter,
        TextError::Empty | TextError::TooLong { .. } => Reason::OutOfRange,
    };
    DecodeError::new(reason, format!("{field} {err}"))
}

fn label(field: &str, raw: Option<&RawValue>) -> Result<Option<Label>, DecodeError> {
    optional(raw)
        .map(|r| Label::parse(string(field, r)?).map_err(|e| text_error(field, e)))
        .transpose()
}

/// An optional string field where the empty string means absent, like `null`: front ends
/// send `""` for "none given" as often as they leave the field out. `parse` may find more
/// values that mean absent (a reason of white space only).
fn non_empty<T>(
    field: &str,
    raw: Option<&RawValue>,
    parse: impl FnOnce(&str) -> Result<Option<T>, TextError>,
) -> Result<Option<T>, DecodeError> {
    let Some(raw) = optional(raw) else {
        return Ok(None);
    };
    let text = string(field, raw)?;
    if text.is_empty() {
        return Ok(None);
    }
    parse(&text).map_err(|e| text_error(field, e))
}

impl RawFields<'_> {
    fn into_event(self, origin: Origin<'_>) -> Result<FeedbackEvent, DecodeError> {
        if let Some(field) = self.duplicate {
            let detail = if field == "assistant_message" || field == "message_content" {
                "assistant_message is given twice (message_content is its alias)".to_owned()
            } else {
                format!("{field} is given twice")
            };
            return Err(DecodeError::new(Reason::DuplicateField, detail));
        }
        let subject_raw = required("subject_id", self.subject_id)?;
        let subject_id = SubjectId::parse(string("subject_id", subject_raw)?)
            .map_err(|e| text_error("subject_id", e))?;
        let message_raw = required("assistant_message", self.assistant_message)?;
        let assistant_message = Text::parse(string("assistant_message", message_raw)?)
            .map_err(|e| text_error("assistant_message", e))?;
        let user_question = optional(self.user_question)
            .map(|r| {
                Text::parse(string("user_question", r)?).map_err(|e| text_error("user_question", e))
            })
            .transpose()?;
        let rating_value = integer("rating", required("rating", self.rating)?)?;
        let rating = Rating::from_i64(rating_value).ok_or_else(|| {
            DecodeError::new(
                Reason::OutOfRange,
                format!("rating must be -1, 0 or 1, got {rating_value}"),
            )
        })?;
        let message_index = optional(self.message_index)
            .map(|r| {
                let v = integer("message_index", r)?;
                i32::try_from(v).ok().filter(|v| *v >= 0).ok_or_else(|| {
                    DecodeError::new(
                        Reason::OutOfRange,
                        format!("message_index must be between 0 and {}, got {v}", i32::MAX),
                    )
                })
            })
            .transpose()?;
        let created_raw = string("created_at", required("created_at", self.created_at)?)?;
        let created_at = DateTime::parse_from_rfc3339(&created_raw)
            .map_err(|e| {
                DecodeError::new(
                    Reason::InvalidTimestamp,
                    format!("created_at {created_raw:?} is not an RFC 3339 timestamp: {e}"),
                )
            })?
            .with_timezone(&Utc);
        let event_id = match optional(self.event_id) {
            Some(r) => {
                let s = string("event_id", r)?;
                // Only the canonical hyphenated form: braced, URN and bare-hex spellings of
                // one id would otherwise be accepted as the same key under different text.
                let parsed = Uuid::try_parse(&s).ok().filter(|_| s.len() == 36);
                parsed.ok_or_else(|| {
                    DecodeError::new(
                        Reason::InvalidEventId,
                        format!("event_id {s:?} is not a UUID"),
                    )
                })?
            }
            None => derived_event_id(origin.topic, origin.partition, origin.offset),
        };
        Ok(FeedbackEvent {
            event_id,
            subject_id,
            assistant_message,
            user_question,
            rating,
            message_index,
            created_at: clamp_created_at(created_at, origin.received_at),
            model: label("model", self.model)?,
            conversation_id: label("conversation_id", self.conversation_id)?,
            vote_id: label("vote_id", self.vote_id)?,
            reason: non_empty("reason", self.reason, ReasonTag::parse)?,
            comment: non_empty("comment", self.comment, |c: &str| {
                Comment::parse(c).map(Some)
            })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin<'static> {
        Origin {
            topic: "feedback-events",
            partition: 3,
            offset: 17,
            received_at: Utc::now(),
        }
    }

    fn reason(payload: &[u8]) -> Reason {
        decode(payload, origin()).unwrap_err().reason
    }

    const VALID: &str = r#"{"subject_id":"Math","assistant_message":"4","rating":1,"created_at":"2026-02-05T10:30:00Z"}"#;

    #[test]
    fn minimal_event_decodes_with_derived_id() {
        let e = decode(VALID.as_bytes(), origin()).unwrap();
        assert_eq!(e.subject_id.as_str(), "Math");
        assert_eq!(e.rating, Rating::Like);
        assert_eq!(e.event_id, derived_event_id("feedback-events", 3, 17));
        assert_eq!(e.created_at.to_rfc3339(), "2026-02-05T10:30:00+00:00");
    }

    #[test]
    fn alias_and_unknown_fields_and_nulls() {
        let e = decode(
            br#"{"subject_id":"Physics","message_content":"F=ma","rating":-1,"created_at":"2026-02-05T10:30:00+02:00","extra":{"a":[1,2]},"model":null,"user_question":"Why?"}"#,
            origin(),
        )
        .unwrap();
        assert_eq!(e.assistant_message.as_str(), "F=ma");
        assert_eq!(e.model, None);
        assert_eq!(e.user_question.unwrap().as_str(), "Why?");
        assert_eq!(e.created_at.to_rfc3339(), "2026-02-05T08:30:00+00:00");
    }

    #[test]
    fn every_bad_input_has_its_reason() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        let big = format!(
            r#"{{"subject_id":"M","assistant_message":"{}","rating":1,"created_at":"2026-02-05T10:30:00Z"}}"#,
            "x".repeat(MAX_EVENT_BYTES)
        );
        let with = |field: &str| VALID.replacen("\"rating\":1", field, 1);
        let cases: Vec<(Vec<u8>, Reason)> = vec![
            (vec![], Reason::Empty),
            (big.into_bytes(), Reason::TooLarge),
            (vec![b'{', 0xff, b'}'], Reason::InvalidUtf8),
            (b"hello".to_vec(), Reason::InvalidJson),
            (VALID.as_bytes()[..40].to_vec(), Reason::InvalidJson),
            (deep.into_bytes(), Reason::InvalidJson),
            (b"[1,2]".to_vec(), Reason::NotObject),
            (b"\"Math\"".to_vec(), Reason::NotObject),
            (
                with(r#""rating":1,"rating":1"#).into_bytes(),
                Reason::DuplicateField,
            ),
            (
                with(r#""rating":1,"message_content":"x""#).into_bytes(),
                Reason::DuplicateField,
            ),
            (
                VALID.replace("\"subject_id\":\"Math\",", "").into_bytes(),
                Reason::MissingField,
            ),
            (
                VALID.replace("Math", &"m".repeat(65)).into_bytes(),
                Reason::OutOfRange,
            ),
            (with(r#""rating":2"#).into_bytes(), Reason::OutOfRange),
            (with(r#""rating":"1""#).into_bytes(), Reason::InvalidType),
            (with(r#""rating":1.5"#).into_bytes(), Reason::InvalidType),
            (with(r#""rating":1e300"#).into_bytes(), Reason::OutOfRange),
            (
                with(r#""rating":1,"message_index":2147483648.0"#).into_bytes(),
                Reason::OutOfRange,
            ),
            (with(r#""rating":null"#).into_bytes(), Reason::MissingField),
            (
                VALID
                    .replace("2026-02-05T10:30:00Z", "yesterday")
                    .into_bytes(),
                Reason::InvalidTimestamp,
            ),
            (
                VALID.replace("Math", r"\ud800").into_bytes(),
                Reason::InvalidJson,
            ),
            (
                VALID.replace("Math", r"Ma\u0000th").into_bytes(),
                Reason::NulCharacter,
            ),
            (
                with(r#""rating":1,"event_id":"nope""#).into_bytes(),
                Reason::InvalidEventId,
            ),
            (
                with(r#""rating":1,"message_index":-1"#).into_bytes(),
                Reason::OutOfRange,
            ),
        ];
        for (payload, expected) in cases {
            let got = decode(&payload, origin());
            assert_eq!(
                got.as_ref().map_err(|e| e.reason),
                Err(expected),
                "payload {:?}",
                String::from_utf8_lossy(&payload[..payload.len().min(80)])
            );
        }
    }

    #[test]
    fn reason_and_comment_decode_with_their_limits() {
        let with =
            |extra: &str| VALID.replacen("\"rating\":1", &format!("\"rating\":-1,{extra}"), 1);
        let comment = "é".repeat(4000);
        let e = decode(
            with(&format!(r#""reason":"wrong","comment":"{comment}""#)).as_bytes(),
            origin(),
        )
        .unwrap();
        assert_eq!(e.reason.unwrap().as_str(), "wrong");
        assert_eq!(e.comment.unwrap().as_str(), comment);
        let tag = "R".repeat(64);
        let e = decode(with(&format!(r#""reason":"{tag}""#)).as_bytes(), origin()).unwrap();
        assert_eq!(e.reason.unwrap().as_str(), tag);
        // Any text the contract allows is a reason, kept as given but for the white space
        // around it (JSON escapes decoded).
        for (json, stored) in [
            (r#""not helpful""#, "not helpful"),
            (r#""Wrong answer""#, "Wrong answer"),
            (r#""falsch""#, "falsch"),
            (r#""错误""#, "错误"),
            (r#""\u9519\u8bef""#, "错误"),
            (r#""<script>\"x\"</script>""#, "<script>\"x\"</script>"),
            (r#""x\"} 1\n# EOF""#, "x\"} 1\n# EOF"),
            (r#""_other""#, "_other"),
            (r#""  Not helpful\t""#, "Not helpful"),
        ] {
            let e = decode(with(&format!(r#""reason":{json}"#)).as_bytes(), origin()).unwrap();
            assert_eq!(e.reason.unwrap().as_str(), stored, "{json}");
        }
        // Absent, null, empty and (for the reason) white space only are all "none given".
        for none in [
            r#""x":0"#,
            r#""reason":null,"comment":null"#,
            r#""reason":"","comment":"""#,
            r#""reason":" \t\n""#,
        ] {
            let e = decode(with(none).as_bytes(), origin()).unwrap();
            assert_eq!((e.reason, e.comment), (None, None), "{none}");
        }
        let html = r#""comment":"<script>alert(\"x\")</script>\nline two""#;
        let e = decode(with(html).as_bytes(), origin()).unwrap();
        assert_eq!(
            e.comment.unwrap().as_str(),
            "<script>alert(\"x\")</script>\nline two"
        );
        let long_comment = format!(r#""comment":"{}""#, "é".repeat(4001));
        let long_tag = format!(r#""reason":"{}""#, "错".repeat(65));
        let padded_tag = format!(r#""reason":" {} ""#, "r".repeat(63));
        let cases = [
            (
                long_comment.as_str(),
                Reason::OutOfRange,
                "comment is 4001 characters",
            ),
            (
                long_tag.as_str(),
                Reason::OutOfRange,
                "reason is 65 characters",
            ),
            // The limit is on the value as sent, like the JSON Schema's maxLength.
            (
                padded_tag.as_str(),
                Reason::OutOfRange,
                "reason is 65 characters",
            ),
            (
                r#""reason":"a\u0000""#,
                Reason::NulCharacter,
                "reason contains",
            ),
            (
                r#""comment":"a\u0000""#,
                Reason::NulCharacter,
                "comment contains",
            ),
            (
                r#""reason":1"#,
                Reason::InvalidType,
                "reason must be a string, got a number",
            ),
            (
                r#""reason":["wrong"]"#,
                Reason::InvalidType,
                "reason must be a string, got an array",
            ),
            (
                r#""comment":{"a":1}"#,
                Reason::InvalidType,
                "comment must be a string, got an object",
            ),
            (
                r#""comment":true"#,
                Reason::InvalidType,
                "comment must be a string, got a boolean",
            ),
            (
                r#""reason":"a","reason":"b""#,
                Reason::DuplicateField,
                "reason is given twice",
            ),
        ];
        for (extra, reason, detail) in cases {
            let err = decode(with(extra).as_bytes(), origin()).unwrap_err();
            assert_eq!(err.reason, reason, "{extra}: {err}");
            assert!(err.detail.starts_with(detail), "{extra}: {}", err.detail);
        }
        // The code of the old grammar's refusals still parses, for `dlq replay --reason`.
        assert_eq!(
            Reason::from_code("invalid_reason"),
            Some(Reason::InvalidReason)
        );
    }

    #[test]
    fn integers_may_be_written_with_a_zero_fraction() {
        // One JSON number type: JSON Schema (and so the event's schema) counts these as integers.
        for (rating, index) in [("1.0", "330.0"), ("1e0", "3.30e2"), ("-1.00", "0.0")] {
            let payload = VALID.replacen(
                "\"rating\":1",
                &format!("\"rating\":{rating},\"message_index\":{index}"),
                1,
            );
            let event = decode(payload.as_bytes(), origin()).unwrap();
            let want = if rating.starts_with('-') { -1 } else { 1 };
            assert_eq!(event.rating.as_i16(), want, "{payload}");
            assert_eq!(
                event.message_index,
                Some(if index == "0.0" { 0 } else { 330 })
            );
        }
    }

    #[test]
    fn text_is_kept_byte_exact() {
        let answer = "'; DROP TABLE feedback; -- <b>x</b> 🎉 \u{202e}abc \\n \"q\"";
        let json = serde_json::json!({
            "subject_id": "Math", "assistant_message": answer, "rating": 0,
            "created_at": "2026-02-05T10:30:00Z"
        });
        let e = decode(json.to_string().as_bytes(), origin()).unwrap();
        assert_eq!(e.assistant_message.as_str(), answer);
        assert_eq!(reason(b"  null "), Reason::NotObject);
    }
}
