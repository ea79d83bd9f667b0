//! The poller: every `fine_tuning.poll_interval_s` (or at once when a job
//! was created) one step for each job in flight. Tests call
//! [`try_step_once`] directly.

use super::Context;
use super::load;
use super::step::step;
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
        match step(app, job).await {
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

/// Runs rounds until `shutdown`. A round cut short by shutdown is safe:
/// every step is stored before the provider is called.
pub async fn run_poller(app: Arc<Context>, shutdown: CancellationToken) {
    let every = Duration::from_secs(app.config.fine_tuning.poll_interval_s.max(1));
    loop {
        tokio::select! {
            result = try_step_once(&app) => {
                if let Err(e) = result {
                    tracing::error!(error = %e, "fine-tuning poll failed");
                }
            }
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = app.jobs.wake.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}
