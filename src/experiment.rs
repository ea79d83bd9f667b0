//! Online experiments: each version's figures, tallied as inferences are
//! captured and feedback arrives; candidates compared with production by
//! an always-valid sequential test; guardrails that take traffic away
//! from a candidate that is significantly worse.

mod guardrail;
mod report;
pub mod tally;

pub use guardrail::{Guardrails, check_once, config_for, run_guardrails};
pub use report::{METRICS, MetricComparison, comparisons, experiment_view};
