//! Operations on stored feedback: dead-letter replay, erasure on request, retention,
//! redaction of personal data before the write, and the weekly report.
//!
//! | module | command or hook |
//! |---|---|
//! | [`replay`] | `likerate dlq replay`: republish dead letters after a fix, once each |
//! | [`erase`] | `likerate erase`: delete rows on request and correct the aggregates |
//! | [`retention`] | `likerate retention` and the daily task of `likerate run` |
//! | [`redact`] | `LIKERATE_REDACT`: e-mail addresses and phone numbers replaced before the write |
//! | [`report`] | `likerate report`: HTML or Markdown like-rate report with SVG charts |

pub mod erase;
pub mod redact;
pub mod replay;
pub mod report;
pub mod retention;

use crate::event::Rating;
use crate::sink::truncate;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;

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

/// Rollup changes per (grain, bucket, subject, model): [likes, dislikes, neutral]. The same
/// cells the sink maintains: minute, hour and day buckets in UTC, model `''` when absent.
#[derive(Default, Debug)]
pub(crate) struct RollupDeltas(BTreeMap<(char, DateTime<Utc>, String, String), [i64; 3]>);

const UPSERT_ROLLUP: &str = "
INSERT INTO feedback_rollup (grain, bucket, subject_id, model, likes, dislikes, neutral)
SELECT * FROM unnest($1::\"char\"[], $2::timestamptz[], $3::text[], $4::text[],
                     $5::int8[], $6::int8[], $7::int8[])
ON CONFLICT (grain, bucket, subject_id, model) DO UPDATE
SET likes = feedback_rollup.likes + excluded.likes,
    dislikes = feedback_rollup.dislikes + excluded.dislikes,
    neutral = feedback_rollup.neutral + excluded.neutral";

impl RollupDeltas {
    pub(crate) fn add(
        &mut self,
        created_at: DateTime<Utc>,
        subject: &str,
        model: &str,
        rating: i16,
        sign: i64,
    ) {
        let i = match Rating::from_i64(rating.into()) {
            Some(Rating::Like) => 0,
            Some(Rating::Dislike) => 1,
            _ => 2,
        };
        for (grain, seconds) in [('d', 86_400), ('h', 3_600), ('m', 60)] {
            let key = (
                grain,
                truncate(created_at, seconds),
                subject.to_owned(),
                model.to_owned(),
            );
            self.0.entry(key).or_default()[i] += sign;
        }
    }

    /// Applies the changes in key order (the sink's lock order); cells left at zero are
    /// removed. Returns how many cells changed.
    pub(crate) async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<u64, tokio_postgres::Error> {
        let d: Vec<_> = self.0.iter().filter(|(_, c)| **c != [0, 0, 0]).collect();
        if d.is_empty() {
            return Ok(0);
        }
        let grains: Vec<i8> = d.iter().map(|(k, _)| k.0 as i8).collect();
        let buckets: Vec<DateTime<Utc>> = d.iter().map(|(k, _)| k.1).collect();
        let subjects: Vec<&str> = d.iter().map(|(k, _)| k.2.as_str()).collect();
        let models: Vec<&str> = d.iter().map(|(k, _)| k.3.as_str()).collect();
        let likes: Vec<i64> = d.iter().map(|(_, c)| c[0]).collect();
        let dislikes: Vec<i64> = d.iter().map(|(_, c)| c[1]).collect();
        let neutral: Vec<i64> = d.iter().map(|(_, c)| c[2]).collect();
        tx.execute(
            UPSERT_ROLLUP,
            &[
                &grains, &buckets, &subjects, &models, &likes, &dislikes, &neutral,
            ],
        )
        .await?;
        tx.execute(
            "DELETE FROM feedback_rollup r
             USING unnest($1::\"char\"[], $2::timestamptz[], $3::text[], $4::text[])
                   AS k(grain, bucket, subject_id, model)
             WHERE (r.grain, r.bucket, r.subject_id, r.model)
                   = (k.grain, k.bucket, k.subject_id, k.model)
               AND (r.likes, r.dislikes, r.neutral) = (0, 0, 0)",
            &[&grains, &buckets, &subjects, &models],
        )
        .await?;
        Ok(d.len() as u64)
    }
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

    #[test]
    fn deltas_cover_three_grains() {
        let mut d = RollupDeltas::default();
        let t: DateTime<Utc> = "2026-02-05T10:30:59Z".parse().unwrap();
        d.add(t, "Math", "", 1, -1);
        d.add(t, "Math", "", -1, 1);
        assert_eq!(d.0.len(), 3);
        assert!(d.0.values().all(|c| *c == [-1, 1, 0]));
    }
}
