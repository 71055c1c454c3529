//! Experiments: A/B tests configured in the TOML file (`[[experiments]]`), and the sticky
//! assignment of units (a user or conversation id) to their arms (docs/ab-testing.md).
//!
//! Guarantees:
//! - A configured experiment is valid: a name of 1 to 64 characters `A-Z a-z 0-9 . _ -`
//!   (unique), a start, an optional end after it, and at least two arms with distinct model
//!   versions and integer weights of at least 1. A bad one stops the process with an error
//!   naming the `experiments` setting and the experiment.
//! - Assignment is a pure function of the experiment's name, its arms (in order, with their
//!   weights) and the unit: `x` = the first 8 bytes, big-endian, of SHA-256(`name:unit`);
//!   the unit falls in bucket `floor(x W / 2^64)` of the total weight W, and gets the arm
//!   whose cumulative weight first exceeds that bucket. So every instance, after every
//!   restart, answers the same arm for as long as the experiment's arms are not edited, and
//!   the share of units per arm converges to its weight share (SHA-256 is uniform).

use crate::config::ConfigError;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Power at which `compare` plans the votes an A/B test needs, unless `LIKERATE_AB_POWER`
/// says otherwise: the usual 80% of A/B planning.
pub const DEFAULT_POWER: f64 = 0.8;

/// One arm: a model version and its share of the units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arm {
    pub model: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Experiment {
    pub name: String,
    pub arms: Vec<Arm>,
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
}

impl Experiment {
    /// The arm of `unit`, by the hash of the module's guarantee.
    pub fn assign(&self, unit: &str) -> &Arm {
        let digest = Sha256::digest(format!("{}:{unit}", self.name).as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        let x = u64::from_be_bytes(first);
        let total: u64 = self.arms.iter().map(|a| u64::from(a.weight)).sum();
        // Multiply-shift instead of a modulo: every bucket gets the same number of hash values
        // up to one, where `x % total` would favour the low buckets.
        let bucket = ((u128::from(x) * u128::from(total)) >> 64) as u64;
        let mut cumulative = 0;
        for arm in &self.arms {
            cumulative += u64::from(arm.weight);
            if bucket < cumulative {
                return arm;
            }
        }
        unreachable!("bucket < total weight")
    }
}

/// The A/B settings `compare` and the assignment route read.
#[derive(Debug, Clone, PartialEq)]
pub struct AbConfig {
    pub experiments: BTreeMap<String, Experiment>,
    /// Power of the planning figures (`LIKERATE_AB_POWER`).
    pub power: f64,
}

impl Default for AbConfig {
    fn default() -> AbConfig {
        AbConfig {
            experiments: BTreeMap::new(),
            power: DEFAULT_POWER,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExperiment {
    name: String,
    /// A TOML date-time or an RFC 3339 string.
    start: toml::Value,
    end: Option<toml::Value>,
    arms: Vec<RawArm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArm {
    model: String,
    weight: u32,
}

impl AbConfig {
    /// `experiments` is the file's `experiments` key (an array of tables), `power` the
    /// resolved `LIKERATE_AB_POWER`.
    pub fn resolve(
        experiments: Option<&toml::Value>,
        power: Option<f64>,
    ) -> Result<AbConfig, ConfigError> {
        let power = power.unwrap_or(DEFAULT_POWER);
        if !(0.5..1.0).contains(&power) {
            return Err(ConfigError::Invalid {
                setting: "LIKERATE_AB_POWER",
                message: format!("must be a ratio in [0.5, 1), got {power}"),
            });
        }
        let invalid = |message: String| ConfigError::Invalid {
            setting: "experiments",
            message,
        };
        let raw: Vec<RawExperiment> = match experiments {
            None => Vec::new(),
            Some(v) => v.clone().try_into().map_err(|e: toml::de::Error| {
                invalid(format!("must be an array of tables ([[experiments]]): {e}"))
            })?,
        };
        let mut out = BTreeMap::new();
        for r in raw {
            let e = parse_experiment(r).map_err(&invalid)?;
            if out.contains_key(&e.name) {
                return Err(invalid(format!("experiment {:?} is defined twice", e.name)));
            }
            out.insert(e.name.clone(), e);
        }
        Ok(AbConfig {
            experiments: out,
            power,
        })
    }
}

fn parse_experiment(r: RawExperiment) -> Result<Experiment, String> {
    let name = r.name;
    let valid_name = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid_name {
        return Err(format!(
            "experiment name {name:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ -"
        ));
    }
    let time = |key: &str, v: &toml::Value| {
        let text = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Datetime(d) => d.to_string(),
            other => other.to_string(),
        };
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                format!("experiment {name:?}: {key} {text:?} is not an RFC 3339 timestamp")
            })
    };
    let start = time("start", &r.start)?;
    let end = r.end.as_ref().map(|v| time("end", v)).transpose()?;
    if end.is_some_and(|end| end <= start) {
        return Err(format!("experiment {name:?}: end must be later than start"));
    }
    if r.arms.len() < 2 {
        return Err(format!("experiment {name:?}: needs at least two arms"));
    }
    let mut arms: Vec<Arm> = Vec::new();
    for a in r.arms {
        if a.model.is_empty() || a.model.chars().count() > 128 {
            return Err(format!(
                "experiment {name:?}: arm model {:?} must be 1 to 128 characters",
                a.model
            ));
        }
        if a.weight == 0 {
            return Err(format!(
                "experiment {name:?}: arm {:?} needs a weight of at least 1",
                a.model
            ));
        }
        if arms.iter().any(|b| b.model == a.model) {
            return Err(format!(
                "experiment {name:?}: model {:?} is in two arms",
                a.model
            ));
        }
        arms.push(Arm {
            model: a.model,
            weight: a.weight,
        });
    }
    Ok(Experiment {
        name,
        arms,
        start,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Result<AbConfig, ConfigError> {
        let table: toml::Table = text.parse().unwrap();
        AbConfig::resolve(table.get("experiments"), None)
    }

    const TONE: &str = r#"
[[experiments]]
name = "tone-v2"
start = 2026-02-01T00:00:00Z
arms = [{ model = "m-a", weight = 50 }, { model = "m-b", weight = 30 }, { model = "m-c", weight = 20 }]
"#;

    #[test]
    fn assignment_is_the_documented_hash() {
        let c = config(TONE).unwrap();
        let e = &c.experiments["tone-v2"];
        // Python: x = int.from_bytes(hashlib.sha256(b"tone-v2:" + unit).digest()[:8], "big");
        // bucket = x * 100 >> 64 -> user-1: 13, user-12: 49 (m-a, buckets 0-49), user-6: 72
        // (m-b, 50-79), user-5: 98 (m-c, 80-99).
        for (unit, model) in [("user-1", "m-a"), ("user-12", "m-a"), ("user-6", "m-b")] {
            assert_eq!(e.assign(unit).model, model, "{unit}");
        }
        assert_eq!(e.assign("user-5").model, "m-c");
    }

    #[test]
    fn the_split_follows_the_weights() {
        let c = config(TONE).unwrap();
        let e = &c.experiments["tone-v2"];
        let mut counts = BTreeMap::new();
        for i in 0..100_000 {
            *counts
                .entry(e.assign(&format!("user-{i}")).model.as_str())
                .or_insert(0) += 1;
        }
        println!("100,000 units over 50/30/20: {counts:?}");
        for (model, share) in [("m-a", 0.5), ("m-b", 0.3), ("m-c", 0.2)] {
            let got = counts[model] as f64 / 100_000.0;
            assert!((got - share).abs() < 0.01, "{model}: {got}");
        }
    }

    #[test]
    fn bad_experiments_name_the_setting() {
        let cases = [
            ("[[experiments]]\nname = \"a b\"\nstart = \"2026-02-01T00:00:00Z\"\narms = []", "name"),
            ("[[experiments]]\nname = \"x\"\nstart = \"yesterday\"\narms = []", "start"),
            (
                "[[experiments]]\nname = \"x\"\nstart = \"2026-02-01T00:00:00Z\"\narms = [{ model = \"m\", weight = 1 }]",
                "two arms",
            ),
            (
                "[[experiments]]\nname = \"x\"\nstart = \"2026-02-01T00:00:00Z\"\narms = [{ model = \"m\", weight = 1 }, { model = \"n\", weight = 0 }]",
                "weight",
            ),
            (
                "[[experiments]]\nname = \"x\"\nstart = \"2026-02-01T00:00:00Z\"\nend = \"2026-01-01T00:00:00Z\"\narms = [{ model = \"m\", weight = 1 }, { model = \"n\", weight = 1 }]",
                "end",
            ),
            ("experiments = 3", "array of tables"),
        ];
        for (text, needle) in cases {
            let err = config(text).unwrap_err().to_string();
            assert!(err.starts_with("experiments: "), "{err}");
            assert!(err.contains(needle), "{err}");
        }
        let twice = format!("{TONE}{TONE}");
        assert!(config(&twice).unwrap_err().to_string().contains("twice"));
        let err = AbConfig::resolve(None, Some(1.0)).unwrap_err().to_string();
        assert!(err.starts_with("LIKERATE_AB_POWER: "), "{err}");
        assert_eq!(config("").unwrap(), AbConfig::default());
    }
}
