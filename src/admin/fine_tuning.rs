//! `/admin/api/fine-tuning/jobs…`: start a job from a dataset (admin),
//! list and read jobs with their events (analyst or admin), cancel one
//! and unload a trainer job's adapter (admin). The work is in `finetune`; these only map requests and errors.

use super::{blocking, list_envelope};
use crate::auth::{Caller, Role};
use crate::finetune::{
    JobError, NewJob, cancel_job, create_job, delete_deployment, register_deployment,
    unload_adapter,
};
use crate::openai::{ApiError, ApiJson, ApiQuery, UpstreamFailure};
use crate::state::AppState;
use crate::store::{FineTuneJobRecord, Hyperparameters};
use crate::upstream::FineTuningError;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    alias: String,
    dataset_id: String,
    provider: Option<String>,
    base_model: Option<String>,
    suffix: Option<String>,
    seed: Option<u64>,
    method: Option<String>,
    hyperparameters: Option<HyperparameterFields>,
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HyperparameterFields {
    n_epochs: Option<u32>,
    batch_size: Option<u32>,
    learning_rate_multiplier: Option<f64>,
}

pub async fn create(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<CreateJob>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let hyperparameters = body
        .hyperparameters
        .map_or_else(Hyperparameters::default, |h| Hyperparameters {
            n_epochs: h.n_epochs,
            batch_size: h.batch_size,
            learning_rate_multiplier: h.learning_rate_multiplier,
        });
    let new = NewJob {
        alias: body.alias,
        dataset_id: body.dataset_id,
        provider: body.provider,
        base_model: body.base_model,
        suffix: body.suffix,
        seed: body.seed,
        method: body.method,
        hyperparameters,
        metadata: body.metadata.unwrap_or_default(),
    };
    let actor = caller.id.to_string();
    let job = blocking(move || create_job(&app.fine_tuning, new, &actor)).await?;
    Ok((StatusCode::CREATED, Json(job_view(&job))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    cursor: Option<String>,
    limit: Option<usize>,
}

pub async fn list(
    State(app): State<Arc<AppState>>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Value>, ApiError> {
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let store = app.store.clone();
    let jobs = blocking(move || store.jobs(page.cursor.as_deref(), limit + 1)).await?;
    let next_cursor = (jobs.len() > limit).then(|| jobs[limit - 1].id.clone());
    let data = jobs.iter().take(limit).map(job_view).collect();
    Ok(Json(list_envelope(data, next_cursor)))
}

pub async fn get(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = app.store.clone();
    let lookup = id.clone();
    let job = blocking(move || store.job(&lookup)).await?;
    job.map(|j| Json(job_view(&j)))
        .ok_or_else(|| ApiError::from(JobError::no_job(&id)))
}

pub async fn cancel(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Admin)?;
    let job = cancel_job(&app.fine_tuning, &id, &caller.id).await?;
    Ok(Json(job_view(&job)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentName {
    name: String,
}

/// Azure: registers the deployment an admin made for a job awaiting one.
pub async fn register_job_deployment(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DeploymentName>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Admin)?;
    let job = register_deployment(&app.fine_tuning, &id, &body.name, &caller.id).await?;
    Ok(Json(job_view(&job)))
}

/// Azure: deletes the deployment of a job whose version no longer serves.
pub async fn delete_job_deployment(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Admin)?;
    let job = delete_deployment(&app.fine_tuning, &id, &caller.id).await?;
    Ok(Json(job_view(&job)))
}

/// Unloads a trainer job's adapter from the servers it was loaded on.
pub async fn unload(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Admin)?;
    let job = unload_adapter(&app.fine_tuning, &id, &caller.id).await?;
    Ok(Json(job_view(&job)))
}

/// A job as the admin API shows it (docs/API.md, "Fine-tuning jobs");
/// `deployment` only for a job whose model needs one (Azure).
pub fn job_view(job: &FineTuneJobRecord) -> Value {
    let mut view = json!({
        "object": "fine_tuning.job",
        "id": job.id,
        "alias": job.alias,
        "model_type": job.model_type,
        "dataset_id": job.dataset_id,
        "provider": job.provider,
        "base_model": job.base_model,
        "method": job.method,
        "hyperparameters": job.hyperparameters,
        "suffix": job.suffix,
        "seed": job.seed,
        "metadata": job.metadata,
        "status": job.status.as_str(),
        "provider_job_id": job.provider_job_id,
        "provider_file_ids": job.provider_files,
        "trained_tokens": job.trained_tokens,
        "fine_tuned_model": job.fine_tuned_model,
        "registered_version": job.registered_version,
        "error": job.error,
        "events": job.events,
        "metrics": job.metrics,
        "created_at": job.created_at,
        "created_by": job.created_by,
        "finished_at": job.finished_at,
    });
    if let Some(deployment) = &job.deployment {
        view["deployment"] = json!(deployment);
    }
    // Only a trainer's job has one, so a provider's job reads as before.
    if let Some(trainer) = &job.trainer {
        view["trainer"] = json!(trainer);
    }
    view
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            e @ JobError::Disabled => ApiError::InvalidRequest {
                message: e.to_string(),
                param: None,
                code: Some("fine_tuning_disabled"),
            },
            JobError::NotFound { message, param } => ApiError::NotFound {
                message,
                param: Some(param.into()),
                code: "not_found",
            },
            e @ JobError::NotReady { .. } => ApiError::InvalidRequest {
                message: e.to_string(),
                param: Some("dataset_id".into()),
                code: Some("not_ready"),
            },
            JobError::Invalid { message, param } => ApiError::invalid(message, Some(param)),
            JobError::Conflict(message) => ApiError::Conflict {
                message,
                code: "conflict",
            },
            JobError::Provider(e) => provider_error(e),
            JobError::Registry(e) => ApiError::from(e),
            JobError::Store(e) => e.into(),
        }
    }
}

/// A provider's error answer goes back with its status and error object.
fn provider_error(e: FineTuningError) -> ApiError {
    match e {
        FineTuningError::Status { status, .. } => {
            let error = match e.provider_error() {
                object @ Value::Object(_) => object,
                other => {
                    json!({"message": e.to_string(), "type": "api_error", "param": null, "code": null, "body": other})
                }
            };
            ApiError::UpstreamStatus(Box::new(UpstreamFailure {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                body: json!({ "error": error }).to_string().into(),
                headers: HeaderMap::new(),
            }))
        }
        FineTuningError::Transport { provider, detail } => {
            ApiError::UpstreamUnreachable { provider, detail }
        }
        FineTuningError::Invalid { provider, detail } => {
            ApiError::UpstreamInvalid { provider, detail }
        }
    }
}
