//! `/admin/api/datasets…`: building snapshots (admins) and reading them
//! and their JSONL files (analysts too). The work is
//! `curation::create_dataset`; snapshots never change once stored.

use super::{blocking, list_envelope};
use crate::auth::{Caller, Role};
use crate::curation::{DatasetError, DatasetRequest, create_dataset, dataset_view};
use crate::openai::{ApiError, ApiJson, ApiQuery};
use crate::state::AppState;
use crate::store::DatasetSplit;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

/// How long a build waits for capture to store what is in flight.
const CAPTURE_SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn post_dataset(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<DatasetRequest>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    // Turns answered a moment ago may still be on their way to the store;
    // the snapshot should hold them.
    app.exchanges.in_flight().settled(CAPTURE_SETTLE).await;
    let record = blocking(move || {
        create_dataset(
            app.store.as_ref(),
            &app.config,
            &app.registry,
            &request,
            &caller.id,
        )
    })
    .await?;
    Ok((StatusCode::CREATED, Json(dataset_view(&record))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    cursor: Option<String>,
    limit: Option<usize>,
}

pub async fn list_datasets(
    State(app): State<Arc<AppState>>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Value>, ApiError> {
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(
            format!("`limit` must be 1 to {MAX_LIMIT}"),
            Some("limit"),
        ));
    }
    let store = app.store.clone();
    // One more than asked says whether another page follows.
    let mut records = blocking(move || store.datasets(page.cursor.as_deref(), limit + 1)).await?;
    let more = records.len() > limit;
    records.truncate(limit);
    let next = more.then(|| records.last().map(|r| r.id.clone())).flatten();
    Ok(Json(list_envelope(
        records.iter().map(dataset_view).collect(),
        next,
    )))
}

pub async fn get_dataset(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = app.store.clone();
    let lookup = id.clone();
    let record = blocking(move || store.dataset(&lookup)).await?;
    record
        .map(|r| Json(dataset_view(&r)))
        .ok_or_else(|| not_found(&id))
}

pub async fn train_file(
    state: State<Arc<AppState>>,
    id: Path<String>,
) -> Result<Response, ApiError> {
    dataset_file(state, id, DatasetSplit::Train).await
}

pub async fn validation_file(
    state: State<Arc<AppState>>,
    id: Path<String>,
) -> Result<Response, ApiError> {
    dataset_file(state, id, DatasetSplit::Validation).await
}

async fn dataset_file(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    split: DatasetSplit,
) -> Result<Response, ApiError> {
    let store = app.store.clone();
    let lookup = id.clone();
    let file = blocking(move || store.dataset_file(&lookup, split)).await?;
    let body = file.ok_or_else(|| not_found(&id))?;
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], body).into_response())
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        message: format!("no dataset with id `{id}`"),
        param: Some("id".into()),
        code: "not_found",
    }
}

/// The one place a dataset failure becomes an API error.
impl From<DatasetError> for ApiError {
    fn from(e: DatasetError) -> Self {
        match e {
            DatasetError::Invalid { message, param } => ApiError::invalid(message, Some(&param)),
            e @ DatasetError::UnknownAlias(_) => {
                ApiError::invalid(e.to_string(), Some("filter.alias"))
            }
            e @ DatasetError::TooManyCandidates => ApiError::invalid(e.to_string(), Some("filter")),
            e @ DatasetError::Options(_) => ApiError::Internal(e.to_string()),
            DatasetError::Store(e) => e.into(),
        }
    }
}
