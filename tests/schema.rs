//! The JSON Schema of the event and the Rust decoder give the same verdict on every fixture
//! of `schemas/examples/` (valid/ must pass both, invalid/ must fail both, and the decoder's
//! reason code must be the one the file name starts with).

use chrono::Utc;
use likerate::decode::{decode, Origin};
use std::path::Path;

fn schema_verdict(validator: &jsonschema::Validator, bytes: &[u8]) -> bool {
    // A document that does not parse is invalid for the schema too.
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(instance) => validator.is_valid(&instance),
        Err(_) => false,
    }
}

#[test]
fn schema_and_decoder_agree_on_every_fixture() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("feedback-event.v1.schema.json")).unwrap())
            .unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles");
    let mut checked = 0;
    for (dir, valid) in [("valid", true), ("invalid", false)] {
        let mut entries: Vec<_> = std::fs::read_dir(root.join("examples").join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        assert!(entries.len() >= 10, "fixtures missing in {dir}");
        for path in entries {
            let bytes = std::fs::read(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let origin = Origin {
                topic: "feedback-events",
                partition: 0,
                offset: 0,
                received_at: Utc::now(),
            };
            let decoded = decode(&bytes, origin);
            assert_eq!(
                decoded.is_ok(),
                valid,
                "decoder on {dir}/{name}: {decoded:?}"
            );
            assert_eq!(
                schema_verdict(&validator, &bytes),
                valid,
                "schema on {dir}/{name}"
            );
            if let Err(e) = decoded {
                let expected = name.split("--").next().unwrap();
                assert_eq!(e.reason.code(), expected, "reason of {name}: {}", e.detail);
            }
            checked += 1;
        }
    }
    assert!(checked >= 30);
}
