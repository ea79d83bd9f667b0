//! The always-valid comparison of a candidate with production: the mixture
//! sequential probability ratio test (mSPRT) of Johari, Pekelis and Walsh,
//! "Always valid inference" (the test behind Optimizely's stats engine).
//!
//! The estimated difference Δ̂ (candidate − production) is treated as normal
//! with variance V around the true difference θ. Against H0: θ = 0, the test
//! mixes the alternatives with θ ~ N(0, τ²), which gives the likelihood ratio
//!
//! ```text
//! Λ = √(V / (V + τ²)) · exp(Δ̂² τ² / (2 V (V + τ²)))
//! ```
//!
//! Λ is a martingale under H0, so by Ville's inequality the chance that it
//! *ever* reaches 1/α is at most α: the p-value min(1, 1/Λ) may be looked at
//! after every observation without inflating false alarms, unlike a t-test
//! re-run at each look. A caller that keeps the p-values of earlier looks may
//! report their running minimum, the monotone always-valid p-value of the
//! paper; deciding at each look with the current one is already valid.
//!
//! V is estimated from the data (the paper's plug-in): for means, the
//! unequal-variance s²_c/n_c + s²_p/n_p; for proportions, the pooled rate's
//! p̄(1 − p̄)(1/n_c + 1/n_p), the variance under H0, which stays positive
//! early on when one arm has seen no hits yet. Below `min_per_arm`
//! observations in either arm the estimate is too rough for that to hold,
//! so the verdict stays inconclusive there.
//!
//! τ² is the squared size of the differences the test is tuned to find
//! quickly; any τ² keeps the test valid, a poor one only makes it slower.
//! The defaults: [`TAU_SQ_RATE`] for rates in 0..1, [`TAU_SQ_RATING`] for
//! 1–5 ratings. Metrics on another scale (latency in ms) need a τ² of
//! their own, through [`SequentialTest::tau_sq`].

use super::{MeanStat, Proportion, finite};
use serde::{Deserialize, Serialize};

/// τ = 0.05: differences of about five percentage points in an error or
/// thumbs-up rate, the size worth acting on between model versions.
pub const TAU_SQ_RATE: f64 = 0.05 * 0.05;

/// τ = 0.25: a quarter of a star on the 1–5 rating scale.
pub const TAU_SQ_RATING: f64 = 0.25 * 0.25;

/// How one metric is compared.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SequentialTest {
    /// Whether a larger value is an improvement (ratings) or not (errors).
    pub higher_is_better: bool,
    /// The false-alarm bound over the whole, continuously watched experiment.
    pub alpha: f64,
    /// Fewer observations in either arm give an inconclusive verdict.
    pub min_per_arm: u64,
    /// The mixing variance τ² (see the module docs).
    pub tau_sq: f64,
}

impl SequentialTest {
    /// For a rate in 0..1. Binary outcomes need more observations than
    /// ratings before their variance estimate settles, hence 100 per arm.
    pub fn for_rate(higher_is_better: bool) -> Self {
        Self {
            higher_is_better,
            alpha: 0.05,
            min_per_arm: 100,
            tau_sq: TAU_SQ_RATE,
        }
    }

    /// For 1–5 ratings, where higher is better.
    pub fn for_rating() -> Self {
        Self {
            higher_is_better: true,
            alpha: 0.05,
            min_per_arm: 30,
            tau_sq: TAU_SQ_RATING,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Better,
    Worse,
    Inconclusive,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Candidate minus production; `None` while either arm has no data.
    pub difference: Option<f64>,
    /// The difference in standard errors, Δ̂ / √V; `None` while V is unknown.
    pub statistic: Option<f64>,
    /// The always-valid p-value in 0..1; 1 without evidence.
    pub p_value: f64,
    pub verdict: Verdict,
}

/// min(1, 1/Λ) for an estimated difference with variance `variance` and
/// mixing variance `tau_sq`; 1 when either variance is not positive.
pub fn msprt_p_value(difference: f64, variance: f64, tau_sq: f64) -> f64 {
    if !(variance > 0.0 && tau_sq > 0.0 && difference.is_finite()) {
        return 1.0;
    }
    let total = variance + tau_sq;
    // In logarithms, because Λ overflows for large, clear differences.
    let log_lambda =
        0.5 * (variance / total).ln() + difference * difference * tau_sq / (2.0 * variance * total);
    finite((-log_lambda).exp()).map_or(1.0, |p| p.min(1.0))
}

/// Compares the means of a metric such as ratings.
pub fn compare_means(
    candidate: &MeanStat,
    production: &MeanStat,
    test: &SequentialTest,
) -> Comparison {
    let difference = candidate
        .mean()
        .zip(production.mean())
        .and_then(|(c, p)| finite(c - p));
    let variance = candidate
        .variance_of_mean()
        .zip(production.variance_of_mean())
        .map(|(c, p)| c + p)
        .map(|v| {
            if v > 0.0 {
                v
            } else {
                constant_arms_variance(candidate, production)
            }
        });
    decide(difference, variance, (candidate.n, production.n), test)
}

/// When each arm is constant on its own the unequal-variance estimate is 0;
/// the variance of both arms taken together is then the estimate under H0
/// (positive unless the two constants agree).
fn constant_arms_variance(candidate: &MeanStat, production: &MeanStat) -> f64 {
    let mut all = *candidate;
    all.merge(production);
    let scale = 1.0 / candidate.n as f64 + 1.0 / production.n as f64;
    all.variance().map_or(0.0, |v| v * scale)
}

/// Compares two rates such as error or thumbs-up rates.
pub fn compare_proportions(
    candidate: &Proportion,
    production: &Proportion,
    test: &SequentialTest,
) -> Comparison {
    let difference = candidate
        .rate()
        .zip(production.rate())
        .and_then(|(c, p)| finite(c - p));
    let variance = difference.map(|_| {
        let mut pooled = *candidate;
        pooled.merge(production);
        let p = pooled.rate().unwrap_or(0.0);
        p * (1.0 - p) * (1.0 / candidate.n as f64 + 1.0 / production.n as f64)
    });
    decide(difference, variance, (candidate.n, production.n), test)
}

fn decide(
    difference: Option<f64>,
    variance: Option<f64>,
    (n_candidate, n_production): (u64, u64),
    test: &SequentialTest,
) -> Comparison {
    let (Some(d), Some(v)) = (difference, variance) else {
        return Comparison {
            difference,
            statistic: None,
            p_value: 1.0,
            verdict: Verdict::Inconclusive,
        };
    };
    let p_value = msprt_p_value(d, v, test.tau_sq);
    let enough = n_candidate.min(n_production) >= test.min_per_arm;
    // Written so that a NaN alpha can never declare a winner.
    let significant = enough && p_value <= test.alpha && d != 0.0;
    let verdict = match (significant, (d > 0.0) == test.higher_is_better) {
        (false, _) => Verdict::Inconclusive,
        (true, true) => Verdict::Better,
        (true, false) => Verdict::Worse,
    };
    Comparison {
        difference,
        statistic: (v > 0.0).then(|| d / v.sqrt()).and_then(finite),
        p_value,
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mean stat with the given count, mean and sample variance.
    fn stat(n: u64, mean: f64, variance: f64) -> MeanStat {
        let sum = mean * n as f64;
        MeanStat {
            n,
            sum,
            sum_sq: (n - 1) as f64 * variance + sum * sum / n as f64,
        }
    }

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} is not within {tol} of {b}");
    }

    #[test]
    fn the_p_value_of_two_means_worked_by_hand() {
        // Δ̂ = 4.0 − 3.5 = 0.5; V = 0.25/50 + 0.25/50 = 0.01; τ² = 0.0625.
        // Λ = √(0.01/0.0725) · exp(0.25 · 0.0625 / (2 · 0.01 · 0.0725))
        //   = 0.371391 · exp(10.775862) = 0.371391 · 47851.71 = 17771.68,
        // so p = 1/Λ = 5.6269e-5 and the statistic is 0.5/0.1 = 5.
        let c = compare_means(
            &stat(50, 4.0, 0.25),
            &stat(50, 3.5, 0.25),
            &SequentialTest::for_rating(),
        );
        close(c.difference.unwrap(), 0.5, 1e-12);
        close(c.statistic.unwrap(), 5.0, 1e-9);
        close(c.p_value, 5.6269e-5, 1e-8);
        assert_eq!(c.verdict, Verdict::Better);
    }

    #[test]
    fn the_p_value_of_two_proportions_worked_by_hand() {
        // 30/100 against 20/100: Δ̂ = 0.1, pooled rate 0.25,
        // V = 0.25 · 0.75 · (1/100 + 1/100) = 0.00375; τ² = 0.0025.
        // Λ = √(0.00375/0.00625) · exp(0.01 · 0.0025 / (2 · 0.00375 · 0.00625))
        //   = 0.774597 · exp(0.533333) = 1.320381, so p = 0.757357.
        let c = compare_proportions(
            &Proportion::new(30, 100),
            &Proportion::new(20, 100),
            &SequentialTest::for_rate(true),
        );
        close(c.p_value, 0.757357, 1e-6);
        close(c.statistic.unwrap(), 0.1 / 0.00375f64.sqrt(), 1e-9);
        assert_eq!(c.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn verdicts_follow_the_direction_that_is_better() {
        let (high, low) = (Proportion::new(300, 1000), Proportion::new(100, 1000));
        let up = SequentialTest::for_rate(true);
        let down = SequentialTest::for_rate(false);
        assert_eq!(
            compare_proportions(&high, &low, &up).verdict,
            Verdict::Better
        );
        assert_eq!(
            compare_proportions(&low, &high, &up).verdict,
            Verdict::Worse
        );
        assert_eq!(
            compare_proportions(&high, &low, &down).verdict,
            Verdict::Worse
        );
        assert_eq!(
            compare_proportions(&low, &high, &down).verdict,
            Verdict::Better
        );
    }

    #[test]
    fn too_few_observations_stay_inconclusive_however_clear() {
        let test = SequentialTest::for_rate(true);
        let c = compare_proportions(&Proportion::new(99, 99), &Proportion::new(0, 99), &test);
        assert!(c.p_value < 1e-6);
        assert_eq!(c.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn no_data_or_no_variance_gives_no_evidence() {
        let test = SequentialTest::for_rating();
        let none = compare_means(&MeanStat::default(), &stat(40, 4.0, 1.0), &test);
        assert_eq!((none.difference, none.statistic), (None, None));
        assert_eq!((none.p_value, none.verdict), (1.0, Verdict::Inconclusive));
        let same = compare_means(&stat(40, 4.0, 0.0), &stat(40, 4.0, 0.0), &test);
        assert_eq!((same.p_value, same.statistic), (1.0, None));
        let zero = compare_proportions(&Proportion::new(0, 500), &Proportion::new(0, 500), &test);
        assert_eq!((zero.difference, zero.p_value), (Some(0.0), 1.0));
    }

    #[test]
    fn two_constant_arms_that_differ_are_told_apart() {
        let c = compare_means(
            &stat(40, 5.0, 0.0),
            &stat(40, 4.0, 0.0),
            &SequentialTest::for_rating(),
        );
        assert!(c.p_value < 1e-6, "{c:?}");
        assert_eq!(c.verdict, Verdict::Better);
    }

    #[test]
    fn huge_evidence_does_not_overflow() {
        assert_eq!(msprt_p_value(1.0, 1e-12, 1.0), 0.0);
        assert_eq!(msprt_p_value(f64::NAN, 1.0, 1.0), 1.0);
        assert_eq!(msprt_p_value(1.0, 0.0, 1.0), 1.0);
    }

    #[test]
    fn verdicts_serialise_in_lower_case() {
        let json =
            serde_json::to_value([Verdict::Better, Verdict::Worse, Verdict::Inconclusive]).unwrap();
        assert_eq!(json, serde_json::json!(["better", "worse", "inconclusive"]));
    }
}
