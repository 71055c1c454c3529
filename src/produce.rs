//! `likerate produce`: the demo traffic and the load generator.
//!
//! Synthetic events look like chat feedback (subjects, answers of 200 to 800 characters,
//! questions, models, a like ratio per subject), with optional shares of producer duplicates
//! (the same `event_id` again), re-votes (a later event with the same `vote_id`) and invalid
//! records; or the lines of a JSONL file, sent as they are.
//!
//! What makes the demo's dislikes worth studying (issue 18):
//! - **Topics.** Each subject's questions are about one of its topics (Math: algebra, geometry,
//!   calculus, probability), in words of that topic. One topic can be weak (`--weak-topic`,
//!   by default Math's probability): its answers are not liked [`WEAK_FACTOR`] times as often
//!   as the subject's other topics', with the split chosen so the subject's like ratio stays
//!   what `--like-ratio`/`--subject-like-ratio` say (Math=0.6 still pages for Math).
//! - **Regenerations.** A share of the events (`--regenerations`) is a new answer to a recent
//!   question: same subject, topic, question, conversation and position, a new answer and vote,
//!   rated on its own at the topic's like ratio. Questions are picked uniformly, so the topic mix
//!   and the like ratios stay as they are; several answers to one question, some liked and some
//!   not, are what DPO and KTO training data are made of.
//! - **Reasons and comments.** A share of the dislikes (`--reasons`) carries a reason tag, the
//!   weak topic's mostly `wrong`; a share of those (`--comments`) a comment in words of the topic.
//!
//! Guarantee: the command exits 0 only when every record was acknowledged by the broker
//! (acks=all), and prints what it sent.

use crate::config::KafkaConfig;
use crate::kafka;
use chrono::{Duration as ChronoDuration, Utc};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    /// Events to send; 0 sends until interrupted
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Events per second; 0 sends as fast as the broker takes them
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Subjects, comma separated
    #[arg(
        long,
        default_value = "Math,Physics,Chemistry,Biology,History,Literature,Geography,Computer Science"
    )]
    pub subjects: String,
    /// Share of likes among votes (the rest split between dislikes and neutral, 3:1)
    #[arg(long, default_value_t = 0.9)]
    pub like_ratio: f64,
    /// Like ratio of one subject, SUBJECT=RATIO (repeatable), e.g. Math=0.6
    #[arg(long = "subject-like-ratio", value_name = "SUBJECT=RATIO")]
    pub subject_like_ratio: Vec<String>,
    /// Model versions, comma separated, picked uniformly; empty for none
    #[arg(long, default_value = "llama-3.2-3b,llama-3.2-3b-ft1")]
    pub models: String,
    /// Spread of created_at: uniform over [now - spread, now]
    #[arg(long, default_value = "0s")]
    pub spread: String,
    /// Share of events sent twice with the same event_id
    #[arg(long, default_value_t = 0.0)]
    pub duplicates: f64,
    /// Share of events that re-vote an earlier vote_id with a later created_at
    #[arg(long, default_value_t = 0.0)]
    pub revotes: f64,
    /// Share of invalid records (bad JSON, bad rating, missing subject)
    #[arg(long, default_value_t = 0.0)]
    pub invalid: f64,
    /// Leave event_id out (likerate then derives it from topic/partition/offset)
    #[arg(long)]
    pub no_event_id: bool,
    /// Time-ordered event ids (UUID v7, what likerate's API gives an event without an id)
    /// instead of random ones (v4, what many producers send)
    #[arg(long, conflicts_with = "no_event_id")]
    pub ordered_event_ids: bool,
    /// Seed of the generator, for reproducible traffic
    #[arg(long)]
    pub seed: Option<u64>,
    /// Send the lines of this JSONL file instead of synthetic events
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Share of events that are a new answer to a recent question (a regeneration)
    #[arg(long, default_value_t = 0.15)]
    pub regenerations: f64,
    /// Share of dislikes that carry a reason tag
    #[arg(long, default_value_t = 0.6)]
    pub reasons: f64,
    /// Share of the dislikes with a reason that also carry a comment
    #[arg(long, default_value_t = 0.4)]
    pub comments: f64,
    /// The topic answered badly, SUBJECT=TOPIC, or `none` [default: Math=probability when Math
    /// is a subject]
    #[arg(long, value_name = "SUBJECT=TOPIC")]
    pub weak_topic: Option<String>,
}

/// Counts acknowledged and failed deliveries.
#[derive(Default)]
struct Deliveries {
    acked: AtomicU64,
    failed: AtomicU64,
}

struct Context(Arc<Deliveries>);

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.acked.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::warn!(error = %e, "delivery failed");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// What `produce` sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
}

/// Sends events; blocking (run it on a blocking thread).
pub fn produce(
    kafka_config: &KafkaConfig,
    args: &ProduceArgs,
    stop: CancellationToken,
) -> anyhow::Result<Produced> {
    let deliveries = Arc::new(Deliveries::default());
    let mut config = kafka::producer_config(kafka_config);
    config.set("linger.ms", "20");
    let producer: ThreadedProducer<Context> =
        config.create_with_context(Context(deliveries.clone()))?;
    let started = Instant::now();
    let mut sent = 0u64;
    {
        let mut send = |key: &[u8], payload: &[u8]| -> anyhow::Result<()> {
            let mut record = BaseRecord::to(&kafka_config.topic)
                .key(key)
                .payload(payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, r))
                        if e.rdkafka_error_code()
                            == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                    {
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
            sent += 1;
            if args.rate > 0.0 {
                let due = started + Duration::from_secs_f64(sent as f64 / args.rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(())
        };
        match &args.file {
            Some(path) => {
                let file = std::fs::File::open(path)
                    .map_err(|e| anyhow::anyhow!("--file {}: {e}", path.display()))?;
                for line in std::io::BufReader::new(file).split(b'\n') {
                    let line = line?;
                    if line.iter().all(u8::is_ascii_whitespace) || stop.is_cancelled() {
                        continue;
                    }
                    send(b"", &line)?;
                }
            }
            None => {
                let mut generator = Generator::new(args)?;
                while (args.count == 0 || generator.produced < args.count) && !stop.is_cancelled() {
                    let (key, payload) = generator.next_record();
                    send(key.as_bytes(), &payload)?;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(Produced {
        sent,
        acked: deliveries.acked.load(Ordering::Relaxed),
        failed: deliveries.failed.load(Ordering::Relaxed),
    })
}

const WORDS: &[&str] = &[
    "the",
    "answer",
    "depends",
    "on",
    "energy",
    "force",
    "equation",
    "derivative",
    "integral",
    "because",
    "therefore",
    "consider",
    "example",
    "velocity",
    "reaction",
    "molecule",
    "cell",
    "evolution",
    "empire",
    "treaty",
    "novel",
    "metaphor",
    "river",
    "climate",
    "algorithm",
    "function",
    "variable",
    "proof",
    "theorem",
    "first",
    "second",
    "finally",
    "which",
    "means",
    "we",
    "can",
    "see",
    "that",
    "this",
    "is",
    "a",
    "simple",
    "step",
    "result",
    "so",
];

/// A topic's name and its words.
type TopicWords = (&'static str, &'static [&'static str]);

/// Topics per subject, each with words of its own that its questions, answers and comments
/// use. Subjects not listed get [`GENERIC_TOPICS`].
const TOPICS: &[(&str, &[TopicWords])] = &[
    (
        "Math",
        &[
            (
                "algebra",
                &["equation", "variable", "polynomial", "factor", "root"],
            ),
            (
                "geometry",
                &["triangle", "angle", "circle", "area", "perimeter"],
            ),
            (
                "calculus",
                &["derivative", "integral", "limit", "slope", "series"],
            ),
            (
                "probability",
                &[
                    "probability",
                    "dice",
                    "coin",
                    "bayes",
                    "conditional",
                    "expectation",
                ],
            ),
        ],
    ),
    (
        "Physics",
        &[
            (
                "mechanics",
                &["force", "velocity", "mass", "momentum", "friction"],
            ),
            (
                "electricity",
                &["current", "voltage", "resistor", "charge", "circuit"],
            ),
            (
                "optics",
                &["lens", "light", "refraction", "mirror", "wavelength"],
            ),
            (
                "thermodynamics",
                &["heat", "entropy", "temperature", "pressure", "gas"],
            ),
        ],
    ),
    (
        "Chemistry",
        &[
            (
                "bonding",
                &["bond", "electron", "covalent", "ionic", "orbital"],
            ),
            (
                "reactions",
                &["reaction", "catalyst", "equilibrium", "rate", "yield"],
            ),
            ("acids", &["acid", "base", "ph", "buffer", "titration"]),
        ],
    ),
    (
        "Computer Science",
        &[
            (
                "algorithms",
                &["algorithm", "sorting", "complexity", "recursion", "graph"],
            ),
            (
                "databases",
                &["index", "query", "transaction", "table", "join"],
            ),
            (
                "networks",
                &["packet", "protocol", "latency", "router", "socket"],
            ),
        ],
    ),
];

const GENERIC_TOPICS: &[TopicWords] = &[
    ("basics", &["definition", "concept", "overview", "term"]),
    ("methods", &["method", "approach", "analysis", "source"]),
    (
        "applications",
        &["application", "case", "practice", "impact"],
    ),
];

/// The weak topic's answers are not liked this many times as often as the other topics' of
/// its subject (while that keeps its like ratio at or above 0).
pub const WEAK_FACTOR: f64 = 3.0;

/// Reason tags of the dislikes, with their weights: outside the weak topic, and in it (where
/// the answers are mostly plain wrong).
const REASONS: [(&str, u32, u32); 6] = [
    ("wrong", 30, 75),
    ("unhelpful", 25, 8),
    ("unclear", 20, 8),
    ("too_long", 15, 4),
    ("off_topic", 7, 3),
    ("unsafe", 3, 2),
];

/// A comment per reason tag; `{topic}` and `{word}` are filled in.
const COMMENTS: [(&str, &str); 6] = [
    (
        "wrong",
        "The {topic} part is wrong: the {word} is not computed like that.",
    ),
    (
        "unhelpful",
        "This does not help me with my {topic} homework, it just repeats the {word}.",
    ),
    (
        "unclear",
        "I could not follow the explanation of the {word}.",
    ),
    ("too_long", "Far too long for a simple {topic} question."),
    ("off_topic", "I asked about {topic}, not about this."),
    (
        "unsafe",
        "This answer about {word} should not be given like this.",
    ),
];

/// One topic of a subject, with the like ratio of its answers.
#[derive(Debug, Clone)]
struct Topic {
    name: &'static str,
    words: &'static [&'static str],
    like_ratio: f64,
    weak: bool,
}

/// A question asked recently, which a regeneration answers again.
#[derive(Debug, Clone)]
struct Asked {
    subject: usize,
    topic: usize,
    question: String,
    conversation: String,
    message_index: u32,
}

/// Like ratios of a subject's topics when `weak` (if any) is not liked [`WEAK_FACTOR`] times
/// as often as the others and the subject's ratio is `ratio`: with `w` the weak topic's
/// share of the questions, `w q_weak + (1 - w) q_other = 1 - ratio` and
/// `q_weak = WEAK_FACTOR q_other`, `q_weak` capped at 1.
fn topic_ratios(ratio: f64, topics: usize, weak: Option<usize>) -> Vec<f64> {
    let Some(weak) = weak else {
        return vec![ratio; topics];
    };
    let w = 1.0 / topics as f64;
    let q = 1.0 - ratio;
    let mut q_other = q / (w * WEAK_FACTOR + 1.0 - w);
    let mut q_weak = WEAK_FACTOR * q_other;
    if q_weak > 1.0 {
        q_weak = 1.0;
        q_other = (q - w) / (1.0 - w);
    }
    (0..topics)
        .map(|i| 1.0 - if i == weak { q_weak } else { q_other })
        .collect()
}

/// The synthetic event generator.
pub struct Generator {
    rng: StdRng,
    /// Subjects with their topics.
    subjects: Vec<(String, Vec<Topic>)>,
    models: Vec<String>,
    spread: ChronoDuration,
    duplicates: f64,
    revotes: f64,
    invalid: f64,
    regenerations: f64,
    reasons: f64,
    comments: f64,
    no_event_id: bool,
    ordered_event_ids: bool,
    recent: Vec<(String, Vec<u8>)>,
    recent_votes: Vec<(String, String, String)>,
    recent_questions: Vec<Asked>,
    pub produced: u64,
}

/// Keeps at most 1000 recent items, replacing a random one when full.
fn remember<T>(rng: &mut StdRng, items: &mut Vec<T>, item: T) {
    if items.len() < 1000 {
        items.push(item);
    } else {
        let i = rng.random_range(0..1000);
        items[i] = item;
    }
}

impl Generator {
    pub fn new(args: &ProduceArgs) -> anyhow::Result<Generator> {
        let ratio = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(anyhow::anyhow!("{name} must be between 0 and 1, got {v}"))
            }
        };
        let like_ratio = ratio("--like-ratio", args.like_ratio)?;
        let mut subjects: Vec<(String, f64)> = args
            .subjects
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| (s.to_owned(), like_ratio))
            .collect();
        if subjects.is_empty() {
            anyhow::bail!("--subjects must name at least one subject");
        }
        for spec in &args.subject_like_ratio {
            let (name, value) = spec.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("--subject-like-ratio {spec:?} is not SUBJECT=RATIO")
            })?;
            let value: f64 = value
                .parse()
                .map_err(|_| anyhow::anyhow!("--subject-like-ratio {spec:?}: not a number"))?;
            let value = ratio("--subject-like-ratio", value)?;
            match subjects.iter_mut().find(|(s, _)| s == name) {
                Some(entry) => entry.1 = value,
                None => subjects.push((name.to_owned(), value)),
            }
        }
        let weak = match args.weak_topic.as_deref() {
            Some("none") => None,
            Some(spec) => {
                let (subject, topic) = spec.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("--weak-topic {spec:?} is not SUBJECT=TOPIC or none")
                })?;
                let known = subjects.iter().any(|(s, _)| s == subject)
                    && topics_of(subject).iter().any(|(t, _)| *t == topic);
                if !known {
                    anyhow::bail!(
                        "--weak-topic {spec:?}: not a topic of a generated subject ({})",
                        subjects
                            .iter()
                            .map(|(s, _)| format!(
                                "{s}: {}",
                                topics_of(s)
                                    .iter()
                                    .map(|(t, _)| *t)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ))
                            .collect::<Vec<_>>()
                            .join("; ")
                    );
                }
                Some((subject.to_owned(), topic.to_owned()))
            }
            None => subjects
                .iter()
                .any(|(s, _)| s == "Math")
                .then(|| ("Math".to_owned(), "probability".to_owned())),
        };
        let subjects = subjects
            .into_iter()
            .map(|(name, like_ratio)| {
                let table = topics_of(&name);
                let weak_index = weak
                    .as_ref()
                    .filter(|(s, _)| *s == name)
                    .and_then(|(_, t)| table.iter().position(|(n, _)| n == t));
                let ratios = topic_ratios(like_ratio, table.len(), weak_index);
                let topics = table
                    .iter()
                    .zip(ratios)
                    .enumerate()
                    .map(|(i, ((topic, words), like_ratio))| Topic {
                        name: topic,
                        words,
                        like_ratio,
                        weak: weak_index == Some(i),
                    })
                    .collect();
                (name, topics)
            })
            .collect();
        let spread = humantime::parse_duration(&args.spread)
            .map_err(|e| anyhow::anyhow!("--spread {:?}: {e}", args.spread))?;
        Ok(Generator {
            rng: match args.seed {
                Some(s) => StdRng::seed_from_u64(s),
                None => StdRng::from_os_rng(),
            },
            subjects,
            models: args
                .models
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            spread: ChronoDuration::from_std(spread)?,
            duplicates: ratio("--duplicates", args.duplicates)?,
            revotes: ratio("--revotes", args.revotes)?,
            invalid: ratio("--invalid", args.invalid)?,
            regenerations: ratio("--regenerations", args.regenerations)?,
            reasons: ratio("--reasons", args.reasons)?,
            comments: ratio("--comments", args.comments)?,
            no_event_id: args.no_event_id,
            ordered_event_ids: args.ordered_event_ids,
            recent: Vec::new(),
            recent_votes: Vec::new(),
            recent_questions: Vec::new(),
            produced: 0,
        })
    }

    /// About `min..=max` bytes of words, one in four from `topic` (when given).
    fn text(&mut self, min: usize, max: usize, topic: &[&str]) -> String {
        let target = self.rng.random_range(min..=max);
        let mut s = String::with_capacity(target + 16);
        while s.len() < target {
            if !s.is_empty() {
                s.push(' ');
            }
            let word = if !topic.is_empty() && self.rng.random_bool(0.25) {
                topic[self.rng.random_range(0..topic.len())]
            } else {
                WORDS[self.rng.random_range(0..WORDS.len())]
            };
            s.push_str(word);
        }
        s.truncate(target);
        s
    }

    /// A dislike's reason tag and comment, drawn by the shares and weights.
    fn reason(&mut self, topic: &Topic) -> (Option<&'static str>, Option<String>) {
        if !self.rng.random_bool(self.reasons) {
            return (None, None);
        }
        let weight = |r: &(&str, u32, u32)| if topic.weak { r.2 } else { r.1 };
        let total: u32 = REASONS.iter().map(weight).sum();
        let mut pick = self.rng.random_range(0..total);
        let mut tag = REASONS[0].0;
        for r in &REASONS {
            if pick < weight(r) {
                tag = r.0;
                break;
            }
            pick -= weight(r);
        }
        if !self.rng.random_bool(self.comments) {
            return (Some(tag), None);
        }
        let template = COMMENTS
            .iter()
            .find(|(t, _)| *t == tag)
            .map_or("{word}?", |(_, c)| c);
        let word = topic.words[self.rng.random_range(0..topic.words.len())];
        let comment = template
            .replace("{topic}", topic.name)
            .replace("{word}", word);
        (Some(tag), Some(comment))
    }

    /// The next record: (key, value).
    pub fn next_record(&mut self) -> (String, Vec<u8>) {
        self.produced += 1;
        if !self.recent.is_empty() && self.rng.random_bool(self.duplicates) {
            let i = self.rng.random_range(0..self.recent.len());
            return self.recent[i].clone();
        }
        if self.rng.random_bool(self.invalid) {
            let bad: &[u8] = match self.rng.random_range(0..3) {
                0 => b"{\"subject_id\": \"Math\", \"rating\": ",
                1 => b"{\"subject_id\":\"Math\",\"assistant_message\":\"x\",\"rating\":2,\"created_at\":\"2026-02-05T10:30:00Z\"}",
                _ => b"{\"assistant_message\":\"x\",\"rating\":1,\"created_at\":\"2026-02-05T10:30:00Z\"}",
            };
            return ("invalid".to_owned(), bad.to_vec());
        }
        let mut created_at = Utc::now();
        if self.spread > ChronoDuration::zero() {
            let ms = self.rng.random_range(0..=self.spread.num_milliseconds());
            created_at -= ChronoDuration::milliseconds(ms);
        }
        let revote = !self.recent_votes.is_empty() && self.rng.random_bool(self.revotes);
        let regenerate = !revote
            && !self.recent_questions.is_empty()
            && self.rng.random_bool(self.regenerations);
        let asked = if revote {
            // A re-vote happens after the vote it replaces.
            created_at = Utc::now() + ChronoDuration::seconds(1);
            let i = self.rng.random_range(0..self.recent_votes.len());
            let (subject, conversation, vote_id) = self.recent_votes[i].clone();
            let s = self
                .subjects
                .iter()
                .position(|(name, _)| *name == subject)
                .unwrap_or(0);
            let topic = self.rng.random_range(0..self.subjects[s].1.len());
            (self.fresh(s, topic, conversation), vote_id)
        } else if regenerate {
            let i = self.rng.random_range(0..self.recent_questions.len());
            (
                self.recent_questions[i].clone(),
                uuid::Uuid::new_v4().to_string(),
            )
        } else {
            let s = self.rng.random_range(0..self.subjects.len());
            let topic = self.rng.random_range(0..self.subjects[s].1.len());
            let asked = self.fresh(s, topic, uuid::Uuid::new_v4().to_string());
            let vote_id = uuid::Uuid::new_v4().to_string();
            let vote = (
                self.subjects[s].0.clone(),
                asked.conversation.clone(),
                vote_id.clone(),
            );
            remember(&mut self.rng, &mut self.recent_votes, vote);
            remember(&mut self.rng, &mut self.recent_questions, asked.clone());
            (asked, vote_id)
        };
        let (asked, vote_id) = asked;
        let topic = self.subjects[asked.subject].1[asked.topic].clone();
        let subject = self.subjects[asked.subject].0.clone();
        let rating = if self.rng.random_bool(topic.like_ratio) {
            1
        } else if self.rng.random_bool(0.75) {
            -1
        } else {
            0
        };
        let answer = self.text(200, 800, topic.words);
        let mut event = serde_json::json!({
            "subject_id": subject,
            "user_question": asked.question,
            "assistant_message": answer,
            "rating": rating,
            "message_index": asked.message_index,
            "created_at": created_at.to_rfc3339(),
            "conversation_id": asked.conversation,
            "vote_id": vote_id,
        });
        if rating == -1 {
            let (reason, comment) = self.reason(&topic);
            if let Some(reason) = reason {
                event["reason"] = serde_json::Value::from(reason);
            }
            if let Some(comment) = comment {
                event["comment"] = serde_json::Value::from(comment);
            }
        }
        if !self.models.is_empty() {
            let m = &self.models[self.rng.random_range(0..self.models.len())];
            event["model"] = serde_json::Value::String(m.clone());
        }
        if !self.no_event_id {
            let id = if self.ordered_event_ids {
                uuid::Uuid::now_v7()
            } else {
                uuid::Uuid::new_v4()
            };
            event["event_id"] = serde_json::Value::String(id.to_string());
        }
        let record = (asked.conversation, event.to_string().into_bytes());
        remember(&mut self.rng, &mut self.recent, record.clone());
        record
    }

    /// A new question of subject `s` about its topic `topic`, in `conversation`.
    fn fresh(&mut self, s: usize, topic: usize, conversation: String) -> Asked {
        let t = &self.subjects[s].1[topic];
        let (name, words) = (t.name, t.words);
        let text = self.text(20, 80, words);
        let question = format!("{} question on {name}: {text}?", self.subjects[s].0);
        Asked {
            subject: s,
            topic,
            question,
            conversation,
            message_index: self.rng.random_range(0..20),
        }
    }
}

/// The topics of a subject: its own, or [`GENERIC_TOPICS`].
fn topics_of(subject: &str) -> &'static [TopicWords] {
    TOPICS
        .iter()
        .find(|(s, _)| *s == subject)
        .map_or(GENERIC_TOPICS, |(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProduceArgs,
    }

    #[test]
    fn synthetic_events_decode_and_follow_the_ratio() {
        let cli = Cli::parse_from([
            "x",
            "--seed",
            "7",
            "--like-ratio",
            "0.8",
            "--subjects",
            "Math",
        ]);
        let mut g = Generator::new(&cli.args).unwrap();
        let mut likes = 0;
        for offset in 0..2000 {
            let (_, payload) = g.next_record();
            let origin = crate::decode::Origin {
                topic: "t",
                partition: 0,
                offset,
                received_at: Utc::now(),
            };
            let e = crate::decode::decode(&payload, origin).unwrap();
            assert_eq!(e.subject_id.as_str(), "Math");
            let len = e.assistant_message.as_str().len();
            assert!((200..=800).contains(&len), "{len}");
            likes += i32::from(e.rating == crate::event::Rating::Like);
        }
        assert!((1500..1700).contains(&likes), "{likes}");
    }

    /// The decoded events of `n` records generated with `flags`.
    fn events(n: i64, flags: &[&str]) -> Vec<crate::event::FeedbackEvent> {
        let mut argv = vec!["x", "--seed", "11"];
        argv.extend(flags);
        let mut g = Generator::new(&Cli::parse_from(argv).args).unwrap();
        (0..n)
            .map(|offset| {
                let (_, payload) = g.next_record();
                let origin = crate::decode::Origin {
                    topic: "t",
                    partition: 0,
                    offset,
                    received_at: Utc::now(),
                };
                crate::decode::decode(&payload, origin).unwrap()
            })
            .collect()
    }

    #[test]
    fn event_ids_are_random_unless_asked_ordered() {
        let random = events(300, &[]);
        assert!(random
            .iter()
            .all(|e| e.event_id.get_version() == Some(uuid::Version::Random)));
        let ordered = events(300, &["--ordered-event-ids"]);
        assert!(ordered
            .iter()
            .all(|e| e.event_id.get_version() == Some(uuid::Version::SortRand)));
        // In the order they were made (no duplicates by default, which would repeat an older id).
        assert!(ordered.windows(2).all(|w| w[0].event_id < w[1].event_id));
    }

    fn like_share<'a>(events: impl IntoIterator<Item = &'a crate::event::FeedbackEvent>) -> f64 {
        let (mut likes, mut all) = (0, 0);
        for e in events {
            all += 1;
            likes += i32::from(e.rating == crate::event::Rating::Like);
        }
        f64::from(likes) / f64::from(all)
    }

    fn question(e: &crate::event::FeedbackEvent) -> &str {
        e.user_question.as_ref().map_or("", |q| q.as_str())
    }

    /// The demo's shape (deploy/local/demo.sh): Math at 60% overall, its probability questions
    /// far below its others; the other subjects at their ratio.
    #[test]
    fn a_weak_topic_sits_inside_a_subject_that_keeps_its_ratio() {
        let all = events(
            12_000,
            &["--like-ratio", "0.92", "--subject-like-ratio", "Math=0.6"],
        );
        let math: Vec<_> = all
            .iter()
            .filter(|e| e.subject_id.as_str() == "Math")
            .collect();
        let rate = like_share(math.iter().copied());
        assert!((0.56..0.64).contains(&rate), "Math liked {rate}");
        let (weak, others): (Vec<_>, Vec<_>) = math
            .iter()
            .partition(|e| question(e).starts_with("Math question on probability:"));
        assert!(
            weak.len() > math.len() / 6,
            "{} of {}",
            weak.len(),
            math.len()
        );
        let (weak_rate, other_rate) = (like_share(weak), like_share(others));
        // 20% and 73% by the construction of topic_ratios.
        assert!(
            weak_rate < 0.3 && other_rate > 0.65,
            "{weak_rate} vs {other_rate}"
        );
        let rest = like_share(all.iter().filter(|e| e.subject_id.as_str() != "Math"));
        assert!((0.9..0.94).contains(&rest), "{rest}");
        // --weak-topic none: Math's topics are alike.
        let flat = events(
            8_000,
            &[
                "--subjects",
                "Math",
                "--like-ratio",
                "0.6",
                "--weak-topic",
                "none",
            ],
        );
        let (weak, others): (Vec<_>, Vec<_>) = flat
            .iter()
            .partition(|e| question(e).starts_with("Math question on probability:"));
        let gap = like_share(others) - like_share(weak);
        assert!(gap.abs() < 0.06, "{gap}");
    }

    /// Regenerations give questions several answers, liked and disliked: DPO pairs and KTO's
    /// both labels.
    #[test]
    fn regenerations_give_questions_liked_and_disliked_answers() {
        let all = events(
            5_000,
            &["--subjects", "Math,Physics", "--like-ratio", "0.7"],
        );
        let mut by_question: std::collections::HashMap<&str, Vec<&crate::event::FeedbackEvent>> =
            Default::default();
        for e in &all {
            by_question.entry(question(e)).or_default().push(e);
        }
        let repeated = by_question.values().filter(|v| v.len() > 1).count();
        let pairs = by_question
            .values()
            .filter(|v| {
                v.iter().any(|e| e.rating == crate::event::Rating::Like)
                    && v.iter().any(|e| e.rating == crate::event::Rating::Dislike)
            })
            .count();
        assert!(
            repeated > 300,
            "{repeated} questions answered more than once"
        );
        assert!(
            pairs > 80,
            "{pairs} questions with a liked and a disliked answer"
        );
        for answers in by_question.values().filter(|v| v.len() > 1) {
            let first = answers[0];
            for e in &answers[1..] {
                // Same question, same conversation and subject, another answer and vote.
                assert_eq!(e.subject_id, first.subject_id);
                assert_eq!(e.conversation_id, first.conversation_id);
                assert_ne!(e.assistant_message, first.assistant_message);
                assert_ne!(e.vote_id, first.vote_id);
            }
        }
        // Off: every question is asked once.
        let once = events(
            2_000,
            &[
                "--subjects",
                "Math",
                "--regenerations",
                "0",
                "--revotes",
                "0",
            ],
        );
        let distinct: std::collections::HashSet<&str> = once.iter().map(question).collect();
        assert_eq!(distinct.len(), once.len());
    }

    #[test]
    fn part_of_the_dislikes_carry_reasons_and_comments() {
        let all = events(
            10_000,
            &[
                "--like-ratio",
                "0.7",
                "--reasons",
                "0.5",
                "--comments",
                "0.4",
            ],
        );
        let dislikes: Vec<_> = all
            .iter()
            .filter(|e| e.rating == crate::event::Rating::Dislike)
            .collect();
        let with_reason = dislikes.iter().filter(|e| e.reason.is_some()).count();
        let with_comment = dislikes.iter().filter(|e| e.comment.is_some()).count();
        let share = with_reason as f64 / dislikes.len() as f64;
        assert!((0.45..0.55).contains(&share), "{share}");
        let share = with_comment as f64 / with_reason as f64;
        assert!((0.34..0.46).contains(&share), "{share}");
        assert!(dislikes
            .iter()
            .all(|e| e.reason.is_some() || e.comment.is_none()));
        assert!(all
            .iter()
            .filter(|e| e.rating != crate::event::Rating::Dislike)
            .all(|e| e.reason.is_none() && e.comment.is_none()));
        // The weak topic's dislikes are mostly `wrong`, the others' spread out.
        let wrong_share = |weak: bool| {
            let tagged: Vec<_> = dislikes
                .iter()
                .filter(|e| {
                    question(e).starts_with("Math question on probability:") == weak
                        && e.reason.is_some()
                })
                .collect();
            let wrong = tagged
                .iter()
                .filter(|e| e.reason.as_ref().is_some_and(|r| r.as_str() == "wrong"))
                .count();
            wrong as f64 / tagged.len() as f64
        };
        let (weak, other) = (wrong_share(true), wrong_share(false));
        assert!(weak > 0.6 && other < 0.4, "{weak} vs {other}");
        let tags: std::collections::BTreeSet<&str> = dislikes
            .iter()
            .filter_map(|e| e.reason.as_ref().map(|r| r.as_str()))
            .collect();
        assert_eq!(tags.len(), REASONS.len(), "{tags:?}");
        let none = events(2_000, &["--reasons", "0"]);
        assert!(none
            .iter()
            .all(|e| e.reason.is_none() && e.comment.is_none()));
    }

    #[test]
    fn weak_topics_are_checked() {
        let bad = |flags: &[&str]| {
            let mut argv = vec!["x"];
            argv.extend(flags);
            Generator::new(&Cli::parse_from(argv).args)
                .err()
                .map(|e| e.to_string())
        };
        let e = bad(&["--weak-topic", "Math=poetry"]).unwrap();
        assert!(
            e.contains("Math: algebra, geometry, calculus, probability"),
            "{e}"
        );
        assert!(bad(&["--weak-topic", "Math"]).is_some());
        assert!(bad(&["--subjects", "Physics", "--weak-topic", "Math=probability"]).is_some());
        assert!(bad(&["--subjects", "Physics", "--weak-topic", "Physics=optics"]).is_none());
        // The default needs no Math.
        assert!(bad(&["--subjects", "History"]).is_none());
    }

    #[test]
    fn topic_ratios_keep_the_subject_ratio() {
        for (ratio, topics) in [(0.6, 4), (0.9, 4), (0.2, 3), (0.0, 4), (1.0, 2)] {
            let r = topic_ratios(ratio, topics, Some(1));
            let mean = r.iter().sum::<f64>() / topics as f64;
            assert!((mean - ratio).abs() < 1e-12, "{ratio}: {r:?}");
            assert!(r.iter().all(|x| (0.0..=1.0).contains(x)), "{r:?}");
            // The weak topic is not liked WEAK_FACTOR times as often, unless that is capped.
            let (weak, other) = (1.0 - r[1], 1.0 - r[0]);
            assert!(
                weak == 1.0 || (weak - WEAK_FACTOR * other).abs() < 1e-12,
                "{r:?}"
            );
        }
        assert_eq!(topic_ratios(0.6, 3, None), vec![0.6; 3]);
    }
}
