//! App: wires the stages of `likerate run` together and owns their lifecycle.
//!
//! `App::build` does everything that can fail on configuration (database reachable and
//! migrated, topics present, HTTP port bound, so tests can bind port 0 and read the real
//! port); `App::run_until_stopped` runs source -> sink, the aggregates and HTTP until the
//! shutdown token is cancelled or a stage fails for good.
//!
//! Guarantee: shutdown is bounded. The source drains within `drain_timeout`; if the sink or
//! the consumer's group leave still hang after that (database or broker unreachable), the app
//! returns anyway, which loses nothing because no offset moved ahead of durable data.

use crate::config::{DatabaseConfig, KafkaConfig, RunConfig};
use crate::db::Target;
use crate::dead_letter;
use crate::redact::Redactor;
use crate::source::{self, BatchLimits};
use crate::telemetry::Metrics;
use crate::{aggregate, alert, http, kafka, sink};
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct App {
    kafka: KafkaConfig,
    run: RunConfig,
    target: Target,
    db_timeout: Duration,
    metrics: Metrics,
    listener: TcpListener,
    /// Where `listener` listens (the real port when configured with port 0).
    http_addr: SocketAddr,
    state: http::AppState,
}

impl App {
    pub async fn build(
        kafka: KafkaConfig,
        db: DatabaseConfig,
        run: RunConfig,
    ) -> anyhow::Result<App> {
        let target = Target::new(&db)?;
        target
            .ensure_database()
            .await
            .with_context(|| format!("database {}", target.dbname()))?;
        let mut client = target.connect().await?;
        let applied = crate::db::migrate(&mut client).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, "migrations applied");
        }
        kafka::ensure_topics(&kafka)
            .await
            .with_context(|| format!("creating topics on {}", kafka.brokers))?;
        // A topic whose configuration cannot be read (no DescribeConfigs permission) is not a
        // reason to stop: the check is a guard against a known misconfiguration.
        match kafka::retention(&kafka, &kafka.topic).await {
            Ok(retention) => {
                crate::config::check_dedup_window(run.dedup_window, &kafka.topic, retention)?
            }
            Err(e) => tracing::warn!(
                topic = %kafka.topic,
                error = %e,
                "cannot read the topic's retention.ms: LIKERATE_DEDUP_WINDOW is not checked against it"
            ),
        }
        let metrics = Metrics::new(run.max_subject_labels);
        let listener = TcpListener::bind(run.http_addr)
            .await
            .with_context(|| format!("LIKERATE_HTTP_ADDR: cannot listen on {}", run.http_addr))?;
        let http_addr = listener
            .local_addr()
            .with_context(|| format!("LIKERATE_HTTP_ADDR: {}", run.http_addr))?;
        let state = http::AppState {
            metrics: metrics.clone(),
            pool: target.pool(8)?,
            joined: Arc::new(AtomicBool::new(false)),
            api: crate::http::api::ApiState::new(&kafka, run.export_token.as_deref())
                .context("creating the producer of POST /api/feedback")?
                .with_ab(run.ab.clone())
                .with_ingest_token(run.ingest_token.as_deref()),
        };
        Ok(App {
            kafka,
            run,
            target,
            db_timeout: db.timeout,
            metrics,
            listener,
            http_addr,
            state,
        })
    }

    /// The address HTTP listens on (the real port when configured with port 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let limits = BatchLimits {
            max_events: self.run.batch_max_events,
            max_bytes: 16 * 1024 * 1024,
            linger: self.run.batch_linger,
            drain_timeout: self.run.drain_timeout,
        };
        // One batch ready while the lanes write theirs: enough to keep them busy, and every
        // batch held costs memory.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let source_stop = CancellationToken::new();
        let progress = Arc::new(source::Progress::default());
        // Dropping this future (an embedding runtime shutting down) stops the poll thread too.
        let _source_stop = source_stop.clone().drop_guard();
        let source = source::start(
            &self.kafka,
            limits,
            self.metrics.clone(),
            tx,
            self.state.joined.clone(),
            Some(Redactor::new(self.run.redact, Some(self.metrics.clone()))),
            progress.clone(),
            source_stop.clone(),
        )?;
        let sink = sink::Sink::new(
            self.target.clone(),
            self.kafka.topic.clone(),
            source.acker,
            self.metrics.clone(),
            self.db_timeout,
            self.run.sink_connections,
            self.run.retention.rows,
        );
        // Supervision: every long-running task is watched below; the first to end (or panic)
        // before a shutdown stops the process with an error naming it, after the same bounded
        // drain as a shutdown, so the orchestrator restarts it. HTTP stops with the rest, so
        // readiness fails at once.
        let fault = Fault::from_env();
        let mut sink_task = tokio::spawn(fault.wrap("sink", sink.run(rx)));
        // The aggregate task publishes each snapshot of the windows; the alert reads them.
        let (snapshots, snapshot_rx) = tokio::sync::watch::channel(aggregate::Reading::Starting);
        let mut aggregates = tokio::spawn(fault.wrap(
            "aggregates",
            aggregate::run(
                self.state.pool.clone(),
                self.metrics.clone(),
                snapshots,
                shutdown.clone(),
            ),
        ));
        let mut alert_task = tokio::spawn(fault.wrap(
            "alert",
            alert::run(
                self.state.pool.clone(),
                self.metrics.clone(),
                self.run.alert.clone(),
                snapshot_rx,
                progress,
                shutdown.clone(),
            ),
        ));
        let retention = if self.run.retention.is_enabled() {
            futures::future::Either::Left(crate::ops::retention::run_daily(
                self.target.clone(),
                self.run.retention,
                self.metrics.clone(),
                shutdown.clone(),
            ))
        } else {
            // Nothing to run: a task that ends with the shutdown like the others.
            let shutdown = shutdown.clone();
            futures::future::Either::Right(async move { shutdown.cancelled().await })
        };
        let mut retention = tokio::spawn(fault.wrap("retention", retention));
        let mut dead_letters = tokio::spawn(fault.wrap(
            "dead_letters",
            dead_letter::run(
                self.target.clone(),
                self.kafka.clone(),
                self.metrics.clone(),
                fault.dead_letter(),
                shutdown.clone(),
            ),
        ));
        let mut patterns = tokio::spawn(fault.wrap(
            "patterns",
            crate::http::api::patterns::refresh_gauges(
                self.state.pool.clone(),
                self.metrics.clone(),
                shutdown.clone(),
            ),
        ));
        let mut units = tokio::spawn(fault.wrap(
            "units",
            crate::units::refresh(
                self.state.pool.clone(),
                self.metrics.clone(),
                shutdown.clone(),
            ),
        ));
        let thread = source.thread;
        let mut source_task = tokio::spawn(fault.wrap("source", async move {
            // The poll thread ends only when told to; its end (or panic) is awaited here.
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|_| "the poll thread panicked".to_owned()))
        }));
        let router = http::router_with(self.state, &self.run.cors_origins, &self.run.http_limits);
        let mut http_task = tokio::spawn(fault.wrap(
            "http",
            http::serve(
                self.listener,
                router,
                self.run.http_limits,
                shutdown.clone(),
            ),
        ));

        let (mut sink_done, mut source_done, mut http_done) = (false, false, false);
        let outcome: anyhow::Result<()> = tokio::select! {
            biased;
            _ = shutdown.cancelled() => Ok(()),
            r = &mut sink_task => {
                sink_done = true;
                match r {
                    Ok(Ok(())) => Err(ended("sink", "it stopped: the source closed its channel")),
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(ended("sink", e)),
                }
            }
            r = &mut source_task => {
                source_done = true;
                Err(match r {
                    Ok(Ok(())) => ended("source", "the poll thread stopped"),
                    Ok(Err(e)) => ended("source", e),
                    Err(e) => ended("source", e),
                })
            }
            r = &mut aggregates => Err(ended("aggregates", task_end(r))),
            r = &mut alert_task => Err(ended("alert", task_end(r))),
            r = &mut retention => Err(ended("retention", task_end(r))),
            r = &mut dead_letters => Err(ended("dead_letters", match r {
                Ok(Ok(())) => "it returned".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            })),
            r = &mut patterns => Err(ended("patterns", task_end(r))),
            r = &mut units => Err(ended("units", task_end(r))),
            r = &mut http_task => {
                http_done = true;
                Err(ended("http", format!("{r:?}")))
            }
        };
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "a task failed: stopping");
        }
        shutdown.cancel();
        source_stop.cancel();
        // The source drains within drain_timeout; give the sink and the group leave a little
        // more, then return whatever state they are in.
        let bound = self.run.drain_timeout + Duration::from_secs(5);
        let joined = tokio::time::timeout(bound, async {
            if !source_done {
                let _ = (&mut source_task).await;
            }
            if !sink_done {
                let _ = (&mut sink_task).await;
            }
        })
        .await;
        if joined.is_err() {
            tracing::warn!(
                ?bound,
                "shutdown bound reached: exiting with work not drained (it will be consumed again)"
            );
        }
        if !http_done {
            let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
        }
        aggregates.abort();
        alert_task.abort();
        retention.abort();
        dead_letters.abort();
        patterns.abort();
        units.abort();
        tracing::info!("stopped");
        outcome
    }
}

fn ended(task: &str, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("the {task} task ended before a shutdown: {why}")
}

fn task_end(r: Result<(), tokio::task::JoinError>) -> String {
    match r {
        Ok(()) => "it returned".to_owned(),
        Err(e) => e.to_string(),
    }
}

/// A test-only fault hook: `LIKERATE_TEST_FAULT=<task>` (`source`, `sink`, `aggregates`,
/// `alert`, `retention`, `patterns`, `units`, `dead_letters` or `http`) makes that task panic two
/// seconds after start, so the tests can prove each task is supervised; `dead_letter_sent` and
/// `dead_letter_stall` are the dead-letter publisher's ([`dead_letter::Fault`]). Unset in
/// production; any other value names nothing.
struct Fault(Option<String>);

impl Fault {
    fn from_env() -> Fault {
        Fault(std::env::var("LIKERATE_TEST_FAULT").ok())
    }

    fn is(&self, point: &str) -> bool {
        self.0.as_deref() == Some(point)
    }

    fn dead_letter(&self) -> dead_letter::Fault {
        match self.0.as_deref() {
            Some("dead_letter_sent") => dead_letter::Fault::CrashAfterCommit,
            Some("dead_letter_stall") => dead_letter::Fault::StallBeforeSend,
            _ => dead_letter::Fault::None,
        }
    }

    fn wrap<F: std::future::Future>(
        &self,
        task: &'static str,
        future: F,
    ) -> impl std::future::Future<Output = F::Output> {
        let inject = self.is(task);
        async move {
            if inject {
                tokio::time::sleep(Duration::from_secs(2)).await;
                panic!("LIKERATE_TEST_FAULT={task}: injected failure");
            }
            future.await
        }
    }
}
