//! The evaluation runner: one background service that runs stored
//! evaluations one at a time, oldest first. A run found `running` at start
//! was interrupted by a restart and resumes; one found `queued` starts.
//! `POST /admin/api/evaluations` and the scheduler wake it.

use super::Context;
use super::run::{Ran, execute};
use super::watch;
use crate::ids::now_rfc3339;
use crate::service::{Lease, Next, Service, periodic};
use crate::store::{EvaluationRecord, StoreError};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How many stored runs are looked at for the next one to run.
const LOOK_AT: usize = 10_000;

#[derive(Debug, Default)]
pub struct Runner {
    wake: Arc<Notify>,
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

/// The service's step: after a run, look for the next at once; when idle,
/// wait to be woken.
pub async fn step(app: &Arc<Context>, shutdown: &CancellationToken) -> Result<Next, StoreError> {
    Ok(match try_step_once(app, shutdown).await? {
        Outcome::Ran(_) => Next::Again,
        Outcome::Idle => Next::Wait,
        Outcome::Interrupted => Next::Stop("a run was interrupted by shutdown"),
    })
}

/// Runs evaluations as they come until shutdown: at start (a run left
/// pending resumes), and whenever a run is queued.
pub async fn run_evaluations(app: Arc<Context>, lease: Option<Lease>, shutdown: CancellationToken) {
    let service =
        Service::on_wake("evaluation-runner", Some(app.runner.wake.clone())).leased(lease);
    let token = shutdown.clone();
    periodic(service, shutdown, || {
        let (app, token) = (app.clone(), token.clone());
        async move { step(&app, &token).await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(id: &str, dataset: &str) -> EvaluationRecord {
        EvaluationRecord {
            id: id.into(),
            alias: "triage".into(),
            versions: vec!["base".into()],
            dataset_id: dataset.into(),
            split: "validation".into(),
            status: "queued".into(),
            done: 0,
            total: 1,
            skipped: 0,
            created_by: "t".into(),
            created_at: now_rfc3339(),
            started_at: None,
            finished_at: None,
            error: None,
            results: None,
            comparison: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_that_cannot_be_read_fails_and_the_next_step_comes_at_once() {
        let parts = crate::testing::parts("");
        let app = parts.evaluation();
        let shutdown = CancellationToken::new();
        assert_eq!(step(&app, &shutdown).await.unwrap(), Next::Wait, "idle");
        parts
            .store
            .put_evaluation(&queued("eval_1", "ds_missing"))
            .unwrap();
        assert_eq!(step(&app, &shutdown).await.unwrap(), Next::Again);
        let stored = parts.store.evaluation("eval_1").unwrap().unwrap();
        assert_eq!(stored.status, "failed");
        assert!(stored.error.unwrap().contains("ds_missing"));
        assert_eq!(step(&app, &shutdown).await.unwrap(), Next::Wait);
    }
}
