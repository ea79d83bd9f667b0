//! `GET /v1/models` and `GET /v1/models/{id}`: the aliases clients may ask
//! for, with their versions, in the OpenAI list shape. An id that is no
//! alias is asked of the default provider, so provider models stay visible.

use crate::auth::Caller;
use crate::openai::ApiError;
use crate::state::AppState;
use crate::store::ModelAliasRecord;
use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};
use std::sync::Arc;

pub async fn list_models(State(app): State<Arc<AppState>>) -> Json<Value> {
    let table = app.registry.table();
    let data: Vec<Value> = table
        .aliases()
        .filter_map(|a| app.registry.alias(&a.name))
        .map(|a| model_object(&a, app.started_unix))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn get_model(
    State(app): State<Arc<AppState>>,
    caller: Extension<Caller>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(alias) = app.registry.alias(&id) {
        return Ok(Json(model_object(&alias, app.started_unix)).into_response());
    }
    super::passthrough(State(app), caller, method, uri, headers, Body::empty()).await
}

fn model_object(alias: &ModelAliasRecord, created: u64) -> Value {
    let versions: Vec<Value> = alias
        .versions
        .iter()
        .map(|v| {
            json!({
                "name": v.name,
                "model": v.model,
                "state": v.state.as_str(),
                "weight": v.weight,
                "shadow": v.shadow,
            })
        })
        .collect();
    json!({
        "id": alias.alias,
        "object": "model",
        "created": created,
        "owned_by": "flywheel",
        "model_type": alias.model_type,
        "production": alias.production,
        "versions": versions,
    })
}
