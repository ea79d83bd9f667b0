//! `/admin/api/keys` and `/admin/api/audit`: keys over HTTP, the same
//! service the `keys` CLI uses, for when the server holds the store.

use crate::auth::{Caller, KeyError, Role};
use crate::openai::{ApiError, ApiJson, ApiQuery};
use crate::state::AppState;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

use super::blocking;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    name: String,
    role: Role,
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::NotFound(_) => ApiError::NotFound {
                message: e.to_string(),
                param: Some("id".into()),
                code: "not_found",
            },
            KeyError::BadName => ApiError::invalid(e.to_string(), Some("name")),
            KeyError::Store(s) => ApiError::Internal(s.to_string()),
        }
    }
}

pub async fn create_key(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(new): ApiJson<NewKey>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let created = blocking(move || app.keys.create(&new.name, new.role, &caller.id)).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

pub async fn list_keys(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Admin)?;
    let keys = blocking(move || app.keys.list()).await?;
    let data: Vec<Value> = keys
        .iter()
        .rev()
        .map(|k| json!({"id": k.id, "name": k.name, "role": k.role, "created_at": k.created_at, "revoked_at": k.revoked_at}))
        .collect();
    Ok(Json(
        json!({"object": "list", "data": data, "has_more": false, "next_cursor": null}),
    ))
}

pub async fn revoke_key(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    blocking(move || app.keys.revoke(&id, &caller.id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct Page {
    cursor: Option<String>,
    limit: Option<usize>,
}

pub async fn list_audit(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Analyst)?;
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let records = blocking(move || {
        app.store
            .audit(page.cursor.as_deref(), limit + 1)
            .map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await?;
    let has_more = records.len() > limit;
    let data: Vec<_> = records.into_iter().take(limit).collect();
    let next_cursor = has_more
        .then(|| data.last().map(|r| r.id.clone()))
        .flatten();
    Ok(Json(
        json!({"object": "list", "data": data, "has_more": has_more, "next_cursor": next_cursor}),
    ))
}
