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
//!   `_other`; models likewise. The alert is evaluated over the same capped groups.

use crate::alert::Alerter;
use crate::config::AlertConfig;
use crate::telemetry::{self, LabelCap, Metrics, ALL};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the windows are re-read (the gauges are at most this old, plus a query).
pub const REFRESH: Duration = Duration::from_secs(5);

/// The exported windows.
pub const WINDOWS: [(&str, i64); 4] = [("5m", 300), ("15m", 900), ("1h", 3600), ("24h", 86_400)];

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

    fn add(&mut self, other: &Counts) {
        self.likes += other.likes;
        self.dislikes += other.dislikes;
        self.neutral += other.neutral;
    }
}

/// Counts per (subject, model) for one window; model `""` is "no model".
pub type Cells = BTreeMap<(String, String), Counts>;

/// Reads the counts of the minute buckets that start at or after `since`.
pub async fn window_counts(pool: &Pool, since: DateTime<Utc>) -> Result<Cells, crate::db::DbError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT subject_id, model, sum(likes)::int8, sum(dislikes)::int8, sum(neutral)::int8
             FROM feedback_rollup WHERE grain = 'm' AND bucket >= $1
             GROUP BY subject_id, model",
            &[&since],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                Counts {
                    likes: r.get(2),
                    dislikes: r.get(3),
                    neutral: r.get(4),
                },
            )
        })
        .collect())
}

/// Sums cells by a key (subject or model), with `_all` for everything.
pub fn by<'a>(
    cells: &'a Cells,
    key: impl Fn(&'a (String, String)) -> &'a str,
) -> BTreeMap<&'a str, Counts> {
    let mut out: BTreeMap<&str, Counts> = BTreeMap::new();
    for (k, c) in cells {
        out.entry(key(k)).or_default().add(c);
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
        out.entry(cap.label(name)).or_default().add(&c);
        all.add(&c);
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

pub async fn snapshot(pool: &Pool) -> Result<Snapshot, crate::db::DbError> {
    let at = Utc::now();
    let mut windows = BTreeMap::new();
    // One grouped read per window: each returns one row per (subject, model), where a single
    // read of the 24h range would have to ship every minute row to filter here.
    for (name, seconds) in WINDOWS {
        let since = at - chrono::Duration::seconds(seconds);
        windows.insert(name, window_counts(pool, since).await?);
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

/// Refreshes the gauges and evaluates the alert every [`REFRESH`] until shutdown.
pub async fn run(pool: Pool, metrics: Metrics, alert: AlertConfig, shutdown: CancellationToken) {
    let mut alerter = Alerter::new(alert, metrics.clone());
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match snapshot(&pool).await {
            Ok(snap) => {
                export(&metrics, &snap);
                alerter.evaluate(&pool, &snap).await;
            }
            Err(e) => {
                metrics.aggregate_refresh_failure();
                tracing::warn!(error = %e, "window refresh failed");
            }
        }
    }
}
