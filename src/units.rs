//! The conversation units of `compare` (its default unit, docs/ab-testing.md section 5): which
//! current votes form a unit, the sums of the units of settled UTC days kept in PostgreSQL
//! (schemas/migrations/0012_conversation_units.sql), and the one read that combines them with
//! the rows of the days that are not kept.
//!
//! A unit is a conversation's current votes within one UTC day (votes without a conversation
//! are each their own). A unit is summed into its (subject, model) cell when all its votes lie
//! in that cell, and comes by name, one row per cell, when it has votes in more than one.
//!
//! Guarantees:
//! - [`read`] gives the figures a scan of `feedback` over the period would give, at any moment:
//!   a day is read from the kept sums only when it lies wholly inside the period, has been
//!   computed, and has no dirty mark; every other day of the period is read from its rows, one
//!   index range per day. All of it in one statement, so from one snapshot.
//! - Every change to a past day's current votes marks the day dirty in its own transaction:
//!   rollup changes ([`crate::rollup::MARK_DIRTY`], the sink's and erasure's) and retention's
//!   deletes. A recomputation reads the day and deletes the marks it saw from the same
//!   (repeatable read) snapshot, so a mark committed after it stays.
//! - [`refresh`] computes a day once it has settled, an hour after its end by the database's
//!   clock: a transaction that wrote the day's rows without a mark (the sink marks only days
//!   before its own today) has long committed by then, as long as likerate's clock is within
//!   an hour of the database's. One instance computes at a time (an advisory lock); the others
//!   skip.
//! - The cost of [`read`] is the rows of the days not kept (today, and a settled day between a
//!   change and the next refresh, [`REFRESH_EVERY`]) plus a few rows per kept day, instead of
//!   every vote of the period.

use crate::db::DbError;
use crate::telemetry::Metrics;
use crate::votes::current_votes;
use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use deadpool_postgres::GenericClient;
use std::time::Duration;
use tokio_postgres::IsolationLevel;
use tokio_util::sync::CancellationToken;

/// How often [`refresh`] looks for settled days to compute.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// Serialises [`refresh`] across instances (a transaction-level advisory lock).
const REFRESH_LOCK: i64 = 7_335_327_212;

/// `day(d)`: the UTC days that hold rows in [`$lo`, `$hi`) (SQL expressions of constants and
/// parameters), by a loose scan of `ix_feedback_created`: one index descent per day whatever
/// the day holds, so a stray far-off `created_at` costs one more day, not a walk over the empty
/// ones. Each step is a `min()` over `feedback` alone, which PostgreSQL answers from the first
/// index entry; joined to anything else it would aggregate every row up to `$hi` instead.
macro_rules! stored_days {
    ($lo:literal, $hi:literal) => {
        concat!(
            "day(d) AS (
    SELECT (min(created_at) AT TIME ZONE 'UTC')::date FROM feedback
    WHERE created_at >= ",
            $lo,
            " AND created_at < ",
            $hi,
            "
  UNION ALL
    SELECT (SELECT (min(f.created_at) AT TIME ZONE 'UTC')::date FROM feedback f
            WHERE f.created_at >= (day.d + 1)::timestamp AT TIME ZONE 'UTC'
              AND f.created_at < ",
            $hi,
            ")
    FROM day WHERE day.d IS NOT NULL)"
        )
    };
}

/// `WITH RECURSIVE` and [`stored_days`] over every stored row.
macro_rules! all_days {
    () => {
        concat!(
            "WITH RECURSIVE ",
            stored_days!("'-infinity'::timestamptz", "'infinity'::timestamptz")
        )
    };
}

/// The UTC days that hold rows, oldest first ([`stored_days`]).
pub const STORED_DAYS: &str = concat!(
    all_days!(),
    "
SELECT coalesce(array_agg(d ORDER BY d), '{}') FROM day WHERE d IS NOT NULL"
);

/// The settled days (ended more than an hour ago) that hold rows and were never computed, or
/// carry a dirty mark: what [`refresh`] computes next, oldest first.
pub const PENDING_DAYS: &str = concat!(
    all_days!(),
    "
SELECT coalesce(array_agg(d ORDER BY d), '{}') FROM (
    SELECT d FROM day
    WHERE d IS NOT NULL AND NOT EXISTS (SELECT 1 FROM feedback_unit_day u WHERE u.day = d)
  UNION
    SELECT day FROM feedback_unit_dirty) p
WHERE d < ((now() - interval '1 hour') AT TIME ZONE 'UTC')::date"
);

/// The current votes of a range per (subject, model, conversation): the rule of a unit's
/// votes, shared by the computation of a day and the read. `$1` ratings, `$2` subject, `$3`
/// NULL, `$4`/`$5` the period, then the caller's conditions and `GROUP BY 1, 2, 3`. `COLLATE
/// "C"`: grouping needs equality only, not the database's (slower) collation order.
macro_rules! unit_votes {
    () => {
        concat!(
            "SELECT f.subject_id COLLATE \"C\" AS subject_id, f.model COLLATE \"C\" AS model,
       f.conversation_id COLLATE \"C\" AS c,
       count(*) FILTER (WHERE f.rating = 1) AS l, count(*) FILTER (WHERE f.rating = -1) AS d,
       count(*) FILTER (WHERE f.rating = 0) AS z",
            current_votes!()
        )
    };
}

/// One day's units into the kept sums: `$4`/`$5` the day's bounds, `$6` the day. Units with
/// votes in more than one cell go to `feedback_unit_spans`, the rest are summed per cell.
/// Votes without a model are left out: `compare` names the models it reads.
const COMPUTE_DAY: &str = concat!(
    "WITH g AS (",
    unit_votes!(),
    " AND f.model IS NOT NULL
GROUP BY 1, 2, 3),
t AS (SELECT *, l + d + z AS n, count(*) OVER (PARTITION BY c) AS cells FROM g),
spans AS (
    INSERT INTO feedback_unit_spans
        (day, conversation_id, subject_id, model, likes, dislikes, neutral)
    SELECT $6, c, subject_id, model, l, d, z FROM t WHERE c IS NOT NULL AND cells > 1)
INSERT INTO feedback_unit_sums (day, subject_id, model, clustered, likes, dislikes, neutral,
                                units, votes_sq, likes_sq, likes_votes)
SELECT $6, subject_id, model, c IS NOT NULL, sum(l), sum(d), sum(z), count(*),
       sum(n * n), sum(l * l), sum(l * n)
FROM t WHERE c IS NULL OR cells = 1
GROUP BY subject_id, model, c IS NOT NULL"
);

/// `$1` ratings, `$2` subject, `$3` NULL, `$4`/`$5` the period (NULL: open), `$6` the models.
/// Per (subject, model): one row of the votes without a conversation (`clustered` false),
/// one of the units wholly in this cell (their sums), and one per unit that has votes in
/// another cell too (`conversation` set: its day and conversation id). Kept days come from
/// the sums; the other days of the period from their rows, each by its own index range.
const READ: &str = concat!(
    "WITH RECURSIVE bounds AS (
    SELECT coalesce($4::timestamptz, '-infinity') AS lo,
           coalesce($5::timestamptz, 'infinity') AS hi
), ",
    stored_days!(
        "coalesce($4::timestamptz, '-infinity')",
        "coalesce($5::timestamptz, 'infinity')"
    ),
    ", kept AS (
    SELECT u.day FROM feedback_unit_day u, bounds b
    WHERE u.day::timestamp AT TIME ZONE 'UTC' >= b.lo
      AND (u.day + 1)::timestamp AT TIME ZONE 'UTC' <= b.hi
      AND NOT EXISTS (SELECT 1 FROM feedback_unit_dirty x WHERE x.day = u.day)
), scan AS (
    SELECT day.d, greatest(day.d::timestamp AT TIME ZONE 'UTC', b.lo) AS a,
           least((day.d + 1)::timestamp AT TIME ZONE 'UTC', b.hi) AS e
    FROM day, bounds b
    WHERE day.d IS NOT NULL AND day.d NOT IN (SELECT day FROM kept)
), g AS (
    SELECT s.d AS day, x.* FROM scan s CROSS JOIN LATERAL (",
    unit_votes!(),
    " AND f.model = ANY($6) AND f.created_at >= s.a AND f.created_at < s.e
    GROUP BY 1, 2, 3) x
), units AS (
    SELECT day, subject_id, model, c, l, d, z FROM g
  UNION ALL
    SELECT p.day, p.subject_id COLLATE \"C\", p.model COLLATE \"C\",
           p.conversation_id COLLATE \"C\", p.likes, p.dislikes, p.neutral
    FROM feedback_unit_spans p JOIN kept USING (day)
    WHERE p.model = ANY($6) AND ($2::text IS NULL OR p.subject_id = $2)
), t AS (
    SELECT *, l + d + z AS n, count(*) OVER (PARTITION BY day, c) AS cells FROM units
), r AS (
    SELECT subject_id, model, CASE WHEN cells > 1 THEN day::text || ' ' || c END AS unit,
           c IS NOT NULL AS clustered, sum(l) AS l, sum(d) AS d, sum(z) AS z,
           count(*)::numeric AS k, sum(n * n) AS nn, sum(l * l) AS ll, sum(l * n) AS ln
    FROM t GROUP BY 1, 2, 3, 4
  UNION ALL
    SELECT u.subject_id COLLATE \"C\", u.model COLLATE \"C\", NULL, u.clustered,
           sum(u.likes), sum(u.dislikes), sum(u.neutral), sum(u.units), sum(u.votes_sq),
           sum(u.likes_sq), sum(u.likes_votes)
    FROM feedback_unit_sums u JOIN kept USING (day)
    WHERE u.model = ANY($6) AND ($2::text IS NULL OR u.subject_id = $2)
    GROUP BY 1, 2, 3, 4
)
SELECT subject_id::text, model::text, unit::text, clustered,
       sum(l)::int8, sum(d)::int8, sum(z)::int8, sum(k)::int8,
       sum(nn)::int8, sum(ll)::int8, sum(ln)::int8
FROM r
GROUP BY 1, 2, 3, 4"
);

/// The units of the current votes of `models` in [`since`, `until`) (`None`: open), of one
/// subject or all: rows of (subject, model, unit name or NULL, clustered, likes, dislikes,
/// neutral, units, Σn², Σy², Σyn), as [`READ`] says.
pub async fn read(
    client: &impl GenericClient,
    subject: Option<&str>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    models: &[String],
) -> Result<Vec<tokio_postgres::Row>, DbError> {
    let ratings: Vec<i16> = vec![-1, 0, 1];
    let statement = client.prepare_cached(READ).await?;
    Ok(client
        .query(
            &statement,
            &[&ratings, &subject, &None::<String>, &since, &until, &models],
        )
        .await?)
}

/// The task of `likerate run`: every [`REFRESH_EVERY`], computes the pending days
/// ([`PENDING_DAYS`]), until shutdown. A failure is logged, counted, and tried again at the
/// next tick; meanwhile `compare` reads those days from their rows, correct but slower.
pub async fn refresh(pool: deadpool_postgres::Pool, metrics: Metrics, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match refresh_pending(&pool, &shutdown).await {
            Ok(0) => {}
            Ok(n) => {
                metrics.unit_day_refreshes("computed", n);
                tracing::info!(days = n, "conversation units of settled days computed");
            }
            Err(e) => {
                metrics.unit_day_refreshes("failed", 1);
                tracing::warn!(error = %e, "conversation units not refreshed");
            }
        }
    }
}

/// Computes the pending days with a connection of the pool.
async fn refresh_pending(
    pool: &deadpool_postgres::Pool,
    shutdown: &CancellationToken,
) -> Result<u64, DbError> {
    let mut client = pool.get().await?;
    compute_pending(&mut client, shutdown).await
}

/// Computes the pending days ([`PENDING_DAYS`]), one transaction each, until they are done,
/// another instance holds the lock, or `shutdown`; returns how many it computed. Also what
/// the scale benchmark runs after its preload: the sums a running likerate would have kept.
pub async fn compute_pending(
    client: &mut tokio_postgres::Client,
    shutdown: &CancellationToken,
) -> Result<u64, DbError> {
    let days: Vec<NaiveDate> = client.query_one(PENDING_DAYS, &[]).await?.get(0);
    let mut computed = 0;
    for day in days {
        if shutdown.is_cancelled() || !compute_day(client, day).await? {
            break;
        }
        computed += 1;
    }
    Ok(computed)
}

/// Recomputes one day's units; false when another instance holds the lock.
async fn compute_day(client: &mut tokio_postgres::Client, day: NaiveDate) -> Result<bool, DbError> {
    let start = day.and_time(chrono::NaiveTime::MIN).and_utc();
    let end = start + ChronoDuration::days(1);
    // One snapshot: the marks deleted at the end are the ones this computation saw.
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await?;
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&REFRESH_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(false);
    }
    // A day of a busy stream takes longer than the pipeline's statement timeout, and its
    // grouping fits in memory with more than the default work_mem.
    tx.batch_execute("SET LOCAL statement_timeout = '10min'; SET LOCAL work_mem = '64MB'")
        .await?;
    tx.execute("DELETE FROM feedback_unit_sums WHERE day = $1", &[&day])
        .await?;
    tx.execute("DELETE FROM feedback_unit_spans WHERE day = $1", &[&day])
        .await?;
    let ratings: Vec<i16> = vec![-1, 0, 1];
    let none = None::<String>;
    tx.execute(COMPUTE_DAY, &[&ratings, &none, &none, &start, &end, &day])
        .await?;
    tx.execute(
        "INSERT INTO feedback_unit_day (day) VALUES ($1)
         ON CONFLICT (day) DO UPDATE SET computed_at = now()",
        &[&day],
    )
    .await?;
    tx.execute("DELETE FROM feedback_unit_dirty WHERE day = $1", &[&day])
        .await?;
    tx.commit().await?;
    Ok(true)
}
