//! Redaction: e-mail addresses and phone numbers in the question, the answer, the comment and
//! the reason tag are replaced by `[email]` and `[phone]` after decoding and before the event
//! reaches the sink, so they are never written to PostgreSQL (`LIKERATE_REDACT=email,phone`).
//! The reason tag is free text too, and unlike the others it also becomes a metric label, which
//! Prometheus keeps beyond any erasure. Each replacement is counted in
//! `likerate_redactions_total{kind}`.
//!
//! The patterns are heuristics tuned to miss little personal data without eating numbers that
//! are content:
//! - e-mail: `local@domain.tld` (ASCII local part and domain, TLD of 2+ letters);
//! - phone: an optional `+country` code, an optional `(area)` group, then digit groups
//!   separated by spaces, dots or hyphens, 9 to 15 digits in all (not an ISO date); a run of digits without
//!   separators counts only with a leading `+` (`+4915112345678`), so `1234567890` in a math
//!   answer stays. Numbers glued to letters, or decimals (`3.14159265`), are not phones.
//!
//! `likerate run` builds one [`Redactor`] from the configuration and hands it to the source,
//! which applies it to every decoded event. Dead letters keep the original bytes of records that
//! failed decoding (they are not events): the dead-letter topic's Kafka retention bounds them
//! there, and the outbox (`crate::dead_letter`) drops them, with the key and the detail, once
//! they are published; only a dead letter the topic refused for good keeps them until a person
//! deals with it.

use crate::config::RedactConfig;
use crate::event::{Comment, FeedbackEvent, ReasonTag, Text};
use crate::telemetry::Metrics;
use regex::{Captures, Regex};

pub const EMAIL: &str = "[email]";
pub const PHONE: &str = "[phone]";

/// Replacements made in one event.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Redactions {
    pub email: u64,
    pub phone: u64,
}

pub struct Redactor {
    email: Option<Regex>,
    phone: Option<Regex>,
    metrics: Option<Metrics>,
}

impl Redactor {
    #[allow(
        clippy::expect_used,
        reason = "constant patterns, compiled by the unit tests"
    )]
    pub fn new(config: RedactConfig, metrics: Option<Metrics>) -> Redactor {
        let email = config.email.then(|| {
            Regex::new(r"(?i)[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}\b")
                .expect("email pattern")
        });
        // The prefix (start or a character that cannot be part of a number or word) is
        // captured and given back, the regex crate having no look-behind.
        let phone = config.phone.then(|| {
            Regex::new(
                r"(^|[^\w.+-])((?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,4}(?:[ .-][0-9]{2,5}){1,5}|\+[0-9]{8,15})\b",
            )
            .expect("phone pattern")
        });
        Redactor {
            email,
            phone,
            metrics,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.email.is_some() || self.phone.is_some()
    }

    /// The text with personal data replaced, and how many replacements were made.
    pub fn redact_str(&self, text: &str) -> (Option<String>, Redactions) {
        let mut counts = Redactions::default();
        let mut out: Option<String> = None;
        if let Some(re) = &self.email {
            let current = out.as_deref().unwrap_or(text);
            if re.is_match(current) {
                let mut n = 0;
                let replaced = re.replace_all(current, |_: &Captures<'_>| {
                    n += 1;
                    EMAIL
                });
                counts.email = n;
                out = Some(replaced.into_owned());
            }
        }
        if let Some(re) = &self.phone {
            let current = out.as_deref().unwrap_or(text);
            if re.is_match(current) {
                let mut n = 0;
                let replaced = re.replace_all(current, |c: &Captures<'_>| {
                    let candidate = &c[2];
                    let digits = candidate.bytes().filter(u8::is_ascii_digit).count();
                    if (9..=15).contains(&digits) && !is_decimal(candidate) && !is_date(candidate) {
                        n += 1;
                        format!("{}{PHONE}", &c[1])
                    } else {
                        c[0].to_owned()
                    }
                });
                if n > 0 {
                    counts.phone = n;
                    out = Some(replaced.into_owned());
                }
            }
        }
        (out, counts)
    }

    /// Redacts the question, the answer, the comment and the reason of the event in place,
    /// counting in the metrics.
    #[allow(
        clippy::expect_used,
        reason = "Text refuses only NUL, which neither the text nor the ASCII markers hold"
    )]
    pub fn redact(&self, event: &mut FeedbackEvent) -> Redactions {
        let mut total = Redactions::default();
        // Replacing matches by ASCII markers cannot add a NUL character.
        let text = |replaced: String| Text::parse(replaced).expect("redacted text stays valid");
        let answer = Some(&mut event.assistant_message);
        self.field(&mut total, answer, Text::as_str, text);
        self.field(&mut total, event.user_question.as_mut(), Text::as_str, text);
        self.field(
            &mut total,
            event.comment.as_mut(),
            Comment::as_str,
            Comment::redacted,
        );
        let reason = event.reason.as_mut();
        self.field(&mut total, reason, ReasonTag::as_str, ReasonTag::redacted);
        if let Some(m) = &self.metrics {
            for (kind, n) in [("email", total.email), ("phone", total.phone)] {
                if n > 0 {
                    m.redactions(kind, n);
                }
            }
        }
        total
    }

    /// Redacts one field of an event, if it is there, adding its replacements to `total`.
    fn field<T>(
        &self,
        total: &mut Redactions,
        value: Option<&mut T>,
        text: fn(&T) -> &str,
        rebuild: impl Fn(String) -> T,
    ) {
        let Some(value) = value else {
            return;
        };
        let (replaced, counts) = self.redact_str(text(value));
        if let Some(replaced) = replaced {
            *value = rebuild(replaced);
        }
        total.email += counts.email;
        total.phone += counts.phone;
    }
}

/// `2026-02-05` and `2026-02-05 10 30`-like dates.
fn is_date(candidate: &str) -> bool {
    let b = candidate.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b[7]
        && matches!(b[4], b'-' | b'.' | b' ')
}

/// `3.14159265` and `1.000.000,5`-like numbers: one dot-separated run with a short head.
fn is_decimal(candidate: &str) -> bool {
    !candidate.contains([' ', '-', '(', '+']) && candidate.matches('.').count() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> Redactor {
        Redactor::new(
            RedactConfig {
                email: true,
                phone: true,
            },
            None,
        )
    }

    fn redacted(text: &str) -> String {
        both().redact_str(text).0.unwrap_or_else(|| text.to_owned())
    }

    #[test]
    fn emails_and_phones_are_replaced() {
        assert_eq!(
            redacted("write to Jane.Doe+tag@mail.example.co.uk today"),
            "write to [email] today"
        );
        assert_eq!(redacted("call +33 6 12 34 56 78."), "call [phone].");
        assert_eq!(redacted("call (555) 123-4567 now"), "call [phone] now");
        assert_eq!(redacted("555-123-4567"), "[phone]");
        assert_eq!(redacted("+4915112345678"), "[phone]");
        assert_eq!(redacted("tel: 030 1234 5678"), "tel: [phone]");
        let (_, n) = both().redact_str("a@b.io and c@d.org, +1 202 555 0143");
        assert_eq!(n, Redactions { email: 2, phone: 1 });
    }

    #[test]
    fn numbers_that_are_content_stay() {
        for text in [
            "pi is 3.14159265358979",
            "the answer is 1234567890",
            "in 2026 there were 12 500 cases",
            "x = 42, y = 17",
            "ISBN978-3-16",
            "v1.2.3 released on 2026-02-05",
            "at 2026-02-05 10:30",
            "no contact here",
        ] {
            assert_eq!(redacted(text), text, "{text}");
        }
    }

    #[test]
    fn the_comment_is_redacted_like_the_answer() {
        let json = serde_json::json!({
            "subject_id": "Math", "assistant_message": "see a@b.io", "rating": -1,
            "created_at": "2026-02-05T10:30:00Z", "reason": "wrong",
            "comment": "wrong, mail me: jane.doe@example.com or call +33 6 12 34 56 78"
        });
        let origin = crate::decode::Origin {
            topic: "t",
            partition: 0,
            offset: 0,
            received_at: chrono::Utc::now(),
        };
        let mut event = crate::decode::decode(json.to_string().as_bytes(), origin).unwrap();
        let n = both().redact(&mut event);
        assert_eq!(n, Redactions { email: 2, phone: 1 });
        assert_eq!(
            event.comment.unwrap().as_str(),
            "wrong, mail me: [email] or call [phone]"
        );
        assert_eq!(event.assistant_message.as_str(), "see [email]");
        assert_eq!(event.reason.unwrap().as_str(), "wrong");
    }

    /// A reason tag becomes a metric label, kept by Prometheus beyond any erasure: personal
    /// data in it is replaced like in the comment, and the tag stays within its 64 characters.
    #[test]
    fn the_reason_is_redacted_and_stays_within_its_limit() {
        let decoded = |reason: &str| {
            let json = serde_json::json!({
                "subject_id": "Math", "assistant_message": "x", "rating": -1,
                "created_at": "2026-02-05T10:30:00Z", "reason": reason,
            });
            let origin = crate::decode::Origin {
                topic: "t",
                partition: 0,
                offset: 0,
                received_at: chrono::Utc::now(),
            };
            crate::decode::decode(json.to_string().as_bytes(), origin).unwrap()
        };
        let mut event = decoded("other: mail a@b.io or +33 6 12 34 56 78");
        assert_eq!(both().redact(&mut event), Redactions { email: 1, phone: 1 });
        assert_eq!(
            event.reason.unwrap().as_str(),
            "other: mail [email] or [phone]"
        );
        // 58 characters and a 6-character address: 64 as sent, 65 once redacted, cut to 64.
        let long = format!("{} a@b.io", "x".repeat(57));
        assert_eq!(long.chars().count(), 64);
        let mut event = decoded(&long);
        both().redact(&mut event);
        let reason = event.reason.unwrap();
        assert_eq!(reason.as_str().chars().count(), 64);
        assert_eq!(reason.as_str(), format!("{} [email", "x".repeat(57)));
    }

    #[test]
    fn only_the_configured_kinds_are_redacted() {
        let r = Redactor::new(
            RedactConfig {
                email: true,
                phone: false,
            },
            None,
        );
        let (out, n) = r.redact_str("a@b.io +33 6 12 34 56 78");
        assert_eq!(out.as_deref(), Some("[email] +33 6 12 34 56 78"));
        assert_eq!(n.phone, 0);
    }
}
