//! The records of offline evaluations: each run with its
//! progress and summary, every example's answer as each version read, and
//! the model-performance figures charts draw over time.

use serde::{Deserialize, Serialize};

/// One evaluation run of one or more versions of an alias on a dataset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvaluationRecord {
    pub id: String,
    pub alias: String,
    pub versions: Vec<String>,
    pub dataset_id: String,
    /// `validation` or `all` (train and validation).
    pub split: String,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub status: String,
    /// Examples answered so far, over every version.
    pub done: u64,
    /// Examples times versions.
    pub total: u64,
    /// Dataset lines left out because their conversation has no threat
    /// type label (or is gone).
    pub skipped: u64,
    /// The key id that asked for it, or `scheduler`.
    pub created_by: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    /// Per version, the admin API's metrics; set once it succeeded.
    pub results: Option<serde_json::Value>,
    /// The paired comparison of two versions; set once it succeeded.
    pub comparison: Option<serde_json::Value>,
}

impl EvaluationRecord {
    /// Still to run (or interrupted while running).
    pub fn is_pending(&self) -> bool {
        matches!(self.status.as_str(), "queued" | "running")
    }
}

/// One dataset example as one version answered it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExampleResult {
    pub evaluation_id: String,
    pub version: String,
    /// The example's line among the split's lines (train first for
    /// `all`), fixed for the dataset.
    pub index: u64,
    pub conversation_id: String,
    /// The conversation's review labels.
    pub expected_threat_type: String,
    pub expected_severity: Option<String>,
    /// What the extractor read from the answer; `None` when nothing.
    pub predicted_threat_type: Option<String>,
    pub predicted_severity: Option<String>,
    /// Why there is no answer, when the upstream failed.
    pub error: Option<String>,
    /// When the answer came: a resumed run leaves earlier ones as they were.
    pub answered_at: String,
}

/// One metric of one version in one evaluation, for charts over time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PerformanceRecord {
    pub at: String,
    pub alias: String,
    pub version: String,
    pub dataset_id: String,
    pub evaluation_id: String,
    pub metric: String,
    /// `None` where the metric's denominator was 0.
    pub score: Option<f64>,
    /// How many examples it was measured on.
    pub n: u64,
}
