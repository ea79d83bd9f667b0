//! Statistics for online experiments: a candidate version watched against
//! production while traffic flows, looked at as often as anyone likes.
//!
//! Every accumulator is a small serde value that merges, so tallies can be
//! kept per version (or per shard) and combined when the experiment view is
//! read. Undefined figures are `None`, never NaN.

mod histogram;
mod mean;
mod proportion;
mod sequential;
#[cfg(test)]
mod simulation;

pub use histogram::LatencyHistogram;
pub use mean::MeanStat;
pub use proportion::Proportion;
pub use sequential::{
    Comparison, SequentialTest, TAU_SQ_RATE, TAU_SQ_RATING, Verdict, compare_means,
    compare_proportions, msprt_p_value,
};

/// The two-sided 95% quantile of the standard normal distribution.
const Z95: f64 = 1.959_963_984_540_054;

/// `Some(x)` when `x` is a finite number: the guard that keeps NaN and
/// infinities out of everything this module reports.
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}
