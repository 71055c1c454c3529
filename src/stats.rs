//! Statistics of like rates: the Wilson interval (the alert's and `compare`'s), and the A/B
//! test of `compare` (docs/ab-testing.md).
//!
//! The A/B test is always valid: its error rate holds however often it is looked at.
//! - The estimate is the difference of like rates A - B, stratified when there are several
//!   strata (subjects): a weighted sum of per-stratum differences with the Cochran–Mantel–
//!   Haenszel weights `nA nB / (nA + nB)`. Its variance is the delta-method (sandwich) variance
//!   summed over independent units: a vote is its own unit unless it belongs to a cluster
//!   (a conversation), whose votes are summed first. So one chatty conversation counts as one
//!   unit with a large residual, not as hundreds of independent votes.
//! - The test is the normal-mixture mixture sequential probability ratio test (mSPRT) of
//!   Johari, Koomen, Pekelis & Walsh, "Always valid inference" (2017; Operations Research
//!   2022), on that asymptotically normal estimate; equivalently the normal-mixture confidence
//!   sequence of Howard, Ramdas, McAuliffe & Sekhon (2021). Its likelihood ratio `Λ` is a
//!   nonnegative martingale under "no difference", so by Ville's inequality
//!   `P(Λ ever reaches 1/α) <= α`: `p = min(1, 1/Λ)` is below α at some look with
//!   probability at most α, whatever the number and timing of the looks.
//! - Planning: the votes per arm at which the test, looked at only once, detects a given
//!   difference with a given power. Looking more often only adds chances to cross, so the
//!   real power at that size is at least the planned one.

/// Standard deviation of the normal mixture over the true difference (in like-rate units).
/// The test is most sensitive to differences near this size; A/B tests of chat models look
/// for 2 to 5 points. Chosen by a simulation in Python (1,000 experiments, 20 looks of 100
/// votes per arm, 85% vs 80%): power 88%, 90%, 91%, 88% for 0.02, 0.03, 0.05, 0.1, false winners at
/// 85% vs 85% 0.7% to 1.4% for all four.
pub const MIXTURE_SD: f64 = 0.03;

/// The 97.5% quantile of the standard normal distribution: two-sided 95% intervals.
pub const Z95: f64 = 1.959_963_984_540_054;

/// The Wilson score interval (lower, upper) of `k` successes in `n` trials.
pub fn wilson(k: i64, n: i64, z: f64) -> (f64, f64) {
    if n <= 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = k as f64 / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let denom = 1.0 + z2 / n;
    (
        ((centre - spread) / denom).max(0.0),
        ((centre + spread) / denom).min(1.0),
    )
}

/// P(|Z| >= |z|) for a standard normal Z.
pub fn two_sided_p(z: f64) -> f64 {
    erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0)
}

/// P(Z <= x) for a standard normal Z.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// The x with `normal_cdf(x) = p`, for p in (0, 1), by bisection: it runs once per answer,
/// and bisection inherits the accuracy of [`erfc`] without a second approximation.
pub fn normal_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0_f64, 40.0_f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
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

/// The two sides of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// Where the votes of a [`Cell`] come from: the independent units of the variance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Units<'a> {
    /// Every vote is its own unit.
    Votes,
    /// One unit (a conversation), by name: its votes in other cells belong to it too.
    One(&'a str),
    /// Several units that each have all their votes in this cell, by their sums (so that a
    /// million conversations need not be read one by one). Cells with the same key hold the
    /// same units with the same votes (an A/A comparison reads each cell as both arms).
    Many(&'a str, Clusters),
}

/// Sums over units of their votes `n` and likes `y`: how many, sum of n², y², y·n. The
/// variance needs only these: sum over units of (a·y - b·n)² is a²·Σy² - 2ab·Σyn + b²·Σn².
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Clusters {
    pub count: i64,
    pub votes_sq: i64,
    pub likes_sq: i64,
    pub likes_votes: i64,
}

/// Votes of one side in one stratum, and the units they come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell<'a> {
    pub units: Units<'a>,
    pub stratum: usize,
    pub side: Side,
    pub votes: i64,
    pub likes: i64,
}

/// The difference of like rates A - B and its variance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub difference: f64,
    pub variance: f64,
    /// Independent units with votes on side A and on side B.
    pub units_a: usize,
    pub units_b: usize,
}

/// The (stratified) difference of like rates over `cells`, with its variance computed over
/// units when `clustered` and over votes otherwise. `None` when no stratum has votes on both
/// sides.
pub fn estimate(cells: &[Cell], clustered: bool) -> Option<Estimate> {
    use std::collections::{BTreeMap, BTreeSet};
    let strata = cells.iter().map(|c| c.stratum + 1).max().unwrap_or(0);
    // Per stratum: (votes, likes) of A and of B.
    let mut totals = vec![[(0i64, 0i64); 2]; strata];
    for c in cells {
        let t = &mut totals[c.stratum][c.side as usize];
        t.0 += c.votes;
        t.1 += c.likes;
    }
    let harmonic = |t: &[(i64, i64); 2]| {
        let (na, nb) = (t[0].0 as f64, t[1].0 as f64);
        if na > 0.0 && nb > 0.0 {
            na * nb / (na + nb)
        } else {
            0.0
        }
    };
    let weight_sum: f64 = totals.iter().map(harmonic).sum();
    if weight_sum == 0.0 {
        return None;
    }
    let weights: Vec<f64> = totals.iter().map(|t| harmonic(t) / weight_sum).collect();
    let rate = |s: usize, side: usize| {
        let (n, k) = totals[s][side];
        if n > 0 {
            k as f64 / n as f64
        } else {
            0.0
        }
    };
    let difference = (0..strata)
        .map(|s| weights[s] * (rate(s, 0) - rate(s, 1)))
        .sum();
    // The estimate's influence: a vote with outcome y on side A of stratum s moves it by
    // w_s (y - p_As) / n_As (negative on side B). The variance is the sum over independent
    // units of their squared summed influence.
    let mut variance = 0.0;
    let mut by_unit: BTreeMap<&str, f64> = BTreeMap::new();
    // Per key of `Units::Many`: (sum of scale, sum of scale * p, the sums).
    let mut by_many: BTreeMap<&str, (f64, f64, Clusters)> = BTreeMap::new();
    let mut units = [BTreeSet::new(), BTreeSet::new()];
    let mut singles = [0usize; 2];
    for c in cells {
        let side = c.side as usize;
        let (n, _) = totals[c.stratum][side];
        let w = weights[c.stratum];
        if w == 0.0 || c.votes == 0 {
            continue;
        }
        let p = rate(c.stratum, side);
        let sign = if c.side == Side::A { 1.0 } else { -1.0 };
        let scale = sign * w / n as f64;
        match if clustered { c.units } else { Units::Votes } {
            Units::One(unit) => {
                *by_unit.entry(unit).or_default() += scale * (c.likes as f64 - p * c.votes as f64);
                units[side].insert(unit);
            }
            Units::Many(key, sums) => {
                let m = by_many.entry(key).or_insert((0.0, 0.0, sums));
                m.0 += scale;
                m.1 += scale * p;
                singles[side] += sums.count as usize;
            }
            Units::Votes => {
                // Each vote alone: likes contribute (1 - p)^2, the others p^2.
                let (k, other) = (c.likes as f64, (c.votes - c.likes) as f64);
                variance += scale * scale * (k * (1.0 - p).powi(2) + other * p * p);
                singles[side] += c.votes as usize;
            }
        }
    }
    variance += by_unit.values().map(|u| u * u).sum::<f64>();
    variance += by_many
        .values()
        .map(|(a, b, s)| {
            let (yy, yn, nn) = (s.likes_sq as f64, s.likes_votes as f64, s.votes_sq as f64);
            // A sum of squares; the expanded form can round a hair below 0.
            (a * a * yy - 2.0 * a * b * yn + b * b * nn).max(0.0)
        })
        .sum::<f64>();
    Some(Estimate {
        difference,
        variance,
        units_a: units[0].len() + singles[0],
        units_b: units[1].len() + singles[1],
    })
}

/// The always-valid figures of an estimate at one look.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sequential {
    /// `min(1, 1/Λ)`: below α at any look with probability at most α when there is no
    /// difference.
    pub p_value: f64,
    /// The confidence sequence at level 1 - α: it holds the true difference at every look at
    /// once with probability at least 1 - α. It excludes 0 exactly when `p_value < α`.
    pub ci_low: f64,
    pub ci_high: f64,
}

/// The normal-mixture mSPRT of `e` at level `alpha` (Johari et al. 2017, eq. (11) with the
/// mixture N(0, tau^2)): `Λ = sqrt(V / (V + τ²)) exp(τ² d² / (2 V (V + τ²)))`.
pub fn sequential(e: &Estimate, alpha: f64) -> Sequential {
    let (d, v) = (e.difference, e.variance);
    if v <= 0.0 {
        // Every vote agrees on both sides: no noise to weigh the difference against.
        let p_value = if d == 0.0 { 1.0 } else { 0.0 };
        return Sequential {
            p_value,
            ci_low: d,
            ci_high: d,
        };
    }
    let t2 = MIXTURE_SD * MIXTURE_SD;
    let log_lambda = 0.5 * (v / (v + t2)).ln() + t2 * d * d / (2.0 * v * (v + t2));
    let half = boundary(v, alpha);
    Sequential {
        p_value: (-log_lambda).exp().min(1.0),
        ci_low: d - half,
        ci_high: d + half,
    }
}

/// Half-width of the level 1 - α confidence sequence at variance `v`: the |d| at which
/// `Λ = 1/α`.
fn boundary(v: f64, alpha: f64) -> f64 {
    let t2 = MIXTURE_SD * MIXTURE_SD;
    (v * (v + t2) / t2 * (-2.0 * alpha.ln() + ((v + t2) / v).ln())).sqrt()
}

/// Votes per arm at which the test detects a true difference of `effect` between two arms
/// whose like rates average `baseline`, with probability `power` at a single look
/// (conservative for repeated looks), when clustering multiplies the variance by
/// `design_effect`. Per arm: `Φ((effect - h(V)) / √V) >= power` with
/// `V = design_effect (p_a (1 - p_a) + p_b (1 - p_b)) / n`, `h` the boundary.
pub fn votes_needed(baseline: f64, effect: f64, power: f64, alpha: f64, design_effect: f64) -> i64 {
    let centre = baseline.clamp(effect / 2.0, 1.0 - effect / 2.0);
    let (pa, pb) = (centre + effect / 2.0, centre - effect / 2.0);
    let unit_variance = design_effect * (pa * (1.0 - pa) + pb * (1.0 - pb));
    let z = normal_quantile(power);
    let enough = |n: i64| {
        let v = unit_variance / n as f64;
        // No variance: a single vote per arm shows the difference.
        v <= 0.0 || effect - boundary(v, alpha) >= z * v.sqrt()
    };
    let mut hi = 1i64;
    while !enough(hi) {
        hi *= 2;
    }
    let mut lo = hi / 2;
    // enough(hi), !enough(lo) unless lo is 0: the smallest enough n is in (lo, hi].
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if enough(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn cell(side: Side, votes: i64, likes: i64) -> Cell<'static> {
        Cell {
            units: Units::Votes,
            stratum: 0,
            side,
            votes,
            likes,
        }
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
        // Quantiles from statistical tables: z(0.8) = 0.841621, z(0.975) = 1.959964.
        assert!(close(normal_quantile(0.8), 0.841_621_2, 1e-6));
        assert!(close(normal_quantile(0.975), Z95, 1e-6));
    }

    #[test]
    fn wilson_matches_reference_values() {
        // 546/700 at 95%: (0.747830, 0.809113), computed by hand from the Wilson formula.
        let (lo, hi) = wilson(546, 700, Z95);
        assert!(close(lo, 0.747_830_3, 1e-6) && close(hi, 0.809_113_3, 1e-6));
        assert_eq!(wilson(0, 0, Z95), (0.0, 1.0));
    }

    /// Figures computed independently (Python, math only) from the formulas of Johari et al.:
    /// A 460/500, B 400/500: d = 0.12, V = 0.92*0.08/500 + 0.8*0.2/500 = 4.672e-4,
    /// log Λ = 0.5 ln(V/(V+9e-4)) + 9e-4 * 0.0144 / (2 V (V + 9e-4)) = 9.60784, p = 6.71998e-5,
    /// half-width sqrt(V (V+τ²)/τ² (2 ln 20 + ln((V+τ²)/V))) = 0.0708124.
    #[test]
    fn msprt_matches_an_independent_computation() {
        let e = estimate(&[cell(Side::A, 500, 460), cell(Side::B, 500, 400)], false).unwrap();
        assert!(close(e.difference, 0.12, 1e-12));
        assert!(close(e.variance, 4.672e-4, 1e-12));
        let s = sequential(&e, 0.05);
        assert!(close(s.p_value / 6.719_98e-5, 1.0, 1e-4), "{}", s.p_value);
        assert!(close(s.ci_high - s.ci_low, 2.0 * 0.070_812_4, 1e-6));
    }

    /// One A/B experiment looked at `looks` times, `step` new votes per arm between looks;
    /// returns the look (1-based) at which a winner was declared, and its side.
    fn watch(
        rng: &mut StdRng,
        rates: (f64, f64),
        looks: usize,
        step: i64,
        test: impl Fn(&Estimate) -> f64,
    ) -> Option<(usize, Side)> {
        let (mut a, mut b) = ((0i64, 0i64), (0i64, 0i64));
        for look in 1..=looks {
            for _ in 0..step {
                a.1 += rng.random_bool(rates.0) as i64;
                b.1 += rng.random_bool(rates.1) as i64;
            }
            a.0 += step;
            b.0 += step;
            let cells = [cell(Side::A, a.0, a.1), cell(Side::B, b.0, b.1)];
            let e = estimate(&cells, true).unwrap();
            if test(&e) < 0.05 {
                let side = if e.difference > 0.0 { Side::A } else { Side::B };
                return Some((look, side));
            }
        }
        None
    }

    fn fixed_horizon_p(e: &Estimate) -> f64 {
        if e.variance > 0.0 {
            two_sided_p(e.difference / e.variance.sqrt())
        } else {
            1.0
        }
    }

    /// The claim: an A/A test looked at 20 times declares a winner far more often than
    /// 5% with a fixed-horizon test, and at most 5% with the sequential one.
    #[test]
    fn aa_tests_watched_20_times_rarely_declare_a_winner() {
        let mut rng = StdRng::seed_from_u64(17);
        let (mut sequential_winners, mut fixed_winners) = (0, 0);
        for _ in 0..1000 {
            let mut fork = StdRng::seed_from_u64(rng.random());
            let mut again = fork.clone();
            let seq = watch(&mut fork, (0.85, 0.85), 20, 100, |e| {
                sequential(e, 0.05).p_value
            });
            let fixed = watch(&mut again, (0.85, 0.85), 20, 100, fixed_horizon_p);
            sequential_winners += seq.is_some() as usize;
            fixed_winners += fixed.is_some() as usize;
        }
        println!("A/A, 1000 experiments x 20 looks of 100 votes per arm at 85%: sequential {sequential_winners} winners, fixed-horizon {fixed_winners}");
        assert!(
            sequential_winners <= 50,
            "{sequential_winners} false winners"
        );
        assert!(
            fixed_winners >= 150,
            "{fixed_winners}: peeking should inflate"
        );
    }

    /// The planner's size for 5 points at 85% (85% vs 80%, average 82.5%) at 80% power is
    /// 1,741 votes per arm, computed independently (Python, the same inequality
    /// tried for n = 1, 2, 3, ...). Watching such experiments 20 times finds B worse in at least 80%.
    #[test]
    fn a_real_difference_is_found_with_the_planned_power() {
        let n = votes_needed(0.825, 0.05, 0.8, 0.05, 1.0);
        assert_eq!(n, 1741);
        let step = (n + 19) / 20;
        let mut rng = StdRng::seed_from_u64(5);
        let mut found = Vec::new();
        let mut wrong = 0;
        for _ in 0..1000 {
            match watch(&mut rng, (0.80, 0.85), 20, step, |e| {
                sequential(e, 0.05).p_value
            }) {
                Some((look, Side::B)) => found.push(look as i64 * step),
                Some((_, Side::A)) => wrong += 1,
                None => {}
            }
        }
        found.sort_unstable();
        let median = found.get(found.len() / 2).copied().unwrap_or(0);
        println!(
            "85% vs 80%, 1000 experiments x 20 looks of {step} votes per arm: B found better in {}, wrong side {wrong}, median votes per arm at the decision {median}",
            found.len()
        );
        assert!(found.len() >= 800, "power {}", found.len());
        assert_eq!(wrong, 0);
    }

    /// A: 200 independent votes at 80%, plus one conversation of 300 likes. B: 500 votes at
    /// 80%. Counted as votes, A (92%) beats B by far; counted as conversations, the 300 likes
    /// are one unit and the test cannot tell (Python: V = 0.00276352, Λ = 1.647, p = 0.6071).
    #[test]
    fn one_chatty_conversation_decides_only_without_clustering() {
        let cells = [
            cell(Side::A, 200, 160),
            Cell {
                units: Units::One("conv-1"),
                ..cell(Side::A, 300, 300)
            },
            cell(Side::B, 500, 400),
        ];
        let votes = estimate(&cells, false).unwrap();
        let units = estimate(&cells, true).unwrap();
        assert!(close(votes.difference, 0.12, 1e-12));
        assert_eq!(units.difference, votes.difference);
        assert_eq!(
            (votes.units_a, units.units_a, units.units_b),
            (500, 201, 500)
        );
        assert!(sequential(&votes, 0.05).p_value < 0.001);
        let clustered = sequential(&units, 0.05);
        assert!(
            close(units.variance, 0.002_763_52, 1e-8),
            "{}",
            units.variance
        );
        assert!(
            close(clustered.p_value, 0.607_08, 1e-4),
            "{}",
            clustered.p_value
        );
    }

    /// A: conversations of (votes, likes) (2, 2), (3, 1), (5, 4), all of each in A's cell;
    /// B: 10 votes alone, 5 likes. p_A = 0.7, p_B = 0.5, d = 0.2, scales 1/10 and -1/10.
    /// By hand: A's units (0.6² + 1.1² + 0.5²) / 100 = 0.0182, B's votes 10 · 0.25 / 100 =
    /// 0.025, V = 0.0432. Given by name or by their sums (3 units, Σn² 38, Σy² 21, Σyn 27),
    /// the same; the same sums read as both arms (A/A) cancel.
    #[test]
    fn conversations_by_their_sums_are_conversations_by_name() {
        let b = cell(Side::B, 10, 5);
        let named: Vec<Cell> = [("c1", 2, 2), ("c2", 3, 1), ("c3", 5, 4)]
            .into_iter()
            .map(|(name, votes, likes)| Cell {
                units: Units::One(name),
                ..cell(Side::A, votes, likes)
            })
            .chain([b])
            .collect();
        let sums = Clusters {
            count: 3,
            votes_sq: 38,
            likes_sq: 21,
            likes_votes: 27,
        };
        let many = Cell {
            units: Units::Many("Math/a", sums),
            ..cell(Side::A, 10, 7)
        };
        for e in [
            estimate(&named, true).unwrap(),
            estimate(&[many, b], true).unwrap(),
        ] {
            assert!(close(e.difference, 0.2, 1e-12));
            assert!(close(e.variance, 0.0432, 1e-12), "{}", e.variance);
            assert_eq!((e.units_a, e.units_b), (3, 10));
        }
        let a_a = [
            many,
            Cell {
                side: Side::B,
                ..many
            },
        ];
        let e = estimate(&a_a, true).unwrap();
        assert_eq!((e.difference, e.variance), (0.0, 0.0));
    }

    /// Two strata with weights n_A n_B / (n_A + n_B): 100*100/200 = 50 and 300*100/400 = 75,
    /// normalised 0.4 and 0.6; differences 0.1 and 0.0, so d = 0.04. Variance by hand:
    /// 0.4^2 (0.25/100 + 0.24/100) + 0.6^2 (0.16/300 + 0.16/100) = 1.552e-3.
    #[test]
    fn strata_are_weighted_like_cochran_mantel_haenszel() {
        let s = |stratum, side, votes, likes| Cell {
            stratum,
            ..cell(side, votes, likes)
        };
        let e = estimate(
            &[
                s(0, Side::A, 100, 50),
                s(0, Side::B, 100, 40),
                s(1, Side::A, 300, 240),
                s(1, Side::B, 100, 80),
                s(2, Side::A, 50, 10),
            ],
            true,
        )
        .unwrap();
        assert!(close(e.difference, 0.04, 1e-12));
        assert!(close(e.variance, 1.552e-3, 1e-12), "{}", e.variance);
        assert_eq!(estimate(&[s(0, Side::A, 5, 1)], true), None);
    }

    #[test]
    fn unanimous_votes_have_no_noise() {
        let e = estimate(&[cell(Side::A, 200, 200), cell(Side::B, 300, 300)], true).unwrap();
        let s = sequential(&e, 0.05);
        assert_eq!((s.p_value, s.ci_low, s.ci_high), (1.0, 0.0, 0.0));
    }
}
