//! The domain feedback event.
//!
//! Guarantee: a [`FeedbackEvent`] can only be built through [`crate::decode`] (or the synthetic
//! generator, which goes through the same constructors), so every value that reaches the sink
//! satisfies docs/contract.md section 2: subject 1..=64 characters, rating in -1..=1, labels at most 128
//! characters, a `reason` of 1 to 64 characters without surrounding white space ([`ReasonTag`]),
//! a `comment` of at most 4,000 characters, no NUL character in any text (PostgreSQL `text` cannot hold one), and a
//! `created_at` no more than [`MAX_FUTURE_SKEW`] ahead of the time the event was received.

use chrono::{DateTime, Duration, Utc};
use std::fmt;
use uuid::Uuid;

/// Events claiming to be from further in the future than this are clamped to their ingest time
/// (a client with a wrong clock must not park a vote in a bucket nobody looks at yet).
pub const MAX_FUTURE_SKEW: Duration = Duration::minutes(5);

/// Namespace of the event ids derived from Kafka coordinates (UUID v5), fixed forever: changing
/// it would make a replay of an old offset look like a new event.
const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6c69_6b65_7261_7465_8000_0000_0000_0001);

/// A thumbs up, thumbs down or neutral vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rating {
    Dislike,
    Neutral,
    Like,
}

impl Rating {
    pub fn from_i64(value: i64) -> Option<Rating> {
        match value {
            -1 => Some(Rating::Dislike),
            0 => Some(Rating::Neutral),
            1 => Some(Rating::Like),
            _ => None,
        }
    }

    pub fn as_i16(self) -> i16 {
        match self {
            Rating::Dislike => -1,
            Rating::Neutral => 0,
            Rating::Like => 1,
        }
    }

    /// The label used in the API (`rating_label`) and in metrics (`rating`).
    pub fn label(self) -> &'static str {
        match self {
            Rating::Dislike => "dislike",
            Rating::Neutral => "neutral",
            Rating::Like => "like",
        }
    }

    pub const ALL: [Rating; 3] = [Rating::Like, Rating::Dislike, Rating::Neutral];
}

/// Why a text value cannot be part of an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must not be empty")]
    Empty,
    #[error("is {len} characters, at most {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("contains a NUL character, which PostgreSQL text cannot store")]
    Nul,
}

fn check_text(value: &str, max_chars: Option<usize>, allow_empty: bool) -> Result<(), TextError> {
    if value.contains('\0') {
        return Err(TextError::Nul);
    }
    if !allow_empty && value.is_empty() {
        return Err(TextError::Empty);
    }
    if let Some(max) = max_chars {
        // Byte length bounds the character count from above, so most values skip the count.
        if value.len() > max {
            let len = value.chars().count();
            if len > max {
                return Err(TextError::TooLong { len, max });
            }
        }
    }
    Ok(())
}

/// A chat subject such as `Math`: 1 to 64 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectId(String);

impl SubjectId {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(value: impl Into<String>) -> Result<SubjectId, TextError> {
        let value = value.into();
        check_text(&value, Some(Self::MAX_CHARS), false)?;
        Ok(SubjectId(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A short identifier (`model`, `conversation_id`, `vote_id`): at most 128 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label(String);

impl Label {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(value: impl Into<String>) -> Result<Label, TextError> {
        let value = value.into();
        check_text(&value, Some(Self::MAX_CHARS), true)?;
        Ok(Label(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text (question, answer): any length the size limit allows, no NUL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    pub fn parse(value: impl Into<String>) -> Result<Text, TextError> {
        let value = value.into();
        check_text(&value, None, true)?;
        Ok(Text(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why the user voted as they did: the tag the front end offers with the thumb (`wrong`,
/// `Not helpful`, `falsch`, `错误`, ...), counted per value in the API, the metrics and the report.
///
/// The rule is the contract's (a string of at most 64 characters) and the one of every text
/// field: at most [`ReasonTag::MAX_CHARS`] characters as sent, no NUL. The only normalisation
/// is that white space around the tag is trimmed, since it cannot be seen in a table or on a
/// dashboard and would split one tag's count in two; everything else (case, inner spaces,
/// punctuation, quotes, any script) is kept as given, so the tag reads as the front end wrote
/// it. A tag that is empty once trimmed is no reason, like `""` and `null`: the vote is kept
/// and counts without one. A tag is therefore any text, and every output escapes it: the
/// metric label ([`crate::telemetry`]), the report's HTML and Markdown, JSON; SQL binds it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReasonTag(String);

impl ReasonTag {
    pub const MAX_CHARS: usize = 64;

    /// The tag of `value`, or `None` when it is empty or white space only.
    pub fn parse(value: &str) -> Result<Option<ReasonTag>, TextError> {
        check_text(value, Some(Self::MAX_CHARS), true)?;
        let tag = value.trim();
        Ok((!tag.is_empty()).then(|| ReasonTag(tag.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tag with personal data replaced ([`crate::redact`]): cut to the limit like a
    /// [`Comment`], since a marker can be longer than what it replaces. `replaced` is this tag
    /// with matches replaced by ASCII markers, so it is neither blank nor holds a NUL.
    pub fn redacted(replaced: String) -> ReasonTag {
        ReasonTag(cut_to_chars(replaced, Self::MAX_CHARS))
    }
}

/// `text` cut to its first `max` characters.
fn cut_to_chars(mut text: String, max: usize) -> String {
    if let Some((at, _)) = text.char_indices().nth(max) {
        text.truncate(at);
    }
    text
}

/// The user's free-text explanation of a vote: user text like the answer (redacted, erased
/// and retained with it), at most 4,000 characters, no NUL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comment(String);

impl Comment {
    pub const MAX_CHARS: usize = 4000;

    pub fn parse(value: impl Into<String>) -> Result<Comment, TextError> {
        let value = value.into();
        check_text(&value, Some(Self::MAX_CHARS), true)?;
        Ok(Comment(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The comment with personal data replaced ([`crate::redact`]). A marker (`[email]`, 7
    /// characters) can be one character longer than the shortest address it replaces, so a
    /// comment at the limit could grow past it: the redacted text is cut to the limit then.
    /// `replaced` is this comment with matches replaced by ASCII markers, so it holds no NUL.
    pub fn redacted(replaced: String) -> Comment {
        Comment(cut_to_chars(replaced, Self::MAX_CHARS))
    }
}

/// Where a record came from in Kafka.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coordinates {
    pub partition: i32,
    pub offset: i64,
}

/// One valid feedback event.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedbackEvent {
    pub event_id: Uuid,
    pub subject_id: SubjectId,
    pub assistant_message: Text,
    pub user_question: Option<Text>,
    pub rating: Rating,
    pub message_index: Option<i32>,
    /// When the user rated, clamped to the ingest time if it was too far in the future.
    pub created_at: DateTime<Utc>,
    pub model: Option<Label>,
    pub conversation_id: Option<Label>,
    pub vote_id: Option<Label>,
    pub reason: Option<ReasonTag>,
    pub comment: Option<Comment>,
}

/// The id an event without `event_id` gets: stable across replays of the same record.
pub fn derived_event_id(topic: &str, partition: i32, offset: i64) -> Uuid {
    let name = format!("{topic}/{partition}/{offset}");
    Uuid::new_v5(&DERIVED_ID_NAMESPACE, name.as_bytes())
}

/// `created_at`, clamped to `received_at` when it is more than [`MAX_FUTURE_SKEW`] ahead.
pub fn clamp_created_at(created_at: DateTime<Utc>, received_at: DateTime<Utc>) -> DateTime<Utc> {
    if created_at > received_at + MAX_FUTURE_SKEW {
        received_at
    } else {
        created_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_limits_count_characters_not_bytes() {
        let sixty_four = "é".repeat(64);
        assert!(SubjectId::parse(sixty_four).is_ok());
        assert_eq!(
            SubjectId::parse("é".repeat(65)),
            Err(TextError::TooLong { len: 65, max: 64 })
        );
        assert_eq!(SubjectId::parse(""), Err(TextError::Empty));
        assert_eq!(SubjectId::parse("a\0b"), Err(TextError::Nul));
    }

    #[test]
    fn reason_tags_are_any_text_up_to_64_characters_trimmed() {
        let tag = |v: &str| ReasonTag::parse(v).map(|t| t.map(|t| t.as_str().to_owned()));
        for kept in [
            "wrong",
            "Not helpful",
            "Wrong answer",
            "falsch",
            "错误",
            "<script>alert('x')</script>",
            "x\"} 1\n# EOF",
            "_other",
            "tab\there",
        ] {
            assert_eq!(tag(kept), Ok(Some(kept.to_owned())), "{kept:?}");
        }
        // Surrounding white space (any Unicode white space) is trimmed, inner kept.
        assert_eq!(
            tag(" \u{a0}Not  helpful\n\u{3000}"),
            Ok(Some("Not  helpful".to_owned()))
        );
        // Nothing left once trimmed: no reason.
        for blank in ["", " ", "\t\n", "\u{3000}"] {
            assert_eq!(tag(blank), Ok(None), "{blank:?}");
        }
        // 64 characters, not bytes, counted as sent.
        assert_eq!(tag(&"错".repeat(64)), Ok(Some("错".repeat(64))));
        assert_eq!(
            tag(&"é".repeat(65)),
            Err(TextError::TooLong { len: 65, max: 64 })
        );
        assert_eq!(
            tag(&format!(" {} ", "a".repeat(63))),
            Err(TextError::TooLong { len: 65, max: 64 })
        );
        assert_eq!(tag("a\0"), Err(TextError::Nul));
        assert_eq!(tag(" \0 "), Err(TextError::Nul));
    }

    #[test]
    fn comments_are_free_text_up_to_4000_characters() {
        let html = "<script>alert(1)</script>\n\t\"quoted\"";
        assert_eq!(Comment::parse(html).unwrap().as_str(), html);
        assert!(Comment::parse("é".repeat(4000)).is_ok());
        assert_eq!(
            Comment::parse("é".repeat(4001)),
            Err(TextError::TooLong {
                len: 4001,
                max: 4000
            })
        );
        assert_eq!(Comment::parse("a\0"), Err(TextError::Nul));
        // A redaction that grows a comment at the limit is cut back to it.
        let grown = Comment::redacted(format!("{}[email]", "x".repeat(3994)));
        assert_eq!(grown.as_str().chars().count(), 4000);
        assert!(grown.as_str().ends_with("[email"));
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = derived_event_id("feedback-events", 0, 42);
        assert_eq!(a, derived_event_id("feedback-events", 0, 42));
        assert_ne!(a, derived_event_id("feedback-events", 1, 42));
        assert_ne!(a, derived_event_id("feedback-events", 0, 43));
        assert_ne!(a, derived_event_id("other", 0, 42));
    }

    #[test]
    fn far_future_is_clamped_near_future_is_kept() {
        let now = Utc::now();
        assert_eq!(clamp_created_at(now + Duration::hours(1), now), now);
        let soon = now + Duration::minutes(4);
        assert_eq!(clamp_created_at(soon, now), soon);
        let past = now - Duration::days(3);
        assert_eq!(clamp_created_at(past, now), past);
    }
}
