//! The Prometheus-family daemons the tests run for real (Prometheus, Alertmanager) and the
//! helpers to wait for and read them.

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("likerate-obs-{what}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop; its log (a file in its directory, if any) is printed
/// when the test is failing.
pub struct Daemon {
    pub name: &'static str,
    child: Child,
    log: Option<PathBuf>,
}

impl Daemon {
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited: {status}", self.name);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Some(log) = &self.log {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!("---- last lines of {} ----", self.name);
                for l in tail {
                    eprintln!("[{}] {l}", self.name);
                }
            }
        }
    }
}

/// Polls `f` until it returns `Ok`, every `every`, panicking with its last error after
/// `within`.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut f: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last: {e}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

pub async fn get_ok(url: &str) -> Result<String, String> {
    let r = http().get(url).send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    let body = r.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{url}: {status}: {body}"))
    }
}

/// A Prometheus-family daemon (`binary`) serving on a free port, with `args` plus its listen
/// address, its log in `dir`; its base URL.
pub fn daemon(
    dir: &TempDir,
    name: &'static str,
    binary: &str,
    args: &[String],
) -> (Daemon, String) {
    let port = super::kafka::free_port();
    let log = dir.path().join(format!("{name}.log"));
    let child = Command::new(binary)
        .args(args)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{binary}: {e} (run deploy/local/observability.sh)"));
    (
        Daemon {
            name,
            child,
            log: Some(log),
        },
        format!("http://127.0.0.1:{port}"),
    )
}

/// Alertmanager with a copy of `deploy/alertmanager/alertmanager.yml`.
pub fn alertmanager(dir: &TempDir) -> (Daemon, String) {
    let config = dir.path().join("alertmanager.yml");
    std::fs::copy(repo().join("deploy/alertmanager/alertmanager.yml"), &config).unwrap();
    let args = [
        format!("--config.file={}", config.display()),
        format!("--storage.path={}", dir.path().join("data").display()),
        "--cluster.listen-address=".to_owned(),
    ];
    daemon(dir, "alertmanager", ALERTMANAGER, &args)
}

pub async fn wait_ready(daemon: &mut Daemon, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while get_ok(&format!("{base}/-/ready")).await.is_err() {
        daemon.assert_alive();
        assert!(
            Instant::now() < deadline,
            "{} not ready at {base}",
            daemon.name
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `alertname` alerts Alertmanager holds (active, suppressed or unprocessed; resolved
/// alerts are not listed).
pub async fn alerts_named(alertmanager: &str, alertname: &str) -> Result<Vec<Value>, String> {
    let body = get_ok(&format!("{alertmanager}/api/v2/alerts")).await?;
    let all: Vec<Value> = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let now = Utc::now();
    Ok(all
        .into_iter()
        .filter(|a| a["labels"]["alertname"] == alertname)
        // Belt and braces: the API leaves resolved alerts out, whatever their state.
        .filter(|a| {
            a["endsAt"]
                .as_str()
                .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
                .is_none_or(|e| e > now)
        })
        .collect())
}

pub fn label(a: &Value, name: &str) -> String {
    a["labels"][name].as_str().unwrap_or_default().to_owned()
}

pub fn brief(alerts: &[Value]) -> String {
    alerts
        .iter()
        .map(|a| format!("{} {}", a["labels"], a["status"]["state"]))
        .collect::<Vec<_>>()
        .join("; ")
}
