//! Aggregate: the rolling like-rate windows, read from the rollups in PostgreSQL.
//!
//! Guarantees:
//! - The numbers are global and exact: every instance reads the same rollups, which the sink
//!   maintains in the transactions that store the rows (see [`crate::sink`]). No instance keeps
//!   counts of its own, so replays, restarts and scale-out change nothing.
//! - Windows (5m, 15m, 1h, 24h) slide on the wall clock: a window holds the minute buckets that
//!   start within it, re-read every [`REFRESH`], so a stream that goes quiet ages out.
//! - The `subject` label is capped: the `max_subject_labels - 1` subjects with the most votes in
//!   24h keep their name, the rest are summed into `_other`; models likewise.

use crate::alert::Alerter;
use crate::config::AlertConfig;
use crate::telemetry::{Metrics, ALL, OTHER};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use std::collections::{BTreeMap, HashSet};
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
) -> BTreeMap<String, Counts> {
    let mut out: BTreeMap<String, Counts> = BTreeMap::new();
    let mut all = Counts::default();
    for (k, c) in cells {
        out.entry(key(k).to_owned()).or_default().add(c);
        all.add(c);
    }
    out.insert(ALL.to_owned(), all);
    out
}

/// Folds all but the `max - 1` largest (by `rank`) into `_other`; `_all` always stays.
fn cap(mut groups: BTreeMap<String, Counts>, keep: &HashSet<String>) -> BTreeMap<String, Counts> {
    let mut other = Counts::default();
    let mut any_other = false;
    groups.retain(|name, c| {
        if name == ALL || keep.contains(name) {
            true
        } else {
            other.add(c);
            any_other = true;
            false
        }
    });
    if any_other {
        groups.insert(OTHER.to_owned(), other);
    }
    groups
}

/// The names to keep under a cap of `max` series: the biggest by total votes.
fn keep_set(day: &BTreeMap<String, Counts>, max: usize) -> HashSet<String> {
    let mut ranked: Vec<(&String, i64)> = day
        .iter()
        .filter(|(n, _)| n.as_str() != ALL)
        .map(|(n, c)| (n, c.total()))
        .collect();
    if ranked.len() <= max {
        return ranked.into_iter().map(|(n, _)| n.clone()).collect();
    }
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    ranked
        .into_iter()
        .take(max.saturating_sub(1))
        .map(|(n, _)| n.clone())
        .collect()
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

/// Sets the window gauges from a snapshot and removes series that no longer exist.
pub fn export(metrics: &Metrics, snap: &Snapshot, max_labels: usize, exported: &mut Exported) {
    let day = &snap.windows["24h"];
    let keep_subjects = keep_set(&by(day, |k| &k.0), max_labels);
    let keep_models = keep_set(&by(day, |k| &k.1), max_labels);
    let mut now = Exported::default();
    for (window, cells) in &snap.windows {
        let subjects = cap(by(cells, |k| &k.0), &keep_subjects);
        let models = cap(by(cells, |k| &k.1), &keep_models);
        for (groups, ratio, votes, label, seen) in [
            (
                &subjects,
                &metrics.like_ratio,
                &metrics.window_votes,
                "subject",
                &mut now.subject,
            ),
            (
                &models,
                &metrics.model_like_ratio,
                &metrics.model_window_votes,
                "model",
                &mut now.model,
            ),
        ] {
            for (name, c) in groups {
                let base = vec![(label, name.clone()), ("window", window.to_string())];
                if let Some(r) = c.like_ratio() {
                    ratio.get_or_create(&base).set(r);
                    seen.insert(base.clone());
                }
                for (rating, n) in [
                    ("like", c.likes),
                    ("dislike", c.dislikes),
                    ("neutral", c.neutral),
                ] {
                    let mut labels = base.clone();
                    labels.push(("rating", rating.to_owned()));
                    votes.get_or_create(&labels).set(n);
                    seen.insert(labels);
                }
            }
        }
    }
    for stale in exported.subject.difference(&now.subject) {
        metrics.like_ratio.remove(stale);
        metrics.window_votes.remove(stale);
    }
    for stale in exported.model.difference(&now.model) {
        metrics.model_like_ratio.remove(stale);
        metrics.model_window_votes.remove(stale);
    }
    *exported = now;
}

/// Label sets exported at the last refresh, to remove the ones that disappear.
#[derive(Default)]
pub struct Exported {
    subject: HashSet<Vec<(&'static str, String)>>,
    model: HashSet<Vec<(&'static str, String)>>,
}

/// Refreshes the gauges and evaluates the alert every [`REFRESH`] until shutdown.
pub async fn run(
    pool: Pool,
    metrics: Metrics,
    alert: AlertConfig,
    max_labels: usize,
    shutdown: CancellationToken,
) {
    let mut exported = Exported::default();
    let mut alerter = Alerter::new(alert, metrics.clone(), max_labels);
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match snapshot(&pool).await {
            Ok(snap) => {
                export(&metrics, &snap, max_labels, &mut exported);
                alerter.evaluate(&pool, &snap).await;
            }
            Err(e) => {
                metrics.aggregate_refresh_failures.inc();
                tracing::warn!(error = %e, "window refresh failed");
            }
        }
    }
}
