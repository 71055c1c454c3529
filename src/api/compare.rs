//! `GET /api/feedback/compare`: two model versions, A/B, from the rollups.
//!
//! Per model: votes, likes, like rate and its 95% Wilson interval. Between them: the
//! difference of like rates (A - B), the two-sided p-value of the pooled two-proportion
//! z-test, and a verdict:
//! - `not_enough_data` when either model has fewer than [`MIN_VOTES`] votes;
//! - `a_better` / `b_better` when p < [`ALPHA`], by the sign of the difference;
//! - `no_difference` otherwise.
//!
//! The same figures are given per subject (`by_subject`), and a stratified test over the
//! subjects (Cochran–Mantel–Haenszel, subjects as strata) with its own verdict. When the
//! pooled and the stratified verdicts disagree (and neither lacks data), `simpson_warning` is
//! true: the pooled difference comes from the mix of subjects each model saw, not from the
//! models (Simpson's paradox), and the stratified verdict is the one to trust.
//!
//! Counts are current votes, with the rollups' one-minute resolution for `since`/`until`
//! (see [`super::stats`]).

use super::stats::{query_rollups, rollup_scan};
use super::{db_error, Filter, ParamError, Params};
use crate::aggregate::Counts;
use crate::alert::wilson;
use crate::http::{ApiError, AppState};
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Fewest votes per model (overall, per subject, or in the stratified comparison) for a
/// verdict other than `not_enough_data`: below it a 95% interval is wider than ±10 points.
pub const MIN_VOTES: i64 = 100;
/// Significance level of the verdicts.
pub const ALPHA: f64 = 0.05;
/// The 97.5% quantile of the standard normal distribution: two-sided 95% intervals.
const Z95: f64 = 1.959_963_984_540_054;

const BY_SUBJECT_AND_MODEL: &str = concat!(
    "SELECT r.subject_id::text, r.model::text, sum(r.likes)::int8, sum(r.dislikes)::int8,
            sum(r.neutral)::int8",
    rollup_scan!(),
    "
GROUP BY 1, 2"
);

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    ABetter,
    BBetter,
    NoDifference,
    NotEnoughData,
}

/// One model's figures.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Arm {
    pub model: String,
    pub votes: i64,
    pub likes: i64,
    pub dislikes: i64,
    pub neutral: i64,
    /// `None` (null) without votes.
    pub like_rate: Option<f64>,
    /// 95% Wilson score interval of the like rate; (0, 1) without votes.
    pub ci_low: f64,
    pub ci_high: f64,
}

impl Arm {
    fn new(model: &str, c: Counts) -> Arm {
        let (ci_low, ci_high) = wilson(c.likes, c.total(), Z95);
        Arm {
            model: model.to_owned(),
            votes: c.total(),
            likes: c.likes,
            dislikes: c.dislikes,
            neutral: c.neutral,
            like_rate: c.like_ratio(),
            ci_low,
            ci_high,
        }
    }
}

/// A and B with the test between them.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Comparison {
    pub model_a: Arm,
    pub model_b: Arm,
    /// Like rate of A minus like rate of B; `None` when either has no votes.
    pub difference: Option<f64>,
    /// Two-sided p-value of the pooled two-proportion z-test; `None` when either has no votes.
    pub p_value: Option<f64>,
    pub verdict: Verdict,
}

fn verdict(votes_a: i64, votes_b: i64, p_value: Option<f64>, direction: f64) -> Verdict {
    match p_value {
        _ if votes_a < MIN_VOTES || votes_b < MIN_VOTES => Verdict::NotEnoughData,
        Some(p) if p < ALPHA && direction > 0.0 => Verdict::ABetter,
        Some(p) if p < ALPHA && direction < 0.0 => Verdict::BBetter,
        _ => Verdict::NoDifference,
    }
}

impl Comparison {
    pub fn new(model_a: &str, a: Counts, model_b: &str, b: Counts) -> Comparison {
        let (na, nb) = (a.total(), b.total());
        let (difference, p_value) = match (a.like_ratio(), b.like_ratio()) {
            (Some(pa), Some(pb)) => {
                let pooled = (a.likes + b.likes) as f64 / (na + nb) as f64;
                let se = (pooled * (1.0 - pooled) * (1.0 / na as f64 + 1.0 / nb as f64)).sqrt();
                // All likes or no likes on both sides: the rates are equal, nothing to test.
                let p = if se > 0.0 {
                    two_sided_p((pa - pb) / se)
                } else {
                    1.0
                };
                (Some(pa - pb), Some(p))
            }
            _ => (None, None),
        };
        Comparison {
            model_a: Arm::new(model_a, a),
            model_b: Arm::new(model_b, b),
            difference,
            p_value,
            verdict: verdict(na, nb, p_value, difference.unwrap_or(0.0)),
        }
    }
}

/// The Cochran–Mantel–Haenszel test of "like" vs model, stratified by subject.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Stratified {
    pub method: &'static str,
    /// Subjects where both models have votes (the others carry no comparison).
    pub subjects: usize,
    pub votes_a: i64,
    pub votes_b: i64,
    /// Mantel–Haenszel common odds ratio of a like, A vs B; `None` when undefined.
    pub odds_ratio: Option<f64>,
    /// p-value of the CMH chi-square (1 degree of freedom, no continuity correction).
    pub p_value: Option<f64>,
    pub verdict: Verdict,
}

/// Strata: per subject, (A counts, B counts).
pub fn stratified(strata: &[(Counts, Counts)]) -> Stratified {
    let (mut deviation, mut variance, mut r, mut s) = (0.0, 0.0, 0.0, 0.0);
    let (mut subjects, mut votes_a, mut votes_b) = (0, 0, 0);
    for (a, b) in strata {
        let (n1, n2) = (a.total() as f64, b.total() as f64);
        if n1 == 0.0 || n2 == 0.0 {
            continue;
        }
        subjects += 1;
        votes_a += a.total();
        votes_b += b.total();
        let t = n1 + n2;
        let liked = (a.likes + b.likes) as f64;
        let other = t - liked;
        deviation += a.likes as f64 - n1 * liked / t;
        if t > 1.0 {
            variance += n1 * n2 * liked * other / (t * t * (t - 1.0));
        }
        r += a.likes as f64 * (b.total() - b.likes) as f64 / t;
        s += (a.total() - a.likes) as f64 * b.likes as f64 / t;
    }
    let p_value = if subjects == 0 {
        None
    } else if variance > 0.0 {
        // A chi-square with one degree of freedom is a squared standard normal.
        Some(two_sided_p(deviation / variance.sqrt()))
    } else {
        Some(1.0)
    };
    Stratified {
        method: "cochran_mantel_haenszel",
        subjects,
        votes_a,
        votes_b,
        odds_ratio: (s > 0.0).then(|| r / s),
        p_value,
        verdict: verdict(votes_a, votes_b, p_value, deviation),
    }
}

/// P(|Z| >= |z|) for a standard normal Z.
pub fn two_sided_p(z: f64) -> f64 {
    erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0)
}

/// The complementary error function, by the Chebyshev fit of Numerical Recipes (2nd ed.,
/// section 6.2, `erfcc`): fractional error below 1.2e-7 everywhere, ample for a p-value
/// compared with 0.05.
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareParams {
    model_a: Option<String>,
    model_b: Option<String>,
    subject_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct SubjectComparison {
    pub subject_id: String,
    #[serde(flatten)]
    pub comparison: Comparison,
}

#[derive(Serialize, Debug)]
pub struct CompareAnswer {
    #[serde(flatten)]
    pub pooled: Comparison,
    pub subject_id: Option<String>,
    pub min_votes: i64,
    pub alpha: f64,
    pub by_subject: Vec<SubjectComparison>,
    pub stratified: Stratified,
    pub simpson_warning: bool,
}

fn required(param: &'static str, value: Option<String>) -> Result<String, ParamError> {
    super::text_param(param, value.as_deref())?.ok_or_else(|| ParamError::new(param, "is required"))
}

pub async fn compare(
    State(state): State<AppState>,
    Params(p): Params<CompareParams>,
) -> Result<Json<CompareAnswer>, ApiError> {
    let model_a = required("model_a", p.model_a)?;
    let model_b = required("model_b", p.model_b)?;
    if model_a == model_b {
        return Err(ParamError::new("model_b", "must differ from model_a").into());
    }
    let filter = Filter::parse(
        p.subject_id.as_deref(),
        None,
        p.since.as_deref(),
        p.until.as_deref(),
    )?;
    let rows = query_rollups(
        &state,
        BY_SUBJECT_AND_MODEL,
        &filter,
        Some(vec![model_a.clone(), model_b.clone()]),
    )
    .await
    .map_err(db_error)?;
    let mut per_subject: BTreeMap<String, (Counts, Counts)> = BTreeMap::new();
    for r in &rows {
        let model: String = r.get(1);
        let c = Counts {
            likes: r.get(2),
            dislikes: r.get(3),
            neutral: r.get(4),
        };
        let cell = per_subject.entry(r.get(0)).or_default();
        let side = if model == model_a {
            &mut cell.0
        } else {
            &mut cell.1
        };
        *side = add(*side, c);
    }
    let (a, b) = per_subject
        .values()
        .fold((Counts::default(), Counts::default()), |(a, b), (x, y)| {
            (add(a, *x), add(b, *y))
        });
    let pooled = Comparison::new(&model_a, a, &model_b, b);
    let strata: Vec<(Counts, Counts)> = per_subject.values().copied().collect();
    let stratified = stratified(&strata);
    let decisive = |v: Verdict| v != Verdict::NotEnoughData;
    let simpson_warning = decisive(pooled.verdict)
        && decisive(stratified.verdict)
        && pooled.verdict != stratified.verdict;
    Ok(Json(CompareAnswer {
        pooled,
        subject_id: filter.subject_id,
        min_votes: MIN_VOTES,
        alpha: ALPHA,
        by_subject: per_subject
            .into_iter()
            .map(|(subject_id, (a, b))| SubjectComparison {
                subject_id,
                comparison: Comparison::new(&model_a, a, &model_b, b),
            })
            .collect(),
        stratified,
        simpson_warning,
    }))
}

fn add(a: Counts, b: Counts) -> Counts {
    Counts {
        likes: a.likes + b.likes,
        dislikes: a.dislikes + b.dislikes,
        neutral: a.neutral + b.neutral,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(likes: i64, votes: i64) -> Counts {
        Counts {
            likes,
            dislikes: votes - likes,
            neutral: 0,
        }
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn erfc_matches_reference_values() {
        // Reference values from Python's math.erfc (double precision).
        for (x, want) in [
            (0.0, 1.0),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_13),
            (2.0, 0.004_677_734_981_047_266),
            (3.0, 2.209_049_699_858_544e-5),
            (-1.0, 1.842_700_792_949_715),
        ] {
            assert!(
                close(erfc(x) / want, 1.0, 1.2e-7),
                "erfc({x}) = {}",
                erfc(x)
            );
        }
        assert!(close(two_sided_p(Z95), 0.05, 1e-8));
    }

    /// The kidney-stone shape of Simpson's paradox, doubled: A is better in each subject,
    /// B looks better pooled because A got the harder subject more often. Expected figures
    /// computed independently (Python, math.erfc):
    /// pooled A 546/700, B 578/700: difference -0.0457143, z = -2.14969, p = 0.0315796;
    /// CMH: sum(a - E) = 13.6892, chi2 = 4.87473, p = 0.0272527, MH odds ratio 1.446847.
    #[test]
    fn simpson_case_has_known_answers() {
        let math = (counts(162, 174), counts(468, 540));
        let physics = (counts(384, 526), counts(110, 160));
        let a = add(math.0, physics.0);
        let b = add(math.1, physics.1);
        let pooled = Comparison::new("a", a, "b", b);
        assert!(close(pooled.difference.unwrap(), -0.045_714_285_7, 1e-9));
        assert!(close(pooled.p_value.unwrap(), 0.031_579_56, 1e-6));
        assert_eq!(pooled.verdict, Verdict::BBetter);
        // Wilson 95% of 546/700: (0.747830, 0.809113).
        assert!(close(pooled.model_a.ci_low, 0.747_830_3, 1e-6));
        assert!(close(pooled.model_a.ci_high, 0.809_113_3, 1e-6));
        let s = stratified(&[math, physics]);
        assert!(close(s.p_value.unwrap(), 0.027_252_74, 1e-6));
        assert!(close(s.odds_ratio.unwrap(), 1.446_846_6, 1e-6));
        assert_eq!(s.verdict, Verdict::ABetter);
        assert_eq!(s.subjects, 2);
    }

    #[test]
    fn small_or_degenerate_samples() {
        let c = Comparison::new("a", counts(90, 99), "b", counts(10, 500));
        assert_eq!(c.verdict, Verdict::NotEnoughData);
        let c = Comparison::new("a", counts(200, 200), "b", counts(300, 300));
        assert_eq!((c.p_value, c.verdict), (Some(1.0), Verdict::NoDifference));
        let c = Comparison::new("a", Counts::default(), "b", counts(300, 300));
        assert_eq!((c.difference, c.p_value), (None, None));
        assert_eq!(c.model_a.like_rate, None);
        let s = stratified(&[(counts(5, 10), Counts::default())]);
        assert_eq!((s.subjects, s.p_value), (0, None));
        assert_eq!(s.verdict, Verdict::NotEnoughData);
    }
}
