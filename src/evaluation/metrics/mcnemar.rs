//! McNemar's test: do two versions, run on the same examples, differ in
//! accuracy? Only the discordant examples — right for one version, wrong for
//! the other — carry information; under "no difference" each is equally
//! likely to favour either version.

use serde::Serialize;

/// Below this many discordant examples the exact binomial test is used; at
/// or above it, the chi-squared approximation is close enough.
const EXACT_BELOW: u64 = 25;

/// One example as both versions answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairedPrediction<'a> {
    pub expected: &'a str,
    pub a: Option<&'a str>,
    pub b: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct McNemar {
    /// Examples version a got right and version b did not.
    pub only_a_correct: u64,
    /// Examples version b got right and version a did not.
    pub only_b_correct: u64,
    /// Two-sided; 1 without discordant examples.
    pub p_value: f64,
    /// Whether `p_value` is the exact binomial one (few discordant examples)
    /// or from chi-squared with continuity correction.
    pub exact: bool,
    /// Indices of the examples the versions answered differently, right or
    /// wrong, in input order: what an analyst would look at.
    pub disagreements: Vec<usize>,
}

pub fn mcnemar(examples: &[PairedPrediction]) -> McNemar {
    let right = |p: Option<&str>, e: &PairedPrediction| p == Some(e.expected);
    let only_a = examples
        .iter()
        .filter(|e| right(e.a, e) && !right(e.b, e))
        .count() as u64;
    let only_b = examples
        .iter()
        .filter(|e| right(e.b, e) && !right(e.a, e))
        .count() as u64;
    let exact = only_a + only_b < EXACT_BELOW;
    McNemar {
        only_a_correct: only_a,
        only_b_correct: only_b,
        p_value: if exact {
            exact_p(only_a, only_b)
        } else {
            chi_squared_p(only_a, only_b)
        },
        exact,
        disagreements: (0..examples.len())
            .filter(|i| examples.get(*i).is_some_and(|e| e.a != e.b))
            .collect(),
    }
}

/// Twice the smaller binomial tail of Bin(b + c, ½), capped at 1.
fn exact_p(b: u64, c: u64) -> f64 {
    let n = b + c;
    let mut term = 0.5f64.powi(n as i32);
    let mut tail = 0.0;
    // Accumulates C(n, i) / 2ⁿ for i = 0..=min(b, c), each term from the last.
    for i in 0..=b.min(c) {
        tail += term;
        term *= (n - i) as f64 / (i + 1) as f64;
    }
    (2.0 * tail).min(1.0)
}

/// χ² = (|b − c| − 1)² / (b + c) with one degree of freedom, whose upper
/// tail is erfc(√(χ²/2)).
fn chi_squared_p(b: u64, c: u64) -> f64 {
    let corrected = (b.abs_diff(c) as f64 - 1.0).max(0.0);
    let statistic = corrected * corrected / (b + c) as f64;
    erfc((statistic / 2.0).sqrt()).clamp(0.0, 1.0)
}

/// The complementary error function by the Chebyshev fit of Numerical
/// Recipes (`erfcc`), with relative error below 1.2e-7 everywhere.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = [
        -1.265_512_23,
        1.000_023_68,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_98,
        1.488_515_87,
        -0.822_152_23,
        0.170_872_77,
    ]
    .iter()
    .rev()
    .fold(0.0, |acc, c| acc * t + c);
    let r = t * (-z * z + poly).exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `right_a` examples only a gets right, `right_b` only b, plus two
    /// both get right and one both get wrong the same way.
    fn examples(right_a: usize, right_b: usize) -> Vec<PairedPrediction<'static>> {
        let only_a = PairedPrediction {
            expected: "malware",
            a: Some("malware"),
            b: Some("benign"),
        };
        let only_b = PairedPrediction {
            expected: "phishing",
            a: None,
            b: Some("phishing"),
        };
        let both = PairedPrediction {
            expected: "impact",
            a: Some("impact"),
            b: Some("impact"),
        };
        let neither = PairedPrediction {
            expected: "impact",
            a: Some("benign"),
            b: Some("benign"),
        };
        let mut all = vec![both, neither, both];
        all.extend(std::iter::repeat_n(only_a, right_a));
        all.extend(std::iter::repeat_n(only_b, right_b));
        all
    }

    #[test]
    fn few_discordant_pairs_use_the_exact_test_worked_by_hand() {
        // 3 against 9: P(X ≤ 3) for Bin(12, ½) = (1 + 12 + 66 + 220) / 4096
        // = 299/4096, two-sided 598/4096 = 0.14599609375.
        let m = mcnemar(&examples(3, 9));
        assert_eq!((m.only_a_correct, m.only_b_correct, m.exact), (3, 9, true));
        assert!((m.p_value - 598.0 / 4096.0).abs() < 1e-12, "{}", m.p_value);
        assert_eq!(m.disagreements, (3..15).collect::<Vec<_>>());
    }

    #[test]
    fn many_discordant_pairs_use_chi_squared_worked_by_hand() {
        // 10 against 25: χ² = (15 − 1)² / 35 = 5.6, p = erfc(√2.8) = 0.0179605.
        let m = mcnemar(&examples(10, 25));
        assert!(!m.exact);
        assert!((m.p_value - 0.017_960_48).abs() < 1e-7, "{}", m.p_value);
        // Wikipedia's worked example, 121 against 59: χ² = 61²/180 = 20.672,
        // p = 5.4501e-6.
        assert!((chi_squared_p(121, 59) - 5.450_09e-6).abs() < 1e-10);
    }

    #[test]
    fn balanced_or_no_discordance_gives_one() {
        assert_eq!(mcnemar(&examples(0, 0)).p_value, 1.0);
        assert_eq!(mcnemar(&examples(4, 4)).p_value, 1.0);
        assert_eq!(chi_squared_p(20, 20), 1.0);
        assert_eq!(chi_squared_p(20, 21), 1.0);
        assert!(mcnemar(&examples(0, 0)).disagreements.is_empty());
    }

    #[test]
    fn the_exact_test_is_symmetric_and_matches_a_known_tail() {
        assert_eq!(exact_p(7, 17), exact_p(17, 7));
        // 7 against 17: 2 · Σ_{i≤7} C(24, i) / 2²⁴ = 0.0639147.
        assert!((exact_p(7, 17) - 0.063_914_66).abs() < 1e-8);
        assert_eq!(exact_p(0, 1), 1.0);
    }

    #[test]
    fn erfc_matches_known_values() {
        for (x, want) in [
            (0.0, 1.0),
            (0.5, 0.479_500_12),
            (1.0, 0.157_299_21),
            (-1.0, 1.842_700_79),
            (3.0, 2.209_049_7e-5),
        ] {
            assert!(
                (erfc(x) - want).abs() <= 1.2e-7 * want,
                "erfc({x}) = {}",
                erfc(x)
            );
        }
    }
}
