//! Offline evaluation runs: versions of an alias answer a dataset's
//! examples, sent straight to their providers (never through the proxy,
//! so nothing is captured), and are scored against the conversations'
//! review labels. A run is a stored record with its progress; every
//! example's result is stored as it arrives, so a run interrupted by a
//! restart resumes where it stopped.
//!
//! `examples` reads the dataset, `create` validates a request and queues
//! the run, `execute` answers the examples, `summary` turns the results
//! into the admin API's metrics and the model-performance figures.

mod ask;
mod create;
mod examples;
mod execute;
mod summary;

pub use create::{NewEvaluation, create};
pub use examples::{Example, load_examples};
pub use execute::{Ran, execute};
pub use summary::{METRICS, Summary, score, summarise, targets as summary_targets, targets_view};

use crate::store::StoreError;

/// Why an evaluation cannot be created or run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("no model alias named `{0}`")]
    UnknownAlias(String),
    #[error("alias `{alias}` has no version named `{version}`")]
    UnknownVersion { alias: String, version: String },
    #[error("no dataset with id `{0}`")]
    UnknownDataset(String),
    #[error("{0}")]
    Invalid(String),
    #[error("dataset `{dataset}` cannot be read: {problem}")]
    Dataset { dataset: String, problem: String },
    #[error("store task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}
