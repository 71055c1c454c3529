//! Real Apache Kafka for the tests: nodes started by `deploy/local/kafka.sh node` (KRaft,
//! broker and controller in one JVM), on free ports, with data in a temporary folder.
//!
//! - [`shared_brokers`]: one node per test binary, started on first use (or the broker named
//!   by `LIKERATE_TEST_BROKERS`); every test gets topics and a group of its own on it.
//! - [`Cluster`]: nodes a test owns, to kill (`SIGKILL`), freeze (`SIGSTOP`) and restart.
//!
//! A watchdog process per node kills it when the test binary exits, however it exits, so no
//! broker outlives the tests.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/local/kafka.sh")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Kills `pid` once this test binary has exited, then removes `dir` if given.
fn watch(pid: u32, dir: Option<&std::path::Path>) {
    let cleanup = dir
        .map(|d| format!("; rm -rf '{}'", d.display()))
        .unwrap_or_default();
    let script = format!(
        "while kill -0 {parent} 2>/dev/null; do sleep 1; done; kill -9 {pid} 2>/dev/null{cleanup}",
        parent = std::process::id()
    );
    // Detached (the shell that starts it exits at once), so nothing is left to wait for.
    let status = Command::new("sh")
        .args(["-c", &format!("({script}) </dev/null >/dev/null 2>&1 &")])
        .status()
        .expect("watchdog");
    assert!(status.success(), "watchdog did not start");
}

struct Node {
    id: u32,
    dir: PathBuf,
    port: u16,
    controller_port: u16,
    child: Option<Child>,
}

/// Kafka nodes owned by one test (or, for [`shared_brokers`], by the test binary).
pub struct Cluster {
    nodes: Vec<Node>,
    voters: String,
    keep: bool,
    _dir: TempDir,
}

impl Cluster {
    /// Starts `n` nodes (replication factor min(n, 3), `min.insync.replicas` 2 from three
    /// nodes on) and waits until every broker is in the cluster's metadata.
    pub fn start(n: u32) -> Cluster {
        Self::start_with(n, false)
    }

    /// A cluster kept until the test binary exits (for a `static`, which is never dropped):
    /// the nodes' watchdogs also remove its data.
    pub fn start_kept(n: u32) -> Cluster {
        Self::start_with(n, true)
    }

    /// A start that fails (seen once under load: a node that never listened, its logs gone
    /// with its folder) is reported with the nodes' log tails and tried once more on fresh
    /// ports.
    fn start_with(n: u32, keep: bool) -> Cluster {
        match Self::try_start(n, keep) {
            Ok(cluster) => cluster,
            Err(first) => {
                eprintln!("{first}\nretrying once on fresh ports");
                Self::try_start(n, keep).unwrap_or_else(|e| panic!("{first}\nthen: {e}"))
            }
        }
    }

    fn try_start(n: u32, keep: bool) -> Result<Cluster, String> {
        let dir = TempDir::new("kafka");
        let nodes: Vec<Node> = (1..=n)
            .map(|id| Node {
                id,
                dir: dir.path.join(format!("node-{id}")),
                port: free_port(),
                controller_port: free_port(),
                child: None,
            })
            .collect();
        let voters = nodes
            .iter()
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            nodes,
            voters,
            keep,
            _dir: dir,
        };
        for id in 1..=n {
            cluster.launch(id);
        }
        cluster.brokers_within(n as usize, Duration::from_secs(120))?;
        Ok(cluster)
    }

    /// `bootstrap.servers` naming every node.
    pub fn brokers(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node(&mut self, id: u32) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn launch(&mut self, id: u32) {
        let voters = self.voters.clone();
        let node = self.node(id);
        std::fs::create_dir_all(&node.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("server.log"))
            .unwrap();
        let child = Command::new("bash")
            .arg(script())
            .arg("node")
            .arg(id.to_string())
            .arg(&node.dir)
            .arg(node.port.to_string())
            .arg(node.controller_port.to_string())
            .arg(&voters)
            .env("LIKERATE_KAFKA_HEAP", "384m")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("deploy/local/kafka.sh node");
        // A cluster the binary keeps (shared_brokers) is never dropped: its watchdog also
        // removes its data.
        let keep = self.keep.then(|| self._dir.path.clone());
        watch(child.id(), keep.as_deref());
        let node = self.node(id);
        node.child = Some(child);
    }

    fn pid(&mut self, id: u32) -> u32 {
        self.node(id)
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is not running"))
            .id()
    }

    fn signal(&mut self, id: u32, signal: &str) {
        let pid = self.pid(id);
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGKILL: the node dies without closing anything.
    pub fn kill(&mut self, id: u32) {
        self.signal(id, "-KILL");
        if let Some(mut child) = self.node(id).child.take() {
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the node stays connected but answers nothing until [`Cluster::resume`].
    pub fn freeze(&mut self, id: u32) {
        self.signal(id, "-STOP");
    }

    pub fn resume(&mut self, id: u32) {
        self.signal(id, "-CONT");
    }

    /// Starts killed nodes again on their data and ports, all before waiting (a KRaft quorum
    /// needs a majority of its controllers to come back), and waits until they are back.
    pub fn restart(&mut self, ids: &[u32]) {
        for id in ids {
            assert!(self.node(*id).child.is_none(), "node {id} is running");
            self.launch(*id);
        }
        self.wait_for_brokers(self.nodes.len(), Duration::from_secs(120));
    }

    /// Waits until the metadata lists `n` brokers.
    pub fn wait_for_brokers(&self, n: usize, within: Duration) {
        if let Err(e) = self.brokers_within(n, within) {
            panic!("{e}");
        }
    }

    fn brokers_within(&self, n: usize, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(md) = client(&self.brokers()).fetch_metadata(None, Duration::from_secs(5)) {
                if md.brokers().len() == n {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                let tails: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|node| {
                        let log = std::fs::read_to_string(node.dir.join("server.log"))
                            .unwrap_or_else(|e| format!("(no log: {e})"));
                        let lines: Vec<&str> = log.lines().collect();
                        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                        format!("--- node {} (port {}) ---\n{tail}", node.id, node.port)
                    })
                    .collect();
                return Err(format!(
                    "Kafka did not start {n} brokers within {within:?}:\n{}",
                    tails.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The leader (node id) of each partition of `topic`, in partition order; -1 while a
    /// partition has none.
    pub fn leaders(&self, topic: &str) -> Vec<i32> {
        let md = client(&self.brokers())
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let mut partitions: Vec<(i32, i32)> = md.topics()[0]
            .partitions()
            .iter()
            .map(|p| (p.id(), p.leader()))
            .collect();
        partitions.sort();
        partitions.into_iter().map(|(_, leader)| leader).collect()
    }

    /// The node coordinating `group`: the leader of its `__consumer_offsets` partition,
    /// `abs(group.hashCode()) % offsets.topic.num.partitions` as Kafka computes it.
    pub fn coordinator(&self, group: &str) -> u32 {
        let offsets = self.leaders("__consumer_offsets");
        let hash = group
            .encode_utf16()
            .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
        let abs = if hash == i32::MIN { 0 } else { hash.abs() };
        let leader = offsets[abs as usize % offsets.len()];
        u32::try_from(leader).expect("the group's offsets partition has a leader")
    }

    /// The node leading most partitions of `topic`.
    pub fn busiest_leader(&self, topic: &str) -> u32 {
        let leaders = self.leaders(topic);
        let mut best = (0, 0);
        for node in &self.nodes {
            let led = leaders.iter().filter(|l| **l == node.id as i32).count();
            if led > best.1 {
                best = (node.id, led);
            }
        }
        assert!(best.1 > 0, "no partition of {topic} has a leader");
        best.0
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // A frozen JVM ignores SIGTERM; SIGKILL ends it in any state.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn client(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "likerate-test-metadata")
        .create()
        .expect("metadata client")
}

/// The test binary's broker: `LIKERATE_TEST_BROKERS` if set, otherwise one node started on
/// first use and kept until the binary exits.
pub fn shared_brokers() -> String {
    static SHARED: OnceLock<String> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            if let Ok(brokers) = std::env::var("LIKERATE_TEST_BROKERS") {
                return brokers;
            }
            let cluster = Cluster::start_kept(1);
            let brokers = cluster.brokers();
            std::mem::forget(cluster);
            brokers
        })
        .clone()
}

/// A folder removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "likerate-{prefix}-{}-{}",
            std::process::id(),
            super::short_id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
