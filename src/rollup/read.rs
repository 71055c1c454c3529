//! The read side of the rollups: every question asked of `feedback_rollup` is answered here.
//!
//! Guarantees:
//! - Resolution is one minute: a range's `since` and `until` are rounded down to the start of
//!   their UTC minute, and a vote counts when its minute bucket is in `[since, until)`.
//! - Within that the answer is exact: a range is covered by whole days, then whole hours, then
//!   minutes at its edges ([`cover`]), each segment one range scan of the primary key, so a
//!   read touches at most a few thousand rows whatever the volume.
//! - A chart's series ([`series`]) is read at its step from one grain, whole buckets only: its
//!   points are whole steps covering the period ([`points`]), like the rollups' buckets.

use super::{ceil, truncate, Counts, GRAINS};
use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::GenericClient;
use std::collections::BTreeMap;
use tokio_postgres::Error;

/// Counts per (subject, model); model `""` is "no model".
pub type Cells = BTreeMap<(String, String), Counts>;

/// What a read covers: a time range (open ends unbounded), optionally one subject and some
/// models.
#[derive(Debug, Clone, Default)]
pub struct Range {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub subject: Option<String>,
    pub models: Option<Vec<String>>,
}

/// One rollup grain and the range of bucket starts read from it (`None`: unbounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub grain: char,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// The fewest rollup segments covering `[since, until)` (both rounded down to the minute):
/// the whole days inside the range from the day grain, the whole hours left at either edge
/// from the hour grain, the rest from the minute grain.
pub fn cover(since: Option<DateTime<Utc>>, until: Option<DateTime<Utc>>) -> Vec<Segment> {
    let since = since.map(|t| truncate(t, 60));
    let until = until.map(|t| truncate(t, 60));
    let mut out = Vec::new();
    if matches!((since, until), (Some(s), Some(u)) if s >= u) {
        return out;
    }
    cover_level(since, until, 0, &mut out);
    out
}

fn cover_level(
    lo: Option<DateTime<Utc>>,
    hi: Option<DateTime<Utc>>,
    level: usize,
    out: &mut Vec<Segment>,
) {
    let (grain, seconds) = GRAINS[level];
    if level == GRAINS.len() - 1 {
        out.push(Segment {
            grain,
            from: lo,
            to: hi,
        });
        return;
    }
    let inner_lo = lo.map(|t| ceil(t, seconds));
    let inner_hi = hi.map(|t| truncate(t, seconds));
    let inner_empty = matches!((inner_lo, inner_hi), (Some(a), Some(b)) if a >= b);
    if inner_empty {
        cover_level(lo, hi, level + 1, out);
        return;
    }
    out.push(Segment {
        grain,
        from: inner_lo,
        to: inner_hi,
    });
    if let (Some(lo), Some(inner)) = (lo, inner_lo) {
        if lo < inner {
            cover_level(Some(lo), Some(inner), level + 1, out);
        }
    }
    if let (Some(inner), Some(hi)) = (inner_hi, hi) {
        if inner < hi {
            cover_level(Some(inner), Some(hi), level + 1, out);
        }
    }
}

/// The rollup rows of a set of segments, optionally of one subject and some models
/// (`$1` grains, `$2`/`$3` bucket bounds or NULL, `$4` subject or NULL, `$5` models or NULL).
/// Each segment must be one range scan of the primary key `(grain, bucket, ...)`: `OFFSET 0`
/// keeps PostgreSQL from flattening the LATERAL subquery into a hash join, which would read
/// the whole table (1.5 s instead of 2 ms with 10 million events).
macro_rules! scan {
    () => {
        "
FROM unnest($1::\"char\"[], $2::timestamptz[], $3::timestamptz[]) AS s(grain, lo, hi)
CROSS JOIN LATERAL (
    SELECT r.bucket, r.subject_id, r.model, r.likes, r.dislikes, r.neutral
    FROM feedback_rollup r
    WHERE r.grain = s.grain
      AND r.bucket >= coalesce(s.lo, '-infinity') AND r.bucket < coalesce(s.hi, 'infinity')
      AND ($4::text IS NULL OR r.subject_id = $4)
      AND ($5::text[] IS NULL OR r.model = ANY($5))
    OFFSET 0
) r"
    };
}

const TOTAL: &str = concat!(
    "SELECT coalesce(sum(r.likes), 0)::int8, coalesce(sum(r.dislikes), 0)::int8,
            coalesce(sum(r.neutral), 0)::int8",
    scan!()
);

const CELLS: &str = concat!(
    "SELECT r.subject_id::text, r.model::text, sum(r.likes)::int8, sum(r.dislikes)::int8,
            sum(r.neutral)::int8",
    scan!(),
    "
GROUP BY 1, 2"
);

const DAILY: &str = concat!(
    "SELECT (r.bucket AT TIME ZONE 'UTC')::date, r.subject_id::text, sum(r.likes)::int8,
            sum(r.dislikes)::int8, sum(r.neutral)::int8",
    scan!(),
    "
GROUP BY 1, 2 HAVING sum(r.likes + r.dislikes + r.neutral) > 0
ORDER BY 1 DESC, 2"
);

/// Runs a query over [`scan!`] with the segments covering the range (a prepared statement,
/// cached per connection).
async fn query(
    client: &impl GenericClient,
    sql: &str,
    range: &Range,
) -> Result<Vec<tokio_postgres::Row>, Error> {
    let segments = cover(range.since, range.until);
    let grains: Vec<i8> = segments.iter().map(|s| s.grain as i8).collect();
    let from: Vec<Option<DateTime<Utc>>> = segments.iter().map(|s| s.from).collect();
    let to: Vec<Option<DateTime<Utc>>> = segments.iter().map(|s| s.to).collect();
    let statement = client.prepare_cached(sql).await?;
    client
        .query(
            &statement,
            &[&grains, &from, &to, &range.subject, &range.models],
        )
        .await
}

fn counts(r: &tokio_postgres::Row, first: usize) -> Counts {
    Counts {
        likes: r.get(first),
        dislikes: r.get(first + 1),
        neutral: r.get(first + 2),
    }
}

/// All votes of the range.
pub async fn total(client: &impl GenericClient, range: &Range) -> Result<Counts, Error> {
    let rows = query(client, TOTAL, range).await?;
    Ok(rows.first().map(|r| counts(r, 0)).unwrap_or_default())
}

/// The votes of the range per (subject, model).
pub async fn cells(client: &impl GenericClient, range: &Range) -> Result<Cells, Error> {
    let rows = query(client, CELLS, range).await?;
    Ok(rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), counts(r, 2)))
        .collect())
}

/// The minute buckets that start at or after `since` (a sliding window), per (subject, model).
pub async fn window(client: &impl GenericClient, since: DateTime<Utc>) -> Result<Cells, Error> {
    let range = Range {
        since: Some(ceil(since, 60)),
        ..Range::default()
    };
    cells(client, &range).await
}

/// The votes of the range per UTC date and subject, newest date first, then subject; dates
/// without votes are absent.
pub async fn daily(
    client: &impl GenericClient,
    range: &Range,
) -> Result<Vec<(NaiveDate, String, Counts)>, Error> {
    let rows = query(client, DAILY, range).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), counts(r, 2)))
        .collect())
}

/// The points a chart of `[since, until)` can have at `step` seconds (a multiple of the
/// minute that divides a day): from the step bucket holding `since` to the one holding the
/// last minute before `until`, so every point is a whole step, as on the rollups.
pub fn points(since: DateTime<Utc>, until: DateTime<Utc>, step: i64) -> Vec<DateTime<Utc>> {
    let first = truncate(since, step);
    let end = ceil(truncate(until, 60), step);
    let mut out = Vec::new();
    let mut t = first;
    while t < end {
        out.push(t);
        t += chrono::Duration::seconds(step);
    }
    out
}

/// The grain a series of `step` seconds is read from: the coarsest whose buckets divide it.
fn series_grain(step: i64) -> char {
    GRAINS
        .iter()
        .find(|(_, len)| step % len == 0)
        .map_or('m', |(g, _)| *g)
}

const SERIES: &str = concat!(
    "SELECT date_bin(make_interval(secs => $6::float8), r.bucket, 'epoch'::timestamptz),
            r.subject_id::text, sum(r.likes)::int8, sum(r.dislikes)::int8, sum(r.neutral)::int8",
    scan!(),
    "
GROUP BY 1, 2 HAVING sum(r.likes + r.dislikes + r.neutral) > 0
ORDER BY 1, 2"
);

/// The votes per point of `step` seconds (60, 300, 3600, 86400: any multiple of a minute that
/// divides a day) and subject, over the [`points`] of `[since, until)`, in time order; points
/// without votes are absent. Read from one grain, the coarsest that divides the step (five
/// minutes from the minutes, an hour from the hours), so a point is never part of a bucket.
pub async fn series(
    client: &impl GenericClient,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    step: i64,
) -> Result<Vec<(DateTime<Utc>, String, Counts)>, Error> {
    let points = points(since, until, step);
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return Ok(Vec::new());
    };
    let grains = vec![series_grain(step) as i8];
    let from = vec![Some(*first)];
    let to = vec![Some(*last + chrono::Duration::seconds(step))];
    let statement = client.prepare_cached(SERIES).await?;
    let rows = client
        .query(
            &statement,
            &[
                &grains,
                &from,
                &to,
                &None::<String>,
                &None::<Vec<String>>,
                &(step as f64),
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), counts(r, 2)))
        .collect())
}

/// One hour bucket in which a subject (or `_all`) had at least `min_samples` votes and a like
/// rate below `threshold`: (hour, subject or `_all`, like rate, votes).
pub type LowHour = (DateTime<Utc>, String, f64, i64);

/// The hours of `[since, until)` below the threshold, per subject and for `_all`, in time
/// order (the report's "when the alert would have fired").
pub async fn low_hours(
    client: &impl GenericClient,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    min_samples: i64,
    threshold: f64,
) -> Result<Vec<LowHour>, Error> {
    let rows = client
        .query(
            "SELECT bucket, coalesce(subject_id::text, '_all'),
                    sum(likes)::float8 / sum(likes + dislikes + neutral), sum(likes + dislikes + neutral)::int8
             FROM feedback_rollup
             WHERE grain = 'h' AND bucket >= $1 AND bucket < $2
             GROUP BY GROUPING SETS ((bucket), (bucket, subject_id))
             HAVING sum(likes + dislikes + neutral) >= $3::int8
                AND sum(likes)::float8 / sum(likes + dislikes + neutral) < $4::float8
             ORDER BY 1, 2",
            &[&since, &until, &min_samples, &threshold],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn seg(grain: char, from: Option<&str>, to: Option<&str>) -> Segment {
        Segment {
            grain,
            from: from.map(t),
            to: to.map(t),
        }
    }

    #[test]
    fn ranges_are_covered_by_days_hours_and_edge_minutes() {
        let got = cover(
            Some(t("2026-02-03T22:30:45Z")),
            Some(t("2026-02-06T01:15:10Z")),
        );
        assert_eq!(
            got,
            vec![
                seg(
                    'd',
                    Some("2026-02-04T00:00:00Z"),
                    Some("2026-02-06T00:00:00Z")
                ),
                seg(
                    'h',
                    Some("2026-02-03T23:00:00Z"),
                    Some("2026-02-04T00:00:00Z")
                ),
                seg(
                    'm',
                    Some("2026-02-03T22:30:00Z"),
                    Some("2026-02-03T23:00:00Z")
                ),
                seg(
                    'h',
                    Some("2026-02-06T00:00:00Z"),
                    Some("2026-02-06T01:00:00Z")
                ),
                seg(
                    'm',
                    Some("2026-02-06T01:00:00Z"),
                    Some("2026-02-06T01:15:00Z")
                ),
            ]
        );
    }

    #[test]
    fn open_and_small_ranges() {
        assert_eq!(cover(None, None), vec![seg('d', None, None)]);
        assert_eq!(
            cover(Some(t("2026-02-03T00:00:00Z")), None),
            vec![seg('d', Some("2026-02-03T00:00:00Z"), None)]
        );
        assert_eq!(
            cover(None, Some(t("2026-02-03T10:05:00Z"))),
            vec![
                seg('d', None, Some("2026-02-03T00:00:00Z")),
                seg(
                    'h',
                    Some("2026-02-03T00:00:00Z"),
                    Some("2026-02-03T10:00:00Z")
                ),
                seg(
                    'm',
                    Some("2026-02-03T10:00:00Z"),
                    Some("2026-02-03T10:05:00Z")
                ),
            ]
        );
        // Within one hour: minutes only.
        assert_eq!(
            cover(
                Some(t("2026-02-03T10:05:00Z")),
                Some(t("2026-02-03T10:59:00Z"))
            ),
            vec![seg(
                'm',
                Some("2026-02-03T10:05:00Z"),
                Some("2026-02-03T10:59:00Z")
            )]
        );
        // Within one minute after rounding: nothing.
        assert!(cover(
            Some(t("2026-02-03T10:05:10Z")),
            Some(t("2026-02-03T10:05:50Z"))
        )
        .is_empty());
    }

    #[test]
    fn chart_points_are_whole_steps_covering_the_period() {
        let hour = points(t("2026-02-03T10:05:00Z"), t("2026-02-03T11:05:00Z"), 60);
        assert_eq!(hour.len(), 60);
        assert_eq!(hour[0], t("2026-02-03T10:05:00Z"));
        let five = points(t("2026-02-03T10:07:00Z"), t("2026-02-03T13:02:30Z"), 300);
        assert_eq!(five[0], t("2026-02-03T10:05:00Z"));
        assert_eq!(*five.last().unwrap(), t("2026-02-03T13:00:00Z"));
        assert_eq!(five.len(), 36);
        let day = points(t("2026-02-03T10:30:00Z"), t("2026-02-04T10:30:00Z"), 3600);
        assert_eq!((day.len(), day[0]), (25, t("2026-02-03T10:00:00Z")));
        assert_eq!(
            points(t("2026-02-01T00:00:00Z"), t("2026-02-08T00:00:00Z"), 86_400).len(),
            7
        );
        assert_eq!(
            [60, 300, 3600, 86_400].map(series_grain),
            ['m', 'm', 'h', 'd']
        );
    }

    #[test]
    fn every_minute_is_covered_exactly_once() {
        let since = t("2026-02-01T21:47:00Z");
        let until = t("2026-02-04T02:13:00Z");
        let segments = cover(Some(since), Some(until));
        let mut minute = since - Duration::hours(3);
        while minute < until + Duration::hours(3) {
            let hits = segments
                .iter()
                .filter(|s| {
                    let len = GRAINS.iter().find(|g| g.0 == s.grain).unwrap().1;
                    let bucket = truncate(minute, len);
                    s.from.is_none_or(|f| bucket >= f) && s.to.is_none_or(|e| bucket < e)
                })
                .count();
            let inside = minute >= since && minute < until;
            assert_eq!(hits, usize::from(inside), "minute {minute}");
            minute += Duration::minutes(1);
        }
    }
}
