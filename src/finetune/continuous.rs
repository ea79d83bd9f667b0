//! Continuous learning (`[fine_tuning.continuous]`, off by default):
//! every `check_interval_s`, each alias whose last job started at least
//! `min_new_approved` approvals ago gets a dataset of its approved
//! conversations and, when that is ready for training, a job. Approvals
//! are read from the maintained conversation tallies, which count every
//! alias together: "since the last job" is the approved total now minus
//! the total when that job was created. Everything is done and audited by
//! actor `continuous-learning`.

use super::Context;
use super::{JobError, NewJob, create_job};
use crate::curation::{DatasetError, DatasetFilter, DatasetFormat, DatasetRequest, create_dataset};
use crate::ids::now_rfc3339;
use crate::service::{Lease, Next, Service, StepError, blocking, periodic};
use crate::store::{FineTuneJobRecord, ReviewStatus, StoreError};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const ACTOR: &str = "continuous-learning";

/// How many recent jobs are read to find each alias's last one.
const RECENT_JOBS: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum ContinuousError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether an alias is due for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Its last job is still in flight.
    Busy,
    Wait {
        approved_since: i64,
    },
    Start {
        approved_since: i64,
    },
}

/// `baseline` is the approved total when the alias's last job (or the
/// last build that was not ready) started; none means from the start.
pub fn decide(
    approved_now: i64,
    last_job: Option<&FineTuneJobRecord>,
    baseline: Option<i64>,
    min_new: u64,
) -> Decision {
    if last_job.is_some_and(|j| !j.status.is_final()) {
        return Decision::Busy;
    }
    let approved_since = approved_now - baseline.unwrap_or(0);
    if approved_since >= i64::try_from(min_new).unwrap_or(i64::MAX) {
        Decision::Start { approved_since }
    } else {
        Decision::Wait { approved_since }
    }
}

/// Approved totals at which a build was not ready, by alias: no new
/// build until as many approvals again came in. Kept in memory; after a
/// restart one more build is tried.
#[derive(Default)]
pub struct NotReady(Mutex<BTreeMap<String, i64>>);

impl NotReady {
    fn get(&self, alias: &str) -> Option<i64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(alias)
            .copied()
    }

    fn set(&self, alias: &str, approved: i64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(alias.to_string(), approved);
    }
}

/// One check of every alias; returns the jobs it started. Blocking.
pub fn check_once(
    app: &Context,
    not_ready: &NotReady,
) -> Result<Vec<FineTuneJobRecord>, ContinuousError> {
    let approved = app.store.tallies()?.approved;
    let jobs = app.store.jobs(None, RECENT_JOBS)?;
    let min_new = app.config.fine_tuning.continuous.min_new_approved;
    let mut started = Vec::new();
    for alias in app.registry.aliases() {
        let last = jobs.iter().find(|j| j.alias == alias.alias);
        let baseline = [
            last.and_then(|j| j.approved_at_start),
            not_ready.get(&alias.alias),
        ]
        .into_iter()
        .flatten()
        .max();
        if let Decision::Start { approved_since } = decide(approved, last, baseline, min_new) {
            match start(app, &alias.alias, approved_since)? {
                Some(job) => started.push(job),
                None => not_ready.set(&alias.alias, approved),
            }
        }
    }
    Ok(started)
}

/// Builds the alias's dataset and starts its job; `None` when the dataset
/// is not ready for training (audited as a skip).
fn start(
    app: &Context,
    alias: &str,
    approved_since: i64,
) -> Result<Option<FineTuneJobRecord>, ContinuousError> {
    let request = DatasetRequest {
        name: format!("{ACTOR} {alias} {}", now_rfc3339()),
        format: DatasetFormat::Sft,
        filter: DatasetFilter {
            status: Some(ReviewStatus::Approved),
            alias: Some(alias.to_string()),
            ..DatasetFilter::default()
        },
        validation_split: None,
        base_model: None,
    };
    let dataset = create_dataset(
        app.store.as_ref(),
        &app.config,
        &app.registry,
        &request,
        ACTOR,
    )?;
    let ready = dataset.report.get("ready_for_training") == Some(&json!(true));
    if !ready {
        crate::audit::record(
            app.store.as_ref(),
            ACTOR,
            "fine_tuning.continuous.skip",
            alias,
            json!({"dataset_id": dataset.id, "approved_since": approved_since,
                   "problems": dataset.report.get("problems")}),
        )?;
        return Ok(None);
    }
    let new = NewJob {
        alias: alias.to_string(),
        dataset_id: dataset.id.clone(),
        ..NewJob::default()
    };
    let job = create_job(app, new, ACTOR)?;
    crate::audit::record(
        app.store.as_ref(),
        ACTOR,
        "fine_tuning.continuous.start",
        &job.id,
        json!({"alias": alias, "dataset_id": dataset.id, "approved_since": approved_since}),
    )?;
    Ok(Some(job))
}

/// The service's step: [`check_once`] off the async workers.
pub async fn step(
    app: &Arc<Context>,
    not_ready: &Arc<NotReady>,
) -> Result<Next, StepError<ContinuousError>> {
    let (state, skips) = (app.clone(), not_ready.clone());
    let started = blocking(move || check_once(&state, &skips)).await?;
    // Counted once the check is done with every alias, so a reader who
    // sees the count move knows what it decided.
    metrics::counter!("flywheel_continuous_learning_checks_total").increment(1);
    for job in started {
        tracing::info!(job = %job.id, alias = %job.alias, "continuous learning started a fine-tuning job");
    }
    Ok(Next::Wait)
}

/// The service: a check every `check_interval_s` (the first one interval
/// after start) until `shutdown`.
pub async fn run_continuous(app: Arc<Context>, lease: Option<Lease>, shutdown: CancellationToken) {
    let every = Duration::from_secs(app.config.fine_tuning.continuous.check_interval_s.max(1));
    let not_ready = Arc::new(NotReady::default());
    let service = Service::every("continuous-learning", every)
        .first_after_one_interval()
        .leased(lease);
    periodic(service, shutdown, || {
        let (app, not_ready) = (app.clone(), not_ready.clone());
        async move { step(&app, &not_ready).await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::JobStatus;

    fn job(status: JobStatus) -> FineTuneJobRecord {
        serde_json::from_value(json!({
            "id": "job_1", "alias": "a", "dataset_id": "d", "provider": "p",
            "base_model": "m", "method": "supervised", "hyperparameters": {},
            "suffix": null, "seed": null, "status": status, "provider_job_id": null,
            "trained_tokens": null, "fine_tuned_model": null, "registered_version": null,
            "error": null, "events": [], "metrics": null, "created_at": "t",
            "created_by": "k", "finished_at": null
        }))
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn without_approvals_no_dataset_is_built_and_no_job_started() {
        let parts = crate::testing::parts(
            "[fine_tuning]\nenabled = true\n[fine_tuning.continuous]\nenabled = true\nmin_new_approved = 1",
        );
        let app = parts.fine_tuning();
        let not_ready = Arc::new(NotReady::default());
        assert_eq!(step(&app, &not_ready).await.unwrap(), Next::Wait);
        assert!(parts.store.jobs(None, 10).unwrap().is_empty());
        assert!(parts.store.datasets(None, 10).unwrap().is_empty());
        assert_eq!(not_ready.get("triage"), None);
    }

    #[test]
    fn an_alias_is_due_once_enough_approvals_came_in_since_its_last_job() {
        assert_eq!(
            decide(99, None, None, 100),
            Decision::Wait { approved_since: 99 }
        );
        assert_eq!(
            decide(100, None, None, 100),
            Decision::Start {
                approved_since: 100
            }
        );
        let done = job(JobStatus::Succeeded);
        assert_eq!(
            decide(180, Some(&done), Some(100), 100),
            Decision::Wait { approved_since: 80 }
        );
        assert_eq!(
            decide(200, Some(&done), Some(100), 100),
            Decision::Start {
                approved_since: 100
            }
        );
        let running = job(JobStatus::Running);
        assert_eq!(decide(500, Some(&running), Some(0), 100), Decision::Busy);
    }
}
