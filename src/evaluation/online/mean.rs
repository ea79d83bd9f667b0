//! The running mean of a metric (a rating, a latency) with its sample
//! variance and a 95% confidence interval.

use super::{Z95, finite};
use serde::{Deserialize, Serialize};

/// Count, sum and sum of squares: enough for mean and variance, and two of
/// them merge by adding fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanStat {
    pub n: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl MeanStat {
    /// Adds one observation. A non-finite `x` is skipped: one NaN would
    /// otherwise poison every figure derived from the sums.
    pub fn add(&mut self, x: f64) {
        if x.is_finite() {
            self.n += 1;
            self.sum += x;
            self.sum_sq += x * x;
        }
    }

    pub fn merge(&mut self, other: &MeanStat) {
        self.n += other.n;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }

    /// `None` without observations.
    pub fn mean(&self) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        finite(self.sum / self.n as f64)
    }

    /// The sample variance (divisor n − 1); `None` below two observations.
    pub fn variance(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        let spread = self.sum_sq - self.sum * self.sum / n;
        // The subtraction cancels: for constant data it leaves rounding dust
        // of either sign, up to about n ulps of the sum of squares.
        if spread <= self.sum_sq * n * f64::EPSILON {
            return Some(0.0);
        }
        finite(spread / (n - 1.0))
    }

    /// The variance of the mean, s² / n; `None` below two observations.
    pub fn variance_of_mean(&self) -> Option<f64> {
        self.variance().map(|v| v / self.n as f64)
    }

    /// The 95% confidence interval of the mean, `[lo, hi]`, from Student's t
    /// with n − 1 degrees of freedom; `None` below two observations.
    pub fn ci95(&self) -> Option<[f64; 2]> {
        let mean = self.mean()?;
        let half = t95(self.n - 1) * self.variance_of_mean()?.sqrt();
        Some([finite(mean - half)?, finite(mean + half)?])
    }
}

/// Two-sided 95% critical values of Student's t for 1..=30 degrees of freedom.
const T95: [f64; 30] = [
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
    2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687,
    2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
];

/// The two-sided 95% critical value of Student's t with `df` degrees of
/// freedom: the table up to 30, then the Cornish–Fisher expansion around the
/// normal quantile, which is within 1e-4 of the exact value there and tends
/// to the normal 1.96 as `df` grows.
pub(super) fn t95(df: u64) -> f64 {
    if let Some(t) = usize::try_from(df)
        .ok()
        .and_then(|d| d.checked_sub(1))
        .and_then(|i| T95.get(i))
    {
        return *t;
    }
    let (z, d) = (Z95, df.max(1) as f64);
    let g1 = (z.powi(3) + z) / 4.0;
    let g2 = (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / 96.0;
    let g3 = (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / 384.0;
    z + g1 / d + g2 / (d * d) + g3 / (d * d * d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(xs: &[f64]) -> MeanStat {
        let mut s = MeanStat::default();
        xs.iter().for_each(|x| s.add(*x));
        s
    }

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} is not within {tol} of {b}");
    }

    #[test]
    fn undefined_figures_are_none() {
        let empty = MeanStat::default();
        assert_eq!(
            (empty.mean(), empty.variance(), empty.ci95()),
            (None, None, None)
        );
        let one = of(&[4.0]);
        assert_eq!(one.mean(), Some(4.0));
        assert_eq!((one.variance(), one.ci95()), (None, None));
    }

    #[test]
    fn non_finite_values_are_skipped() {
        let s = of(&[1.0, f64::NAN, 3.0, f64::INFINITY]);
        assert_eq!(s.n, 2);
        assert_eq!(s.mean(), Some(2.0));
    }

    #[test]
    fn a_t_interval_worked_by_hand() {
        // 2, 4, 4, 5, 5: mean 4, squared deviations 4+0+0+1+1 = 6, s² = 6/4 = 1.5,
        // standard error √(1.5/5) = 0.547723, t(0.975, 4) = 2.7764,
        // half-width 1.520697.
        let s = of(&[2.0, 4.0, 4.0, 5.0, 5.0]);
        assert_eq!(s.mean(), Some(4.0));
        close(s.variance().unwrap(), 1.5, 1e-12);
        let [lo, hi] = s.ci95().unwrap();
        close(lo, 2.479303, 1e-5);
        close(hi, 5.520697, 1e-5);
    }

    #[test]
    fn constant_data_has_zero_variance_and_a_point_interval() {
        let s = of(&[0.1; 10]);
        assert_eq!(s.variance(), Some(0.0));
        let [lo, hi] = s.ci95().unwrap();
        close(lo, 0.1, 1e-12);
        close(hi, 0.1, 1e-12);
    }

    #[test]
    fn merging_equals_adding_everything_to_one() {
        let (mut a, b) = (of(&[1.0, 2.0, 3.0]), of(&[4.0, 5.0]));
        a.merge(&b);
        assert_eq!(a, of(&[1.0, 2.0, 3.0, 4.0, 5.0]));
    }

    #[test]
    fn t_quantiles_join_the_table_and_approach_the_normal() {
        assert_eq!(t95(1), 12.7062);
        assert_eq!(t95(30), 2.0423);
        // Exact values: 2.0211 (40), 1.9840 (100), 1.9623 (1000).
        close(t95(40), 2.0211, 1e-4);
        close(t95(100), 1.9840, 1e-4);
        close(t95(1000), 1.9623, 1e-4);
        close(t95(u64::MAX), Z95, 1e-9);
        assert!(t95(31) < t95(30));
    }

    #[test]
    fn serialises_as_its_three_fields() {
        let json = serde_json::to_value(of(&[1.0, 3.0])).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"n": 2, "sum": 4.0, "sum_sq": 10.0})
        );
    }
}
