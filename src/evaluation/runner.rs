//! The evaluation runner: one background service that runs stored
//! evaluations one at a time, oldest first. A run found `running` at start
//! was interrupted by a restart and resumes; one found `queued` starts.
//! `POST /admin/api/evaluations` and the scheduler wake it.

use super::Context;
use super::run::{Ran, execute};
use super::watch;
use crate::ids::now_rfc3339;
use crate::store::{EvaluationRecord, StoreError};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How many stored runs are looked at for the next one to run.
const LOOK_AT: usize = 10_000;

#[derive(Debug, Default)]
pub struct Runner {
    wake: Notify,
}

impl Runner {
    /// A new run is stored: look for it. A wake while the runner is busy
    /// is kept, so it looks again when done.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// What one step did.
#[derive(Debug)]
pub enum Outcome {
    /// Nothing to run.
    Idle,
    /// A run ended, succeeded or failed; the record says which.
    Ran(Box<EvaluationRecord>),
    /// Shutdown began mid-run; it resumes at the next start.
    Interrupted,
}

/// Runs the oldest pending evaluation to its end (or until shutdown), then
/// raises the alerts its figures call for.
pub async fn try_step_once(
    app: &Arc<Context>,
    shutdown: &CancellationToken,
) -> Result<Outcome, StoreError> {
    let store = app.store.clone();
    let next = tokio::task::spawn_blocking(move || {
        Ok::<_, StoreError>(store.evaluations(None, LOOK_AT, &|r| r.is_pending())?.pop())
    })
    .await
    .map_err(|e| StoreError::Io(format!("store task failed: {e}")))??;
    let Some(run) = next else {
        return Ok(Outcome::Idle);
    };
    let id = run.id.clone();
    match execute(app, run.clone(), shutdown).await {
        Ok(Ran::Interrupted) => Ok(Outcome::Interrupted),
        Ok(Ran::Finished(done)) => {
            let (state, finished) = (app.clone(), done.clone());
            match tokio::task::spawn_blocking(move || watch::after_run(&state, &finished)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, evaluation = %id, "evaluation alerts failed")
                }
                Err(e) => {
                    tracing::error!(error = %e, evaluation = %id, "evaluation alerts panicked")
                }
            }
            Ok(Outcome::Ran(done))
        }
        Err(e) => {
            tracing::warn!(error = %e, evaluation = %id, "evaluation failed");
            let failed = EvaluationRecord {
                status: "failed".into(),
                error: Some(e.to_string()),
                finished_at: Some(now_rfc3339()),
                ..run
            };
            let (store, stored) = (app.store.clone(), failed.clone());
            tokio::task::spawn_blocking(move || store.put_evaluation(&stored))
                .await
                .map_err(|e| StoreError::Io(format!("store task failed: {e}")))??;
            Ok(Outcome::Ran(Box::new(failed)))
        }
    }
}

/// Runs evaluations as they come until shutdown.
pub async fn run_evaluations(app: Arc<Context>, shutdown: CancellationToken) {
    loop {
        match try_step_once(&app, &shutdown).await {
            Ok(Outcome::Ran(_)) => continue,
            Ok(Outcome::Interrupted) => return,
            Ok(Outcome::Idle) => {}
            Err(e) => tracing::error!(error = %e, "evaluation runner step failed"),
        }
        tokio::select! {
            () = app.runner.wake.notified() => {}
            () = shutdown.cancelled() => return,
        }
    }
}
