//! Fine-tuning jobs: created from a dataset snapshot for an alias
//! (`create`), carried through their lifecycle by a poller
//! (`poller`: each `fine_tuning.poll_interval_s`, one `step` per job in
//! flight — upload the files, submit, follow the provider's status and
//! events), cancelled on request (`cancel`), and on success registered as
//! a candidate version of the alias, optionally with a canary share of its
//! traffic (`register`). What the provider reports is folded into the job
//! record by plain functions (`sync`). Continuous learning
//! (`continuous`, off by default) builds datasets and starts jobs by
//! itself as approved conversations accumulate. On Azure OpenAI a job is
//! submitted once Azure has imported its files (`azure_files`), and its
//! model serves only once deployed (`deployment`: through the management
//! API, or registered by an admin).
//!
//! A provider of `kind = "command"` is the organisation's own trainer:
//! its jobs run the command as a child process (`trainer`) and their
//! adapters are loaded into vLLM and served from there (`lora`); the
//! steps above dispatch to them.
//!
//! Every step that reaches the provider is marked in the stored record
//! before it is tried, so a process that stopped at any point resumes the
//! job without doing it twice: an upload is looked for by its file name,
//! a submission by the job's `metadata.flywheel_job_id`.

mod azure_files;
mod cancel;
mod continuous;
mod create;
mod deployment;
mod lora;
mod poller;
mod register;
mod step;
mod sync;
mod trainer;

pub use cancel::cancel_job;
pub use continuous::run_continuous;
pub use create::{NewJob, create_job};
pub use deployment::{delete_deployment, register_deployment};
pub use lora::{run_restore as run_adapter_restore, unload_adapter};
pub use poller::{Outcome, run_poller, try_step_once};
pub use trainer::check_template as check_command_template;

use crate::config::Config;
use crate::registry::{Registry, RegistryError};
use crate::store::{DatasetSplit, FineTuneJobRecord, SharedStore, StoreError};
use crate::upstream::{FineTuningError, Upstreams};
use std::sync::Arc;
use tokio::sync::{Mutex, MutexGuard, Notify};

/// The metadata key that ties a provider's job to ours.
pub const JOB_ID_KEY: &str = "flywheel_job_id";

/// What fine-tuning needs, built once by the application and shared by
/// the admin handlers, the poller and continuous learning.
pub struct Context {
    pub store: SharedStore,
    /// Where a finished job's model is registered.
    pub registry: Arc<Registry>,
    /// The providers jobs run at.
    pub upstreams: Arc<Upstreams>,
    /// `fine_tuning`, and the whole config for the dataset builds of
    /// continuous learning.
    pub config: Arc<Config>,
    pub jobs: Jobs,
}

/// The lock job changes take and the poller's wake-up.
#[derive(Default)]
pub struct Jobs {
    /// Held while one job changes (a poller step, a cancel), so that a
    /// cancel never races a submission.
    lock: Mutex<()>,
    /// Wakes the poller early, when a job was created.
    wake: Arc<Notify>,
    /// The trainer processes this process started.
    trainers: trainer::Running,
}

impl Jobs {
    async fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// Asks the poller to look at the jobs now rather than at its next tick.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("fine-tuning is disabled (`fine_tuning.enabled = false`)")]
    Disabled,
    #[error("{message}")]
    NotFound {
        message: String,
        param: &'static str,
    },
    #[error("dataset `{dataset}` is not ready for training: {problems}")]
    NotReady { dataset: String, problems: String },
    #[error("{message}")]
    Invalid {
        message: String,
        param: &'static str,
    },
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Provider(#[from] FineTuningError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl JobError {
    /// No job has this id.
    pub fn no_job(id: &str) -> Self {
        Self::NotFound {
            message: format!("no fine-tuning job with id `{id}`"),
            param: "id",
        }
    }
}

fn invalid(message: impl Into<String>, param: &'static str) -> JobError {
    JobError::Invalid {
        message: message.into(),
        param,
    }
}

/// Stores the job off the async workers; durable once it returns.
async fn save(app: &Arc<Context>, job: &FineTuneJobRecord) -> Result<(), StoreError> {
    let (store, job) = (app.store.clone(), job.clone());
    tokio::task::spawn_blocking(move || store.put_job(&job))
        .await
        .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
}

async fn load(app: &Arc<Context>, id: &str) -> Result<Option<FineTuneJobRecord>, StoreError> {
    let (store, id) = (app.store.clone(), id.to_string());
    tokio::task::spawn_blocking(move || store.job(&id))
        .await
        .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
}

/// One of a dataset snapshot's files, read off the async workers.
async fn dataset_file(
    app: &Arc<Context>,
    id: &str,
    split: DatasetSplit,
) -> Result<Option<Vec<u8>>, StoreError> {
    let (store, id) = (app.store.clone(), id.to_string());
    tokio::task::spawn_blocking(move || store.dataset_file(&id, split))
        .await
        .map_err(|e| StoreError::Io(format!("store task failed: {e}")))?
}

/// The job an admin's request names, or the 404 saying there is none.
async fn existing(app: &Arc<Context>, id: &str) -> Result<FineTuneJobRecord, JobError> {
    load(app, id).await?.ok_or_else(|| JobError::no_job(id))
}
