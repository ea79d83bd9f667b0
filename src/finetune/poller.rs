//! The poller: every `fine_tuning.poll_interval_s` (or at once when a job
//! was created) one step for each job in flight. Tests call
//! [`try_step_once`] directly.

use super::Context;
use super::load;
use super::step::step as step_job;
use crate::service::{Lease, Next, Service, periodic};
use crate::store::StoreError;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Jobs looked at.
    pub stepped: usize,
    /// Of those, jobs that ended in this round.
    pub finished: usize,
}

/// One step for every job in flight, oldest first. A job whose step
/// fails on the store is logged and left for the next round.
pub async fn try_step_once(app: &Arc<Context>) -> Result<Outcome, StoreError> {
    let store = app.store.clone();
    let jobs = tokio::task::spawn_blocking(move || store.jobs_in_flight())
        .await
        .map_err(|e| StoreError::Io(format!("store task failed: {e}")))??;
    let mut outcome = Outcome::default();
    for listed in jobs {
        let _held = app.jobs.lock().await;
        // A cancel may have ended it since the list was read.
        let Some(job) = load(app, &listed.id)
            .await?
            .filter(|j| !j.status.is_final())
        else {
            continue;
        };
        outcome.stepped += 1;
        match step_job(app, job).await {
            Ok(after) if after.status.is_final() => {
                tracing::info!(job = %after.id, status = after.status.as_str(), "fine-tuning job ended");
                metrics::counter!("flywheel_fine_tuning_jobs_finished_total", "status" => after.status.as_str())
                    .increment(1);
                outcome.finished += 1;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(job = %listed.id, error = %e, "fine-tuning job step failed"),
        }
    }
    Ok(outcome)
}

/// The service's step: one round.
pub async fn step(app: &Arc<Context>) -> Result<Next, StoreError> {
    try_step_once(app).await?;
    Ok(Next::Wait)
}

/// Runs rounds at start, every `poll_interval_s` and when a job is
/// created, until `shutdown`. A round cut short by shutdown is safe:
/// every step is stored before the provider is called.
pub async fn run_poller(app: Arc<Context>, lease: Option<Lease>, shutdown: CancellationToken) {
    let every = Duration::from_secs(app.config.fine_tuning.poll_interval_s.max(1));
    let service = Service::every("fine-tuning-poller", every)
        .woken_by(app.jobs.wake.clone())
        .leased(lease);
    periodic(service, shutdown, || {
        let app = app.clone();
        async move { step(&app).await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FineTuneJobRecord, JobStatus};

    #[tokio::test(start_paused = true)]
    async fn a_job_whose_provider_is_gone_fails_in_one_round() {
        let parts = crate::testing::parts("");
        let app = parts.fine_tuning();
        assert_eq!(try_step_once(&app).await.unwrap(), Outcome::default());
        let job: FineTuneJobRecord = serde_json::from_value(serde_json::json!({
            "id": "job_1", "alias": "triage", "dataset_id": "d", "provider": "gone",
            "base_model": "m", "method": "supervised", "hyperparameters": {},
            "suffix": null, "seed": null, "status": "preparing", "provider_job_id": null,
            "trained_tokens": null, "fine_tuned_model": null, "registered_version": null,
            "error": null, "events": [], "metrics": null, "created_at": "t",
            "created_by": "k", "finished_at": null
        }))
        .unwrap();
        parts.store.put_job(&job).unwrap();
        assert_eq!(
            try_step_once(&app).await.unwrap(),
            Outcome {
                stepped: 1,
                finished: 1
            }
        );
        let stored = parts.store.job("job_1").unwrap().unwrap();
        assert_eq!(stored.status, JobStatus::Failed);
        assert!(parts.store.jobs_in_flight().unwrap().is_empty());
        assert_eq!(step(&app).await.unwrap(), Next::Wait, "nothing left");
    }
}
