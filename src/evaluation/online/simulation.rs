//! Seeded simulations of experiments watched after every observation: the
//! mSPRT keeps its false-alarm rate under alpha where a t-test re-run at
//! each look does not, and still finds real differences.

use super::{MeanStat, Proportion, SequentialTest, Verdict, compare_means, compare_proportions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const RUNS: u64 = 200;
const LOOKS: usize = 2000;

/// A 1–5 rating drawn with the given probabilities of 1, 2, 3, 4 and 5.
fn rating(rng: &mut StdRng, weights: [f64; 5]) -> f64 {
    let mut u = rng.random::<f64>();
    for (stars, w) in (1..=5).zip(weights) {
        if u < w {
            return f64::from(stars);
        }
        u -= w;
    }
    5.0
}

/// The first verdict other than inconclusive over `LOOKS` looks, one
/// observation per arm between looks.
fn first_call_on_rates(seed: u64, candidate_rate: f64, production_rate: f64) -> Verdict {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut c, mut p) = (Proportion::default(), Proportion::default());
    let test = SequentialTest::for_rate(true);
    for _ in 0..LOOKS {
        c.add(rng.random_bool(candidate_rate));
        p.add(rng.random_bool(production_rate));
        let verdict = compare_proportions(&c, &p, &test).verdict;
        if verdict != Verdict::Inconclusive {
            return verdict;
        }
    }
    Verdict::Inconclusive
}

fn first_call_on_ratings(seed: u64, candidate: [f64; 5], production: [f64; 5]) -> Verdict {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut c, mut p) = (MeanStat::default(), MeanStat::default());
    let test = SequentialTest::for_rating();
    for _ in 0..LOOKS {
        c.add(rating(&mut rng, candidate));
        p.add(rating(&mut rng, production));
        let verdict = compare_means(&c, &p, &test).verdict;
        if verdict != Verdict::Inconclusive {
            return verdict;
        }
    }
    Verdict::Inconclusive
}

/// Whether a fixed-horizon z-test, wrongly re-run at every look, ever
/// rejects: the contrast that shows the simulation can see peeking's harm.
fn naive_z_test_ever_rejects(seed: u64, rate: f64) -> bool {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut c, mut p) = (Proportion::default(), Proportion::default());
    (0..LOOKS).any(|i| {
        c.add(rng.random_bool(rate));
        p.add(rng.random_bool(rate));
        let comparison = compare_proportions(&c, &p, &SequentialTest::for_rate(true));
        i >= 100 && comparison.statistic.is_some_and(|z| z.abs() > 1.96)
    })
}

const USUAL: [f64; 5] = [0.05, 0.10, 0.20, 0.35, 0.30];
const HAPPIER: [f64; 5] = [0.03, 0.07, 0.15, 0.35, 0.40];

#[test]
fn peeking_at_every_look_under_no_difference_rarely_rejects() {
    let on_rates = (0..RUNS)
        .filter(|s| first_call_on_rates(*s, 0.1, 0.1) != Verdict::Inconclusive)
        .count();
    let on_ratings = (0..RUNS)
        .filter(|s| first_call_on_ratings(*s, USUAL, USUAL) != Verdict::Inconclusive)
        .count();
    let naive = (0..RUNS)
        .filter(|s| naive_z_test_ever_rejects(*s, 0.1))
        .count();
    // 10% of 200 runs is 20; alpha is 0.05.
    assert!(on_rates < 20, "{on_rates} false alarms on rates");
    assert!(on_ratings < 20, "{on_ratings} false alarms on ratings");
    assert!(naive > 40, "the naive test rejected only {naive} times");
}

#[test]
fn a_real_difference_is_found_in_the_right_direction() {
    let runs = 50;
    let on_rates = (0..runs)
        .filter(|s| first_call_on_rates(1000 + s, 0.15, 0.10) == Verdict::Better)
        .count();
    let on_ratings = (0..runs)
        .filter(|s| first_call_on_ratings(1000 + s, HAPPIER, USUAL) == Verdict::Better)
        .count();
    let reversed = (0..runs)
        .filter(|s| first_call_on_ratings(2000 + s, USUAL, HAPPIER) == Verdict::Worse)
        .count();
    assert!(on_rates >= 45, "found on rates in {on_rates} of {runs}");
    assert!(
        on_ratings >= 45,
        "found on ratings in {on_ratings} of {runs}"
    );
    assert!(reversed >= 45, "found reversed in {reversed} of {runs}");
}
