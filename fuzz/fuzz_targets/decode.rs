//! The pipeline's decoder on arbitrary record values: it must answer (an event or a reason
//! code), never panic, and whatever it accepts must survive PostgreSQL's text rules (no NUL).
#![no_main]

use libfuzzer_sys::fuzz_target;
use likerate::decode::{decode, Origin};

fuzz_target!(|payload: &[u8]| {
    let origin = Origin {
        topic: "feedback-events",
        partition: 0,
        offset: 7,
        received_at: chrono::Utc::now(),
    };
    if let Ok(event) = decode(payload, origin) {
        assert!(!event.subject_id.as_str().contains('\0'));
        assert!(!event.assistant_message.as_str().contains('\0'));
    }
});
