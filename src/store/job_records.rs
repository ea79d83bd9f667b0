//! The record of a fine-tuning job: what was asked for, where
//! it stands at the provider, and what Flywheel did at each step, so that
//! a restarted process carries on where the last one stopped.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Where a job stands. `Preparing` is Flywheel's own (uploading the files
/// and submitting); the rest mirror the provider's statuses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Preparing,
    ValidatingFiles,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preparing => "preparing",
            Self::ValidatingFiles => "validating_files",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Unset settings are left to the provider (`auto`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Hyperparameters {
    pub n_epochs: Option<u32>,
    pub batch_size: Option<u32>,
    pub learning_rate_multiplier: Option<f64>,
}

/// The provider's ids of the uploaded files.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProviderFiles {
    pub training_file: Option<String>,
    pub validation_file: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobEvent {
    pub at: String,
    /// `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
}

/// Steps that reach the provider, marked before each is tried: a process
/// that stopped after marking one cannot know whether it happened, and
/// looks for its result at the provider before trying again.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Attempts {
    pub training_upload: bool,
    pub validation_upload: bool,
    pub submit: bool,
    /// Transient provider failures in a row (unreachable, 429, 5xx); the
    /// job fails once there are too many.
    pub transient_failures: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FineTuneJobRecord {
    pub id: String,
    pub alias: String,
    /// The alias's model type when the job was created.
    #[serde(default)]
    pub model_type: String,
    pub dataset_id: String,
    /// A configured provider with `fine_tuning = true`.
    pub provider: String,
    pub base_model: String,
    /// `supervised` or `dpo`.
    pub method: String,
    pub hyperparameters: Hyperparameters,
    pub suffix: Option<String>,
    pub seed: Option<u64>,
    /// Sent as the provider job's metadata, with `flywheel_job_id`.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub status: JobStatus,
    pub provider_job_id: Option<String>,
    #[serde(default)]
    pub provider_files: ProviderFiles,
    pub trained_tokens: Option<u64>,
    pub fine_tuned_model: Option<String>,
    /// The alias's version the fine-tuned model became.
    pub registered_version: Option<String>,
    /// Why the job failed: the stage, the provider's status and its error
    /// object as sent.
    pub error: Option<Value>,
    pub events: Vec<JobEvent>,
    /// The provider's latest training metrics (step, losses, accuracies).
    pub metrics: Option<Value>,
    pub created_at: String,
    /// The approved-conversation total when the job was created, from
    /// which continuous learning counts the approvals since.
    #[serde(default)]
    pub approved_at_start: Option<i64>,
    /// The key id (or service) that started the job.
    pub created_by: String,
    pub finished_at: Option<String>,
    /// The newest provider event copied so far.
    #[serde(default)]
    pub last_provider_event: Option<String>,
    #[serde(default)]
    pub attempts: Attempts,
    /// Azure: the deployment that serves the fine-tuned model, which the
    /// candidate is registered under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<JobDeployment>,
    /// A job of a trainer command (`kind = "command"`): its run and its
    /// adapter; absent for a provider's job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer: Option<TrainerRun>,
}

impl FineTuneJobRecord {
    /// The model name the candidate is registered with: the deployment's
    /// name where the model is served through one (Azure), else the
    /// fine-tuned model's.
    pub fn served_model(&self) -> Option<String> {
        match &self.deployment {
            Some(d) => d.name.clone(),
            None => self.fine_tuned_model.clone(),
        }
    }
}

/// Where an Azure deployment of a job's fine-tuned model stands.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    /// No management access: an admin deploys the model and registers the
    /// deployment's name.
    AwaitingDeployment,
    /// Created through the management API, provisioning.
    Creating,
    /// Serving; the candidate is registered under its name.
    Succeeded,
    Failed,
    /// Deleted on an admin's request after the version was rolled back.
    Deleted,
}

/// A job's Azure deployment. `attempted` is marked before the deployment
/// is created, so a restart looks it up by name instead of creating it
/// blindly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobDeployment {
    pub state: DeploymentState,
    /// The deployment's name; unset while awaiting an admin's.
    #[serde(default)]
    pub name: Option<String>,
    /// Created by Flywheel through the management API (else by an admin).
    #[serde(default)]
    pub managed: bool,
    #[serde(default)]
    pub attempted: bool,
    /// Azure answered the creation (or it was found after a restart).
    #[serde(default)]
    pub created: bool,
    /// When the creation was first asked for, for the provisioning timeout.
    #[serde(default)]
    pub started_at: Option<String>,
}

/// A trainer command's run, marked in the record before the process
/// starts, so a restarted Flywheel knows one may still be running.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TrainerRun {
    /// Where the trainer writes the adapter (the path servers load).
    pub output_dir: String,
    /// The trainer's process id, which is also its process group's.
    pub pid: Option<u32>,
    /// When that process started (clock ticks since boot, as `/proc` says),
    /// so a restarted Flywheel tells it from a later process with its id.
    pub process_start: Option<u64>,
    pub started_at: String,
    /// How it exited (`None` while it runs, or if it was never seen to end).
    pub exit_code: Option<i32>,
    /// The serving providers the adapter is loaded on.
    pub loaded_on: Vec<String>,
}
