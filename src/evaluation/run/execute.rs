//! Running one evaluation: every (version, example) not answered yet is
//! put to the version, at most `evaluation.concurrency` at once; each
//! result is stored with the run's progress as it arrives. At the end the
//! figures are computed from the stored results, so a resumed run counts
//! the examples it answered before the restart exactly like the rest.

use super::ask::ask;
use super::{EvalError, Example, load_examples, summarise};
use crate::evaluation::Context;
use crate::ids::now_rfc3339;
use crate::routing::{Choice, Route};
use crate::store::{EvaluationRecord, ExampleResult};
use futures_util::StreamExt;
use std::collections::HashSet;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How a call to [`execute`] ended; an error leaves the run to be marked
/// failed by the caller.
#[derive(Debug)]
pub enum Ran {
    /// Succeeded, with its figures.
    Finished(Box<EvaluationRecord>),
    /// Shutdown began; the run stays `running` and resumes at next start.
    Interrupted,
}

pub async fn execute(
    app: &Arc<Context>,
    mut run: EvaluationRecord,
    shutdown: &CancellationToken,
) -> Result<Ran, EvalError> {
    let (examples, answered) = {
        let (store, run) = (app.store.clone(), run.clone());
        blocking(move || {
            let (examples, _) = load_examples(store.as_ref(), &run.dataset_id, &run.split)?;
            let answered: HashSet<(String, u64)> = store
                .example_results(&run.id)?
                .into_iter()
                .map(|r| (r.version, r.index))
                .collect();
            Ok((examples, answered))
        })
        .await?
    };
    let routes = routes(app, &run)?;
    run.status = "running".into();
    run.started_at.get_or_insert_with(now_rfc3339);
    run.total = (examples.len() * run.versions.len()) as u64;
    let todo = unanswered(&routes, &examples, &answered);
    run.done = run.total.saturating_sub(todo.len() as u64);
    save(app, &run).await?;
    let run_id = run.id.clone();
    let mut answers = futures_util::stream::iter(todo)
        .map(|(route, example)| {
            let (app, id) = (app.clone(), run_id.clone());
            async move { answer(&app, &id, &route, &example).await }
        })
        .buffer_unordered(app.config.concurrency.max(1));
    loop {
        let result = tokio::select! {
            next = answers.next() => match next {
                Some(result) => result,
                None => break,
            },
            () = shutdown.cancelled() => return Ok(Ran::Interrupted),
        };
        run.done += 1;
        let (store, progress) = (app.store.clone(), run.clone());
        blocking(move || Ok(store.put_example_result(&result, &progress)?)).await?;
    }
    finish(app, run).await
}

/// Every (version, example) without a stored result.
fn unanswered(
    routes: &[Route],
    examples: &[Example],
    answered: &HashSet<(String, u64)>,
) -> Vec<(Route, Example)> {
    routes
        .iter()
        .flat_map(|route| {
            let version = version_of(route);
            examples.iter().filter_map(move |example| {
                let key = (version.clone(), example.position);
                (!answered.contains(&key)).then(|| (route.clone(), example.clone()))
            })
        })
        .collect()
}

/// Each version's route, straight to its provider.
fn routes(app: &Context, run: &EvaluationRecord) -> Result<Vec<Route>, EvalError> {
    let table = app.registry.table();
    run.versions
        .iter()
        .map(|v| {
            table
                .resolve(&run.alias, Choice::Forced(v))
                .map_err(|e| EvalError::Invalid(e.to_string()))
        })
        .collect()
}

fn version_of(route: &Route) -> String {
    route.version.as_deref().unwrap_or_default().to_string()
}

async fn answer(
    app: &Context,
    evaluation_id: &str,
    route: &Route,
    example: &Example,
) -> ExampleResult {
    let reply = ask(&app.upstreams, route, &example.messages).await;
    let read = reply
        .as_ref()
        .map(|text| app.extractor.extract(text))
        .unwrap_or_default();
    ExampleResult {
        evaluation_id: evaluation_id.to_string(),
        version: version_of(route),
        index: example.position,
        conversation_id: example.conversation_id.clone(),
        expected_threat_type: example.threat_type.clone(),
        expected_severity: example.severity.clone(),
        predicted_threat_type: read.threat_type,
        predicted_severity: read.severity,
        error: reply.err(),
        answered_at: now_rfc3339(),
    }
}

/// Scores the stored results and stores the run with its figures.
async fn finish(app: &Arc<Context>, mut run: EvaluationRecord) -> Result<Ran, EvalError> {
    let (store, id) = (app.store.clone(), run.id.clone());
    let results = blocking(move || Ok(store.example_results(&id)?)).await?;
    let summary = summarise(&run.versions, &results, &app.threat_types);
    let at = now_rfc3339();
    run.status = "succeeded".into();
    run.finished_at = Some(at.clone());
    run.results = Some(summary.results_json());
    run.comparison = summary.comparison.clone();
    let performance = summary.performance(&run, &at);
    let (store, stored) = (app.store.clone(), run.clone());
    blocking(move || Ok(store.finish_evaluation(&stored, &performance)?)).await?;
    Ok(Ran::Finished(Box::new(run)))
}

async fn save(app: &Context, run: &EvaluationRecord) -> Result<(), EvalError> {
    let (store, run) = (app.store.clone(), run.clone());
    blocking(move || Ok(store.put_evaluation(&run)?)).await
}

/// Store calls block; they run off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EvalError> + Send + 'static,
) -> Result<T, EvalError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EvalError::Task(e.to_string()))?
}
