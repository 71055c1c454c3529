//! The integration tests that share one broker node and one PostgreSQL without disturbing
//! each other, in one test binary (one link, one Kafka node): each test makes its own
//! database, topics and consumer group. The tests that restart PostgreSQL (`tests/pipeline.rs`)
//! and the fault tests on a three-broker cluster (`tests/kafka_faults.rs`) are binaries of
//! their own, since they disturb the services everything else uses.
//!
//! | module | area |
//! |---|---|
//! | [`api`] | the feedback API, in process, against independent computations |
//! | [`dead_letters`] | dead letters exactly once: a crash at the publisher's worst point, the topic unavailable |
//! | [`hostile`] | hostile input at every edge: HTTP, Kafka payloads, configuration |
//! | [`ops`] | `dlq replay`, `erase`, `retention`, `report` (Chromium renders the report) |
//! | [`reasons`] | reason tags and comments: stored, counted, redacted, erased, retained, refused |
//! | [`votes`] | the vote rule through the sink's write path |
//! | [`training`] | training-data formats loaded by Hugging Face `datasets`, the split, dislike patterns |
//! | [`alert_sim`] | the alert rule against a simulated clock |
//! | [`observability`] | real Prometheus and Alertmanager against a running likerate |

#[path = "../common/mod.rs"]
mod common;

mod alert_sim;
mod api;
mod dead_letters;
mod hostile;
mod observability;
mod ops;
mod reasons;
mod training;
mod votes;
