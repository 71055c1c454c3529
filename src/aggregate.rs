//! Aggregate: the rolling like-rate windows, read from the rollups in PostgreSQL.
//!
//! Guarantees:
//! - The numbers are global and exact: every instance reads the same rollups, which the sink
//!   maintains in the transactions that store the rows (see [`crate::sink`]). No instance keeps
//!   counts of its own, so replays, restarts and scale-out change nothing.
//! - Windows (5m, 15m, 1h, 24h) slide on the wall clock: a window holds the minute buckets that
//!   start within it, re-read every [`REFRESH`], so a stream that goes quiet ages out.
//! - The `subject` label is capped by the one rule of [`crate::telemetry::LabelCap`], ranked
//!   here at every refresh from the 24h window: subjects past the cap are summed into
//!   `_other`; models likewise. The `reason` label's cap is ranked by the same rule from the
//!   dislikes of the last 24 hours, every [`REASON_RANKING`] ([`rank_reasons`]): reasons are not
//!   in the rollups, so that is a read of the rows.
//! - Each snapshot is published on a `watch` channel ([`Snapshots`]): the alert
//!   ([`crate::alert::run`]) evaluates the same numbers the gauges show, over the same capped
//!   groups, and a reader never holds up the refresh.

use crate::rollup::{read, Cells, Counts};
use crate::telemetry::{self, LabelCap, Metrics, ALL};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the windows are re-read (the gauges are at most this old, plus a query).
pub const REFRESH: Duration = Duration::from_secs(5);

/// How often the `reason` label is re-ranked. Its read goes over the last day's dislikes that
/// carry a reason (an index of their own, migration 0008) instead of the rollups, and which
/// tags a front end's users pick moves over hours, so once a minute (the first at start) is
/// plenty.
pub const REASON_RANKING: Duration = Duration::from_secs(60);

/// The stored dislikes per reason since `$1`, the busiest `$2` (enough for the cap's rule,
/// which only needs to know whether more values than its places exist; ties at the cut go by
/// tag, so the answer is bounded however many distinct tags the day had).
const DISLIKES_BY_REASON: &str = "
SELECT reason::text, count(*)::int8 AS n
FROM feedback
WHERE rating = -1 AND reason IS NOT NULL AND created_at >= $1
GROUP BY reason
ORDER BY n DESC, reason COLLATE \"C\"
LIMIT $2";

/// The exported windows.
pub const WINDOWS: [(&str, i64); 4] = [("5m", 300), ("15m", 900), ("1h", 3600), ("24h", 86_400)];

/// Sums cells by a key (subject or model), with `_all` for everything.
pub fn by<'a>(
    cells: &'a Cells,
    key: impl Fn(&'a (String, String)) -> &'a str,
) -> BTreeMap<&'a str, Counts> {
    let mut out: BTreeMap<&str, Counts> = BTreeMap::new();
    for (k, c) in cells {
        *out.entry(key(k)).or_default() += *c;
    }
    out
}

/// Sums cells by a key under its cap: named values keep their name, the rest are summed into
/// `_other`; `_all` holds everything.
pub fn capped<'a>(
    cells: &'a Cells,
    key: impl Fn(&'a (String, String)) -> &'a str,
    cap: &LabelCap,
) -> BTreeMap<String, Counts> {
    let mut out: BTreeMap<String, Counts> = BTreeMap::new();
    let mut all = Counts::default();
    for (name, c) in by(cells, key) {
        *out.entry(cap.label(name)).or_default() += c;
        all += c;
    }
    out.insert(ALL.to_owned(), all);
    out
}

/// Every window, grouped per subject and per model, capped for export.
pub struct Snapshot {
    pub at: DateTime<Utc>,
    /// window name -> cells
    pub windows: BTreeMap<&'static str, Cells>,
}

/// What the aggregate task last managed to read, published on a `watch` channel.
#[derive(Clone)]
pub enum Reading {
    /// No refresh has finished yet.
    Starting,
    /// The latest snapshot.
    Counted(Arc<Snapshot>),
    /// The latest refresh failed (the database is unreachable or too slow) at this time; the
    /// numbers cannot be trusted until a refresh succeeds again.
    Failed(DateTime<Utc>),
}

pub type Snapshots = watch::Receiver<Reading>;

pub async fn snapshot(pool: &Pool) -> Result<Snapshot, crate::db::DbError> {
    let at = Utc::now();
    let client = pool.get().await?;
    let mut windows = BTreeMap::new();
    // One grouped read per window: each returns one row per (subject, model), where a single
    // read of the 24h range would have to ship every minute row to filter here.
    for (name, seconds) in WINDOWS {
        let since = at - chrono::Duration::seconds(seconds);
        windows.insert(name, read::window(&client, since).await?);
    }
    Ok(Snapshot { at, windows })
}

/// Ranks subjects and models by their 24h votes (the cap's rule) and replaces the window
/// gauges with the snapshot's, so series that no longer exist disappear.
pub fn export(metrics: &Metrics, snap: &Snapshot) {
    if let Some(day) = snap.windows.get("24h") {
        fn total((name, c): (&str, Counts)) -> (&str, i64) {
            (name, c.total())
        }
        metrics
            .subjects()
            .rank(by(day, |k| &k.0).into_iter().map(total));
        metrics
            .models()
            .rank(by(day, |k| &k.1).into_iter().map(total));
    }
    metrics.windows_replace(|gauges| {
        for (window, cells) in &snap.windows {
            let subjects = capped(cells, |k| &k.0, metrics.subjects());
            let models = capped(cells, |k| &k.1, metrics.models());
            for (groups, ratio, votes, label) in [
                (
                    &subjects,
                    telemetry::LIKE_RATIO,
                    telemetry::WINDOW_VOTES,
                    "subject",
                ),
                (
                    &models,
                    telemetry::MODEL_LIKE_RATIO,
                    telemetry::MODEL_WINDOW_VOTES,
                    "model",
                ),
            ] {
                for (name, c) in groups {
                    let base = [(label, name.as_str()), ("window", *window)];
                    if let Some(r) = c.like_ratio() {
                        gauges.set(ratio, &base, r);
                    }
                    for (rating, n) in [
                        ("like", c.likes),
                        ("dislike", c.dislikes),
                        ("neutral", c.neutral),
                    ] {
                        gauges.set(votes, &[base[0], base[1], ("rating", rating)], n as f64);
                    }
                }
            }
        }
    });
}

/// Ranks the `reason` label's cap by the stored dislikes of the last 24 hours (the counter
/// counts stored dislikes too).
pub async fn rank_reasons(pool: &Pool, metrics: &Metrics) -> Result<(), crate::db::DbError> {
    let client = pool.get().await?;
    let since = Utc::now() - chrono::Duration::hours(24);
    let places = telemetry::MAX_REASON_LABELS as i64 + 1;
    let statement = client.prepare_cached(DISLIKES_BY_REASON).await?;
    let rows = client.query(&statement, &[&since, &places]).await?;
    metrics.rank_reasons(
        rows.iter()
            .map(|r| (r.get::<_, &str>(0), r.get::<_, i64>(1))),
    );
    Ok(())
}

/// Refreshes the gauges every [`REFRESH`] and publishes each snapshot on `publish`, until
/// shutdown; re-ranks the reason label every [`REASON_RANKING`].
pub async fn run(
    pool: Pool,
    metrics: Metrics,
    publish: watch::Sender<Reading>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reasons_ranked: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if reasons_ranked.is_none_or(|at| at.elapsed() >= REASON_RANKING) {
            // A failure keeps the names the cap has, and is tried again at the next refresh;
            // the windows below say whether the database is the cause.
            match rank_reasons(&pool, &metrics).await {
                Ok(()) => reasons_ranked = Some(tokio::time::Instant::now()),
                Err(e) => tracing::warn!(error = %e, "reason label ranking failed"),
            }
        }
        match snapshot(&pool).await {
            Ok(snap) => {
                export(&metrics, &snap);
                publish.send_replace(Reading::Counted(Arc::new(snap)));
            }
            Err(e) => {
                metrics.aggregate_refresh_failure();
                publish.send_replace(Reading::Failed(Utc::now()));
                tracing::warn!(error = %e, "window refresh failed");
            }
        }
    }
}
