//! The records behind the model registry: each alias with its
//! versions, traffic and bucket table; the history of every change; alerts.

use crate::evaluation::online::{LatencyHistogram, MeanStat, Proportion};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One alias as the registry keeps it. Replaced whole on every change, with
/// `revision` one higher, so a writer that read an older revision can be
/// refused (409).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelAliasRecord {
    pub alias: String,
    /// `threat_detection`, `log_analysis` or `triage_priority`.
    pub model_type: String,
    pub revision: u64,
    /// The version serving the alias (and every fallback).
    pub production: String,
    /// Earlier production versions, the most recent last; a rollback takes
    /// the last one back.
    #[serde(default)]
    pub previous_production: Vec<String>,
    pub versions: Vec<ModelVersionRecord>,
    /// Which version owns each traffic slot, as hex bytes (one byte per
    /// slot, an index into `versions`). Kept so that a weight change moves
    /// only the slots it must; see `routing::buckets`.
    pub buckets: String,
    pub updated_at: String,
}

impl ModelAliasRecord {
    pub fn version(&self, name: &str) -> Option<&ModelVersionRecord> {
        self.versions.iter().find(|v| v.name == name)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    Candidate,
    Production,
    Retired,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Candidate => "candidate",
            Self::Production => "production",
            Self::Retired => "retired",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelVersionRecord {
    pub name: String,
    /// A configured provider's name.
    pub provider: String,
    /// The model name the provider knows.
    pub model: String,
    pub state: VersionState,
    /// `config`, `api` or `job_<id>` (a fine-tuning job).
    pub origin: String,
    /// Share of the alias's traffic in percent (0–100, two decimals).
    pub weight: f64,
    /// Receives a mirrored copy of the alias's traffic; its answers are
    /// captured, never returned.
    pub shadow: bool,
    pub created_at: String,
}

/// One change to an alias, kept for its history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelHistoryRecord {
    pub id: String,
    pub alias: String,
    pub at: String,
    pub actor: String,
    /// `seed`, `register`, `traffic`, `promote`, `rollback` or `guardrail`.
    pub action: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// The weights after the change.
    pub weights: BTreeMap<String, f64>,
    pub reason: String,
    /// The alias's revision after the change.
    pub revision: u64,
    /// A promotion an admin forced past evaluation gating.
    #[serde(default)]
    pub forced: bool,
}

/// Something an admin should look at: a guardrail that fired, a metric
/// under its target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertRecord {
    pub id: String,
    pub at: String,
    /// e.g. `guardrail`.
    pub kind: String,
    pub alias: Option<String>,
    pub version: Option<String>,
    pub metric: Option<String>,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub message: String,
    /// `open` or `acknowledged`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<String>,
}

/// An alert waiting for `evaluation.webhook_url`, kept in the store so
/// that a delivery outlives the process (or the replica) that raised it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueuedWebhook {
    pub alert_id: String,
    /// Attempts made so far, all failed.
    pub attempts: u32,
    /// Unix milliseconds before which the next attempt waits.
    pub next_attempt_ms: u64,
}

/// Which tally an inference or feedback counts towards: a version of an
/// alias, live or as a shadow (a shadow's answers were never returned).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TallyKey {
    pub alias: String,
    pub version: String,
    pub shadow: bool,
}

/// Online experiment figures for one version, kept current as inferences
/// are captured and feedback arrives, so the experiment view never scans.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct VersionTally {
    pub requests: u64,
    /// Requests that did not end well: upstream errors, broken streams,
    /// and fallbacks to production.
    pub errors: u64,
    /// Requests production served after this (candidate) version failed.
    pub fallbacks: u64,
    pub cancelled: u64,
    /// Latency of the requests this version answered.
    pub latency: LatencyHistogram,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub ratings: MeanStat,
    /// Thumbs up among thumbs.
    pub thumbs: Proportion,
    /// Negative feedback (thumbs down, or a rating of 2 or less) among
    /// feedback that rated the answer.
    pub negative: Proportion,
    /// Answers whose stated threat type matches the analyst's label,
    /// among labelled answers that state one.
    pub label_agreement: Proportion,
}

impl VersionTally {
    pub fn merge(&mut self, other: &VersionTally) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.fallbacks += other.fallbacks;
        self.cancelled += other.cancelled;
        self.latency.merge(&other.latency);
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.ratings.merge(&other.ratings);
        self.thumbs.merge(&other.thumbs);
        self.negative.merge(&other.negative);
        self.label_agreement.merge(&other.label_agreement);
    }
}

/// An immutable dataset snapshot: how it was built and what
/// its report said. The JSONL files are stored beside it, by split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetRecord {
    pub id: String,
    pub name: String,
    /// `sft` or `dpo`.
    pub format: String,
    pub created_at: String,
    /// The key id of whoever built it.
    pub created_by: String,
    /// The filter it was built from, as given.
    pub filter: serde_json::Value,
    /// The alias whose base model the examples were checked against.
    pub alias: Option<String>,
    pub base_model: Option<String>,
    pub validation_split: f64,
    /// The build report: content hash, readiness, problems, counts,
    /// classes, coverage and every rejection with its reason.
    pub report: serde_json::Value,
    /// The conversations in each split, in file order.
    pub train_ids: Vec<String>,
    pub validation_ids: Vec<String>,
}

/// Which file of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetSplit {
    Train,
    Validation,
}

impl DatasetSplit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Validation => "validation",
        }
    }
}
