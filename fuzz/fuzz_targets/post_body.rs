//! The whole body check of `POST /api/feedback` (array split, per-event decoding, event ids
//! added) on arbitrary bodies: never a panic; what it accepts is at most 1,000 events, and
//! each payload it would publish is decoded by the pipeline to the id it answers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use likerate::decode::{decode, Origin};
use likerate::http::api::ingest::{prepare, MAX_EVENTS};

fuzz_target!(|body: &[u8]| {
    if let Ok(events) = prepare("feedback-events", body) {
        assert!(!events.is_empty() && events.len() <= MAX_EVENTS);
        for e in &events {
            let origin = Origin {
                topic: "feedback-events",
                partition: 3,
                offset: 11,
                received_at: chrono::Utc::now(),
            };
            let stored = decode(e.payload(), origin).expect("published events decode");
            assert_eq!(stored.event_id, e.event_id());
        }
    }
});
