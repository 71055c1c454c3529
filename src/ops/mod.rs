//! Operations on stored feedback: dead-letter replay, erasure on request, retention and the
//! weekly report.
//!
//! | module | command or hook |
//! |---|---|
//! | [`replay`] | `likerate dlq replay`: republish dead letters after a fix, once each |
//! | [`erase`] | `likerate erase`: delete rows on request and correct the aggregates |
//! | [`retention`] | `likerate retention` and the daily task of `likerate run` |
//! | [`report`] | `likerate report`: HTML or Markdown like-rate report with SVG charts |

pub mod erase;
pub mod replay;
pub mod report;
pub mod retention;

use chrono::{DateTime, Utc};

/// A point in time given as an age (`7d`, `36h`: that long before `now`) or an RFC 3339
/// timestamp.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let age = humantime::parse_duration(text)
        .map_err(|_| format!("{text:?} is neither an age like 7d nor an RFC 3339 timestamp"))?;
    let age = chrono::Duration::from_std(age).map_err(|e| e.to_string())?;
    now.checked_sub_signed(age)
        .ok_or_else(|| format!("{text:?} reaches before the calendar"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_an_age_or_a_timestamp() {
        let now: DateTime<Utc> = "2026-02-10T12:00:00Z".parse().unwrap();
        assert_eq!(
            parse_since("7d", now).unwrap().to_rfc3339(),
            "2026-02-03T12:00:00+00:00"
        );
        assert_eq!(
            parse_since("2026-02-01T00:00:00+01:00", now)
                .unwrap()
                .to_rfc3339(),
            "2026-01-31T23:00:00+00:00"
        );
        assert!(parse_since("last week", now).is_err());
    }
}
