//! Dead letters exactly once (src/dead_letter/): a crash at the worst point of the outbox
//! publisher, a publisher that lost its session sending after another took over, the
//! dead-letter topic unavailable while the stream goes on, a dead letter the topic refuses
//! for good, and the outbox rows' counting and detail.
//!
//! The records are built here, so the test knows which are valid and which must be
//! dead-lettered without asking the decoder.

use crate::common::{self, Database, Likerate, Records, Served, World};
use likerate::decode::{DecodeError, Reason};
use likerate::source::Rejected;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// `valid` valid events and `bad` records that are not JSON objects, interleaved; the valid
/// event ids and the bad payloads.
fn mixed(valid: usize, bad: usize) -> (Records, HashSet<Uuid>, BTreeSet<Vec<u8>>) {
    let mut records = Vec::new();
    let mut ids = HashSet::new();
    let mut poison = BTreeSet::new();
    let now = chrono::Utc::now();
    for i in 0..valid.max(bad) {
        if i < valid {
            let id = Uuid::new_v4();
            ids.insert(id);
            let event = serde_json::json!({
                "event_id": id,
                "subject_id": "Math",
                "user_question": format!("question {i}"),
                "assistant_message": format!("answer {i}"),
                "rating": 1,
                "message_index": 1,
                "created_at": (now - chrono::Duration::seconds(i as i64)).to_rfc3339(),
            });
            records.push((format!("k{i}"), event.to_string().into_bytes()));
        }
        if i < bad {
            let payload = format!("poison {i}: not JSON").into_bytes();
            poison.insert(payload.clone());
            records.push((format!("p{i}"), payload));
        }
    }
    (records, ids, poison)
}

/// The outbox rows, and those published that keep nothing of the record but its coordinates.
async fn outbox(world: &World) -> (i64, i64) {
    let row = world
        .client()
        .await
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE published_at IS NOT NULL AND payload IS NULL
                                               AND detail IS NULL AND record_key IS NULL)
             FROM feedback_dead_letter",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn payloads(
    letters: &[(std::collections::BTreeMap<String, String>, Vec<u8>)],
) -> BTreeSet<Vec<u8>> {
    letters.iter().map(|(_, p)| p.clone()).collect()
}

/// The process dies after a round of dead letters committed in the topic and before the
/// outbox marked them published: the next instance finds them in the topic and does not send
/// them again.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_the_send_and_the_mark_leaves_each_dead_letter_once() {
    let world = World::new().await;
    let (records, ids, poison) = mixed(200, 30);
    let mut first = world.spawn(None, &[("LIKERATE_TEST_FAULT", "dead_letter_sent")]);
    world.send(&records).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = first.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the fault point was never reached"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success(), "the first instance aborted: {status}");
    assert!(
        first
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("aborting before the mark")),
        "it aborted at the fault point"
    );
    let (rows, published) = outbox(&world).await;
    assert!(rows > 0, "dead letters were in the outbox when it died");
    assert_eq!(published, 0, "none was marked published");

    let second = world.spawn(None, &[]);
    world
        .assert_stored_exactly(&ids, Duration::from_secs(60))
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox(&world).await != (poison.len() as i64, poison.len() as i64) {
        assert!(
            Instant::now() < deadline,
            "outbox: {:?}",
            outbox(&world).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Exactly one per bad record: `dead_letters` fails if more than expected arrive.
    let letters = world.dead_letters(poison.len()).await;
    assert_eq!(letters.len(), poison.len());
    assert_eq!(payloads(&letters), poison);
    let origins = common::letter_origins(&letters);
    assert_eq!(origins.len(), poison.len(), "each from its own offset");
    // The second instance counts only what it inserted: the bad records the first did not
    // reach before it died.
    assert_eq!(
        second
            .metric_or_zero(r#"likerate_events_total{outcome="dead_lettered"}"#)
            .await,
        (poison.len() as i64 - rows) as f64
    );
    assert_eq!(
        second.metric("likerate_dead_letters_pending").await,
        Ok(Some(0.0))
    );
}

fn admin(world: &World) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", &world.kafka.brokers)
        .create()
        .unwrap()
}

/// Deletes the dead-letter topic (the test broker creates no topic by itself).
async fn delete_dlq(world: &World) {
    for r in admin(world)
        .delete_topics(&[&world.kafka.dlq_topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// The dead-letter topic is gone (deleted, on a broker that creates no topic by itself): the
/// partition moves on, every valid event is stored, the dead letters wait in the outbox, and
/// they arrive once each when the topic is back.
#[tokio::test(flavor = "multi_thread")]
async fn the_dead_letter_topic_unavailable_holds_nothing_back_and_loses_nothing() {
    let world = World::new().await;
    let (records, ids, poison) = mixed(300, 12);
    // likerate creates missing topics at start: the topic goes once it runs.
    let p = world.spawn(None, &[]);
    delete_dlq(&world).await;
    world.send(&records).await;
    world
        .assert_stored_exactly(&ids, Duration::from_secs(60))
        .await;
    // Everything after the bad records was acknowledged too: nothing is behind.
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.metric("likerate_dead_letters_pending").await != Ok(Some(poison.len() as f64)) {
        assert!(
            Instant::now() < deadline,
            "the dead letters wait in the outbox: pending {:?}, outbox {:?}",
            p.metric("likerate_dead_letters_pending").await,
            outbox(&world).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(outbox(&world).await, (poison.len() as i64, 0));
    assert_eq!(
        p.metric_or_zero(r#"likerate_dead_letters_total{reason="invalid_json"}"#)
            .await,
        poison.len() as f64
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while p
        .metric_or_zero("likerate_dlq_publish_failures_total")
        .await
        == 0.0
    {
        assert!(Instant::now() < deadline, "the failed sends are counted");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A topic the metadata says is unknown is not an empty topic: no round is sent to it, so
    // none is left uncertain.
    let attempted: i64 = world
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM feedback_dead_letter WHERE attempted_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        attempted, 0,
        "no round was attempted while the topic was gone"
    );

    likerate::kafka::ensure_topics(&world.kafka).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while p.metric("likerate_dead_letters_pending").await != Ok(Some(0.0)) {
        assert!(
            Instant::now() < deadline,
            "the outbox drains once the topic is back"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let letters = world.dead_letters(poison.len()).await;
    assert_eq!(payloads(&letters), poison);
    assert_eq!(letters.len(), poison.len());
    assert_eq!(
        outbox(&world).await,
        (poison.len() as i64, poison.len() as i64)
    );
}

/// Waits until a line of `p`'s log contains `text`.
async fn wait_for_log(p: &Likerate, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !p.log.lock().unwrap().iter().any(|l| l.contains(text)) {
        assert!(Instant::now() < deadline, "no log line with {text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first publisher marks a round attempted and stalls before its sends
/// (`LIKERATE_TEST_FAULT=dead_letter_stall`, 30 s); meanwhile it loses its database session
/// (and with it the lock) and a second instance takes over and publishes. When the first wakes
/// up and sends its round, Kafka refuses it: the second's producer fenced it when it started.
/// Without fencing, the second finds nothing in the topic (the first has not sent yet) and
/// both rounds land.
#[tokio::test(flavor = "multi_thread")]
async fn a_publisher_that_lost_its_session_mid_round_is_fenced() {
    let world = World::new().await;
    let (records, ids, poison) = mixed(100, 20);
    let first = world.spawn(None, &[("LIKERATE_TEST_FAULT", "dead_letter_stall")]);
    world.send(&records).await;
    wait_for_log(&first, "stalling before the sends", Duration::from_secs(60)).await;
    let client = world.client().await;
    let attempted: i64 = client
        .query_one(
            "SELECT count(*) FROM feedback_dead_letter WHERE attempted_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(attempted > 0, "a round was in flight");
    let terminated: i64 = client
        .query_one(
            "SELECT count(*) FROM (
               SELECT pg_terminate_backend(l.pid) FROM pg_locks l
               WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                 AND l.classid = $1::int8::oid
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             ) t",
            &[&i64::from(likerate::dead_letter::PUBLISHER_LOCK)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(terminated, 1, "the first publisher's session ended");

    let second = world.spawn(None, &[]);
    world
        .db
        .wait_for_dead_letters_published(poison.len(), Duration::from_secs(60))
        .await;
    // The first wakes up and sends into a transaction Kafka no longer accepts.
    wait_for_log(&first, "fenced", Duration::from_secs(60)).await;
    world
        .assert_stored_exactly(&ids, Duration::from_secs(60))
        .await;
    let letters = world.dead_letters(poison.len()).await;
    assert_eq!(letters.len(), poison.len());
    assert_eq!(payloads(&letters), poison);
    assert_eq!(common::letter_origins(&letters).len(), poison.len());
    assert_eq!(
        second.metric("likerate_dead_letters_pending").await,
        Ok(Some(0.0))
    );
}

/// `n` bytes that no compression shrinks (xorshift), none of them ASCII: no JSON.
fn incompressible(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8 | 0x80
        })
        .collect()
}

async fn set_dlq_max_message_bytes(world: &World, bytes: &str) {
    let config = AlterConfig::new(ResourceSpecifier::Topic(&world.kafka.dlq_topic))
        .set("max.message.bytes", bytes);
    for r in admin(world)
        .alter_configs(&[config], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    // The brokers apply the change from the metadata log: give it a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Two dead letters are larger than the dead-letter topic's `max.message.bytes` (8 KiB): the
/// broker refuses the producer batches they are in, which hold other dead letters too. The
/// two are set aside as refused (shown, with the reason), every other is published once, and
/// nothing waits. After the runbook's fix (a larger limit, the rows queued again) they arrive
/// once each too.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_the_topic_refuses_holds_no_other_back() {
    let world = World::new().await;
    set_dlq_max_message_bytes(&world, "8192").await;
    let (mut records, ids, mut poison) = mixed(60, 20);
    let large: Vec<Vec<u8>> = (0..2).map(|i| incompressible(20_000, 7 + i)).collect();
    records.insert(10, ("large0".into(), large[0].clone()));
    records.insert(40, ("large1".into(), large[1].clone()));
    let p = world.spawn(None, &[]);
    world.send(&records).await;
    world
        .assert_stored_exactly(&ids, Duration::from_secs(60))
        .await;
    let letters = world.dead_letters(poison.len()).await;
    assert_eq!(payloads(&letters), poison, "every other dead letter, once");
    assert_eq!(letters.len(), poison.len());
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.metric("likerate_dead_letters_refused").await != Ok(Some(2.0)) {
        assert!(
            Instant::now() < deadline,
            "the refused dead letters are shown"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        p.metric("likerate_dead_letters_pending").await,
        Ok(Some(0.0))
    );
    let refused: Vec<(Vec<u8>, String)> = world
        .client()
        .await
        .query(
            "SELECT payload, refusal FROM feedback_dead_letter
             WHERE refused_at IS NOT NULL ORDER BY source_partition, source_offset",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(refused.len(), 2);
    for (payload, why) in &refused {
        assert!(large.contains(payload), "a large one, with its bytes kept");
        assert!(why.contains("MessageSizeTooLarge"), "{why}");
    }
    assert!(
        p.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("refused a dead letter for good")),
        "the refusal is logged"
    );

    // The runbook's fix: a limit that fits, and the refused rows queued again.
    set_dlq_max_message_bytes(&world, "1048588").await;
    world
        .client()
        .await
        .execute(
            "UPDATE feedback_dead_letter SET refused_at = NULL, refusal = NULL
             WHERE refused_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    poison.extend(large);
    let letters = world.dead_letters(poison.len()).await;
    assert_eq!(letters.len(), poison.len());
    assert_eq!(payloads(&letters), poison);
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.metric("likerate_dead_letters_refused").await != Ok(Some(0.0)) {
        assert!(Instant::now() < deadline, "nothing is refused any more");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn rejected(detail: &str, payload: &str) -> Rejected {
    Rejected {
        error: DecodeError::new(Reason::InvalidJson, detail),
        payload: payload.as_bytes().to_vec(),
        key: None,
    }
}

/// Writes `rejected` at offsets from 0 as one batch attempt; the dead letters it counted.
async fn record(client: &mut tokio_postgres::Client, rejected: &[Rejected], attempt: Uuid) -> f64 {
    let letters: Vec<likerate::dead_letter::DeadLetter<'_>> = rejected
        .iter()
        .zip(0..)
        .map(|(r, offset)| likerate::dead_letter::DeadLetter {
            rejected: r,
            partition: 0,
            offset,
        })
        .collect();
    let metrics = likerate::telemetry::Metrics::new(10);
    likerate::dead_letter::record(client, "t", &letters, attempt, &metrics)
        .await
        .unwrap();
    common::series_value(
        &metrics.render(),
        r#"likerate_dead_letters_total{reason="invalid_json"}"#,
    )
    .unwrap_or(0.0)
}

/// `dead_letter::record` against a LATIN1 database, which cannot hold every character a detail
/// quoting input may have (an error there would stop the partition), and its counting: a retry
/// of the same batch after a commit whose answer was lost counts what that commit stored; a
/// replay by another batch counts only what is new.
#[tokio::test(flavor = "multi_thread")]
async fn the_outbox_counts_each_dead_letter_once_and_stores_any_detail() {
    let db = Database {
        name: format!("likerate_latin1_{}", common::short_id()),
    };
    let (admin, conn) = tokio_postgres::connect(
        &format!("{}/postgres", common::pg_base()),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
            db.name
        ))
        .await
        .unwrap();
    let mut client = db.client().await;
    likerate::db::migrate(&mut client).await.unwrap();

    let batch = [
        rejected("expected value at \u{1f389} \u{0} \u{fc}", "a"),
        rejected("ok", "b"),
    ];
    let attempt = Uuid::new_v4();
    assert_eq!(record(&mut client, &batch, attempt).await, 2.0);
    // The same attempt again: its commit landed, the answer was lost, the lane retries.
    assert_eq!(record(&mut client, &batch, attempt).await, 2.0);
    // Another batch with the same two records (a replay) and a new one.
    let replay = [rejected("x", "a"), rejected("x", "b"), rejected("x", "c")];
    assert_eq!(record(&mut client, &replay, Uuid::new_v4()).await, 1.0);
    let details: Vec<String> = client
        .query(
            "SELECT detail FROM feedback_dead_letter ORDER BY source_offset",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        details,
        [r"expected value at \u{1f389} \u{0} \u{fc}", "ok", "x"]
    );
}
