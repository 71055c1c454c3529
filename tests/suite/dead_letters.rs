//! Dead letters exactly once (src/dead_letter.rs): a crash at the worst point of the outbox
//! publisher, and the dead-letter topic unavailable while the stream goes on.
//!
//! The records are built here, so the test knows which are valid and which must be
//! dead-lettered without asking the decoder.

use crate::common::{self, dead_letters, Records, Served, World};
use rdkafka::admin::{AdminClient, AdminOptions};
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

async fn outbox(world: &World) -> (i64, i64) {
    let row = world
        .client()
        .await
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE published_at IS NOT NULL AND payload IS NULL)
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

/// The process dies after the broker acknowledged a round of dead letters and before the
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
    let letters = dead_letters(&world.kafka, poison.len());
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

/// Deletes the dead-letter topic (the test broker creates no topic by itself).
async fn delete_dlq(world: &World) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &world.kafka.brokers)
        .create()
        .unwrap();
    for r in admin
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
    // Long enough for sends to fail (message.timeout.ms is 30 s) and be retried.
    let deadline = Instant::now() + Duration::from_secs(60);
    while p
        .metric_or_zero("likerate_dlq_publish_failures_total")
        .await
        == 0.0
    {
        assert!(Instant::now() < deadline, "the failed sends are counted");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    likerate::kafka::ensure_topics(&world.kafka).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while p.metric("likerate_dead_letters_pending").await != Ok(Some(0.0)) {
        assert!(
            Instant::now() < deadline,
            "the outbox drains once the topic is back"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let letters = dead_letters(&world.kafka, poison.len());
    assert_eq!(payloads(&letters), poison);
    assert_eq!(letters.len(), poison.len());
    assert_eq!(
        outbox(&world).await,
        (poison.len() as i64, poison.len() as i64)
    );
}
