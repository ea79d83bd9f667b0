//! Latency quantiles from a sparse log-linear histogram: each power of two
//! of microseconds is cut into 64 equal buckets (the layout of
//! HdrHistogram), so a bucket is never wider than 1/64 of its lower bound
//! and its midpoint is within 1/128 of any value in it. Only buckets that
//! saw a value are stored; a day of latencies fits in a few hundred entries.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// log2 of the number of linear buckets per power of two.
const SUB_BITS: u32 = 6;
/// Values below this many microseconds get a bucket each.
const LINEAR_LIMIT: u64 = 2 << SUB_BITS;

/// Milliseconds, recorded as whole microseconds. With the rounding to
/// microseconds the relative error of a quantile is at most 1% from
/// 0.05 ms up (below that the error is at most 0.5 µs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// Bucket index → how many values fell in it.
    buckets: BTreeMap<u32, u64>,
}

impl LatencyHistogram {
    /// Records one latency; negative and non-finite values are skipped,
    /// being no latency at all.
    pub fn record(&mut self, ms: f64) {
        if ms.is_finite() && ms >= 0.0 {
            // `as` saturates, so absurdly large values land in the top bucket.
            let micros = (ms * 1000.0).round() as u64;
            *self.buckets.entry(bucket_of(micros)).or_insert(0) += 1;
        }
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (bucket, n) in &other.buckets {
            *self.buckets.entry(*bucket).or_insert(0) += n;
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.values().sum()
    }

    /// The `q`-quantile (0 = fastest, 1 = slowest) in milliseconds by the
    /// nearest-rank rule; `None` when empty or when `q` is outside 0..=1.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = ((q * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        self.buckets.iter().find_map(|(bucket, n)| {
            seen += n;
            (seen >= rank).then(|| midpoint_of(*bucket) / 1000.0)
        })
    }
}

/// The bucket of a value in microseconds: the value itself below
/// `LINEAR_LIMIT`, else its power of two and its top `SUB_BITS + 1` bits.
fn bucket_of(micros: u64) -> u32 {
    if micros < LINEAR_LIMIT {
        return micros as u32;
    }
    let shift = 63 - micros.leading_zeros() - SUB_BITS;
    (shift << SUB_BITS) + (micros >> shift) as u32
}

/// The middle of a bucket's range of microseconds, the inverse of `bucket_of`.
fn midpoint_of(bucket: u32) -> f64 {
    if u64::from(bucket) < LINEAR_LIMIT {
        return f64::from(bucket);
    }
    let shift = (bucket >> SUB_BITS) - 1;
    let top_bits = u64::from(bucket - (shift << SUB_BITS));
    let width = (1u64 << shift) as f64;
    (top_bits << shift) as f64 + (width - 1.0) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relative_error(estimate: f64, exact: f64) -> f64 {
        (estimate - exact).abs() / exact
    }

    #[test]
    fn a_single_value_comes_back_within_one_percent() {
        let mut ms = 0.05;
        while ms < 1e9 {
            let mut h = LatencyHistogram::default();
            h.record(ms);
            let got = h.quantile(0.5).unwrap();
            assert!(
                relative_error(got, ms) <= 0.01,
                "{ms} ms came back as {got}"
            );
            ms *= 1.013;
        }
    }

    #[test]
    fn buckets_are_ordered_and_continuous() {
        let mut last = 0;
        for micros in 1..100_000u64 {
            let b = bucket_of(micros);
            assert!(b == last || b == last + 1, "gap at {micros}");
            last = b;
        }
        assert_eq!(bucket_of(u64::MAX), 3775);
        assert!(midpoint_of(3775) > 1.8e19);
    }

    #[test]
    fn quantiles_of_one_to_a_thousand_ms() {
        let mut h = LatencyHistogram::default();
        (1..=1000).for_each(|ms| h.record(f64::from(ms)));
        assert_eq!(h.count(), 1000);
        for (q, exact) in [
            (0.0, 1.0),
            (0.5, 500.0),
            (0.95, 950.0),
            (0.99, 990.0),
            (1.0, 1000.0),
        ] {
            let got = h.quantile(q).unwrap();
            assert!(
                relative_error(got, exact) <= 0.01,
                "q{q}: {got}, not {exact}"
            );
        }
        assert!(h.buckets.len() < 400, "{} buckets", h.buckets.len());
    }

    #[test]
    fn empty_histograms_and_bad_input_give_none() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        [f64::NAN, -1.0, f64::INFINITY]
            .into_iter()
            .for_each(|ms| h.record(ms));
        assert_eq!(h.count(), 0);
        h.record(3.0);
        assert_eq!(
            (h.quantile(-0.1), h.quantile(1.5), h.quantile(f64::NAN)),
            (None, None, None)
        );
    }

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = Default::default();
        for ms in [0.3, 12.0, 250.0, 250.4, 8000.0] {
            LatencyHistogram::record(&mut a, ms);
            LatencyHistogram::record(&mut all, ms);
        }
        for ms in [1.0, 250.0, 61_000.0] {
            LatencyHistogram::record(&mut b, ms);
            LatencyHistogram::record(&mut all, ms);
        }
        a.merge(&b);
        assert_eq!(a, all);
    }

    #[test]
    fn round_trips_through_json() {
        let mut h = LatencyHistogram::default();
        [5.0, 5.0, 120.0].into_iter().for_each(|ms| h.record(ms));
        let json = serde_json::to_string(&h).unwrap();
        let back: LatencyHistogram = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
        assert_eq!(back.quantile(1.0), h.quantile(1.0));
    }
}
