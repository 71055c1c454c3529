//! Broker and member faults on a real three-node Apache Kafka cluster (KRaft, replication
//! factor 3, `min.insync.replicas=2`), with PostgreSQL and the `likerate` binary itself.
//!
//! The tests share one cluster and take turns (a lock held for the whole test); each starts by
//! healing what the previous one broke (restarting killed nodes, resuming frozen ones).
//! Every test ends with the same checks: the stored event ids are exactly the distinct valid
//! events that were produced, and the rollups equal their recomputation from `feedback`.

mod common;

use common::{traffic, Cluster, Served, World};
use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

const NODES: u32 = 3;

/// The cluster, healed, for one test at a time.
async fn cluster() -> MutexGuard<'static, Faults> {
    static CLUSTER: OnceLock<Mutex<Faults>> = OnceLock::new();
    let mut guard = CLUSTER
        .get_or_init(|| {
            Mutex::new(Faults {
                cluster: Cluster::start_kept(NODES),
                down: Vec::new(),
                frozen: Vec::new(),
            })
        })
        .lock()
        .await;
    guard.heal();
    guard
}

/// The cluster and what a test did to it.
struct Faults {
    cluster: Cluster,
    down: Vec<u32>,
    frozen: Vec<u32>,
}

impl Faults {
    fn kill(&mut self, id: u32) {
        self.cluster.kill(id);
        self.down.push(id);
    }

    fn freeze(&mut self, id: u32) {
        self.cluster.freeze(id);
        self.frozen.push(id);
    }

    fn resume(&mut self, id: u32) {
        self.cluster.resume(id);
        self.frozen.retain(|f| *f != id);
    }

    fn heal(&mut self) {
        for id in std::mem::take(&mut self.frozen) {
            self.cluster.resume(id);
        }
        let down = std::mem::take(&mut self.down);
        self.cluster.restart(&down);
    }
}

/// A test's world on the cluster, with traffic of `n` events (5% re-votes, 1% duplicates).
async fn world(faults: &Faults, n: u64, seed: u64) -> (World, common::Records, HashSet<Uuid>) {
    let world = World::on(faults.cluster.brokers()).await;
    let (records, ids, _) = traffic(n, seed, &["--duplicates", "0.01", "--revotes", "0.05"]);
    (world, records, ids)
}

async fn settle_and_check(world: &World, ids: &HashSet<Uuid>) {
    world
        .assert_stored_exactly(ids, Duration::from_secs(240))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leading_broker_sigkilled_mid_stream_loses_nothing() {
    let mut faults = cluster().await;
    let (world, records, ids) = world(&faults, 20_000, 11).await;
    let p = world.spawn(None, &[("LIKERATE_BATCH_MAX_EVENTS", "500")]);
    let sender = world.send_in_background(records, 1000, Duration::from_millis(100));
    world
        .wait_for_at_least(3000, Duration::from_secs(120))
        .await;
    let leader = faults.cluster.busiest_leader(&world.kafka.topic);
    faults.kill(leader);
    let before = world.count().await;
    sender.await.unwrap();
    settle_and_check(&world, &ids).await;
    assert!(
        (ids.len() as i64) > before,
        "events were still arriving after the kill"
    );
    assert!(
        !faults
            .cluster
            .leaders(&world.kafka.topic)
            .contains(&(leader as i32)),
        "leadership moved off the killed broker"
    );
    p.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_frozen_for_60_seconds_then_resumed_loses_nothing() {
    let mut faults = cluster().await;
    let (world, records, ids) = world(&faults, 15_000, 12).await;
    let p = world.spawn(None, &[("LIKERATE_BATCH_MAX_EVENTS", "500")]);
    // A slow stream (about 500 events/s), so it is still going during the freeze.
    let sender = world.send_in_background(records, 250, Duration::from_millis(500));
    world
        .wait_for_at_least(2000, Duration::from_secs(120))
        .await;
    let leader = faults.cluster.busiest_leader(&world.kafka.topic);
    faults.freeze(leader);
    let frozen_at = Instant::now();
    // Meanwhile the stream goes on through the other two brokers.
    let during = world.count().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        world.count().await > during,
        "nothing was stored while one broker of three was frozen"
    );
    faults.resume(leader);
    assert!(frozen_at.elapsed() >= Duration::from_secs(60));
    sender.await.unwrap();
    settle_and_check(&world, &ids).await;
    p.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_group_coordinator_killed_during_a_rebalance_loses_nothing() {
    let mut faults = cluster().await;
    let (world, records, ids) = world(&faults, 16_000, 13).await;
    let settings = [("LIKERATE_BATCH_MAX_EVENTS", "300")];
    let a = world.spawn(None, &settings);
    let sender = world.send_in_background(records, 800, Duration::from_millis(100));
    world
        .wait_for_at_least(2000, Duration::from_secs(120))
        .await;
    let coordinator = faults.cluster.coordinator(&world.kafka.group);
    // A second member joins: the group rebalances, and its coordinator dies meanwhile.
    let b = world.spawn(None, &settings);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    faults.kill(coordinator);
    sender.await.unwrap();
    settle_and_check(&world, &ids).await;
    assert_ne!(
        faults.cluster.coordinator(&world.kafka.group),
        coordinator,
        "another broker coordinates the group"
    );
    a.kill9();
    b.kill9();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_sigkilled_and_not_restarted_hands_its_partitions_to_the_survivor() {
    let faults = cluster().await;
    let (world, records, ids) = world(&faults, 10_000, 14).await;
    let settings = [("LIKERATE_BATCH_MAX_EVENTS", "300")];
    let a = world.spawn(None, &settings);
    let b = world.spawn(None, &settings);
    let assigned = |p: &common::Likerate| {
        let url = p.base_url();
        async move {
            let text = reqwest::get(format!("{url}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            common::series_value(&text, "likerate_assigned_partitions")
        }
    };
    // Both members hold partitions before one dies.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(assigned(&a).await.unwrap_or(0.0) > 0.0 && assigned(&b).await.unwrap_or(0.0) > 0.0) {
        assert!(
            Instant::now() < deadline,
            "the two members never shared the topic"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (first, rest) = records.split_at(records.len() / 2);
    let db = world.client().await;
    let sending = world.send_in_background(first.to_vec(), 500, Duration::from_millis(50));
    assert!(
        a.kill9_in_flight(&db).await,
        "the kill landed while a batch of the victim was in flight"
    );
    sending.await.unwrap();
    world.send(rest).await;
    settle_and_check(&world, &ids).await;
    assert_eq!(
        assigned(&b).await,
        Some(3.0),
        "the survivor owns every partition after the session timeout"
    );
    b.kill9();
}

/// Every broker down, then back: likerate resumes alone; and SIGTERM while they are down ends
/// the process promptly and cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn every_broker_down_and_back_resumes_and_sigterm_exits_while_they_are_down() {
    let mut faults = cluster().await;
    let (world, records, ids) = world(&faults, 6000, 15).await;
    let p = world.spawn(None, &[]);
    world.send(&records[..3000]).await;
    world.wait_for_at_least(1000, Duration::from_secs(60)).await;
    for id in 1..=NODES {
        faults.kill(id);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    faults.heal();
    world.send(&records[3000..]).await;
    settle_and_check(&world, &ids).await;

    for id in 1..=NODES {
        faults.kill(id);
    }
    let (status, took) = p.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(20),
        "shutdown with every broker down took {took:?}"
    );
}
