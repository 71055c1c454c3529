//! The alert and the dashboard end to end with the real thing (issue 3 item 8, issue 5 item 5):
//! Debian's `prometheus` and `prometheus-alertmanager` (installed by
//! `deploy/local/observability.sh`), likerate in process (`common::TestApp`), PostgreSQL and Apache Kafka,
//! all on 127.0.0.1 with free ports and temporary directories.
//!
//! - `page_from_likerate_and_prometheus_then_resolve`: Alertmanager runs the example config of
//!   `deploy/alertmanager/`, Prometheus scrapes likerate every 2s and evaluates the rules of
//!   `deploy/prometheus/rules/` (only their `for:` durations shortened). Traffic at 95% pages
//!   nothing; Math at 60% makes Alertmanager hold `FeedbackLikeRateLow{subject="Math"}` from
//!   likerate's own push and from the Prometheus rule (the latter inhibited by the former);
//!   recovery resolves both. The dashboard's queries are then checked against the same stack
//!   with `deploy/check-dashboard-live.py`.
//! - `alertmanager_down_costs_no_crash`: likerate pushes to a closed port while Math is low.
//!
//! Every child process is killed and every temporary directory removed on drop, also when an
//! assertion fails. Run with `--nocapture` to see the measured detection and resolution times.

use crate::common;

use common::observe::{
    alertmanager, alerts_named, brief, daemon, eventually, get_ok, http, label, repo, wait_ready,
    Daemon, TempDir, PROMETHEUS,
};
use common::{send, Broker, Database, Records, Served, TestApp};
use likerate::config::RunArgs;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

const ALERT: &str = "FeedbackLikeRateLow";
/// The `for:` of every rule in the temporary copy of the rules file.
const RULE_FOR: &str = "10s";

/// Synthetic records from `likerate produce`'s generator, with its command-line flags.
fn records(n: u64, seed: u64, flags: &[&str]) -> Records {
    common::traffic(n, seed, flags).0
}

/// `likerate run` pushing to `alertmanager_url`, with the contract's alert defaults.
async fn spawn_likerate(broker: &Broker, db: &Database, alertmanager_url: &str) -> TestApp {
    let run = RunArgs {
        alertmanager_url: Some(alertmanager_url.to_owned()),
        alert_min_samples: Some(50),
        ..RunArgs::default()
    };
    TestApp::spawn(&broker.kafka, &db.url(), run, None).await
}

/// Writes the Prometheus config and the rules copy (only `for:` shortened) into `dir`.
fn prometheus_config(dir: &TempDir, likerate: SocketAddr, alertmanager_url: &str) -> PathBuf {
    let rules =
        std::fs::read_to_string(repo().join("deploy/prometheus/rules/likerate.rules.yml")).unwrap();
    let mut shortened = 0;
    let rules: String = rules
        .lines()
        .map(|l| {
            let trimmed = l.trim_start();
            if trimmed.starts_with("for: ") {
                shortened += 1;
                format!("{}for: {RULE_FOR}\n", &l[..l.len() - trimmed.len()])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(shortened >= 1, "no `for:` in the rules file");
    let rules_path = dir.path().join("likerate.rules.yml");
    std::fs::write(&rules_path, rules).unwrap();
    let am = alertmanager_url.trim_start_matches("http://");
    let config = format!(
        "global:
  scrape_interval: 2s
  scrape_timeout: 2s
  evaluation_interval: 2s
rule_files:
  - {rules}
alerting:
  alertmanagers:
    - static_configs:
        - targets: ['{am}']
scrape_configs:
  - job_name: likerate
    metrics_path: /metrics
    static_configs:
      - targets: ['{likerate}']
",
        rules = rules_path.display()
    );
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    path
}

fn prometheus(dir: &TempDir, config: &Path) -> (Daemon, String) {
    let args = [
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()),
    ];
    daemon(dir, "prometheus", PROMETHEUS, &args)
}

/// An instant PromQL query: the result vector.
async fn prom_query(prometheus: &str, query: &str) -> Result<Vec<Value>, String> {
    let r = http()
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = r.json().await.map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(format!("{query}: {body}"));
    }
    Ok(body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// The `FeedbackLikeRateLow` alerts Alertmanager holds.
async fn am_alerts(alertmanager: &str) -> Result<Vec<Value>, String> {
    alerts_named(alertmanager, ALERT).await
}

fn from_prometheus(a: &Value) -> bool {
    a["labels"]["source"] == "prometheus"
}

/// `promtool check config` / `amtool check-config` on a generated or copied file.
fn check_tool(tool: &str, args: &[&str], file: &Path) {
    let out = Command::new(tool)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{tool} (run deploy/local/observability.sh): {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn page_from_likerate_and_prometheus_then_resolve() {
    let started = Instant::now();
    // Declaration order is drop order in reverse: processes die before their directories
    // and the database go.
    let dir = TempDir::new("stack");
    let db = Database::create("likerate_obs").await;
    let broker = Broker::new().await;

    let (mut am, am_url) = alertmanager(&dir);
    check_tool(
        "amtool",
        &["check-config"],
        &dir.path().join("alertmanager.yml"),
    );
    wait_ready(&mut am, &am_url).await;
    let mut likerate = spawn_likerate(&broker, &db, &am_url).await;
    let prom_config = prometheus_config(&dir, likerate.http, &am_url);
    check_tool("promtool", &["check", "config"], &prom_config);
    let (mut prom, prom_url) = prometheus(&dir, &prom_config);
    wait_ready(&mut prom, &prom_url).await;
    eventually(
        "Prometheus scrapes likerate",
        Duration::from_secs(30),
        Duration::from_millis(500),
        async || {
            let up = prom_query(&prom_url, "up{job=\"likerate\"} == 1").await?;
            (!up.is_empty())
                .then_some(())
                .ok_or("likerate not up".into())
        },
    )
    .await;
    eprintln!("stack up after {:?}", started.elapsed());

    // 1. Healthy: every subject at ~95%, created over the last 10 minutes so the 15m window
    //    is full at once.
    let healthy = records(2400, 1, &["--like-ratio", "0.95", "--spread", "10m"]);
    send(&broker.kafka, &healthy).await;
    eventually(
        "Prometheus sees the healthy votes",
        Duration::from_secs(60),
        Duration::from_secs(1),
        async || {
            let r = prom_query(
                &prom_url,
                "sum(likerate_window_votes{subject=\"_all\",window=\"15m\"})",
            )
            .await?;
            let v = r
                .first()
                .and_then(|s| s["value"][1].as_str())
                .unwrap_or("0")
                .to_owned();
            (v == "2400").then_some(()).ok_or(format!("votes {v}"))
        },
    )
    .await;
    // Past the Prometheus rule's `for:` and a few evaluations: no page, not even pending.
    let calm_until = Instant::now() + Duration::from_secs(16);
    while Instant::now() < calm_until {
        let alerts = am_alerts(&am_url).await.unwrap();
        assert!(
            alerts.is_empty(),
            "page on healthy traffic: {}",
            brief(&alerts)
        );
        let pending = prom_query(&prom_url, &format!("ALERTS{{alertname=\"{ALERT}\"}}"))
            .await
            .unwrap();
        assert!(
            pending.is_empty(),
            "Prometheus rule on healthy traffic: {pending:?}"
        );
        let text = likerate.metrics().await.unwrap();
        assert!(
            text.lines()
                .filter(|l| l.starts_with("likerate_alert_firing{"))
                .all(|l| l.ends_with(" 0")),
            "likerate fires on healthy traffic"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!("healthy traffic: no page, after {:?}", started.elapsed());

    // 2. Math drops to ~60%.
    let low = common::low_math(400, 2);
    let dropped = Instant::now();
    send(&broker.kafka, &low).await;
    let (ours, theirs) = eventually(
        "FeedbackLikeRateLow{subject=\"Math\"} from likerate and from Prometheus",
        Duration::from_secs(180),
        Duration::from_secs(2),
        async || {
            likerate.assert_alive();
            let alerts = am_alerts(&am_url).await?;
            // Only Math is low: no other subject (nor the whole stream, at ~90%) pages.
            let stray: Vec<Value> = alerts
                .iter()
                .filter(|a| label(a, "subject") != "Math")
                .cloned()
                .collect();
            assert!(stray.is_empty(), "unexpected pages: {}", brief(&stray));
            let ours = alerts.iter().find(|a| !from_prometheus(a)).cloned();
            let theirs = alerts.iter().find(|a| from_prometheus(a)).cloned();
            match (ours, theirs) {
                (Some(o), Some(t)) => Ok((o, t)),
                _ => Err(format!("alerts: [{}]", brief(&alerts))),
            }
        },
    )
    .await;
    eprintln!(
        "paged {:?} after the drop (likerate's rule: 4 evaluations of 15s)",
        dropped.elapsed()
    );

    // likerate's alert: exactly the contract's labels and annotations.
    let labels: BTreeMap<String, String> = serde_json::from_value(ours["labels"].clone()).unwrap();
    let expected: BTreeMap<String, String> = [
        ("alertname", ALERT),
        ("service", "likerate"),
        ("severity", "page"),
        ("subject", "Math"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(labels, expected, "likerate's alert labels");
    let ann = &ours["annotations"];
    for key in [
        "summary",
        "description",
        "like_rate",
        "samples",
        "threshold",
        "window",
        "examples",
        "runbook_url",
        "dashboard_url",
    ] {
        assert!(
            ann[key].as_str().is_some_and(|v| !v.is_empty()),
            "annotation {key} missing or empty: {ann}"
        );
    }
    let like_rate: f64 = ann["like_rate"].as_str().unwrap().parse().unwrap();
    assert!(
        (0.6..0.85).contains(&like_rate),
        "like_rate {like_rate}: {ann}"
    );
    let samples: i64 = ann["samples"].as_str().unwrap().parse().unwrap();
    assert!(samples >= 400, "samples {samples}: {ann}");
    assert_eq!(ann["threshold"], "0.85");
    assert_eq!(ann["window"], "15m");
    let examples: Vec<i64> = ann["examples"]
        .as_str()
        .unwrap()
        .split(',')
        .map(|i| i.parse().expect("example ids are numbers"))
        .collect();
    // Retried: other test binaries may restart the shared PostgreSQL meanwhile.
    let disliked_math: i64 = eventually(
        "the example ids looked up",
        Duration::from_secs(30),
        Duration::from_secs(1),
        async || {
            let (c, conn) = tokio_postgres::connect(&db.url(), NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            c.query_one(
                "SELECT count(*) FROM feedback
                 WHERE id = ANY($1) AND subject_id = 'Math' AND rating = -1",
                &[&examples],
            )
            .await
            .map(|r| r.get(0))
            .map_err(|e| e.to_string())
        },
    )
    .await;
    assert_eq!(
        disliked_math,
        examples.len() as i64,
        "examples {examples:?} are disliked Math answers"
    );
    assert!(ann["summary"].as_str().unwrap().contains("Math"), "{ann}");

    // Prometheus's copy: the rules file's labels, muted by alertmanager.yml's inhibit rule
    // while likerate's own alert fires for the same subject.
    assert_eq!(label(&theirs, "severity"), "page");
    assert_eq!(label(&theirs, "service"), "likerate");
    eventually(
        "Prometheus's copy inhibited by likerate's",
        Duration::from_secs(20),
        Duration::from_secs(1),
        async || {
            let alerts = am_alerts(&am_url).await?;
            let fp = alerts
                .iter()
                .find(|a| !from_prometheus(a))
                .map(|a| a["fingerprint"].clone())
                .ok_or("likerate's alert gone")?;
            let t = alerts
                .iter()
                .find(|a| from_prometheus(a))
                .ok_or("Prometheus's alert gone")?;
            let inhibited = t["status"]["state"] == "suppressed"
                && t["status"]["inhibitedBy"]
                    .as_array()
                    .is_some_and(|by| by.contains(&fp));
            inhibited
                .then_some(())
                .ok_or(format!("status {}", t["status"]))
        },
    )
    .await;
    assert_eq!(
        likerate
            .metric("likerate_alert_firing{subject=\"Math\"}")
            .await
            .unwrap(),
        Some(1.0)
    );

    // 3. Recovery: enough likes for Math that the 15m like rate is back above 85%.
    let good = records(
        3000,
        3,
        &[
            "--subjects",
            "Math",
            "--like-ratio",
            "1.0",
            "--spread",
            "5m",
        ],
    );
    let recovered = Instant::now();
    send(&broker.kafka, &good).await;
    eventually(
        "both FeedbackLikeRateLow alerts resolved",
        Duration::from_secs(120),
        Duration::from_secs(2),
        async || {
            likerate.assert_alive();
            let alerts = am_alerts(&am_url).await?;
            let firing = likerate
                .metric("likerate_alert_firing{subject=\"Math\"}")
                .await?;
            if alerts.is_empty() && firing.unwrap_or(0.0) == 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "alerts [{}], likerate_alert_firing {firing:?}",
                    brief(&alerts)
                ))
            }
        },
    )
    .await;
    eprintln!("resolved {:?} after the recovery", recovered.elapsed());
    // A resolved alert keeps its series (at 0) while likerate re-sends the resolve.
    assert_eq!(
        likerate
            .metric("likerate_alert_firing{subject=\"Math\"}")
            .await
            .unwrap(),
        Some(0.0)
    );
    assert!(
        likerate
            .metric("likerate_alert_pushes_total{result=\"ok\"}")
            .await
            .unwrap()
            .unwrap_or(0.0)
            >= 1.0
    );

    // 4. The Grafana dashboard against the same stack: every PromQL target answers with data,
    //    every SQL target runs and returns rows.
    let mut check = Command::new("python3");
    check
        .arg(repo().join("deploy/check-dashboard-live.py"))
        .args(["--retries", "6", "--require-rows"])
        .env("PROMETHEUS_URL", &prom_url)
        .env("DATABASE_URL", db.url())
        .current_dir(repo());
    let out = tokio::task::spawn_blocking(move || check.output())
        .await
        .unwrap()
        .expect("python3");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");
    assert!(out.status.success(), "check-dashboard-live.py:\n{report}");

    likerate.assert_alive();
    am.assert_alive();
    prom.assert_alive();
    eprintln!("whole test: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn alertmanager_down_costs_no_crash() {
    let db = Database::create("likerate_obs").await;
    let broker = Broker::new().await;
    // Nothing listens there.
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let mut likerate = spawn_likerate(&broker, &db, &closed).await;

    let low = common::low_math(300, 4);
    send(&broker.kafka, &low).await;
    eventually(
        "likerate_alert_firing{subject=\"Math\"} 1",
        Duration::from_secs(150),
        Duration::from_secs(1),
        async || {
            likerate.assert_alive();
            let v = likerate
                .metric("likerate_alert_firing{subject=\"Math\"}")
                .await?;
            (v == Some(1.0)).then_some(()).ok_or(format!("{v:?}"))
        },
    )
    .await;
    let errors = "likerate_alert_pushes_total{result=\"error\"}";
    let first = eventually(
        "a failed push is counted",
        Duration::from_secs(30),
        Duration::from_secs(1),
        async || {
            let v = likerate.metric(errors).await?.unwrap_or(0.0);
            (v >= 1.0).then_some(v).ok_or(format!("{v}"))
        },
    )
    .await;
    // The pusher keeps retrying, with backoff (1s, 2s, 4s, ... capped at one evaluation,
    // 15s): three more failures take at least a few seconds, not a hot loop.
    let since = Instant::now();
    eventually(
        "failed pushes keep being counted",
        Duration::from_secs(60),
        Duration::from_secs(1),
        async || {
            likerate.assert_alive();
            let v = likerate.metric(errors).await?.unwrap_or(0.0);
            (v >= first + 3.0)
                .then_some(())
                .ok_or(format!("{v} (was {first})"))
        },
    )
    .await;
    eprintln!(
        "failed pushes: {first} -> {} in {:?}",
        likerate.metric(errors).await.unwrap().unwrap_or(0.0),
        since.elapsed()
    );
    likerate.assert_alive();
    get_ok(&format!("http://{}/healthz", likerate.http))
        .await
        .expect("healthz");
    assert_eq!(
        likerate
            .metric("likerate_alert_pushes_total{result=\"ok\"}")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        likerate
            .metric("likerate_alert_firing{subject=\"Math\"}")
            .await
            .unwrap(),
        Some(1.0),
        "the gauge shows the state although Alertmanager is away"
    );
}
