//! Scheduled evaluations: every `evaluation.interval_s` (when
//! `evaluation.enabled`), each alias's production version and its
//! candidates with traffic are evaluated on the validation split of the
//! alias's newest ready dataset, so `/admin/api/performance` shows their
//! metrics over time. An alias whose previous run is still pending is
//! left for the next tick.

use super::Context;
use super::run::{EvalError, NewEvaluation, create};
use crate::service::{Lease, Next, Service, StepError, blocking, periodic};
use crate::store::{DatasetRecord, ModelAliasRecord, StoreError, VersionState};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Datasets looked at for an alias's newest ready one.
const LOOK_AT: usize = 500;

/// Queues one run per alias that can have one; returns their ids.
pub fn try_step_once(app: &Context) -> Result<Vec<String>, StoreError> {
    let mut queued = Vec::new();
    let datasets = app.store.datasets(None, LOOK_AT)?;
    for alias in app.registry.aliases() {
        let busy = !app
            .store
            .evaluations(None, 1, &|r| r.alias == alias.alias && r.is_pending())?
            .is_empty();
        let Some(dataset) = newest_ready(&datasets, &alias.alias) else {
            continue;
        };
        if busy {
            continue;
        }
        let new = NewEvaluation {
            alias: alias.alias.clone(),
            versions: scheduled_versions(&alias),
            dataset_id: dataset.id.clone(),
            split: Some("validation".into()),
        };
        match create(app, new, "scheduler") {
            Ok(run) => queued.push(run.id),
            Err(EvalError::Store(e)) => return Err(e),
            Err(e) => {
                tracing::warn!(alias = %alias.alias, error = %e, "scheduled evaluation not queued")
            }
        }
    }
    Ok(queued)
}

/// Datasets are listed newest first.
fn newest_ready<'a>(datasets: &'a [DatasetRecord], alias: &str) -> Option<&'a DatasetRecord> {
    datasets.iter().find(|d| {
        d.alias.as_deref() == Some(alias)
            && d.report["ready_for_training"] == true
            && !d.validation_ids.is_empty()
    })
}

/// Production first, then every candidate that serves live traffic.
fn scheduled_versions(alias: &ModelAliasRecord) -> Vec<String> {
    let candidates = alias
        .versions
        .iter()
        .filter(|v| {
            v.state == VersionState::Candidate && v.weight > 0.0 && v.name != alias.production
        })
        .map(|v| v.name.clone());
    std::iter::once(alias.production.clone())
        .chain(candidates)
        .collect()
}

/// The service's step: [`try_step_once`] off the async workers.
pub async fn step(app: &Arc<Context>) -> Result<Next, StepError<StoreError>> {
    let state = app.clone();
    let queued = blocking(move || try_step_once(&state)).await?;
    if !queued.is_empty() {
        tracing::info!(?queued, "scheduled evaluations queued");
    }
    Ok(Next::Wait)
}

/// Runs [`step`] every interval until shutdown; the first run is one
/// interval after start, not at start.
pub async fn run_schedule(app: Arc<Context>, lease: Option<Lease>, shutdown: CancellationToken) {
    if !app.config.enabled {
        return;
    }
    let every = Duration::from_secs(app.config.interval_s.max(1));
    let service = Service::every("evaluation-schedule", every)
        .first_after_one_interval()
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

    #[tokio::test(start_paused = true)]
    async fn an_alias_without_a_ready_dataset_gets_no_run() {
        let parts = crate::testing::parts("");
        let app = parts.evaluation();
        assert_eq!(step(&app).await.unwrap(), Next::Wait);
        let runs = parts.store.evaluations(None, 10, &|_| true).unwrap();
        assert!(runs.is_empty(), "{runs:?}");
    }

    #[test]
    fn production_comes_first_then_the_candidates_with_traffic() {
        let parts = crate::testing::parts("");
        let mut alias = parts.registry.alias("triage").unwrap();
        assert_eq!(scheduled_versions(&alias), ["base"]);
        for v in &mut alias.versions {
            v.weight = 50.0;
        }
        assert_eq!(scheduled_versions(&alias), ["base", "large"]);
    }
}
