//! A rate (errors per request, thumbs up per thumb) with its Wilson score
//! interval, which stays inside 0..1 and behaves at 0 and n hits where the
//! textbook normal interval does not.

use super::{Z95, finite};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proportion {
    pub hits: u64,
    pub n: u64,
}

impl Proportion {
    pub fn new(hits: u64, n: u64) -> Self {
        Self { hits, n }
    }

    pub fn add(&mut self, hit: bool) {
        self.n += 1;
        self.hits += u64::from(hit);
    }

    pub fn merge(&mut self, other: &Proportion) {
        self.hits += other.hits;
        self.n += other.n;
    }

    /// hits / n; `None` when n is 0 (or, for a malformed value, hits > n).
    pub fn rate(&self) -> Option<f64> {
        if self.n == 0 || self.hits > self.n {
            return None;
        }
        finite(self.hits as f64 / self.n as f64)
    }

    /// The 95% Wilson score interval `[lo, hi]`; `None` when the rate is.
    pub fn wilson95(&self) -> Option<[f64; 2]> {
        let p = self.rate()?;
        let (n, z2) = (self.n as f64, Z95 * Z95);
        let denominator = 1.0 + z2 / n;
        let centre = (p + z2 / (2.0 * n)) / denominator;
        let half = Z95 / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
        // Clamping only removes rounding dust at 0 hits or n hits.
        Some([
            finite((centre - half).max(0.0))?,
            finite((centre + half).min(1.0))?,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 5e-5, "{a} is not {b} to four places");
    }

    #[test]
    fn wilson_intervals_from_newcombes_worked_examples() {
        // Newcombe (1998), "Two-sided confidence intervals for the single
        // proportion", table I, method 3 (score interval without continuity
        // correction).
        for (hits, n, lo, hi) in [
            (81, 263, 0.2553, 0.3662),
            (15, 148, 0.0624, 0.1605),
            (0, 20, 0.0, 0.1611),
            (1, 29, 0.0061, 0.1718),
        ] {
            let [l, h] = Proportion::new(hits, n).wilson95().unwrap();
            close(l, lo);
            close(h, hi);
        }
    }

    #[test]
    fn all_hits_reaches_one_and_no_data_is_none() {
        let [_, hi] = Proportion::new(20, 20).wilson95().unwrap();
        assert_eq!(hi, 1.0);
        assert_eq!(Proportion::default().rate(), None);
        assert_eq!(Proportion::default().wilson95(), None);
        assert_eq!(Proportion::new(3, 2).rate(), None);
    }

    #[test]
    fn add_and_merge_count_hits_and_trials() {
        let mut a = Proportion::default();
        [true, false, true].into_iter().for_each(|h| a.add(h));
        a.merge(&Proportion::new(1, 5));
        assert_eq!(a, Proportion::new(3, 8));
        assert_eq!(a.rate(), Some(0.375));
    }
}
