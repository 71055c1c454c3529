//! Alert: the `FeedbackLikeRateLow` page, evaluated from the global windows and pushed to
//! Alertmanager's v2 API (docs/contract.md section 8).
//!
//! The rule, per subject, for `_all`, and per model when enabled ([`Rule::step`] is pure, so it
//! is tested with a simulated clock):
//! - fire when, on [`FOR_EVALUATIONS`] evaluations in a row (one minute), a window holds at least `min_samples` votes and the
//!   upper end of the 99.9% Wilson interval of its like rate is below the threshold. Two windows
//!   are checked: the alert window (default 15m) and a third of it (default 5m), so a sharp drop
//!   on a busy stream pages in minutes while a stream that is only noisy does not;
//! - resolve when the alert window's like rate is back at or above the threshold and the short
//!   window no longer fires, or when the alert window is empty.
//!
//! Targets are the subjects (and models) under the label cap of [`crate::telemetry::LabelCap`],
//! `_other` (all subjects past the cap, summed) and `_all`: the number of pages is bounded by
//! the same rule as the metrics, and a target is named exactly as its series is.
//!
//! Guarantees: pushes carry the whole current set and are re-sent every evaluation while
//! firing (with `endsAt` a few evaluations ahead, so Alertmanager resolves by itself if every
//! instance dies); a resolve is sent with `endsAt` = now and repeated for a while. Only the
//! latest set is kept, so Alertmanager being down or slow costs bounded memory; failures are
//! retried with backoff and counted in `likerate_alert_pushes_total{result="error"}`.

use crate::aggregate::{capped, Reading, Snapshot, Snapshots, WINDOWS};
use crate::config::AlertConfig;
use crate::rollup::{read, Cells, Counts};
use crate::stats::wilson;
use crate::telemetry::{Metrics, ALERT_FIRING, ALL, PIPELINE_STALLED};
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use std::collections::BTreeMap;
use std::time::Duration;

/// How often the rule is evaluated.
pub const EVALUATION: Duration = Duration::from_secs(15);
/// z of the 99.9% two-sided Wilson interval: a stream whose true rate is a few points above the
/// threshold must not page over a day of overlapping windows (see tests/suite/alert_sim.rs).
const Z: f64 = 3.29;
/// Consecutive low evaluations before firing (a one-minute `for`): a chance dip of a noisy
/// window rarely lasts that long, a real drop always does.
pub const FOR_EVALUATIONS: u32 = 4;
/// How long a resolved alert keeps being re-sent.
const RESOLVED_RESEND: chrono::Duration = chrono::Duration::minutes(5);

/// The thresholds of the rule.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub threshold: f64,
    pub min_samples: u64,
}

/// One alert's state between evaluations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    pub firing: bool,
    /// Consecutive evaluations on which the fire condition held.
    pub pending: u32,
}

impl Rule {
    fn low(&self, c: &Counts) -> bool {
        c.total() >= self.min_samples as i64 && wilson(c.likes, c.total(), Z).1 < self.threshold
    }

    /// One evaluation over the alert window (`long`) and its third (`short`).
    pub fn step(&self, state: State, long: &Counts, short: &Counts) -> State {
        let low = self.low(long) || self.low(short);
        if state.firing {
            let recovered = long.total() == 0
                || (long.like_ratio().unwrap_or(1.0) >= self.threshold && !self.low(short));
            State {
                firing: !recovered,
                pending: 0,
            }
        } else if low {
            let pending = state.pending + 1;
            State {
                firing: pending >= FOR_EVALUATIONS,
                pending,
            }
        } else {
            State::default()
        }
    }
}

/// What an alert is about: a subject (or `_all`), optionally one model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    subject: String,
    model: Option<String>,
}

struct Tracked {
    state: State,
    starts_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
    annotations: serde_json::Map<String, serde_json::Value>,
}

/// Evaluates the rule for every target and keeps the Alertmanager push going.
pub struct Alerter {
    config: AlertConfig,
    rule: Rule,
    metrics: Metrics,
    tracked: BTreeMap<Target, Tracked>,
    /// `FeedbackPipelineStalled`: the cause and since when while likerate cannot count, or
    /// when it resolved (re-sent as resolved for a while).
    stall: Option<Stalled>,
    push: Option<tokio::sync::watch::Sender<Vec<serde_json::Value>>>,
}

/// Why likerate cannot count: the `cause` label of `FeedbackPipelineStalled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The rollups cannot be read: the database is unreachable or too slow.
    Database,
    /// The consumer has lag and acknowledged no batch for `LIKERATE_STALL_AFTER`.
    Consumer,
    /// The evaluation itself failed.
    Evaluation,
}

impl Cause {
    pub const ALL: [Cause; 3] = [Cause::Database, Cause::Consumer, Cause::Evaluation];

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Database => "database_unavailable",
            Cause::Consumer => "consumer_stalled",
            Cause::Evaluation => "evaluation_failing",
        }
    }
}

struct Stalled {
    cause: Cause,
    starts_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
}

impl Alerter {
    pub fn new(config: AlertConfig, metrics: Metrics) -> Alerter {
        let push = config.alertmanager_url.clone().map(|url| {
            let (tx, rx) = tokio::sync::watch::channel(Vec::new());
            tokio::spawn(pusher(url, rx, metrics.clone()));
            tx
        });
        Alerter {
            rule: Rule {
                threshold: config.threshold,
                min_samples: config.min_samples,
            },
            config,
            metrics,
            tracked: BTreeMap::new(),
            stall: None,
            push,
        }
    }

    /// Evaluates the rule on a snapshot. Fails (changing nothing) when a window cannot be
    /// read; the caller then holds the alerts ([`Alerter::hold`]).
    pub async fn evaluate(&mut self, pool: &Pool, snap: &Snapshot) -> Result<(), String> {
        // The configuration bounds the window to 24h, which always fits.
        let window =
            chrono::Duration::from_std(self.config.window).unwrap_or(chrono::Duration::MAX);
        let (long, short) = match (
            cells_for(pool, snap, window).await,
            cells_for(pool, snap, window / 3).await,
        ) {
            (Ok(long), Ok(short)) => (long, short),
            (Err(e), _) | (_, Err(e)) => return Err(e.to_string()),
        };
        let mut targets: Vec<(Target, Counts, Counts)> = Vec::new();
        let subjects = self.metrics.subjects();
        let (long_s, short_s) = (
            capped(&long, |k| &k.0, subjects),
            capped(&short, |k| &k.0, subjects),
        );
        for (subject, c) in &long_s {
            let s = short_s.get(subject).copied().unwrap_or_default();
            targets.push((
                Target {
                    subject: subject.clone(),
                    model: None,
                },
                *c,
                s,
            ));
        }
        if self.config.per_model {
            let models = self.metrics.models();
            let (long_m, short_m) = (
                capped(&long, |k| &k.1, models),
                capped(&short, |k| &k.1, models),
            );
            for (model, c) in long_m
                .iter()
                .filter(|(m, _)| m.as_str() != ALL && !m.is_empty())
            {
                let s = short_m.get(model).copied().unwrap_or_default();
                targets.push((
                    Target {
                        subject: ALL.to_owned(),
                        model: Some(model.clone()),
                    },
                    *c,
                    s,
                ));
            }
        }
        // Targets that vanished from the window are evaluated with empty counts (resolve).
        let present: Vec<Target> = targets.iter().map(|t| t.0.clone()).collect();
        for t in self.tracked.keys() {
            if !present.contains(t) {
                targets.push((t.clone(), Counts::default(), Counts::default()));
            }
        }
        let now = snap.at;
        for (target, long_c, short_c) in targets {
            let before = self
                .tracked
                .get(&target)
                .map(|t| t.state)
                .unwrap_or_default();
            let after = self.rule.step(before, &long_c, &short_c);
            if after == State::default() && !self.tracked.contains_key(&target) {
                continue;
            }
            if after.firing {
                let examples = disliked_examples(pool, &target, now - window).await;
                let annotations = self.annotations(&target, &long_c, &examples);
                let t = self.tracked.entry(target.clone()).or_insert(Tracked {
                    state: after,
                    starts_at: now,
                    resolved_at: None,
                    annotations: annotations.clone(),
                });
                if !before.firing {
                    t.starts_at = now;
                    t.resolved_at = None;
                    tracing::warn!(subject = ?target.subject, model = ?target.model, samples = long_c.total(), like_ratio = ?long_c.like_ratio(), "like-rate alert firing");
                }
                t.state = after;
                t.annotations = annotations;
            } else if let Some(t) = self.tracked.get_mut(&target) {
                if before.firing {
                    t.resolved_at = Some(now);
                    tracing::info!(subject = ?target.subject, model = ?target.model, "like-rate alert resolved");
                }
                t.state = after;
            } else {
                self.tracked.insert(
                    target,
                    Tracked {
                        state: after,
                        starts_at: now,
                        resolved_at: None,
                        annotations: Default::default(),
                    },
                );
            }
        }
        self.tracked.retain(|_, t| {
            t.state.firing
                || t.state.pending > 0
                || t.resolved_at.is_some_and(|r| now - r < RESOLVED_RESEND)
        });
        if let Some(stall) = self.stall.as_mut().filter(|s| s.resolved_at.is_none()) {
            stall.resolved_at = Some(now);
            tracing::info!(
                cause = stall.cause.as_str(),
                "pipeline counting again: stall resolved"
            );
        }
        self.stall
            .take_if(|s| s.resolved_at.is_some_and(|r| now - r >= RESOLVED_RESEND));
        self.export_state();
        self.send(now);
        Ok(())
    }

    /// While likerate cannot count: nothing is evaluated, firing alerts stay firing (re-sent,
    /// so Alertmanager keeps them), and `FeedbackPipelineStalled` with `cause` is pushed. The
    /// next successful evaluation resolves the stall and decides the held alerts on fresh
    /// numbers.
    pub fn hold(&mut self, now: DateTime<Utc>, cause: Cause) {
        match &mut self.stall {
            Some(s) if s.resolved_at.is_none() => {
                if s.cause != cause {
                    tracing::warn!(cause = cause.as_str(), "pipeline stall: cause changed");
                    s.cause = cause;
                }
            }
            _ => {
                tracing::warn!(
                    cause = cause.as_str(),
                    "pipeline cannot count: alerts held, FeedbackPipelineStalled firing"
                );
                self.stall = Some(Stalled {
                    cause,
                    starts_at: now,
                    resolved_at: None,
                });
            }
        }
        self.export_state();
        self.send(now);
    }

    /// Whether `FeedbackPipelineStalled` is firing, and why.
    pub fn stalled(&self) -> Option<Cause> {
        self.stall
            .as_ref()
            .filter(|s| s.resolved_at.is_none())
            .map(|s| s.cause)
    }

    fn annotations(
        &self,
        target: &Target,
        c: &Counts,
        examples: &[i64],
    ) -> serde_json::Map<String, serde_json::Value> {
        let rate = c.like_ratio().unwrap_or(0.0);
        let who = match &target.model {
            Some(m) => format!("model {m}"),
            None if target.subject == ALL => "all subjects".to_owned(),
            None => format!("subject {}", target.subject),
        };
        let window = humantime::format_duration(self.config.window).to_string();
        let json = serde_json::json!({
            "summary": format!("Like rate of {who} is {:.1}% (below {:.0}%)", rate * 100.0, self.config.threshold * 100.0),
            "description": format!(
                "{} likes, {} dislikes, {} neutral in the last {window}: like rate {:.1}%, threshold {:.1}%.",
                c.likes, c.dislikes, c.neutral, rate * 100.0, self.config.threshold * 100.0),
            "like_rate": format!("{rate:.4}"),
            "samples": c.total().to_string(),
            "threshold": self.config.threshold.to_string(),
            "window": window,
            "examples": examples.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","),
            "runbook_url": self.config.runbook_url,
            "dashboard_url": self.config.dashboard_url,
        });
        match json {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }

    fn labels(target: &Target) -> serde_json::Value {
        let mut labels = serde_json::json!({
            "alertname": "FeedbackLikeRateLow",
            "service": "likerate",
            "severity": "page",
            "subject": target.subject,
        });
        if let Some(m) = &target.model {
            labels["model"] = serde_json::Value::String(m.clone());
        }
        labels
    }

    fn export_state(&self) {
        self.metrics.alerts_replace(|gauges| {
            // The whole stream always has a series, so "not firing" is visible too.
            if !self
                .tracked
                .keys()
                .any(|t| t.subject == ALL && t.model.is_none())
            {
                gauges.set(ALERT_FIRING, &[("subject", ALL)], 0.0);
            }
            let stalled = self.stalled();
            for cause in Cause::ALL {
                let on = f64::from(u8::from(stalled == Some(cause)));
                gauges.set(PIPELINE_STALLED, &[("cause", cause.as_str())], on);
            }
            for (target, t) in &self.tracked {
                let firing = f64::from(u8::from(t.state.firing));
                match &target.model {
                    Some(m) => gauges.set(
                        ALERT_FIRING,
                        &[("subject", &target.subject), ("model", m)],
                        firing,
                    ),
                    None => gauges.set(ALERT_FIRING, &[("subject", &target.subject)], firing),
                }
            }
        });
    }

    fn send(&self, now: DateTime<Utc>) {
        let Some(push) = &self.push else { return };
        let resend_horizon = chrono::Duration::seconds(EVALUATION.as_secs() as i64 * 4);
        let alerts: Vec<serde_json::Value> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.state.firing || t.resolved_at.is_some())
            .map(|(target, t)| {
                let ends = t.resolved_at.unwrap_or(now + resend_horizon);
                serde_json::json!({
                    "labels": Self::labels(target),
                    "annotations": t.annotations,
                    "startsAt": t.starts_at.to_rfc3339(),
                    "endsAt": ends.to_rfc3339(),
                    "generatorURL": self.config.dashboard_url,
                })
            })
            .chain(self.stall.as_ref().map(|s| {
                let ends = s.resolved_at.unwrap_or(now + resend_horizon);
                serde_json::json!({
                    "labels": {
                        "alertname": "FeedbackPipelineStalled",
                        "service": "likerate",
                        "severity": "page",
                        "cause": s.cause.as_str(),
                    },
                    "annotations": {
                        "summary": format!("likerate cannot count feedback ({})", s.cause.as_str()),
                        "description": "The like-rate alerts are held (a firing page stays firing) until likerate counts again; see the runbook.",
                        "runbook_url": format!("{}#feedbackpipelinestalled", self.config.runbook_url),
                        "dashboard_url": self.config.dashboard_url,
                    },
                    "startsAt": s.starts_at.to_rfc3339(),
                    "endsAt": ends.to_rfc3339(),
                    "generatorURL": self.config.dashboard_url,
                })
            }))
            .collect();
        push.send_replace(alerts);
    }
}

/// How old the latest snapshot may be before the numbers count as lost: a few refreshes.
const STALE: chrono::Duration =
    chrono::Duration::seconds(3 * crate::aggregate::REFRESH.as_secs() as i64);

/// The alert task: every [`EVALUATION`], evaluates the latest snapshot the aggregate task
/// published, or holds the alerts when likerate cannot count (the snapshot failed or is stale,
/// the consumer is stalled, the evaluation fails), until shutdown or until the aggregate task
/// is gone (then this task ends too, and the supervisor stops the process).
pub async fn run(
    pool: Pool,
    metrics: Metrics,
    config: AlertConfig,
    snapshots: Snapshots,
    progress: std::sync::Arc<crate::source::Progress>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let stall_after = config.stall_after;
    let mut alerter = Alerter::new(config, metrics);
    let mut tick = tokio::time::interval(EVALUATION);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if snapshots.has_changed().is_err() {
            return;
        }
        let reading = snapshots.borrow().clone();
        let now = Utc::now();
        let snap = match reading {
            Reading::Starting => continue,
            Reading::Failed(_) => {
                alerter.hold(now, Cause::Database);
                continue;
            }
            Reading::Counted(snap) if now - snap.at > STALE => {
                alerter.hold(now, Cause::Database);
                continue;
            }
            Reading::Counted(snap) => snap,
        };
        if progress.stalled(stall_after) {
            alerter.hold(now, Cause::Consumer);
            continue;
        }
        if let Err(e) = alerter.evaluate(&pool, &snap).await {
            tracing::warn!(error = %e, "alert evaluation failed: alerts held");
            alerter.hold(now, Cause::Evaluation);
        }
    }
}

/// The counts of a window: from the snapshot when it is one of the exported windows (the
/// default 15m and 5m are), read from the rollups otherwise.
async fn cells_for(
    pool: &Pool,
    snap: &Snapshot,
    window: chrono::Duration,
) -> Result<Cells, crate::db::DbError> {
    let exported = WINDOWS
        .iter()
        .find(|(_, seconds)| *seconds == window.num_seconds())
        .and_then(|(name, _)| snap.windows.get(name));
    match exported {
        Some(cells) => Ok(cells.clone()),
        None => {
            let client = pool.get().await?;
            Ok(read::window(&client, snap.at - window).await?)
        }
    }
}

/// Ids of the latest disliked answers of the target within the window.
async fn disliked_examples(pool: &Pool, target: &Target, since: DateTime<Utc>) -> Vec<i64> {
    let query = async {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client
            .query(
                "SELECT id FROM feedback
                 WHERE created_at >= $1 AND rating = -1
                   AND ($2 = '_all' OR subject_id = $2)
                   AND ($3::text IS NULL OR model = $3)
                 ORDER BY created_at DESC LIMIT 5",
                &[&since, &target.subject, &target.model],
            )
            .await
            .map_err(|e| e.to_string())
    };
    match query.await {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not read example dislikes");
            Vec::new()
        }
    }
}

/// Posts the latest alert set to Alertmanager whenever it changes and at least every
/// [`EVALUATION`], with backoff while Alertmanager fails.
async fn pusher(
    url: String,
    mut rx: tokio::sync::watch::Receiver<Vec<serde_json::Value>>,
    metrics: Metrics,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            // Without a client nothing can be pushed; the gauges still show the alert state.
            tracing::error!(error = %e, "cannot create the Alertmanager client: alerts are not pushed");
            return;
        }
    };
    let endpoint = format!("{url}/api/v2/alerts");
    let mut backoff = Duration::from_secs(1);
    loop {
        let alerts = rx.borrow_and_update().clone();
        if !alerts.is_empty() {
            let result = client.post(&endpoint).json(&alerts).send().await;
            let ok = matches!(&result, Ok(r) if r.status().is_success());
            let label = if ok { "ok" } else { "error" };
            metrics.alert_push(label);
            if ok {
                backoff = Duration::from_secs(1);
            } else {
                tracing::warn!(result = ?result.map(|r| r.status()), retry_in = ?backoff, "alert push to Alertmanager failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(EVALUATION);
                continue;
            }
        }
        // Wait for a change or re-send after one evaluation period.
        if let Ok(Err(_)) = tokio::time::timeout(EVALUATION, rx.changed()).await {
            return; // the alerter is gone: shutting down
        }
    }
}
