//! Cancelling a job: at the provider first when it was submitted (or may
//! have been) — or, for a trainer's job, its process group stopped —
//! then in the record, audited.

use super::Context;
use super::step::find_job;
use super::sync::{finish, note};
use super::{JobError, existing, save};
use crate::store::{FineTuneJobRecord, JobStatus};
use std::sync::Arc;

pub async fn cancel_job(
    app: &Arc<Context>,
    id: &str,
    actor: &str,
) -> Result<FineTuneJobRecord, JobError> {
    let _held = app.jobs.lock().await;
    let mut job = existing(app, id).await?;
    if job.status.is_final() {
        return Err(JobError::Conflict(format!(
            "job `{id}` has already {} and cannot be cancelled",
            job.status.as_str()
        )));
    }
    // A trainer's job: its process group is stopped (there is no provider).
    super::trainer::cancel(app, &mut job).await;
    if let Some(provider) = app.upstreams.by_name(&job.provider) {
        // A submission that may have reached the provider is looked for,
        // so that no job is left running there.
        if job.provider_job_id.is_none()
            && job.attempts.submit
            && let Some(remote) = find_job(provider, &job).await?
        {
            job.provider_job_id = Some(remote.id);
        }
        // A job being deployed (Azure) has finished training: there is
        // nothing to cancel at the provider, only the deployment to stop
        // following (it stays, for an admin to delete).
        if let Some(remote_id) = job.provider_job_id.clone()
            && job.deployment.is_none()
        {
            provider.cancel_job(&remote_id).await?;
        }
    }
    note(&mut job, "info", format!("Cancelled by {actor}"));
    finish(&mut job, JobStatus::Cancelled);
    save(app, &job).await?;
    metrics::counter!("flywheel_fine_tuning_jobs_finished_total", "status" => "cancelled")
        .increment(1);
    let (store, target) = (app.store.clone(), job.id.clone());
    let actor = actor.to_string();
    tokio::task::spawn_blocking(move || {
        crate::audit::record(
            store.as_ref(),
            &actor,
            "fine_tuning.job.cancel",
            &target,
            serde_json::Value::Null,
        )
    })
    .await
    .map_err(|e| crate::store::StoreError::Io(format!("store task failed: {e}")))??;
    Ok(job)
}
