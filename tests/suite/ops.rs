//! Operations against real services: PostgreSQL, Apache Kafka and the `likerate`
//! binary (the harness of tests/pipeline.rs, trimmed): dead-letter replay, erasure on request,
//! retention and redaction.

use crate::common;

use chrono::{DateTime, Duration as CDuration, Utc};
use common::{dead_letters, likerate_command, send, Broker, Database, Likerate, Served};
use likerate::config::KafkaConfig;
use std::process::Command;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One test's world: a topic pair and a group on the real broker, a migrated database.
struct Env {
    db: Database,
    kafka: KafkaConfig,
}

impl Env {
    async fn new() -> Env {
        let env = Env {
            kafka: Broker::new().await.kafka,
            db: Database::create("likerate_test").await,
        };
        let out = env.likerate(&["migrate"], &[]);
        assert!(out.status.success(), "migrate: {out:?}");
        env
    }

    async fn client(&self) -> tokio_postgres::Client {
        self.db.client().await
    }

    async fn count(&self) -> i64 {
        self.db.count().await
    }

    /// A one-shot command; its output.
    fn likerate(&self, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
        let mut cmd = likerate_command(args, &self.kafka, &self.db.url());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().expect("run likerate")
    }

    /// A one-shot command that must succeed; its stdout.
    fn ok(&self, args: &[&str], extra: &[(&str, &str)]) -> String {
        let out = self.likerate(args, extra);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "likerate {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `likerate run` with this env's settings.
    fn spawn(&self, extra: &[(&str, &str)]) -> Likerate {
        let extra: Vec<(&str, Option<&str>)> = extra.iter().map(|(k, v)| (*k, Some(*v))).collect();
        Likerate::spawn("", &self.kafka, &self.db.url(), &extra)
    }

    async fn send(&self, records: &[(String, Vec<u8>)]) {
        send(&self.kafka, records).await;
    }

    async fn wait_for_rows(&self, n: i64, within: Duration) {
        self.db.wait_for_rows(n, within).await;
    }

    async fn assert_rollups_exact(&self, from: Option<DateTime<Utc>>) {
        self.db.assert_rollups_exact(from).await;
    }

    /// The event `feedback_vote` holds for `vote`, if it holds one.
    async fn current_vote(&self, vote: &str) -> Option<Uuid> {
        self.client()
            .await
            .query_opt(
                "SELECT event_id FROM feedback_vote WHERE vote_id = $1",
                &[&vote],
            )
            .await
            .unwrap()
            .map(|r| r.get(0))
    }

    /// The rollup totals per grain.
    async fn rollup_totals(&self) -> Vec<(String, i64, i64, i64)> {
        self.client()
            .await
            .query(
                "SELECT grain::text, sum(likes)::int8, sum(dislikes)::int8, sum(neutral)::int8
                 FROM feedback_rollup GROUP BY grain ORDER BY grain",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }

    /// Waits for `expected` records on the dead-letter topic, once the outbox is drained; their
    /// reason headers, sorted.
    async fn dead_letter_reasons(&self, expected: usize) -> Vec<String> {
        self.db
            .wait_for_dead_letters_published(expected, Duration::from_secs(90))
            .await;
        let mut out: Vec<String> = dead_letters(&self.kafka, expected)
            .into_iter()
            .map(|(headers, _)| headers.get("likerate-error").cloned().unwrap_or_default())
            .collect();
        assert_eq!(out.len(), expected, "dead letters: {out:?}");
        out.sort();
        out
    }
}

/// One feedback event.
#[derive(Clone)]
struct Ev {
    id: Uuid,
    subject: &'static str,
    answer: String,
    question: Option<String>,
    rating: i64,
    at: DateTime<Utc>,
    conversation: Option<String>,
    vote: Option<String>,
    model: Option<&'static str>,
    reason: Option<&'static str>,
    comment: Option<String>,
}

impl Ev {
    fn new(subject: &'static str, rating: i64, at: DateTime<Utc>) -> Ev {
        Ev {
            id: Uuid::new_v4(),
            subject,
            answer: format!("answer {}", Uuid::new_v4()),
            question: Some("question".into()),
            rating,
            at,
            conversation: None,
            vote: None,
            model: None,
            reason: None,
            comment: None,
        }
    }

    fn reason(mut self, r: &'static str) -> Ev {
        self.reason = Some(r);
        self
    }

    fn comment(mut self, c: &str) -> Ev {
        self.comment = Some(c.into());
        self
    }

    fn conversation(mut self, c: &str) -> Ev {
        self.conversation = Some(c.into());
        self
    }

    fn vote(mut self, v: &str) -> Ev {
        self.vote = Some(v.into());
        self
    }

    fn model(mut self, m: &'static str) -> Ev {
        self.model = Some(m);
        self
    }

    fn answer(mut self, a: &str) -> Ev {
        self.answer = a.into();
        self
    }

    fn record(&self) -> (String, Vec<u8>) {
        let json = serde_json::json!({
            "event_id": self.id, "subject_id": self.subject, "assistant_message": self.answer,
            "user_question": self.question, "rating": self.rating,
            "created_at": self.at.to_rfc3339(), "conversation_id": self.conversation,
            "vote_id": self.vote, "model": self.model, "reason": self.reason,
            "comment": self.comment,
        });
        (
            self.conversation.clone().unwrap_or_else(|| "k".into()),
            json.to_string().into_bytes(),
        )
    }
}

fn records(events: &[Ev]) -> Vec<(String, Vec<u8>)> {
    events.iter().map(Ev::record).collect()
}

/// A mix of subjects, models, ratings, minutes and re-votes.
fn mixed(n: usize, now: DateTime<Utc>) -> Vec<Ev> {
    let subjects = ["Math", "Physics", "History"];
    let models = [None, Some("m-a"), Some("m-b")];
    (0..n)
        .map(|i| {
            let mut e = Ev::new(
                subjects[i % 3],
                [1, 1, -1, 0][i % 4],
                now - CDuration::minutes((i % 90) as i64) - CDuration::seconds(i as i64 % 7),
            )
            .conversation(&format!("conv-{}", i % 10));
            e.model = models[i % 3];
            if i % 5 == 0 {
                e = e.vote(&format!("vote-{}", i % 15));
            }
            e
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_replay_after_the_fix_stores_each_record_once() {
    let env = Env::new().await;
    env.client()
        .await
        .batch_execute(
            "ALTER TABLE feedback ADD CONSTRAINT no_poison CHECK (message_content <> 'poison')",
        )
        .await
        .unwrap();
    let now = Utc::now();
    let good = mixed(40, now);
    let poison: Vec<Ev> = (0..3)
        .map(|i| {
            // With a reason and a comment: the dead letter's re-encoding must carry them.
            Ev::new("Math", -1, now - CDuration::minutes(i))
                .answer("poison")
                .vote(&format!("poison-vote-{i}"))
                .reason("wrong")
                .comment(&format!("why {i}"))
        })
        .collect();
    let mut all = records(&good);
    for (i, p) in poison.iter().enumerate() {
        all.insert(7 + 9 * i, p.record());
    }
    // Invalid whatever the database: rating 2.
    all.push((
        "k".into(),
        br#"{"subject_id":"Math","assistant_message":"x","rating":2,"created_at":"2026-02-05T10:30:00Z"}"#
            .to_vec(),
    ));
    env.send(&all).await;
    let p = env.spawn(&[]);
    env.wait_for_rows(40, Duration::from_secs(60)).await;
    assert_eq!(
        env.dead_letter_reasons(4).await,
        ["db_rejected", "db_rejected", "db_rejected", "out_of_range"]
    );

    // Unknown reasons and times are refused with the option's name.
    let out = env.likerate(&["dlq", "replay", "--reason", "nope"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reason"));

    // The fix: the constraint goes.
    env.client()
        .await
        .batch_execute("ALTER TABLE feedback DROP CONSTRAINT no_poison")
        .await
        .unwrap();
    let dry = env.ok(
        &["dlq", "replay", "--reason", "db_rejected", "--dry-run"],
        &[],
    );
    assert!(dry.contains("4 match") || dry.contains("3 match"), "{dry}");
    assert!(dry.contains("would send 3 "), "{dry}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.count().await, 40, "a dry run sends nothing");

    // Nothing was dead-lettered in the future.
    let later = (Utc::now() + CDuration::hours(1)).to_rfc3339();
    let none = env.ok(&["dlq", "replay", "--since", &later], &[]);
    assert!(none.contains("0 match"), "{none}");

    let first = env.ok(
        &["dlq", "replay", "--reason", "db_rejected", "--since", "1h"],
        &[],
    );
    assert!(first.contains("read 4 dead letters"), "{first}");
    assert!(first.contains("sent 3 "), "{first}");
    assert!(first.contains("skipped 0 "), "{first}");
    env.wait_for_rows(43, Duration::from_secs(60)).await;
    let stored: Vec<(String, String)> = env
        .client()
        .await
        .query(
            "SELECT reason, comment FROM feedback WHERE event_id = ANY($1) ORDER BY comment",
            &[&poison.iter().map(|e| e.id).collect::<Vec<_>>()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: Vec<(String, String)> = (0..3)
        .map(|i| ("wrong".into(), format!("why {i}")))
        .collect();
    assert_eq!(stored, want);
    env.assert_rollups_exact(None).await;

    let second = env.ok(&["dlq", "replay", "--reason", "db_rejected"], &[]);
    assert!(second.contains("sent 0 "), "{second}");
    assert!(second.contains("skipped 3 "), "{second}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.count().await, 43);
    let replayed: i64 = env
        .client()
        .await
        .query_one("SELECT count(*) FROM dlq_replay", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(replayed, 3);
    env.assert_rollups_exact(None).await;
    p.kill9();
}

/// The upgrade path of migration 0008: votes that the old `[a-z0-9_-]` reason grammar
/// dead-lettered as `invalid_reason` (records as an earlier release wrote them to the
/// dead-letter topic) are valid now, and `dlq replay --reason invalid_reason` stores them with
/// their reason as given; a dead letter of another reason stays where it is.
#[tokio::test(flavor = "multi_thread")]
async fn votes_the_old_reason_grammar_refused_come_back_with_dlq_replay() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let env = Env::new().await;
    let now = Utc::now();
    let refused = [
        Ev::new("Math", -1, now).reason("Not helpful"),
        Ev::new("Math", -1, now).reason("falsch – 错误"),
    ];
    let other = Ev::new("Math", 2, now);
    let producer: FutureProducer = likerate::kafka::producer_config(&env.kafka)
        .create()
        .unwrap();
    for (i, (e, code)) in refused
        .iter()
        .map(|e| (e, "invalid_reason"))
        .chain([(&other, "out_of_range")])
        .enumerate()
    {
        let (key, payload) = e.record();
        let offset = (17 + i).to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "likerate-error",
                value: Some(code),
            })
            .insert(Header {
                key: "likerate-source-topic",
                value: Some(env.kafka.topic.as_str()),
            })
            .insert(Header {
                key: "likerate-source-partition",
                value: Some("0"),
            })
            .insert(Header {
                key: "likerate-source-offset",
                value: Some(offset.as_str()),
            });
        producer
            .send(
                FutureRecord::to(&env.kafka.dlq_topic)
                    .key(key.as_bytes())
                    .payload(&payload)
                    .headers(headers),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let p = env.spawn(&[]);
    let out = env.ok(&["dlq", "replay", "--reason", "invalid_reason"], &[]);
    assert!(out.contains("sent 2 "), "{out}");
    env.wait_for_rows(2, Duration::from_secs(60)).await;
    let ids: Vec<Uuid> = refused.iter().map(|e| e.id).collect();
    let stored: Vec<String> = env
        .client()
        .await
        .query(
            "SELECT reason FROM feedback WHERE event_id = ANY($1) ORDER BY reason COLLATE \"C\"",
            &[&ids],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, ["Not helpful", "falsch – 错误"]);
    p.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn erase_removes_rows_and_corrects_the_aggregates() {
    let env = Env::new().await;
    let now = Utc::now() - CDuration::minutes(5);
    let mut events = mixed(300, now);
    // The conversation to erase: a vote changed within it (both events go), a vote whose newest
    // event is in it and an older one elsewhere (the older one counts again), a vote whose
    // older event is in it (nothing to recount), and plain events, two of them on days far
    // from the others (erasure looks for a conversation day by day).
    let t = now - CDuration::hours(2);
    let erase = |e: Ev| e.conversation("erase-me");
    let keep = |e: Ev| e.conversation("keep-me");
    let target = [
        erase(Ev::new("Math", 1, t).vote("v1").model("m-a")),
        erase(
            Ev::new("Math", -1, t + CDuration::minutes(1))
                .vote("v1")
                .model("m-a"),
        ),
        keep(Ev::new("Physics", 1, t).vote("v2")),
        erase(Ev::new("Physics", -1, t + CDuration::minutes(61)).vote("v2")),
        erase(Ev::new("History", 0, t).vote("v3")),
        keep(Ev::new("History", 1, t + CDuration::hours(1)).vote("v3")),
        erase(Ev::new("History", -1, t + CDuration::seconds(30))),
        erase(Ev::new("Math", 0, t - CDuration::days(20)).model("m-a")),
        erase(Ev::new("Physics", 0, t - CDuration::days(400))),
    ];
    events.extend(target.iter().cloned());
    let total = events.len() as i64;
    env.send(&records(&events)).await;
    let p = env.spawn(&[]);
    env.wait_for_rows(total, Duration::from_secs(60)).await;
    env.assert_rollups_exact(None).await;
    let likes_before = env.rollup_totals().await;
    // The vote of 20 days ago is one of compare's kept units (the only one of its day).
    let client = env.client().await;
    let day = (t - CDuration::days(20)).date_naive();
    let units_of_day = || async {
        common::units_computed(&client).await;
        let sql = "SELECT coalesce(sum(units), 0)::int8 FROM feedback_unit_sums
                   WHERE day = $1 AND clustered";
        client
            .query_one(sql, &[&day])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    assert_eq!(units_of_day().await, 1);

    let out = env.ok(&["erase", "--conversation-id", "erase-me"], &[]);
    assert!(out.starts_with("erased 7 rows"), "{out}");
    assert!(out.contains("1 older votes promoted"), "{out}");
    assert!(out.contains("1 votes forgotten"), "{out}");
    for e in target
        .iter()
        .filter(|e| e.conversation.as_deref() == Some("erase-me"))
    {
        assert!(out.contains(&e.id.to_string()), "{out}");
    }
    env.wait_for_rows(total - 7, Duration::from_secs(5)).await;
    env.assert_rollups_exact(None).await;
    // Its day was marked and computed again without it.
    assert_eq!(units_of_day().await, 0);
    assert_eq!(
        env.current_vote("v2").await,
        Some(target[2].id),
        "the remaining vote counts again"
    );
    let slots: Vec<Uuid> = client
        .query(
            "SELECT event_id FROM feedback WHERE vote_id = 'v2' AND vote_slot",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        slots,
        vec![target[2].id],
        "the slot passed to the remaining event"
    );
    assert_eq!(env.current_vote("v1").await, None);
    // Counted: v1's dislike, v2's dislike (its like counts again), the plain dislike, the two
    // plain neutral votes; v3's current vote is the one kept.
    let after = env.rollup_totals().await;
    for (b, a) in likes_before.iter().zip(&after) {
        assert_eq!(
            (a.1, a.2, a.3),
            (b.1 + 1, b.2 - 3, b.3 - 2),
            "{a:?} vs {b:?}"
        );
    }

    // One event, and an id that is not there.
    let one = events[17].id.to_string();
    let out = env.ok(&["erase", "--event-id", &one], &[]);
    assert!(out.starts_with("erased 1 rows"), "{out}");
    let out = env.ok(&["erase", "--event-id", &one], &[]);
    assert!(out.starts_with("erased 0 rows"), "{out}");
    env.assert_rollups_exact(None).await;
    assert_eq!(env.count().await, total - 8);
    let out = env.likerate(&["erase"], &[]);
    assert!(
        !out.status.success(),
        "erase needs a conversation or an event"
    );
    p.kill9();

    // Erasure lasts: a new consumer group reads the whole topic again. The eight erased events
    // are refused and counted as erased; every other event is a duplicate of a stored row.
    let group = format!("again-{}", common::short_id());
    let again = env.spawn(&[("LIKERATE_KAFKA_GROUP", group.as_str())]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (erased, duplicates) = loop {
        let erased = again
            .metric_or_zero(r#"likerate_events_total{outcome="erased"}"#)
            .await;
        let duplicates = again
            .metric_or_zero(r#"likerate_events_total{outcome="duplicate"}"#)
            .await;
        if erased + duplicates >= total as f64 || std::time::Instant::now() > deadline {
            break (erased, duplicates);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(erased, 8.0, "erased events refused on the re-read");
    assert_eq!(duplicates, (total - 8) as f64);
    assert_eq!(
        again
            .metric_or_zero(r#"likerate_events_total{outcome="stored"}"#)
            .await,
        0.0
    );
    assert_eq!(env.count().await, total - 8);
    env.assert_rollups_exact(None).await;
    again.kill9();
}

/// A database of migration 0009 (the unpartitioned `feedback` with random-key indexes on the
/// conversation and on the vote id's text) that holds rows: `likerate migrate` replaces those
/// indexes (0010, 0011) and loses or double-counts nothing. Re-votes and a duplicate of the
/// rows stored before are weighed against them, and erasure finds the old rows of a conversation
/// on their own days.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_of_0009_with_rows_migrates_and_keeps_every_vote() {
    let env = Env::new().await;
    let now = Utc::now() - CDuration::minutes(5);
    let t = now - CDuration::days(3);
    let mut before = mixed(120, now);
    let old = [
        Ev::new("Math", 1, t).vote("m1").conversation("old-conv"),
        Ev::new("Physics", -1, t - CDuration::days(40))
            .vote("m2")
            .conversation("old-conv"),
        Ev::new("History", 0, t).vote("m3"),
    ];
    before.extend(old.iter().cloned());
    let stored = before.len() as i64;
    env.send(&records(&before)).await;
    let p = env.spawn(&[]);
    env.wait_for_rows(stored, Duration::from_secs(60)).await;
    let (status, _) = p.terminate();
    assert!(status.success(), "exit status {status}");
    env.assert_rollups_exact(None).await;
    let totals = env.rollup_totals().await;

    // Back to 0009: its indexes (0003's and 0004's definitions), 0010 to 0012 not applied.
    let client = env.client().await;
    client
        .batch_execute(
            "DROP INDEX ix_feedback_conversation_day;
             DROP INDEX ux_feedback_vote_key;
             DROP FUNCTION likerate_vote_key(text);
             CREATE INDEX ix_feedback_conversation ON feedback (conversation_id)
                 WHERE conversation_id IS NOT NULL;
             CREATE UNIQUE INDEX ux_feedback_vote_slot ON feedback (vote_id) WHERE vote_slot;
             DROP TABLE feedback_unit_day, feedback_unit_dirty, feedback_unit_sums,
                 feedback_unit_spans;
             DELETE FROM likerate_migrations WHERE version > 9;",
        )
        .await
        .unwrap();
    let out = env.ok(&["migrate"], &[]);
    assert!(
        out.contains("0010_conversation_by_day, 0011_vote_key, 0012_conversation_units"),
        "{out}"
    );
    let indexes: Vec<String> = client
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'feedback'
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        indexes.contains(&"ix_feedback_conversation_day".to_owned())
            && indexes.contains(&"ux_feedback_vote_key".to_owned())
            && !indexes.contains(&"ix_feedback_conversation".to_owned())
            && !indexes.contains(&"ux_feedback_vote_slot".to_owned()),
        "{indexes:?}"
    );
    assert_eq!(env.count().await, stored);
    assert_eq!(
        env.rollup_totals().await,
        totals,
        "the migration counts nothing"
    );

    // After it: m1 changes to a dislike (newer), m2 gets an older event (counts nothing), a
    // duplicate of a stored event, and a new vote.
    let after = [
        Ev::new("Math", -1, t + CDuration::minutes(1)).vote("m1"),
        Ev::new("Physics", 1, t - CDuration::days(41)).vote("m2"),
        old[2].clone(),
        Ev::new("History", 1, now).vote("m4"),
    ];
    env.send(&records(&after)).await;
    let p = env.spawn(&[]);
    env.wait_for_rows(stored + 3, Duration::from_secs(60)).await;
    env.assert_rollups_exact(None).await;
    assert_eq!(
        env.current_vote("m1").await,
        Some(after[0].id),
        "the re-vote replaced m1"
    );
    assert_eq!(
        env.current_vote("m2").await,
        Some(old[1].id),
        "the older event of m2 counts nothing"
    );
    let holders: Vec<(String, i64)> = client
        .query(
            "SELECT vote_id, count(*) FILTER (WHERE vote_slot) FROM feedback
             WHERE vote_id IN ('m1', 'm2', 'm3', 'm4') GROUP BY vote_id ORDER BY vote_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let one = |v: &str| (v.to_owned(), 1);
    assert_eq!(holders, [one("m1"), one("m2"), one("m3"), one("m4")]);
    // Votes: m1 like -> dislike, m4 a new like; the duplicate and m2's older event nothing.
    for (b, a) in totals.iter().zip(&env.rollup_totals().await) {
        assert_eq!((a.1, a.2, a.3), (b.1, b.2 + 1, b.3), "{a:?} vs {b:?}");
    }

    // Erasure finds the conversation's rows 3 and 43 days back, and m2's older event stays.
    let out = env.ok(&["erase", "--conversation-id", "old-conv"], &[]);
    assert!(out.starts_with("erased 2 rows"), "{out}");
    assert!(out.contains("1 older votes promoted"), "{out}");
    env.assert_rollups_exact(None).await;
    assert_eq!(env.count().await, stored + 3 - 2);
    p.kill9();
}

/// The deduplication window (`LIKERATE_DEDUP_WINDOW`, docs/design.md "The deduplication
/// window"): a copy of an event inside it is refused, and so is one of an event stored beyond
/// it, because `event_id` is unique over the whole table; a re-vote of a vote whose first event
/// was stored beyond the window still replaces it.
#[tokio::test(flavor = "multi_thread")]
async fn duplicates_inside_and_beyond_the_window_are_refused_and_old_votes_still_change() {
    let env = Env::new().await;
    let now = Utc::now() - CDuration::minutes(1);
    let long_ago = now - CDuration::days(45);
    let old_vote = Ev::new("Math", 1, long_ago).vote("w1");
    let old_plain = Ev::new("Physics", -1, long_ago);
    let recent = Ev::new("History", 0, now);
    env.send(&records(&[
        old_vote.clone(),
        old_plain.clone(),
        recent.clone(),
    ]))
    .await;
    let p = env.spawn(&[("LIKERATE_DEDUP_WINDOW", "30d")]);
    env.wait_for_rows(3, Duration::from_secs(60)).await;
    let (status, _) = p.terminate();
    assert!(status.success(), "exit status {status}");
    // Two of them stored 45 days ago, beyond the 30-day window.
    let moved = env
        .client()
        .await
        .execute(
            "UPDATE feedback SET ingested_at = now() - interval '45 days' WHERE event_id = ANY($1)",
            &[&vec![old_vote.id, old_plain.id]],
        )
        .await
        .unwrap();
    assert_eq!(moved, 2);

    let revote = Ev::new("Math", -1, now).vote("w1");
    env.send(&records(&[
        old_vote.clone(),
        old_plain,
        recent,
        revote.clone(),
    ]))
    .await;
    let p = env.spawn(&[("LIKERATE_DEDUP_WINDOW", "30d")]);
    env.wait_for_rows(4, Duration::from_secs(60)).await;
    let duplicate = r#"likerate_events_total{outcome="duplicate"}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.metric_or_zero(duplicate).await < 3.0 {
        assert!(Instant::now() < deadline, "the copies were not all handled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(p.metric_or_zero(duplicate).await, 3.0);
    assert_eq!(env.count().await, 4, "only the re-vote is new");
    assert_eq!(
        env.current_vote("w1").await,
        Some(revote.id),
        "the re-vote replaced the vote of 45 days ago"
    );
    env.assert_rollups_exact(None).await;
    p.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_erases_old_text_and_deletes_older_rows_keeping_the_rollups() {
    let env = Env::new().await;
    let now = Utc::now();
    let ages = [(0, 40), (3, 30), (10, 20)];
    let mut events = Vec::new();
    for (days, n) in ages {
        events.extend(mixed(n, now - CDuration::days(days)));
    }
    let total = events.len() as i64;
    env.send(&records(&events)).await;
    // First without retention: everything is stored.
    let p = env.spawn(&[]);
    env.wait_for_rows(total, Duration::from_secs(60)).await;
    // compare's conversation units of the settled days are computed, the old ones included.
    let client = env.client().await;
    let old_units = "SELECT count(*) FROM feedback_unit_sums
                     WHERE day < ((now() - interval '8 days') AT TIME ZONE 'UTC')::date";
    common::units_computed(&client).await;
    let n: i64 = client.query_one(old_units, &[]).await.unwrap().get(0);
    assert!(n > 0, "the units of 10 days ago are kept");
    // Positions committed: deleted rows are not consumed again (see the retention docs).
    let (status, _) = p.terminate();
    assert!(status.success(), "exit status {status}");
    env.assert_rollups_exact(None).await;
    let rollups = env.rollup_totals().await;

    // The daily task of `run` makes its first pass at start.
    let p = env.spawn(&[
        ("LIKERATE_RETENTION_TEXT", "2d"),
        ("LIKERATE_RETENTION_ROWS", "7d"),
    ]);
    // A pass deletes rows first, then erases text: wait for the second step to be counted.
    let deleted = r#"likerate_retention_rows_total{action="deleted"}"#;
    let erased = r#"likerate_retention_rows_total{action="text_erased"}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.metric_or_zero(erased).await < 30.0 {
        assert!(Instant::now() < deadline, "retention did not run");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(p.metric_or_zero(deleted).await, 20.0);
    assert_eq!(p.metric_or_zero(erased).await, 30.0);
    assert_eq!(env.count().await, total - 20);
    // The deletes marked their days, which are computed again: nothing deleted stays there.
    common::units_computed(&client).await;
    let n: i64 = client.query_one(old_units, &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "deleted votes left in compare's units");
    let (erased, kept): (i64, i64) = {
        let r = client
            .query_one(
                "SELECT count(*) FILTER (WHERE text_erased AND message_content = ''
                                          AND user_question IS NULL
                                          AND created_at < now() - interval '2 days'),
                        count(*) FILTER (WHERE NOT text_erased AND message_content <> ''
                                          AND user_question IS NOT NULL
                                          AND created_at > now() - interval '2 days')
                 FROM feedback",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((erased, kept), (30, 40));
    // Ratings and rollups untouched: the aggregates outlive the rows.
    assert_eq!(env.rollup_totals().await, rollups);
    env.assert_rollups_exact(Some(now - CDuration::days(7)))
        .await;

    // More old data arrives. The running instance refuses what is past its rows' retention
    // (counted as erased: a replay must not bring deleted rows back) and stores the rest; the
    // command then applies the text limit now.
    let late = mixed(12, now - CDuration::days(20));
    let late_text = mixed(8, now - CDuration::days(4));
    let mut more = records(&late);
    more.extend(records(&late_text));
    env.send(&more).await;
    env.wait_for_rows(total - 12, Duration::from_secs(60)).await;
    let refused = r#"likerate_events_total{outcome="erased"}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.metric_or_zero(refused).await < 12.0 {
        assert!(
            Instant::now() < deadline,
            "the 20 days old events were not refused"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = env.ok(
        &[
            "retention",
            "--retention-text",
            "2d",
            "--retention-rows",
            "7d",
        ],
        &[],
    );
    assert_eq!(
        out.trim(),
        "retention: text erased from 8 rows, 0 rows deleted"
    );
    let out = env.ok(&["retention"], &[("LIKERATE_RETENTION_TEXT", "2d")]);
    assert_eq!(
        out.trim(),
        "retention: text erased from 0 rows, 0 rows deleted"
    );
    let out = env.likerate(&["retention"], &[("LIKERATE_RETENTION_ROWS", "soon")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("LIKERATE_RETENTION_ROWS"));
    assert_eq!(
        env.count().await,
        total - 12,
        "the 20 days old rows are not stored"
    );
    env.assert_rollups_exact(Some(now - CDuration::days(7)))
        .await;

    // A vote whose only event retention deleted keeps its count and its bookkeeping: a later
    // re-vote moves the count out of the old bucket instead of adding a second vote.
    let lone = Ev::new("Math", 1, now - CDuration::days(6)).vote("lone");
    env.send(&records(std::slice::from_ref(&lone))).await;
    env.wait_for_rows(total - 11, Duration::from_secs(60)).await;
    let out = env.ok(&["retention", "--retention-rows", "5d"], &[]);
    assert_eq!(
        out.trim(),
        "retention: text erased from 0 rows, 1 rows deleted"
    );
    let before = env.rollup_totals().await;
    let revote = Ev::new("Math", -1, now).vote("lone");
    env.send(&records(std::slice::from_ref(&revote))).await;
    env.wait_for_rows(total - 11, Duration::from_secs(60)).await;
    let moved: Vec<_> = before
        .iter()
        .map(|(g, likes, dislikes, neutral)| (g.clone(), likes - 1, dislikes + 1, *neutral))
        .collect();
    assert_eq!(
        env.rollup_totals().await,
        moved,
        "the like moved, not added"
    );
    let current: Uuid = client
        .query_one(
            "SELECT event_id FROM feedback_vote WHERE vote_id = 'lone'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, revote.id);
    env.assert_rollups_exact(Some(now - CDuration::days(7)))
        .await;
    p.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn redaction_replaces_emails_and_phones_before_the_write() {
    let env = Env::new().await;
    let now = Utc::now();
    let mut e1 =
        Ev::new("Math", 1, now).answer("Mail me at jane.doe@example.com or +33 6 12 34 56 78.");
    e1.question = Some("I am bob@example.org, call (555) 123-4567".into());
    let e2 = Ev::new("Math", -1, now).answer("pi is 3.14159265358979, see 2026-02-05");
    let e3 = Ev::new("Physics", 0, now).answer("nothing personal");
    env.send(&records(&[e1.clone(), e2.clone(), e3.clone()]))
        .await;
    let p = env.spawn(&[("LIKERATE_REDACT", "email,phone")]);
    env.wait_for_rows(3, Duration::from_secs(60)).await;
    let client = env.client().await;
    let text = |id: Uuid| {
        let client = &client;
        async move {
            let r = client
                .query_one(
                    "SELECT message_content, user_question FROM feedback WHERE event_id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            (r.get::<_, String>(0), r.get::<_, Option<String>>(1))
        }
    };
    assert_eq!(
        text(e1.id).await,
        (
            "Mail me at [email] or [phone].".to_owned(),
            Some("I am [email], call [phone]".to_owned())
        )
    );
    assert_eq!(text(e2.id).await.0, e2.answer);
    assert_eq!(text(e3.id).await.0, e3.answer);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        p.metric_or_zero(r#"likerate_redactions_total{kind="email"}"#)
            .await,
        2.0
    );
    assert_eq!(
        p.metric_or_zero(r#"likerate_redactions_total{kind="phone"}"#)
            .await,
        2.0
    );
    env.assert_rollups_exact(None).await;
    p.kill9();
    let out = env.likerate(&["run"], &[("LIKERATE_REDACT", "email,ssn")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LIKERATE_REDACT"));
}

/// Headless Chromium: the binary, or a panic saying how to install it.
fn chromium() -> &'static str {
    for bin in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return bin;
        }
    }
    panic!("headless Chromium is not installed: apt-get install -y chromium");
}

#[tokio::test(flavor = "multi_thread")]
async fn report_has_the_figures_and_renders_in_a_browser() {
    let env = Env::new().await;
    let now = Utc::now();
    let until = DateTime::<Utc>::from_timestamp(now.timestamp() / 3600 * 3600, 0).unwrap();
    let since = until - CDuration::days(7);
    let mut events = Vec::new();
    let at = |d: i64, m: i64| until - CDuration::days(d) + CDuration::minutes(m);
    for i in 0..10 {
        events.push(Ev::new("Math", if i < 8 { 1 } else { -1 }, at(2, i)).model("m-a"));
        events.push(Ev::new("Math", if i < 9 { 1 } else { -1 }, at(9, i)).model("m-a"));
        let answer = format!(
            "<script>alert('x')</script> wrong answer {i} {}",
            "long ".repeat(200)
        );
        let mut e = Ev::new("Physics", if i < 5 { 1 } else { -1 }, at(1, i))
            .model("m-b")
            .answer(&answer);
        // Reasons and comments on the dislikes: `wrong` three times (one with a hostile
        // comment), `Too long` (stored as given: a tag is any text) with a comment, one without either.
        e = match i {
            5 | 6 => e.reason("wrong"),
            8 => e.reason("Too long").comment("far too long"),
            9 => e
                .reason("wrong")
                .comment("<img src=x onerror=alert(1)> bad | *md*"),
            _ => e,
        };
        events.push(e);
    }
    // One of Math's two dislikes in the period has a reason.
    let math_dislike = events
        .iter()
        .position(|e| e.subject == "Math" && e.rating == -1 && e.at == at(2, 8))
        .unwrap();
    events[math_dislike] = events[math_dislike].clone().reason("unclear");
    for i in 0..5 {
        events.push(Ev::new("Physics", if i < 4 { 1 } else { -1 }, at(10, i)).model("m-b"));
    }
    for i in 0..3 {
        events.push(Ev::new("History", 1, at(3, i)));
    }
    let total = events.len() as i64;
    env.send(&records(&events)).await;
    let p = env.spawn(&[]);
    env.wait_for_rows(total, Duration::from_secs(60)).await;
    p.kill9();

    // Two experiments: one running since 8 days before the end (it sees Math's period votes
    // on m-a and Physics' on m-b), one that ended before the period (not shown).
    let dir = std::env::temp_dir().join(format!("likerate-report-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("likerate.toml");
    std::fs::write(
        &config,
        format!(
            "[[experiments]]\nname = \"tone_v2\"\nstart = \"{}\"\narms = [\n  {{ model = \"m-a\", weight = 1 }},\n  {{ model = \"m-b\", weight = 1 }},\n]\n\n\
             [[experiments]]\nname = \"old-test\"\nstart = \"{}\"\nend = \"{}\"\narms = [\n  {{ model = \"m-a\", weight = 1 }},\n  {{ model = \"m-c\", weight = 1 }},\n]\n",
            (until - CDuration::days(8)).to_rfc3339(),
            (until - CDuration::days(30)).to_rfc3339(),
            (until - CDuration::days(20)).to_rfc3339(),
        ),
    )
    .unwrap();
    let (since_s, until_s) = (since.to_rfc3339(), until.to_rfc3339());
    let config_s = config.to_str().unwrap().to_owned();
    let period = [
        "--config",
        &config_s,
        "report",
        "--since",
        &since_s,
        "--until",
        &until_s,
        "--min-votes",
        "5",
        "--min-samples",
        "5",
    ];
    let md = env.ok(&[&period[..], &["--format", "markdown"]].concat(), &[]);
    for expected in [
        "**23** votes (15 before, +53%); like rate **69.6%** (86.7% before, -17.1 pp)",
        "| Math | 10 | +0% | 8 | 2 | 0 | 80.0% | 90.0% | -10.0 pp |",
        "| Physics | 10 | +100% | 5 | 5 | 0 | 50.0% | 80.0% | -30.0 pp |",
        "| History | 3 | new | 3 | 0 | 0 | 100.0% | – | – |",
        "| m-a | 10 | +0% | 8 | 2 | 0 | 80.0% | 90.0% | -10.0 pp |",
        "| (none) | 3 | new | 3 | 0 | 0 | 100.0% | – | – |",
        &format!(
            "| {} | Physics | 50.0% | 10 |",
            (until - CDuration::days(1)).format("%Y-%m-%d %H:00")
        ),
        &format!(
            "| {} | \\_all | 80.0% | 10 |",
            (until - CDuration::days(2)).format("%Y-%m-%d %H:00")
        ),
        &format!(
            "| {} | 10 | 50.0% |",
            (until - CDuration::days(1)).date_naive()
        ),
        "A: \\<script\\>alert('x')\\</script\\> wrong answer 9",
        // Reasons: 5 of the 7 dislikes carry one, 2 a comment.
        "5 of 7 dislikes carry a reason, 2 a comment",
        "| wrong | 3 | 42.9% | 1 | 3 |",
        "| Too long | 1 | 14.3% | 1 | 1 |",
        "| unclear | 1 | 14.3% | 0 | 1 |",
        // Beside the disliked answers.
        "  - Reason: wrong\n  - Comment: \\<img src=x onerror=alert(1)\\> bad \\| \\*md\\*",
        "  - Reason: Too long\n  - Comment: far too long",
        // The experiment that ran: both arms' figures, not enough votes for a verdict.
        "### tone\\_v2",
        "| A | m-a | 10 | 8 | 80.0% |",
        "| B | m-b | 10 | 5 | 50.0% |",
        "Verdict: not enough data.",
    ] {
        assert!(md.contains(expected), "missing {expected:?} in:\n{md}");
    }
    assert!(
        !md.contains("old-test"),
        "an experiment that ended before the period"
    );
    assert!(md.contains("## Per day"));
    // The sections come in this order.
    let order = [
        "## Models",
        "## A/B experiments",
        "## Alerts",
        "## Reasons",
        "## Recent disliked answers",
    ];
    let at_: Vec<usize> = order.iter().map(|h| md.find(h).unwrap()).collect();
    assert!(at_.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    // Biggest drops: Physics before Math.
    let drops = md.split("## Biggest drops").nth(1).unwrap();
    let drops = drops.split("## Alerts").next().unwrap();
    assert!(drops.find("| Physics").unwrap() < drops.find("| Math").unwrap());
    // Three samples for Physics, the two Math dislikes, truncated.
    let samples = md.split("## Recent disliked answers").nth(1).unwrap();
    assert_eq!(samples.matches("wrong answer").count(), 3, "{samples}");
    assert!(samples.contains('…'));

    let html_path = dir.join("report.html");
    let out = env.ok(
        &[&period[..], &["--out", html_path.to_str().unwrap()]].concat(),
        &[],
    );
    assert!(out.starts_with("wrote "), "{out}");
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert_eq!(html.matches("<svg").count(), 2);
    assert!(!html.contains("<script>"), "user text is escaped");
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert!(html.contains("<td>Physics</td><td>10</td><td>+100%</td>"));
    assert!(!html.contains("<img"), "comments are escaped");
    assert!(html.contains("<b>Comment:</b> &lt;img src=x onerror=alert(1)&gt; bad | *md*"));
    assert!(html.contains("<b>Reason:</b> <code>Too long</code>"));
    assert!(html.contains("<td>wrong</td><td>3</td><td>42.9%</td><td>1</td><td>3</td>"));
    assert!(html.contains("<h3>tone_v2</h3>"));
    assert!(html.contains("<h2>Like rate per day</h2>"));

    // Opened by a browser without network: it parses, draws, and nothing is fetched.
    let shot = dir.join("report.png");
    let browser = chromium();
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1200,3000",
    ];
    let profile = format!("--user-data-dir={}", dir.join("profile").display());
    let url = format!("file://{}", html_path.display());
    let run = Command::new(browser)
        .args(flags)
        .arg(&profile)
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "screenshot failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    let dom = Command::new(browser)
        .args(flags)
        .arg(&profile)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    assert!(dom.status.success());
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("Feedback report") && dom.matches("<svg").count() == 2);
    assert!(dom.contains("tone_v2") && dom.contains("far too long"));
    eprintln!("report screenshot: {}", shot.display());

    // Shorter periods draw finer points: minutes for an hour, five minutes for three hours,
    // hours for a day. Math's votes of day -2 are one a minute from the hour on: likes at
    // minutes 0 to 7, dislikes at 8 and 9.
    let start = until - CDuration::days(2);
    let short = |hours: i64| {
        let (from, to) = (
            start.to_rfc3339(),
            (start + CDuration::hours(hours)).to_rfc3339(),
        );
        env.ok(
            &[
                "report", "--since", &from, "--until", &to, "--format", "markdown",
            ],
            &[],
        )
    };
    let minute = |m: i64| {
        (start + CDuration::minutes(m))
            .format("%Y-%m-%d %H:%M")
            .to_string()
    };
    let hour = short(1);
    assert!(
        hour.contains("## Per minute\n\n| from | votes | like rate |"),
        "{hour}"
    );
    // The rows of the time table, whatever their date (a period may cross midnight UTC).
    let time_rows = |report: &str| {
        report
            .lines()
            .filter_map(|l| l.strip_prefix("| ").and_then(|l| l.get(..16)))
            .filter(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M").is_ok())
            .count()
    };
    assert_eq!(time_rows(&hour), 60, "{hour}");
    for expected in [
        format!("| {} | 1 | 100.0% |", minute(0)),
        format!("| {} | 1 | 100.0% |", minute(7)),
        format!("| {} | 1 | 0.0% |", minute(8)),
        format!("| {} | 0 | – |", minute(10)),
    ] {
        assert!(hour.contains(&expected), "missing {expected:?} in:\n{hour}");
    }
    let three = short(3);
    assert!(three.contains("## Per 5 minutes"), "{three}");
    for expected in [
        format!("| {} | 5 | 100.0% |", minute(0)),
        format!("| {} | 5 | 60.0% |", minute(5)),
        format!("| {} | 0 | – |", minute(10)),
    ] {
        assert!(
            three.contains(&expected),
            "missing {expected:?} in:\n{three}"
        );
    }
    assert_eq!(time_rows(&three), 36, "{three}");
    let day = short(24);
    assert!(day.contains("## Per hour"), "{day}");
    assert!(
        day.contains(&format!("| {} | 10 | 80.0% |", minute(0))),
        "{day}"
    );
    assert!(
        day.contains(&format!("| {} | 0 | – |", minute(60))),
        "{day}"
    );

    // The hour's HTML draws minute points, labelled with their time, in the browser too.
    let hour_path = dir.join("hour.html");
    let (from, to) = (
        start.to_rfc3339(),
        (start + CDuration::hours(1)).to_rfc3339(),
    );
    env.ok(
        &[
            "report",
            "--since",
            &from,
            "--until",
            &to,
            "--out",
            hour_path.to_str().unwrap(),
        ],
        &[],
    );
    let html = std::fs::read_to_string(&hour_path).unwrap();
    assert!(html.contains("<h2>Like rate per minute</h2>"));
    let texts: Vec<&str> = html
        .split("<text")
        .skip(1)
        .filter_map(|t| t.split_once('>')?.1.split("</text>").next())
        .map(str::trim)
        .collect();
    let labels = (0..60)
        .filter(|m| {
            let label = (start + CDuration::minutes(*m)).format("%H:%M").to_string();
            texts.contains(&label.as_str())
        })
        .count();
    assert!(labels >= 5, "{labels} minute labels on the axis");
    let dom = Command::new(browser)
        .args(flags)
        .arg(&profile)
        .arg("--dump-dom")
        .arg(format!("file://{}", hour_path.display()))
        .output()
        .unwrap();
    assert!(dom.status.success());
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("Like rate per minute") && dom.matches("<svg").count() == 2);
}
