//! `/admin/api/evaluations…` and `/admin/api/performance`: asking for an
//! offline evaluation (admin), reading runs with their results, comparison
//! and targets, and each version's metrics over time.

use super::{blocking, list_envelope};
use crate::auth::{Caller, Role};
use crate::evaluation::run::{EvalError, NewEvaluation, create, targets_view};
use crate::openai::{ApiError, ApiJson, ApiQuery};
use crate::state::AppState;
use crate::store::{EvaluationRecord, PerformanceRecord, Store, StoreError};
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

pub async fn create_evaluation(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<NewEvaluation>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let state = app.clone();
    let run = blocking(move || {
        let run = create(&state.evaluation, body, &caller.id)?;
        let details = json!({"alias": run.alias, "versions": run.versions, "dataset_id": run.dataset_id, "split": run.split});
        crate::audit::record(state.store.as_ref(), &caller.id, "evaluation.create", &run.id, details)?;
        Ok::<_, ApiError>(run)
    })
    .await?;
    Ok((StatusCode::ACCEPTED, Json(view(&app, &run))).into_response())
}

pub async fn get_evaluation(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = app.store.clone();
    let run = blocking(move || {
        store.evaluation(&id)?.ok_or_else(|| ApiError::NotFound {
            message: format!("no evaluation with id `{id}`"),
            param: Some("id".into()),
            code: "not_found",
        })
    })
    .await?;
    Ok(Json(view(&app, &run)))
}

/// Every example's result, by version then example: what each version
/// predicted against the review labels, so the figures can be checked.
pub async fn evaluation_examples(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = app.store.clone();
    let results = blocking(move || {
        if store.evaluation(&id)?.is_none() {
            return Err(ApiError::NotFound {
                message: format!("no evaluation with id `{id}`"),
                param: Some("id".into()),
                code: "not_found",
            });
        }
        Ok(store.example_results(&id)?)
    })
    .await?;
    let data = results.iter().map(|r| json!(r)).collect();
    Ok(Json(list_envelope(data, None)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationQuery {
    alias: Option<String>,
    version: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

pub async fn list_evaluations(
    State(app): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<EvaluationQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let store = app.store.clone();
    let runs = blocking(move || {
        store.evaluations(q.cursor.as_deref(), limit + 1, &|r| {
            q.alias.as_ref().is_none_or(|a| &r.alias == a)
                && q.version.as_ref().is_none_or(|v| r.versions.contains(v))
        })
    })
    .await?;
    let next_cursor = (runs.len() > limit).then(|| runs[limit - 1].id.clone());
    let data = runs.iter().take(limit).map(|r| view(&app, r)).collect();
    Ok(Json(list_envelope(data, next_cursor)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerformanceQuery {
    alias: Option<String>,
    version: Option<String>,
    metric: Option<String>,
}

pub async fn performance(
    State(app): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<PerformanceQuery>,
) -> Result<Json<Value>, ApiError> {
    let aliases: Vec<String> = match &q.alias {
        Some(alias) => vec![alias.clone()],
        None => app
            .registry
            .aliases()
            .into_iter()
            .map(|a| a.alias)
            .collect(),
    };
    let store = app.store.clone();
    let figures = blocking(move || figures(store.as_ref(), &aliases, &q)).await?;
    let data: Vec<Value> = figures.iter().map(performance_view).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// The aliases' figures the query keeps, oldest first.
fn figures(
    store: &dyn Store,
    aliases: &[String],
    q: &PerformanceQuery,
) -> Result<Vec<PerformanceRecord>, StoreError> {
    let mut out = Vec::new();
    for alias in aliases {
        out.extend(store.performance(alias)?.into_iter().filter(|p| {
            q.version.as_ref().is_none_or(|v| &p.version == v)
                && q.metric.as_ref().is_none_or(|m| &p.metric == m)
        }));
    }
    out.sort_by(|a, b| (&a.at, &a.evaluation_id).cmp(&(&b.at, &b.evaluation_id)));
    Ok(out)
}

fn performance_view(p: &PerformanceRecord) -> Value {
    json!({
        "at": p.at,
        "alias": p.alias,
        "version": p.version,
        "dataset_id": p.dataset_id,
        "metric": p.metric,
        "score": p.score,
        "n": p.n,
        "evaluation_id": p.evaluation_id,
    })
}

/// A run as the admin API shows it, its targets against the current
/// config's.
fn view(app: &AppState, run: &EvaluationRecord) -> Value {
    let results = run.results.clone().unwrap_or(Value::Null);
    json!({
        "object": "evaluation",
        "id": run.id,
        "alias": run.alias,
        "versions": run.versions,
        "dataset_id": run.dataset_id,
        "split": run.split,
        "status": run.status,
        "progress": {"done": run.done, "total": run.total},
        "skipped": run.skipped,
        "created_by": run.created_by,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "error": run.error,
        "targets": targets_view(&results, &run.versions, &app.config.evaluation.targets),
        "results": results,
        "comparison": run.comparison,
    })
}

impl From<EvalError> for ApiError {
    fn from(e: EvalError) -> Self {
        let not_found = |message: String, param: &str| ApiError::NotFound {
            message,
            param: Some(param.into()),
            code: "not_found",
        };
        match e {
            e @ EvalError::UnknownAlias(_) => not_found(e.to_string(), "alias"),
            e @ EvalError::UnknownVersion { .. } => not_found(e.to_string(), "versions"),
            e @ EvalError::UnknownDataset(_) => not_found(e.to_string(), "dataset_id"),
            EvalError::Invalid(message) => ApiError::invalid(message, None),
            e @ EvalError::Dataset { .. } => ApiError::invalid(e.to_string(), Some("dataset_id")),
            EvalError::Task(e) => ApiError::Internal(e),
            EvalError::Store(e) => e.into(),
        }
    }
}
