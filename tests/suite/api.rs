//! The feedback API against real services: PostgreSQL, Apache Kafka (`common::kafka`) and
//! likerate itself, in process (`common::TestApp`: fresh database and topic per test, HTTP on
//! port 0).
//!
//! Data always takes the real path: `POST /api/feedback` -> topic -> consumer -> sink ->
//! `feedback` rows and rollups. Every figure the API returns is compared with an independent
//! computation over the `feedback` table, where the current vote of a `vote_id` is the row with
//! the latest `(created_at, event_id)`; stats and daily are also computed from the events the
//! test sent ([`Produced`]), so a row likerate lost or altered cannot hide in both.

use crate::common;

use chrono::{DateTime, Duration as ChronoDuration, DurationRound, Utc};
use common::{Broker, Database, Served, TestApp};
use likerate::config::RunArgs;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub(crate) const TOKEN: &str = "test-export-token-0123456789";

/// The current votes: one row per `vote_id` (the latest), every row without one.
const CURRENT: &str = "
    WITH cur AS (
      SELECT DISTINCT ON (coalesce(vote_id, event_id::text)) *
      FROM feedback
      ORDER BY coalesce(vote_id, event_id::text), created_at DESC, event_id DESC)";

/// One test's world: topics on the real broker, a database.
pub(crate) struct Env {
    pub(crate) broker: Broker,
    pub(crate) db: Database,
}

impl Env {
    pub(crate) async fn new() -> Env {
        Env {
            broker: Broker::new().await,
            db: Database::create("likerate_api_test").await,
        }
    }

    pub(crate) fn db_url(&self) -> String {
        self.db.url()
    }

    pub(crate) async fn client(&self) -> tokio_postgres::Client {
        self.db.client().await
    }

    /// `likerate run`, with the export token or without one.
    pub(crate) async fn spawn(&self, token: Option<&str>) -> Proc {
        let run = RunArgs {
            export_token: token.map(str::to_owned),
            ..RunArgs::default()
        };
        let app = TestApp::spawn(&self.broker.kafka, &self.db.url(), run, None).await;
        Proc {
            base: app.base_url(),
            _app: app,
            http: reqwest::Client::new(),
        }
    }

    /// Waits until `feedback` holds exactly `n` rows.
    pub(crate) async fn wait_for_rows(&self, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = self.db.count().await;
            assert!(c <= n, "more rows than events: {c} > {n}");
            if c == n {
                return;
            }
            assert!(Instant::now() < deadline, "only {c} of {n} rows stored");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A running `likerate run` and an HTTP client for it.
pub(crate) struct Proc {
    _app: TestApp,
    pub(crate) base: String,
    http: reqwest::Client,
}

impl Proc {
    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut r = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    }

    pub(crate) async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path, Some(TOKEN)).await;
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    /// POSTs a JSON body to /api/feedback.
    pub(crate) async fn post(&self, body: String) -> reqwest::Response {
        self.http
            .post(format!("{}/api/feedback", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs events in arrays of 100; returns the ids answered, in order.
    pub(crate) async fn post_events(&self, events: &[Value]) -> Vec<Uuid> {
        let mut ids = Vec::new();
        for chunk in events.chunks(100) {
            let r = self.post(serde_json::to_string(chunk).unwrap()).await;
            assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
            let body: Value = r.json().await.unwrap();
            ids.extend(
                body["event_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().parse::<Uuid>().unwrap()),
            );
        }
        ids
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn floor_minute(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp().div_euclid(60) * 60, 0).unwrap()
}

/// Varied traffic over the last ten days: three subjects, two models and none, questions
/// shared between answers, identical (question, answer) pairs, questions missing, and re-votes
/// (a quarter of the events share a `vote_id` with another, some moving to another day or
/// subject). Times stay at least two hours away from a day boundary relative to `now`, so the
/// `daily` window edge cannot fall between two readings of the clock.
fn traffic(now: DateTime<Utc>) -> Vec<Value> {
    let subjects = ["Math", "Physics", "History"];
    let models = [Some("m1"), Some("m2"), None];
    // Answers whose number is a multiple of 3 are mostly disliked, the others mostly liked, so
    // most questions (answered by n and n + 20) have both for DPO.
    let liked = [1, 1, -1, 0, 1, -1, 1];
    let disliked = [-1, -1, 1, 0, -1, 1, -1];
    (0..420)
        .map(|i: i64| {
            let at = now
                - ChronoDuration::days(i % 10)
                - ChronoDuration::hours(i * 7 % 21)
                - ChronoDuration::minutes(10 + i * 13 % 60)
                - ChronoDuration::seconds(i % 59);
            let mut e = json!({
                "subject_id": subjects[(i % 3) as usize],
                "assistant_message": format!("answer {}", i % 40),
                "rating": if i % 40 % 3 == 0 { disliked } else { liked }[(i % 7) as usize],
                "created_at": rfc3339(at),
                "conversation_id": format!("c{}", i % 17),
            });
            if i % 11 != 0 {
                e["user_question"] = json!(format!("question {}", i % 20));
            }
            if let Some(m) = models[(i / 3 % 3) as usize] {
                e["model"] = json!(m);
            }
            if i % 4 == 0 {
                e["vote_id"] = json!(format!("vote-{}", i / 8));
            }
            if i % 2 == 0 {
                e["event_id"] = json!(Uuid::new_v4());
            }
            e
        })
        .collect()
}

/// The current votes of the events a test sent, worked out from what it sent (not from what
/// likerate stored): per `vote_id` the event with the latest `(created_at, event_id)`, and
/// every event without one.
struct Produced<'a> {
    current: Vec<(&'a Value, DateTime<Utc>)>,
}

impl<'a> Produced<'a> {
    fn new(events: &'a [Value], ids: &[Uuid]) -> Produced<'a> {
        let mut current = Vec::new();
        let mut votes: HashMap<&str, (DateTime<Utc>, Uuid, &Value)> = HashMap::new();
        for (e, id) in events.iter().zip(ids) {
            let at = DateTime::parse_from_rfc3339(e["created_at"].as_str().unwrap())
                .unwrap()
                .with_timezone(&Utc);
            match e["vote_id"].as_str() {
                None => current.push((e, at)),
                Some(vote) => {
                    let entry = votes.entry(vote).or_insert((at, *id, e));
                    if (at, *id) > (entry.0, entry.1) {
                        *entry = (at, *id, e);
                    }
                }
            }
        }
        current.extend(votes.into_values().map(|(at, _, e)| (e, at)));
        Produced { current }
    }

    /// `round(likes * 100 / total, 1)` as PostgreSQL rounds it (half away from zero), in
    /// integers so no float rounding decides a tie.
    fn pct(likes: i64, total: i64) -> f64 {
        if total == 0 {
            return 0.0;
        }
        ((2 * likes * 1000 + total) / (2 * total)) as f64 / 10.0
    }

    fn stats(&self, filter: StatsFilter<'_>) -> Value {
        let (subject, model, since, until) = filter;
        let rows: Vec<i64> = self
            .current
            .iter()
            .filter(|(e, at)| {
                subject.is_none_or(|s| e["subject_id"] == s)
                    && model.is_none_or(|m| e["model"] == m)
                    && since.is_none_or(|s| *at >= s)
                    && until.is_none_or(|u| *at < u)
            })
            .map(|(e, _)| e["rating"].as_i64().unwrap())
            .collect();
        let count = |r: i64| rows.iter().filter(|x| **x == r).count() as i64;
        json!({
            "total_feedback": rows.len() as i64,
            "likes": count(1),
            "dislikes": count(-1),
            "neutral": count(0),
            "like_percentage": Self::pct(count(1), rows.len() as i64),
            "subject_id": subject,
        })
    }

    /// The product guide's daily figures: days within the last `days` days, newest first.
    fn daily(&self, days: i64, subject: Option<&str>) -> Value {
        let since = Utc::now() - ChronoDuration::days(days);
        let mut cells: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
        for (e, at) in &self.current {
            if *at <= since || subject.is_some_and(|s| e["subject_id"] != s) {
                continue;
            }
            let key = (
                at.date_naive().to_string(),
                e["subject_id"].as_str().unwrap().to_owned(),
            );
            let cell = cells.entry(key).or_default();
            cell.0 += 1;
            cell.1 += i64::from(e["rating"] == 1);
        }
        let mut out: Vec<Value> = cells
            .into_iter()
            .map(|((date, subject), (total, likes))| {
                json!({"date": date, "subject_id": subject, "total": total, "likes": likes,
                       "like_pct": Self::pct(likes, total)})
            })
            .collect();
        // Newest date first, subjects in order within a date.
        out.sort_by(|a, b| {
            b["date"]
                .as_str()
                .cmp(&a["date"].as_str())
                .then(a["subject_id"].as_str().cmp(&b["subject_id"].as_str()))
        });
        Value::Array(out)
    }
}

/// subject_id, model, since, until
type StatsFilter<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// Stats of the current votes, computed from `feedback`.
async fn expected_stats(
    db: &tokio_postgres::Client,
    subject: Option<&str>,
    model: Option<&str>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Value {
    let row = db
        .query_one(
            &format!(
                "{CURRENT}
                 SELECT count(*), count(*) FILTER (WHERE rating = 1),
                        count(*) FILTER (WHERE rating = -1), count(*) FILTER (WHERE rating = 0),
                        coalesce(round(count(*) FILTER (WHERE rating = 1) * 100.0
                                       / nullif(count(*), 0), 1), 0)::float8
                 FROM cur
                 WHERE ($1::text IS NULL OR subject_id = $1) AND ($2::text IS NULL OR model = $2)
                   AND ($3::timestamptz IS NULL OR created_at >= $3)
                   AND ($4::timestamptz IS NULL OR created_at < $4)"
            ),
            &[&subject, &model, &since, &until],
        )
        .await
        .unwrap();
    json!({
        "total_feedback": row.get::<_, i64>(0),
        "likes": row.get::<_, i64>(1),
        "dislikes": row.get::<_, i64>(2),
        "neutral": row.get::<_, i64>(3),
        "like_percentage": row.get::<_, f64>(4),
        "subject_id": subject,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_daily_export_and_training_data_match_the_table() {
    let env = Env::new().await;
    let p = env.spawn(Some(TOKEN)).await;
    let now = Utc::now();
    let events = traffic(now);
    let ids = p.post_events(&events).await;
    assert_eq!(ids.len(), events.len());
    for (e, id) in events.iter().zip(&ids) {
        if let Some(given) = e["event_id"].as_str() {
            assert_eq!(given, id.to_string(), "a given event_id is kept");
        }
    }
    env.wait_for_rows(events.len() as i64).await;
    let db = env.client().await;
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM feedback WHERE event_id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, ids.len() as i64, "stored under the answered ids");
    let superseded: i64 = db
        .query_one(
            &format!(
                "{CURRENT} SELECT (SELECT count(*) FROM feedback) - (SELECT count(*) FROM cur)"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(superseded > 20, "the traffic has superseded votes");
    let produced = Produced::new(&events, &ids);

    // stats: whole table, per subject, per model, and ranges cut inside days and hours.
    let since = now - ChronoDuration::days(6) + ChronoDuration::seconds(1234);
    let until = now - ChronoDuration::days(2) - ChronoDuration::seconds(4321);
    let cases: Vec<StatsFilter> = vec![
        (None, None, None, None),
        (Some("Math"), None, None, None),
        (Some("Physics"), Some("m1"), None, None),
        (None, Some("m2"), Some(since), None),
        (Some("History"), None, None, Some(until)),
        (None, None, Some(since), Some(until)),
        (Some("Math"), Some("m1"), Some(since), Some(until)),
        (Some("Nobody"), None, None, None),
    ];
    for (subject, model, s, u) in cases {
        let mut query = vec![];
        if let Some(v) = subject {
            query.push(format!("subject_id={v}"));
        }
        if let Some(v) = model {
            query.push(format!("model={v}"));
        }
        if let Some(v) = s {
            query.push(format!("since={}", rfc3339(v)));
        }
        if let Some(v) = u {
            query.push(format!("until={}", rfc3339(v)));
        }
        let got = p
            .get_json(&format!("/api/feedback/stats?{}", query.join("&")))
            .await;
        // The rollups resolve time to the minute: the range is [floor(since), floor(until)).
        let want = expected_stats(
            &db,
            subject,
            model,
            s.map(floor_minute),
            u.map(floor_minute),
        )
        .await;
        assert_eq!(got, want, "stats {query:?}");
        let sent = produced.stats((subject, model, s.map(floor_minute), u.map(floor_minute)));
        assert_eq!(got, sent, "stats {query:?} against the events sent");
    }

    // daily: the product guide's SQL over the current votes.
    for (days, subject) in [(30, None), (3, None), (30, Some("Physics"))] {
        let rows = db
            .query(
                &format!(
                    "{CURRENT}
                     SELECT DATE(created_at AT TIME ZONE 'UTC')::text AS date, subject_id::text,
                            COUNT(*) AS total, SUM(CASE WHEN rating = 1 THEN 1 ELSE 0 END)::int8,
                            ROUND(SUM(CASE WHEN rating = 1 THEN 1 ELSE 0 END) * 100.0
                                  / COUNT(*), 1)::float8
                     FROM cur
                     WHERE created_at > NOW() - make_interval(days => $1)
                       AND ($2::text IS NULL OR subject_id = $2)
                     GROUP BY 1, 2 ORDER BY 1 DESC, 2"
                ),
                &[&days, &subject],
            )
            .await
            .unwrap();
        let want: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({"date": r.get::<_, String>(0), "subject_id": r.get::<_, String>(1),
                       "total": r.get::<_, i64>(2), "likes": r.get::<_, i64>(3),
                       "like_pct": r.get::<_, f64>(4)})
            })
            .collect();
        let path = match subject {
            Some(s) => format!("/api/feedback/daily?days={days}&subject_id={s}"),
            None => format!("/api/feedback/daily?days={days}"),
        };
        let got = p.get_json(&path).await;
        assert_eq!(got, Value::Array(want), "{path}");
        assert_eq!(
            got,
            produced.daily(days.into(), subject),
            "{path} against the events sent"
        );
        assert!(!got.as_array().unwrap().is_empty());
    }

    // export: following the Link headers returns every matching row once, in id order.
    for (query, filter_sql) in [
        ("limit=7", "true"),
        ("subject_id=Math&limit=5", "subject_id = 'Math'"),
        (
            "rating=dislike&model=m2&limit=3",
            "rating = -1 AND model = 'm2'",
        ),
    ] {
        let mut url = format!("/api/feedback/export?{query}");
        let mut seen = Vec::new();
        loop {
            let r = p.get(&url, Some(TOKEN)).await;
            assert_eq!(r.status(), 200);
            let next = r
                .headers()
                .get("link")
                .map(|l| l.to_str().unwrap().to_owned());
            let page: Vec<Value> = r.json().await.unwrap();
            assert!(!page.is_empty() || seen.is_empty());
            seen.extend(page);
            match next {
                Some(link) => {
                    assert!(link.ends_with(">; rel=\"next\""), "{link}");
                    url = link[1..link.find('>').unwrap()].to_owned();
                }
                None => break,
            }
        }
        let want: Vec<Value> = db
            .query(
                &format!(
                    "SELECT id, subject_id::text, user_question, message_content, rating,
                            to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                            model::text, reason::text, comment
                     FROM feedback WHERE {filter_sql} ORDER BY id"
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let rating: i16 = r.get(4);
                let label = ["dislike", "neutral", "like"][(rating + 1) as usize];
                json!({"id": r.get::<_, i64>(0), "subject_id": r.get::<_, String>(1),
                       "user_question": r.get::<_, Option<String>>(2),
                       "assistant_message": r.get::<_, String>(3), "rating": rating,
                       "rating_label": label,
                       "created_at": r.get::<_, String>(5),
                       "model": r.get::<_, Option<String>>(6),
                       "reason": r.get::<_, Option<String>>(7),
                       "comment": r.get::<_, Option<String>>(8)})
            })
            .collect();
        assert_eq!(seen, want, "export {query}");
    }

    // training data, openai: the distinct (question, answer) pairs whose current vote is a like.
    let r = p
        .get("/api/feedback/training-data?format=openai", Some(TOKEN))
        .await;
    assert_eq!(r.status(), 200);
    let skipped: i64 = r.headers()["x-likerate-skipped-rows"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let openai_http = r.text().await.unwrap();
    let mut pairs = BTreeSet::new();
    for line in openai_http.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let m = v["messages"].as_array().unwrap();
        assert_eq!(v.as_object().unwrap().len(), 1);
        assert_eq!(
            (m.len(), &m[0]["role"], &m[1]["role"]),
            (2, &json!("user"), &json!("assistant"))
        );
        let pair = (
            m[0]["content"].as_str().unwrap().to_owned(),
            m[1]["content"].as_str().unwrap().to_owned(),
        );
        assert!(pairs.insert(pair), "a pair appears twice");
    }
    let want: BTreeSet<(String, String)> = db
        .query(
            &format!(
                "{CURRENT} SELECT DISTINCT user_question, message_content FROM cur
                 WHERE rating = 1 AND user_question IS NOT NULL"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(pairs, want);
    let want_skipped: i64 = db
        .query_one(
            &format!(
                "{CURRENT} SELECT count(*) FROM cur WHERE rating = 1 AND user_question IS NULL"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(skipped, want_skipped);
    assert!(skipped > 0);

    // training data, dpo: per question, the answer with the largest lead of likes against the
    // one with the largest lead of dislikes (ties: the latest row), computed here in Rust.
    let votes = db
        .query(
            &format!(
                "{CURRENT} SELECT user_question, message_content, rating, id FROM cur
                 WHERE user_question IS NOT NULL AND rating <> 0"
            ),
            &[],
        )
        .await
        .unwrap();
    let mut answers: BTreeMap<String, HashMap<String, (i64, i64, i64)>> = BTreeMap::new();
    for r in &votes {
        let e = answers
            .entry(r.get(0))
            .or_default()
            .entry(r.get(1))
            .or_default();
        if r.get::<_, i16>(2) == 1 {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
        e.2 = e.2.max(r.get(3));
    }
    let mut want_dpo = Vec::new();
    for (q, by_answer) in &answers {
        let best = |sign: i64| {
            by_answer
                .iter()
                .filter(|(_, c)| sign * (c.0 - c.1) > 0)
                .max_by_key(|(_, c)| (sign * (c.0 - c.1), c.2))
                .map(|(a, _)| a.clone())
        };
        if let (Some(chosen), Some(rejected)) = (best(1), best(-1)) {
            want_dpo.push(json!({"prompt": q, "chosen": chosen, "rejected": rejected}));
        }
    }
    let r = p
        .get("/api/feedback/training-data?format=dpo", Some(TOKEN))
        .await;
    assert_eq!(r.status(), 200);
    let dpo_http = r.text().await.unwrap();
    let got_dpo: Vec<Value> = dpo_http
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!want_dpo.is_empty());
    assert_eq!(got_dpo, want_dpo);

    // Filters reach the training data too.
    let math = p
        .get(
            "/api/feedback/training-data?format=openai&subject_id=Math&model=m1",
            Some(TOKEN),
        )
        .await
        .text()
        .await
        .unwrap();
    let want_math: i64 = db
        .query_one(
            &format!(
                "{CURRENT} SELECT count(DISTINCT (user_question, message_content)) FROM cur
                 WHERE rating = 1 AND user_question IS NOT NULL AND subject_id = 'Math'
                   AND model = 'm1'"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(math.lines().count() as i64, want_math);

    // likerate export writes the same bytes as the API, and a summary.
    let dir = std::env::temp_dir().join(format!("likerate-api-{}", env.db.name));
    std::fs::create_dir_all(&dir).unwrap();
    for (format, http_body) in [("openai", &openai_http), ("dpo", &dpo_http)] {
        let file = dir.join(format!("{format}.jsonl"));
        let out = Command::new(env!("CARGO_BIN_EXE_likerate"))
            .args(["export", "--format", format, "--out"])
            .arg(&file)
            .args(["--database-url", &env.db_url()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(&std::fs::read_to_string(&file).unwrap(), http_body);
        let summary = String::from_utf8_lossy(&out.stdout);
        let lines = http_body.lines().count();
        assert!(
            summary.contains(&format!("exported {lines} rows")),
            "{summary}"
        );
        assert!(
            summary.contains(&format!("{} bytes", http_body.len())),
            "{summary}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_likerate"))
        .args(["export", "--format", "json", "--rating", "-1"])
        .args(["--database-url", &env.db_url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let dislikes: i64 = db
        .query_one("SELECT count(*) FROM feedback WHERE rating = -1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows.len() as i64, dislikes);
    assert!(rows.iter().all(|r| r["rating_label"] == "dislike"));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("exported {dislikes} rows")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Simpson's paradox, constructed: model A is better for each subject, B looks better pooled
/// because A answered the hard subject (Physics) far more often. Counts (likes/votes):
///   Math:    A 162/174, B 468/540        Physics: A 384/526, B 110/160
///   pooled:  A 546/700 (0.78), B 578/700 (0.825714)
/// Expected values, computed independently (Python, math.erfc):
///   pooled: difference -0.0457143, z = -2.149692, fixed-horizon p = 0.0315796 (it would say
///   b_better); always-valid p (normal-mixture mSPRT, tau = 0.03) = 0.369393 -> no_difference
///   Wilson 95%: A (0.747830, 0.809113), B (0.795855, 0.852019)
///   Math: difference 0.0643678, fixed-horizon p = 0.0219163, always-valid 0.184596
///   Physics: difference 0.0425380, fixed-horizon p = 0.293953, always-valid 1
///   Cochran–Mantel–Haenszel: chi2 = 4.874728, p = 0.0272527, odds ratio 1.446847; weighted
///   difference 0.0538356, always-valid p = 0.323050
/// So 700 votes a side are not yet enough for a verdict that survives watching: every verdict
/// is no_difference and nothing is flagged (src/api/compare.rs has the case at 6x, decided).
/// Model C has 60 votes: below the 100-vote minimum.
#[tokio::test(flavor = "multi_thread")]
async fn compare_finds_the_known_answer_and_flags_simpsons_paradox() {
    let env = Env::new().await;
    let p = env.spawn(None).await;
    let now = Utc::now();
    let mut events = Vec::new();
    let mut add = |model: &str, subject: &str, likes: usize, votes: usize| {
        for i in 0..votes {
            events.push(json!({
                "subject_id": subject, "model": model, "assistant_message": "a",
                "rating": if i < likes { 1 } else { -1 },
                "created_at": rfc3339(now - ChronoDuration::minutes(5 + (i % 600) as i64)),
            }));
        }
    };
    add("A", "Math", 162, 174);
    add("B", "Math", 468, 540);
    add("A", "Physics", 384, 526);
    add("B", "Physics", 110, 160);
    add("C", "Math", 40, 60);
    // A superseded vote must not count: B's vote in Math turns from like to dislike and back.
    for (rating, minutes) in [(-1, 30), (1, 20)] {
        events.push(json!({
            "subject_id": "Math", "model": "B", "assistant_message": "a", "rating": rating,
            "vote_id": "revote", "created_at": rfc3339(now - ChronoDuration::minutes(minutes)),
        }));
    }
    // ... which makes B in Math 469/541: keep the constructed counts by removing one like.
    events.retain({
        let mut removed = false;
        move |e| {
            let drop = !removed
                && e["model"] == "B"
                && e["subject_id"] == "Math"
                && e["rating"] == 1
                && e.get("vote_id").is_none();
            removed |= drop;
            !drop
        }
    });
    p.post_events(&events).await;
    env.wait_for_rows(events.len() as i64).await;

    let c = p
        .get_json("/api/feedback/compare?model_a=A&model_b=B")
        .await;
    let close = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-5;
    assert_eq!(c["model_a"]["votes"], 700);
    assert_eq!(c["model_a"]["likes"], 546);
    assert_eq!(c["model_b"]["votes"], 700);
    assert_eq!(c["model_b"]["likes"], 578);
    assert!(close(&c["difference"], -0.0457143));
    assert!(close(&c["fixed_horizon_p_value"], 0.0315796), "{}", c);
    assert!(close(&c["p_value"], 0.369393), "{}", c["p_value"]);
    assert_eq!(c["unit"], "vote");
    assert_eq!(c["model_a"]["units"], 700);
    assert!(close(&c["model_a"]["ci_low"], 0.747830));
    assert!(close(&c["model_a"]["ci_high"], 0.809113));
    assert!(close(&c["model_b"]["ci_low"], 0.795855));
    assert!(close(&c["model_b"]["ci_high"], 0.852019));
    assert_eq!(c["verdict"], "no_difference");
    let by: Vec<&Value> = c["by_subject"].as_array().unwrap().iter().collect();
    assert_eq!(by.len(), 2);
    assert_eq!(by[0]["subject_id"], "Math");
    assert!(close(&by[0]["difference"], 0.0643678));
    assert!(close(&by[0]["fixed_horizon_p_value"], 0.0219163));
    assert!(close(&by[0]["p_value"], 0.184596));
    assert_eq!(by[0]["verdict"], "no_difference");
    assert_eq!(by[1]["subject_id"], "Physics");
    assert!(close(&by[1]["fixed_horizon_p_value"], 0.293953));
    assert!(close(&by[1]["p_value"], 1.0));
    assert_eq!(by[1]["verdict"], "no_difference");
    assert!(close(&c["stratified"]["fixed_horizon_p_value"], 0.0272527));
    assert!(close(&c["stratified"]["p_value"], 0.323050));
    assert!(close(&c["stratified"]["odds_ratio"], 1.446847));
    assert_eq!(c["stratified"]["verdict"], "no_difference");
    assert_eq!(c["simpson_warning"], false);
    // The rollups (unit=vote) count the same current votes as the feedback scan.
    let by_vote = p
        .get_json("/api/feedback/compare?model_a=A&model_b=B&unit=vote")
        .await;
    assert_eq!(by_vote["model_a"], c["model_a"]);
    assert_eq!(by_vote["model_b"], c["model_b"]);

    // The same counts from the table: current votes per model.
    let db = env.client().await;
    for (model, arm) in [("A", &c["model_a"]), ("B", &c["model_b"])] {
        let row = db
            .query_one(
                &format!(
                    "{CURRENT} SELECT count(*), count(*) FILTER (WHERE rating = 1) FROM cur
                     WHERE model = $1"
                ),
                &[&model],
            )
            .await
            .unwrap();
        assert_eq!(arm["votes"], row.get::<_, i64>(0));
        assert_eq!(arm["likes"], row.get::<_, i64>(1));
    }

    // One subject only: no paradox left to flag.
    let math = p
        .get_json("/api/feedback/compare?model_a=A&model_b=B&subject_id=Math")
        .await;
    assert_eq!(math["verdict"], "no_difference");
    assert_eq!(math["subject_id"], "Math");
    assert_eq!(math["simpson_warning"], false);
    // Below the minimum.
    let small = p
        .get_json("/api/feedback/compare?model_a=A&model_b=C")
        .await;
    assert_eq!(small["model_b"]["votes"], 60);
    assert_eq!(small["verdict"], "not_enough_data");
    // A range that excludes everything.
    let none = p
        .get_json(&format!(
            "/api/feedback/compare?model_a=A&model_b=B&since={}",
            rfc3339(now + ChronoDuration::minutes(1))
        ))
        .await;
    assert_eq!(none["model_a"]["votes"], 0);
    assert_eq!(none["model_a"]["like_rate"], Value::Null);
    assert_eq!(none["verdict"], "not_enough_data");
    // An until not later than since is an empty range, not an error.
    let empty = p
        .get_json("/api/feedback/compare?model_a=A&model_b=B&since=2026-02-05&until=2026-02-01")
        .await;
    assert_eq!(empty["model_a"]["votes"], 0);
    let stats = p
        .get_json("/api/feedback/stats?since=2026-02-05&until=2026-02-05")
        .await;
    assert_eq!(stats["total_feedback"], 0);
    // A/A: A against itself, both arms the same votes, no difference.
    let aa = p
        .get_json("/api/feedback/compare?model_a=A&model_b=A")
        .await;
    assert_eq!(aa["model_a"], aa["model_b"]);
    assert_eq!(aa["model_a"]["votes"], 700);
    assert_eq!(aa["difference"], 0.0);
    assert_eq!(aa["verdict"], "no_difference");
}

/// The events of [`compare_by_conversation_sums_the_conversations_in_the_database`] for one
/// subject, a few seconds apart from `base` on: A has 40 conversations of 5 votes with i % 6
/// likes, B 40 of 5 votes with (i + 2) % 6 likes and 30 votes without a conversation (20
/// likes), and conversation "shared" has 3 votes for A (2 likes) and 4 for B (1 like), so it
/// spans both cells and is one unit of both. The first vote of conversation 0 of A has a
/// vote id, `{subject}-v`.
fn conversation_events(subject: &str, base: DateTime<Utc>) -> Vec<Value> {
    let mut events = Vec::new();
    let mut add = |model: &str, conversation: Option<String>, votes: usize, likes: usize| {
        for i in 0..votes {
            let vote_id = (events.is_empty()).then(|| format!("{subject}-v"));
            events.push(json!({
                "subject_id": subject, "model": model, "assistant_message": "a",
                "conversation_id": conversation, "vote_id": vote_id,
                "rating": if i < likes { 1 } else { -1 },
                "created_at": rfc3339(base + ChronoDuration::seconds(i as i64)),
            }));
        }
    };
    for i in 0..40 {
        add("A", Some(format!("{subject}-a{i}")), 5, i % 6);
        add("B", Some(format!("{subject}-b{i}")), 5, (i + 2) % 6);
    }
    for j in 0..30 {
        add("B", None, 1, usize::from(j < 20));
    }
    add("A", Some(format!("{subject}-shared")), 3, 2);
    add("B", Some(format!("{subject}-shared")), 4, 1);
    events
}

/// By conversation (the default unit), the same votes twice: Math's today (read from the rows)
/// and Physics' on a settled day three days ago (read from the sums kept for that day, once
/// they are computed). Expected figures from Python (the delta-method variance summed per
/// conversation, docs/ab-testing.md; by hand, not with likerate's code): A 98/203, B 125/234,
/// difference -0.0514294, variance 0.0050239591, always-valid p = 1, sequence (-0.5026262,
/// 0.3997674), design effect 2.190574; units 41 and 71. Then the same late vote and the same
/// re-vote reach both days: Physics' day is marked dirty and read from its rows until it is
/// computed again, and its answer stays Math's throughout.
#[tokio::test(flavor = "multi_thread")]
async fn compare_by_conversation_sums_the_conversations_in_the_database() {
    let env = Env::new().await;
    let p = env.spawn(None).await;
    let now = Utc::now();
    let midnight = now.duration_trunc(ChronoDuration::days(1)).unwrap();
    // All of Math's votes today (a unit is a conversation within a UTC day), none in the future.
    let today = (now - ChronoDuration::seconds(60)).max(midnight);
    let past = midnight - ChronoDuration::days(3) + ChronoDuration::hours(12);
    let day = past.date_naive();
    let mut events = conversation_events("Math", today);
    events.extend(conversation_events("Physics", past));
    p.post_events(&events).await;
    let mut stored = events.len() as i64;
    env.wait_for_rows(stored).await;
    let db = env.client().await;
    common::units_computed(&db).await;

    let figures = |c: &Value| {
        json!([
            c["model_a"],
            c["model_b"],
            c["difference"],
            c["difference_ci_low"],
            c["difference_ci_high"],
            c["p_value"],
            c["verdict"],
            c["unit"],
            c["plan"]
        ])
    };
    let math = "/api/feedback/compare?model_a=A&model_b=B&subject_id=Math";
    let physics = "/api/feedback/compare?model_a=A&model_b=B&subject_id=Physics";
    let close = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-6;
    for path in [math, physics] {
        let c = p.get_json(path).await;
        assert_eq!(c["unit"], "conversation");
        assert_eq!(
            (&c["model_a"]["votes"], &c["model_a"]["likes"]),
            (&json!(203), &json!(98))
        );
        assert_eq!(
            (&c["model_b"]["votes"], &c["model_b"]["likes"]),
            (&json!(234), &json!(125))
        );
        assert_eq!(
            (&c["model_a"]["units"], &c["model_b"]["units"]),
            (&json!(41), &json!(71))
        );
        assert!(close(&c["difference"], -0.0514294), "{path}: {c}");
        assert!(close(&c["difference_ci_low"], -0.5026262), "{path}: {c}");
        assert!(close(&c["difference_ci_high"], 0.3997674), "{path}: {c}");
        assert!(close(&c["p_value"], 1.0), "{path}: {c}");
        assert!(close(&c["plan"]["design_effect"], 2.190574), "{path}: {c}");
        // One subject: the subject's figures and the stratified test are the pooled ones.
        assert_eq!(
            c["by_subject"][0]["difference_ci_low"],
            c["difference_ci_low"]
        );
        assert_eq!(c["stratified"]["difference_ci_low"], c["difference_ci_low"]);
    }
    // Physics' answer came from the kept sums: per cell, and the shared conversation by cell.
    let kept: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM feedback_unit_sums WHERE day = $1
                     AND subject_id = 'Physics')
                  + (SELECT count(*) FROM feedback_unit_spans WHERE day = $1
                     AND conversation_id = 'Physics-shared')",
            &[&day],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        kept,
        3 + 2,
        "A clustered, B clustered and unclustered; 2 spans"
    );
    // And it reads them: 7 neutral votes added there show in the answer (and are taken out).
    let tamper = "UPDATE feedback_unit_sums SET neutral = neutral + $2
                  WHERE day = $1 AND subject_id = 'Physics' AND model = 'A' AND clustered";
    db.execute(tamper, &[&day, &7i64]).await.unwrap();
    assert_eq!(p.get_json(physics).await["model_a"]["votes"], 210);
    db.execute(tamper, &[&day, &-7i64]).await.unwrap();
    // Both subjects, both days: the sum of the two, the shared conversations one unit each.
    let both = p
        .get_json("/api/feedback/compare?model_a=A&model_b=B")
        .await;
    assert_eq!(
        (&both["model_a"]["units"], &both["model_b"]["units"]),
        (&json!(82), &json!(142))
    );
    assert_eq!(both["model_a"]["votes"], 406);

    // A late like for A in a new conversation, and the vote with an id turned into a like.
    let late = |subject: &str, base: DateTime<Utc>| {
        vec![
            json!({"subject_id": subject, "model": "A", "assistant_message": "a",
                   "conversation_id": format!("{subject}-late"), "rating": 1,
                   "created_at": rfc3339(base + ChronoDuration::seconds(30))}),
            json!({"subject_id": subject, "model": "A", "assistant_message": "b",
                   "conversation_id": format!("{subject}-a0"), "rating": 1,
                   "vote_id": format!("{subject}-v"),
                   "created_at": rfc3339(base + ChronoDuration::seconds(40))}),
        ]
    };
    let mut more = late("Math", today);
    more.extend(late("Physics", past));
    p.post_events(&more).await;
    stored += more.len() as i64;
    env.wait_for_rows(stored).await;
    let want = p.get_json(math).await;
    assert_eq!(want["model_a"]["votes"], 204, "{want}");
    assert_eq!(want["model_a"]["likes"], 100, "{want}");
    assert_eq!(want["model_a"]["units"], 42, "{want}");
    // Marked dirty (or already computed again): either way the figures are Math's.
    assert_eq!(figures(&p.get_json(physics).await), figures(&want));
    common::units_computed(&db).await;
    assert_eq!(figures(&p.get_json(physics).await), figures(&want));

    // A/A by conversation: the same units on both sides, nothing to tell apart.
    let aa = p
        .get_json("/api/feedback/compare?model_a=B&model_b=B&subject_id=Physics")
        .await;
    assert_eq!(aa["model_a"], aa["model_b"]);
    assert_eq!(
        (&aa["model_a"]["units"], &aa["difference"]),
        (&json!(71), &json!(0.0))
    );
    assert_eq!(aa["verdict"], "no_difference");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_parameters_bodies_and_the_openapi_document() {
    let env = Env::new().await;
    let p = env.spawn(Some(TOKEN)).await;

    // Tokens: 401 without or with a wrong one, 200 with it; 403 when none is configured.
    for path in [
        "/api/feedback/export",
        "/api/feedback/training-data?format=openai",
    ] {
        let r = p.get(path, None).await;
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
        assert_eq!(
            p.get(path, Some("wrong-token-0123456789")).await.status(),
            401
        );
        assert_eq!(
            p.get(path, Some(&TOKEN[..TOKEN.len() - 1])).await.status(),
            401
        );
        // Authorization comes before parameter checks.
        assert_eq!(p.get(&format!("{path}?limit=-1"), None).await.status(), 401);
        assert_eq!(p.get(path, Some(TOKEN)).await.status(), 200);
    }
    {
        let open = env.spawn(None).await;
        for path in [
            "/api/feedback/export",
            "/api/feedback/training-data?format=openai",
        ] {
            let r = open.get(path, Some(TOKEN)).await;
            assert_eq!(r.status(), 403, "{path}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"], "forbidden");
        }
    }

    // Bad parameters: 400 with JSON naming the parameter.
    for (path, param) in [
        ("/api/feedback/stats?since=yesterday", "since"),
        ("/api/feedback/stats?until=2026-13-01", "until"),
        ("/api/feedback/stats?subject=Math", "subject"),
        ("/api/feedback/daily?days=0", "days"),
        ("/api/feedback/daily?days=-5", "days"),
        ("/api/feedback/daily?days=many", "days"),
        ("/api/feedback/compare?model_b=x", "model_a"),
        ("/api/feedback/compare?model_a=x&model_b=", "model_b"),
        ("/api/feedback/stats?since=2026-02-05%2010:30:00Z", "since"),
        ("/api/feedback/export?rating=%2B1", "rating"),
        (
            "/api/feedback/compare?model_a=x&model_b=y&unit=user",
            "unit",
        ),
        (
            "/api/feedback/compare?model_a=x&model_b=y&min_detectable_effect=2",
            "min_detectable_effect",
        ),
        (
            "/api/feedback/compare?model_a=x&model_b=y&since=soon",
            "since",
        ),
        ("/api/feedback/export?limit=0", "limit"),
        ("/api/feedback/export?limit=-10", "limit"),
        ("/api/feedback/export?limit=1001", "limit"),
        ("/api/feedback/export?cursor=not-a-cursor", "cursor"),
        ("/api/feedback/export?rating=2", "rating"),
        ("/api/feedback/training-data?format=csv", "format"),
        ("/api/feedback/training-data", "format"),
        ("/api/feedback/training-data?format=dpo&since=x", "since"),
    ] {
        let r = p.get(path, Some(TOKEN)).await;
        assert_eq!(r.status(), 400, "{path}");
        let body: Value = r.json().await.unwrap();
        let detail = body["detail"].as_str().unwrap();
        assert!(body["error"].is_string());
        assert!(detail.contains(param), "{path}: {detail}");
    }

    // POST: 413 over 256 KiB, 400 listing every invalid event (and nothing published).
    let big = json!({"subject_id": "Math", "assistant_message": "x".repeat(300 * 1024),
                     "rating": 1, "created_at": rfc3339(Utc::now())});
    let r = p.post(big.to_string()).await;
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_body");
    let ok = |answer: &str| {
        json!({"subject_id": "Probe", "assistant_message": answer, "rating": 1,
               "created_at": rfc3339(Utc::now()), "conversation_id": "probe"})
    };
    let batch = json!([ok("a"), {"subject_id": "Probe"}, ok("b"), {"subject_id": "Probe",
        "assistant_message": "c", "rating": 7, "created_at": rfc3339(Utc::now())}]);
    let r = p.post(batch.to_string()).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_event");
    let errors: Vec<(u64, &str)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(errors, vec![(1, "missing_field"), (3, "out_of_range")]);
    for bad in ["not json", "[]", "[1,", ""] {
        let r = p.post(bad.to_owned()).await;
        assert_eq!(r.status(), 400, "{bad:?}");
        let body: Value = r.json().await.unwrap();
        assert!(body["detail"].is_string());
    }
    // One event (not an array), same conversation, so the same partition: once it is stored,
    // anything published before it would be too.
    let r = p.post(ok("last").to_string()).await;
    assert_eq!(r.status(), 202);
    let id: Value = r.json().await.unwrap();
    let id: Uuid = id["event_ids"][0].as_str().unwrap().parse().unwrap();
    env.wait_for_rows(1).await;
    let row = env
        .client()
        .await
        .query_one("SELECT event_id, message_content FROM feedback", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Uuid>(0), id);
    assert_eq!(row.get::<_, String>(1), "last");

    // The OpenAPI document: every documented operation is served (not 404/405), and the /api
    // operations are exactly the router's (checked in the library's unit test as well).
    let doc = p.get_json("/api/openapi.json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((path.clone(), method.to_ascii_uppercase()));
            let url = format!("{}{path}", p.base);
            let r = match method.as_str() {
                "get" => p.http.get(&url).bearer_auth(TOKEN).send().await.unwrap(),
                "post" => p.http.post(&url).body("{}").send().await.unwrap(),
                other => panic!("undocumented method kind {other}"),
            };
            let status = r.status();
            // A route's own 404 (no experiment called "{name}") still shows it is served.
            let own_404 = status == 404
                && r.json::<Value>()
                    .await
                    .is_ok_and(|b| b["error"] == "unknown_experiment");
            assert!(
                (status != 404 || own_404) && status != 405,
                "{method} {path}: {status}"
            );
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = likerate::http::api::openapi::route_table()
        .into_iter()
        .map(|(p, m)| (p.to_owned(), m.to_string()))
        .collect();
    served.sort();
    let documented_api: Vec<(String, String)> = documented
        .into_iter()
        .filter(|(p, _)| p.starts_with("/api/"))
        .collect();
    assert_eq!(documented_api, served);
    assert_eq!(p.get("/api/feedback/nothing", None).await.status(), 404);
    for path in [
        "/api/experiments/none/assignment?unit=u",
        "/api/feedback/compare?experiment=none",
    ] {
        let r = p.get(path, None).await;
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unknown_experiment", "{path}");
        assert!(
            body["detail"].as_str().unwrap().contains("\"none\""),
            "{body}"
        );
    }
}

/// Experiments configured in the TOML file reach the running server. The arm of a unit is the
/// documented hash, the same from two instances (the expected arms were computed with Python's
/// `hashlib`, docs/ab-testing.md); `compare?experiment=` compares the experiment's first two
/// arms over its period only, with the counts of the votes posted here.
#[tokio::test(flavor = "multi_thread")]
async fn experiments_from_the_config_file_assign_units_and_compare_their_arms() {
    let env = Env::new().await;
    let config = std::env::temp_dir().join(format!("likerate-exp-{}.toml", common::short_id()));
    std::fs::write(
        &config,
        r#"[[experiments]]
name = "tone-v2"
start = 2026-02-01T00:00:00Z
end = 2026-03-01T00:00:00Z
arms = [
  { model = "m-a", weight = 50 },
  { model = "m-b", weight = 30 },
  { model = "m-c", weight = 20 },
]
"#,
    )
    .unwrap();
    let db_url = env.db_url();
    let spawn = || {
        let run = RunArgs {
            export_token: Some(TOKEN.to_owned()),
            ..RunArgs::default()
        };
        TestApp::spawn(&env.broker.kafka, &db_url, run, Some(config.as_path()))
    };
    let (a, b) = (spawn().await, spawn().await);
    for (unit, arm) in [
        ("user-1", "m-a"),
        ("user-12", "m-a"),
        ("user-6", "m-b"),
        ("user-5", "m-c"),
    ] {
        for p in [&a, &b] {
            let url = format!(
                "{}/api/experiments/tone-v2/assignment?unit={unit}",
                p.base_url()
            );
            let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            assert_eq!(v["arm"], arm, "the arm of {unit}");
        }
    }
    let unknown = reqwest::get(format!(
        "{}/api/experiments/nope/assignment?unit=u",
        a.base_url()
    ))
    .await
    .unwrap();
    assert_eq!(unknown.status(), 404);

    // In the period: m-a 120 likes of 150, m-b 60 of 150, one vote per conversation. Outside
    // it (January): 100 dislikes of m-a, which the experiment must not count.
    let event = |model: &str, rating: i64, day: &str, i: usize| {
        json!({
            "event_id": Uuid::new_v4(), "subject_id": "Math", "assistant_message": "a",
            "rating": rating, "created_at": format!("2026-{day}T10:00:00Z"), "model": model,
            "conversation_id": format!("c-{model}-{day}-{i}"),
        })
    };
    let mut events = Vec::new();
    for i in 0..150 {
        events.push(event("m-a", if i < 120 { 1 } else { -1 }, "02-10", i));
        events.push(event("m-b", if i < 60 { 1 } else { -1 }, "02-11", i));
    }
    for i in 0..100 {
        events.push(event("m-a", -1, "01-15", i));
    }
    let proc_a = Proc {
        base: a.base_url(),
        _app: a,
        http: reqwest::Client::new(),
    };
    proc_a.post_events(&events).await;
    env.wait_for_rows(events.len() as i64).await;
    let c = proc_a
        .get_json("/api/feedback/compare?experiment=tone-v2")
        .await;
    assert_eq!(c["model_a"]["model"], "m-a");
    assert_eq!(c["model_b"]["model"], "m-b");
    assert_eq!(c["model_a"]["votes"], 150);
    assert_eq!(c["model_a"]["likes"], 120);
    assert_eq!(c["model_b"]["votes"], 150);
    assert_eq!(c["model_b"]["likes"], 60);
    assert_eq!(c["experiment"], "tone-v2");
    assert_eq!(c["unit"], "conversation");
    assert_eq!(c["verdict"], "a_better", "{c}");
    let _ = std::fs::remove_file(&config);
    drop(b);
}
