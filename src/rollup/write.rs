//! The write side of the rollups: [`RollupDeltas`], the only way their counts change.

use super::{bucket, GRAINS};
use crate::event::Rating;
use chrono::{DateTime, NaiveDate, Utc};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// A rollup row's key: (grain, bucket, subject, model).
type RollupKey<'a> = (char, DateTime<Utc>, &'a str, &'a str);

/// Rollup changes: [likes, dislikes, neutral] per minute (seconds since the epoch), subject
/// and model (`''` when absent), borrowed from the events where they can be. [`apply`]
/// spreads them over the cells the sink maintains: minute, hour and day buckets in UTC.
///
/// [`apply`]: RollupDeltas::apply
#[derive(Default, Debug)]
pub struct RollupDeltas<'a>(BTreeMap<(i64, Cow<'a, str>, Cow<'a, str>), [i64; 3]>);

pub const UPSERT_ROLLUP: &str = "
INSERT INTO feedback_rollup (grain, bucket, subject_id, model, likes, dislikes, neutral)
SELECT * FROM unnest($1::\"char\"[], $2::timestamptz[], $3::text[], $4::text[],
                     $5::int8[], $6::int8[], $7::int8[])
ON CONFLICT (grain, bucket, subject_id, model) DO UPDATE
SET likes = feedback_rollup.likes + excluded.likes,
    dislikes = feedback_rollup.dislikes + excluded.dislikes,
    neutral = feedback_rollup.neutral + excluded.neutral";

/// Marks the days `$1` dirty for the conversation units of `compare`
/// (schemas/migrations/0012_conversation_units.sql); also retention's, for the days it deletes.
pub const MARK_DIRTY: &str = "INSERT INTO feedback_unit_dirty (day) SELECT unnest($1::date[])";

impl<'a> RollupDeltas<'a> {
    pub fn add(
        &mut self,
        created_at: DateTime<Utc>,
        subject: impl Into<Cow<'a, str>>,
        model: impl Into<Cow<'a, str>>,
        rating: i16,
        sign: i64,
    ) {
        let i = match Rating::from_i64(rating.into()) {
            Some(Rating::Like) => 0,
            Some(Rating::Dislike) => 1,
            _ => 2,
        };
        let minute = created_at.timestamp().div_euclid(60) * 60;
        self.0
            .entry((minute, subject.into(), model.into()))
            .or_default()[i] += sign;
    }

    /// Every cell these changes touch, in key order (the lock order every writer shares).
    fn cells(&self) -> BTreeMap<RollupKey<'_>, [i64; 3]> {
        let mut cells: BTreeMap<RollupKey<'_>, [i64; 3]> = BTreeMap::new();
        for ((minute, subject, model), counts) in &self.0 {
            for (grain, seconds) in GRAINS {
                let cell = cells
                    .entry((grain, bucket(*minute, seconds), subject, model))
                    .or_default();
                for (total, n) in cell.iter_mut().zip(counts) {
                    *total += n;
                }
            }
        }
        cells
    }

    /// The UTC days before `today` these changes touch, net zero ones included (a re-vote
    /// with the same rating in the same minute still moves a vote between conversations).
    fn past_days(&self, today: NaiveDate) -> Vec<NaiveDate> {
        let days: BTreeSet<NaiveDate> = self
            .0
            .keys()
            .filter_map(|(minute, _, _)| DateTime::from_timestamp(*minute, 0))
            .map(|t| t.date_naive())
            .filter(|d| *d < today)
            .collect();
        days.into_iter().collect()
    }

    /// Applies the changes in key order (the lock order every writer shares) with `upsert`
    /// ([`UPSERT_ROLLUP`], prepared or not). Returns how many cells changed.
    ///
    /// First, in the same transaction, it marks the past days they touch as dirty for the
    /// conversation units of `compare` ([`MARK_DIRTY`], a plain insert that waits for no one):
    /// a day marked there is read from `feedback` until it is computed again, so no change to a
    /// day's votes is missed there.
    pub async fn apply<T>(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        upsert: &T,
    ) -> Result<u64, tokio_postgres::Error>
    where
        T: tokio_postgres::ToStatement + ?Sized,
    {
        let past = self.past_days(Utc::now().date_naive());
        if !past.is_empty() {
            tx.execute(MARK_DIRTY, &[&past]).await?;
        }
        let cells = self.cells();
        let d: Vec<_> = cells.iter().filter(|(_, c)| **c != [0, 0, 0]).collect();
        if d.is_empty() {
            return Ok(0);
        }
        let grains: Vec<i8> = d.iter().map(|(k, _)| k.0 as i8).collect();
        let buckets: Vec<DateTime<Utc>> = d.iter().map(|(k, _)| k.1).collect();
        let subjects: Vec<&str> = d.iter().map(|(k, _)| k.2).collect();
        let models: Vec<&str> = d.iter().map(|(k, _)| k.3).collect();
        let likes: Vec<i64> = d.iter().map(|(_, c)| c[0]).collect();
        let dislikes: Vec<i64> = d.iter().map(|(_, c)| c[1]).collect();
        let neutral: Vec<i64> = d.iter().map(|(_, c)| c[2]).collect();
        tx.execute(
            upsert,
            &[
                &grains, &buckets, &subjects, &models, &likes, &dislikes, &neutral,
            ],
        )
        .await?;
        Ok(d.len() as u64)
    }

    /// Deletes the cells these changes left at zero (erasure: nothing of a removed vote may
    /// linger as an empty bucket).
    pub async fn remove_empty(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        let cells = self.cells();
        let grains: Vec<i8> = cells.keys().map(|k| k.0 as i8).collect();
        let buckets: Vec<DateTime<Utc>> = cells.keys().map(|k| k.1).collect();
        let subjects: Vec<&str> = cells.keys().map(|k| k.2).collect();
        let models: Vec<&str> = cells.keys().map(|k| k.3).collect();
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_days_are_the_days_before_today_even_at_net_zero() {
        let mut d = RollupDeltas::default();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        d.add(at("2026-02-03T23:59:59Z"), "Math", "a", 1, 1);
        // A re-vote in the same minute with the same rating: zero, yet its day is marked.
        d.add(at("2026-02-04T10:00:01Z"), "Math", "a", 1, -1);
        d.add(at("2026-02-04T10:00:30Z"), "Math", "a", 1, 1);
        d.add(at("2026-02-05T00:00:00Z"), "Math", "a", -1, 1);
        let today = NaiveDate::from_ymd_opt(2026, 2, 5).unwrap();
        let days: Vec<String> = d.past_days(today).iter().map(|d| d.to_string()).collect();
        assert_eq!(days, ["2026-02-03", "2026-02-04"]);
        assert!(d
            .past_days(NaiveDate::from_ymd_opt(2026, 2, 3).unwrap())
            .is_empty());
    }

    #[test]
    fn deltas_cover_three_grains() {
        let mut d = RollupDeltas::default();
        let t: DateTime<Utc> = "2026-02-05T10:30:59Z".parse().unwrap();
        d.add(t, "Math", "", 1, -1);
        d.add(t, "Math", "", -1, 1);
        let cells = d.cells();
        assert_eq!(cells.len(), 3);
        assert!(cells.values().all(|c| *c == [-1, 1, 0]));
    }
}
