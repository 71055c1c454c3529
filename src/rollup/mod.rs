//! Rollups: the like/dislike/neutral counts of `feedback_rollup`, per minute, hour and day
//! (UTC) bucket, subject and model (`''` when absent). This module owns them whole: the grains,
//! the arithmetic of [`Counts`], the one way they change ([`write`]) and every way they are
//! read ([`read`]).
//!
//! Guarantees:
//! - Every change to the counts, by the sink (new rows, superseded votes) or by erasure, goes
//!   through [`RollupDeltas`], which applies them in key order, the one lock order all writers
//!   share.
//! - Every read (the metric windows, the alert, `stats`, `daily`, `compare`, the report) goes
//!   through [`read`], which covers a range with the fewest whole days, hours and minutes, so
//!   a read touches at most a few thousand rollup rows whatever the volume.

pub mod read;
pub mod write;

pub use read::{Cells, Range};
pub use write::{RollupDeltas, MARK_DIRTY, UPSERT_ROLLUP};

use chrono::{DateTime, Utc};

/// The grains from the coarsest, with their bucket length in seconds.
pub const GRAINS: [(char, i64); 3] = [('d', 86_400), ('h', 3_600), ('m', 60)];

/// The start of the UTC bucket of `seconds` length that holds `t`.
pub fn truncate(t: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    bucket(t.timestamp(), seconds)
}

/// The start of the first UTC bucket of `seconds` length that starts at or after `t`.
pub fn ceil(t: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    let f = truncate(t, seconds);
    if f == t {
        t
    } else {
        f + chrono::Duration::seconds(seconds)
    }
}

#[allow(
    clippy::expect_used,
    reason = "created_at is clamped around the receive time by the decoder (event::clamp_created_at), so a bucket start is always representable"
)]
fn bucket(timestamp: i64, seconds: i64) -> DateTime<Utc> {
    let s = timestamp.div_euclid(seconds) * seconds;
    DateTime::from_timestamp(s, 0).expect("in range")
}

/// Vote counts: likes, dislikes, neutral.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub likes: i64,
    pub dislikes: i64,
    pub neutral: i64,
}

impl Counts {
    pub fn total(&self) -> i64 {
        self.likes + self.dislikes + self.neutral
    }

    /// Likes / all votes; `None` without votes.
    pub fn like_ratio(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| self.likes as f64 / total as f64)
    }
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.likes += other.likes;
        self.dislikes += other.dislikes;
        self.neutral += other.neutral;
    }
}

impl std::ops::Add for Counts {
    type Output = Counts;
    fn add(mut self, other: Counts) -> Counts {
        self += other;
        self
    }
}

impl std::iter::Sum for Counts {
    fn sum<I: Iterator<Item = Counts>>(iter: I) -> Counts {
        iter.fold(Counts::default(), |a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_truncate_in_utc() {
        let t: DateTime<Utc> = "2026-02-05T10:30:59.9Z".parse().unwrap();
        assert_eq!(truncate(t, 60).to_rfc3339(), "2026-02-05T10:30:00+00:00");
        assert_eq!(truncate(t, 3600).to_rfc3339(), "2026-02-05T10:00:00+00:00");
        assert_eq!(truncate(t, 86400).to_rfc3339(), "2026-02-05T00:00:00+00:00");
        assert_eq!(ceil(t, 60).to_rfc3339(), "2026-02-05T10:31:00+00:00");
        let minute: DateTime<Utc> = "2026-02-05T10:30:00Z".parse().unwrap();
        assert_eq!(ceil(minute, 60), minute);
        let before_epoch: DateTime<Utc> = "1969-12-31T23:59:30Z".parse().unwrap();
        assert_eq!(
            truncate(before_epoch, 60).to_rfc3339(),
            "1969-12-31T23:59:00+00:00"
        );
    }

    #[test]
    fn counts_add_up() {
        let a = Counts {
            likes: 1,
            dislikes: 2,
            neutral: 3,
        };
        let sum: Counts = [a, a, Counts::default()].into_iter().sum();
        assert_eq!(
            sum,
            Counts {
                likes: 2,
                dislikes: 4,
                neutral: 6
            }
        );
        assert_eq!(sum.total(), 12);
        assert_eq!(Counts::default().like_ratio(), None);
    }
}
