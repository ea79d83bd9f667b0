//! One step of one job, whatever its status needs next: while `preparing`,
//! upload the files and submit; afterwards, follow the provider's status
//! and events until the job ends, registering the model on success.
//! Each call to the provider is marked in the stored record first (why:
//! see `finetune`) and its result stored as soon as it arrives.

use super::Context;
use super::azure_files::{self, Imported};
use super::deployment::{self, DeployError, Progress};
use super::register::register_off_workers;
use super::sync::{
    Stage, add_provider_events, apply_remote, fail, fail_with, finish, note, unseen,
};
use super::{JOB_ID_KEY, dataset_file, save};
use crate::registry::RegistryError;
use crate::store::{DatasetSplit, FineTuneJobRecord, JobStatus, StoreError};
use crate::upstream::{FineTuningError, JobObject, JobSpec, Provider};
use serde_json::Value;
use std::sync::Arc;

/// Transient provider failures in a row (unreachable, 429, 5xx) a job
/// rides out before it fails.
pub(super) const MAX_TRANSIENT: u32 = 10;
const PAGE: usize = 100;
/// How far back lists are read when looking for something.
const MAX_PAGES: usize = 20;

/// Why a step stopped short.
enum Failure {
    Provider(Stage, FineTuningError),
    /// Nothing a retry would change.
    Fatal(Stage, String),
    Store(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

fn at(stage: Stage) -> impl FnOnce(FineTuningError) -> Failure {
    move |e| Failure::Provider(stage, e)
}

/// Advances `job` as far as it can go now and stores it if it changed.
pub async fn step(
    app: &Arc<Context>,
    mut job: FineTuneJobRecord,
) -> Result<FineTuneJobRecord, StoreError> {
    let before = job.clone();
    if let Some(trainer) = super::trainer::command_provider(app, &job.provider) {
        super::trainer::step(app, trainer, &mut job).await?;
        if job != before {
            save(app, &job).await?;
        }
        return Ok(job);
    }
    let result = match app.upstreams.by_name(&job.provider) {
        None => Err(Failure::Fatal(
            Stage::Poll,
            format!("provider `{}` is no longer configured", job.provider),
        )),
        Some(provider) if job.provider_job_id.is_none() => prepare(app, provider, &mut job).await,
        Some(provider) => follow(app, provider, &mut job).await,
    };
    match result {
        Ok(()) => job.attempts.transient_failures = 0,
        Err(Failure::Store(e)) => return Err(e),
        Err(Failure::Fatal(stage, message)) => {
            fail_with(&mut job, stage, None, &message, Value::Null);
        }
        Err(Failure::Provider(stage, e)) => ride_out(&mut job, stage, &e),
    }
    if job != before {
        save(app, &job).await?;
    }
    Ok(job)
}

/// A transient failure is noted and tried again at the next poll, up to
/// [`MAX_TRANSIENT`] in a row; any other ends the job.
pub(super) fn ride_out(job: &mut FineTuneJobRecord, stage: Stage, e: &FineTuningError) {
    if e.is_transient() && job.attempts.transient_failures < MAX_TRANSIENT {
        job.attempts.transient_failures += 1;
        let n = job.attempts.transient_failures;
        note(
            job,
            "warn",
            format!("{e}; trying again at the next poll ({n} of {MAX_TRANSIENT})"),
        );
    } else {
        fail(job, stage, e);
    }
}

async fn prepare(
    app: &Arc<Context>,
    provider: &Provider,
    job: &mut FineTuneJobRecord,
) -> Result<(), Failure> {
    upload(app, provider, job, DatasetSplit::Train).await?;
    upload(app, provider, job, DatasetSplit::Validation).await?;
    if provider.is_azure() && !job.attempts.submit {
        match azure_files::imported(provider, job)
            .await
            .map_err(at(Stage::Create))?
        {
            Imported::Ready => {}
            Imported::Waiting => {
                const WAITING: &str = "Waiting for Azure to import the uploaded files";
                if job.events.last().is_none_or(|e| e.message != WAITING) {
                    note(job, "info", WAITING);
                }
                return Ok(());
            }
            Imported::Failed(why) => return Err(Failure::Fatal(Stage::Upload, why)),
        }
    }
    submit(app, provider, job).await
}

fn uploaded(job: &mut FineTuneJobRecord, split: DatasetSplit) -> &mut Option<String> {
    match split {
        DatasetSplit::Train => &mut job.provider_files.training_file,
        DatasetSplit::Validation => &mut job.provider_files.validation_file,
    }
}

fn attempted(job: &mut FineTuneJobRecord, split: DatasetSplit) -> &mut bool {
    match split {
        DatasetSplit::Train => &mut job.attempts.training_upload,
        DatasetSplit::Validation => &mut job.attempts.validation_upload,
    }
}

/// Uploads one file of the dataset, unless it is done or (after a
/// restart) the provider already holds it under its name. An empty
/// validation file is not sent at all.
async fn upload(
    app: &Arc<Context>,
    provider: &Provider,
    job: &mut FineTuneJobRecord,
    split: DatasetSplit,
) -> Result<(), Failure> {
    if uploaded(job, split).is_some() {
        return Ok(());
    }
    let filename = format!("flywheel-{}-{}.jsonl", job.id, split.as_str());
    let bytes = dataset_file(app, &job.dataset_id, split).await?;
    let Some(bytes) = bytes.filter(|b| !b.trim_ascii().is_empty()) else {
        return match split {
            DatasetSplit::Train => Err(Failure::Fatal(
                Stage::Upload,
                format!("dataset `{}` has no training examples", job.dataset_id),
            )),
            DatasetSplit::Validation => Ok(()),
        };
    };
    if *attempted(job, split) {
        let files = provider.list_files().await.map_err(at(Stage::Upload))?;
        if let Some(file) = files.data.into_iter().find(|f| f.filename == filename) {
            note(
                job,
                "info",
                format!("Found {filename} uploaded before as {}", file.id),
            );
            *uploaded(job, split) = Some(file.id);
            return Ok(save(app, job).await?);
        }
    }
    *attempted(job, split) = true;
    save(app, job).await?;
    let file = provider
        .upload_file(&filename, bytes)
        .await
        .map_err(at(Stage::Upload))?;
    note(job, "info", format!("Uploaded {filename} as {}", file.id));
    *uploaded(job, split) = Some(file.id);
    Ok(save(app, job).await?)
}

/// Creates the provider's job, unless (after a restart) one carrying our
/// id in its metadata exists already.
async fn submit(
    app: &Arc<Context>,
    provider: &Provider,
    job: &mut FineTuneJobRecord,
) -> Result<(), Failure> {
    if job.attempts.submit
        && let Some(remote) = find_job(provider, job).await.map_err(at(Stage::Create))?
    {
        note(
            job,
            "info",
            format!("Found the job submitted before as {}", remote.id),
        );
        apply_remote(job, &remote);
        return Ok(save(app, job).await?);
    }
    job.attempts.submit = true;
    save(app, job).await?;
    let remote = provider
        .create_job(&spec(job))
        .await
        .map_err(at(Stage::Create))?;
    note(
        job,
        "info",
        format!("Submitted to {} as {}", job.provider, remote.id),
    );
    apply_remote(job, &remote);
    Ok(save(app, job).await?)
}

fn spec(job: &FineTuneJobRecord) -> JobSpec {
    let mut metadata = job.metadata.clone();
    metadata.insert(JOB_ID_KEY.into(), job.id.clone());
    JobSpec {
        model: job.base_model.clone(),
        training_file: job.provider_files.training_file.clone().unwrap_or_default(),
        validation_file: job.provider_files.validation_file.clone(),
        suffix: job.suffix.clone(),
        seed: job.seed,
        metadata,
        method: job.method.clone(),
        n_epochs: job.hyperparameters.n_epochs,
        batch_size: job.hyperparameters.batch_size,
        learning_rate_multiplier: job.hyperparameters.learning_rate_multiplier,
    }
}

/// The provider's job whose `metadata.flywheel_job_id` is `job`'s id,
/// newest first (a job submitted just before a restart is among the
/// newest). A provider that keeps no metadata (Azure's dated
/// api-versions) is asked for the job training on `job`'s upload, which
/// no other job names.
pub async fn find_job(
    provider: &Provider,
    job: &FineTuneJobRecord,
) -> Result<Option<JobObject>, FineTuningError> {
    let id = job.id.as_str();
    let upload = job.provider_files.training_file.as_deref();
    let mut after: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = provider.list_jobs(after.as_deref(), PAGE).await?;
        let ours = |j: &&JobObject| match j.metadata.as_ref().and_then(|m| m.get(JOB_ID_KEY)) {
            Some(tag) => tag.as_str() == Some(id),
            None => upload.is_some() && j.training_file.as_deref() == upload,
        };
        if let Some(found) = page.data.iter().find(ours) {
            return Ok(Some(found.clone()));
        }
        match page.data.last() {
            Some(last) if page.has_more => after = Some(last.id.clone()),
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// Reads the provider's job and its new events; on success registers the
/// model before the job says `succeeded`.
async fn follow(
    app: &Arc<Context>,
    provider: &Provider,
    job: &mut FineTuneJobRecord,
) -> Result<(), Failure> {
    let id = job.provider_job_id.clone().unwrap_or_default();
    let remote = provider.get_job(&id).await.map_err(at(Stage::Poll))?;
    copy_events(provider, job, &id).await?;
    apply_remote(job, &remote);
    if remote.status == "succeeded" && !job.status.is_final() {
        if job.fine_tuned_model.is_none() {
            return Err(Failure::Fatal(
                Stage::Run,
                "the provider reported success without naming a fine-tuned model".into(),
            ));
        }
        if provider.is_azure() {
            match deployment::deploy(app, provider, job).await {
                Ok(Progress::Ready) => {}
                Ok(Progress::Provisioning) => return Ok(()),
                Ok(Progress::Awaiting) => {
                    finish(job, JobStatus::Succeeded);
                    return Ok(());
                }
                Err(DeployError::Provider(e)) => return Err(Failure::Provider(Stage::Deploy, e)),
                Err(DeployError::Fatal(message)) => {
                    return Err(Failure::Fatal(Stage::Deploy, message));
                }
                Err(DeployError::Store(e)) => return Err(Failure::Store(e)),
            }
        }
        register(app, job).await?;
        finish(job, JobStatus::Succeeded);
    }
    Ok(())
}

/// The events the provider has that the job has not, walking back from
/// the newest until the last one copied.
async fn copy_events(
    provider: &Provider,
    job: &mut FineTuneJobRecord,
    id: &str,
) -> Result<(), Failure> {
    let mut collected = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let page = provider
            .list_events(id, after.as_deref(), PAGE)
            .await
            .map_err(at(Stage::Poll))?;
        let (new, found) = unseen(&page.data, job.last_provider_event.as_deref());
        collected.extend(new.into_iter().cloned());
        match page.data.last() {
            Some(last) if page.has_more && !found => after = Some(last.id.clone()),
            _ => break,
        }
    }
    let newest_first: Vec<_> = collected.iter().collect();
    add_provider_events(job, &newest_first);
    Ok(())
}

/// Registers off the async workers (the registry writes the store).
async fn register(app: &Arc<Context>, job: &mut FineTuneJobRecord) -> Result<(), Failure> {
    let (registered, result) = register_off_workers(app, job).await?;
    *job = registered;
    match result {
        Ok(()) => Ok(()),
        Err(RegistryError::Store(e)) => Err(Failure::Store(e)),
        Err(e) => Err(Failure::Fatal(Stage::Register, e.to_string())),
    }
}
