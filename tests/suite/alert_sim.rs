//! The alert rule against a simulated clock (no sleeping): votes arrive every 15 seconds into
//! minute buckets, as the sink writes them; every 15 seconds the rule sees the alert window
//! (15m) and its third (5m) exactly as `likerate::aggregate` reads them (minute buckets that
//! start within the window).
//!
//! Run with `--nocapture` to see the measured detection and resolution times.

use likerate::alert::{Rule, State};
use likerate::rollup::Counts;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;

const STEP: i64 = 15;
const RULE: Rule = Rule {
    threshold: 0.85,
    min_samples: 50,
};

struct Sim {
    rng: StdRng,
    /// (minute start in seconds, counts), oldest first.
    minutes: VecDeque<(i64, Counts)>,
    now: i64,
    state: State,
    pages: u32,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim {
            rng: StdRng::seed_from_u64(seed),
            minutes: VecDeque::new(),
            now: 0,
            state: State::default(),
            pages: 0,
        }
    }

    fn window(&self, seconds: i64) -> Counts {
        let mut c = Counts::default();
        for (start, m) in &self.minutes {
            if *start >= self.now - seconds {
                c.likes += m.likes;
                c.dislikes += m.dislikes;
                c.neutral += m.neutral;
            }
        }
        c
    }

    /// 15 seconds of traffic at `per_minute` votes (Poisson-ish: each of 4x as many slots
    /// votes with probability 1/4) with like rate `p`, then one evaluation.
    fn step(&mut self, per_minute: f64, p: f64) {
        let minute = self.now - self.now.rem_euclid(60);
        if self.minutes.back().is_none_or(|(s, _)| *s != minute) {
            self.minutes.push_back((minute, Counts::default()));
        }
        let slots = (per_minute * STEP as f64 / 60.0 * 4.0).round() as u32;
        for _ in 0..slots {
            if !self.rng.random_bool(0.25) {
                continue;
            }
            let c = &mut self.minutes.back_mut().unwrap().1;
            if self.rng.random_bool(p) {
                c.likes += 1;
            } else if self.rng.random_bool(0.75) {
                c.dislikes += 1;
            } else {
                c.neutral += 1;
            }
        }
        while self
            .minutes
            .front()
            .is_some_and(|(s, _)| *s < self.now - 86_400)
        {
            self.minutes.pop_front();
        }
        self.now += STEP;
        let before = self.state;
        self.state = RULE.step(before, &self.window(900), &self.window(300));
        if self.state.firing && !before.firing {
            eprintln!(
                "page at {}s: long {:?} short {:?}",
                self.now,
                self.window(900),
                self.window(300)
            );
            self.pages += 1;
        }
    }
}

#[test]
fn a_noisy_stream_at_88_percent_does_not_page_over_simulated_days() {
    // 60 votes per 15-minute window = 4 per minute; ten independent simulated days.
    for seed in 0..10 {
        let mut sim = Sim::new(seed);
        for _ in 0..(86_400 / STEP) {
            sim.step(4.0, 0.88);
        }
        assert_eq!(sim.pages, 0, "paged on day {seed}");
    }
}

#[test]
fn low_volume_never_pages_even_when_bad() {
    // 2 votes a minute: 30 per window, below the 50-vote minimum, even at a 50% like rate.
    let mut sim = Sim::new(42);
    for _ in 0..(86_400 / STEP) {
        sim.step(2.0, 0.5);
    }
    assert_eq!(sim.pages, 0);
}

#[test]
fn a_drop_from_95_to_70_pages_within_5_minutes_and_recovery_resolves_within_two_windows() {
    let mut worst_detect = 0;
    let mut worst_resolve = 0;
    for seed in 0..20 {
        let mut sim = Sim::new(100 + seed);
        for _ in 0..(3600 / STEP) {
            sim.step(200.0, 0.95);
        }
        assert_eq!(sim.pages, 0, "paged at 95%");
        let dropped_at = sim.now;
        while !sim.state.firing {
            sim.step(200.0, 0.70);
            assert!(
                sim.now - dropped_at <= 300,
                "no page within 5 minutes of the drop"
            );
        }
        worst_detect = worst_detect.max(sim.now - dropped_at);
        for _ in 0..(1800 / STEP) {
            sim.step(200.0, 0.70);
        }
        assert!(sim.state.firing, "resolved while still at 70%");
        assert_eq!(sim.pages, 1, "flapped while at 70%");
        let recovered_at = sim.now;
        while sim.state.firing {
            sim.step(200.0, 0.95);
            assert!(
                sim.now - recovered_at <= 1800,
                "not resolved within two windows"
            );
        }
        worst_resolve = worst_resolve.max(sim.now - recovered_at);
    }
    println!("slowest page after the drop: {worst_detect} s; slowest resolve after recovery: {worst_resolve} s (20 runs)");
}

#[test]
fn wilson_interval_matches_known_values() {
    // 81 of 100 at z = 1.96, by hand: centre 0.81 + 1.96^2/200 = 0.82921, half-width
    // 1.96 * sqrt(0.81 * 0.19 / 100 + 1.96^2 / 40000) = 0.07926, divided by 1 + 1.96^2/100:
    // (0.7222, 0.8749).
    let (lo, hi) = likerate::stats::wilson(81, 100, 1.96);
    assert!(
        (lo - 0.7222).abs() < 1e-3 && (hi - 0.8749).abs() < 1e-3,
        "{lo} {hi}"
    );
    assert_eq!(likerate::stats::wilson(0, 0, 1.96), (0.0, 1.0));
}
