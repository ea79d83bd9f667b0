//! `GET /v1/models` and `GET /v1/models/{id}`: the aliases clients may ask
//! for, with their versions, in the OpenAI list shape. An id that is no
//! alias is asked of the default provider, so provider models stay visible.

use super::passthrough::{Forwarded, forward};
use crate::auth::Caller;
use crate::openai::ApiError;
use crate::state::AppState;
use crate::store::ModelAliasRecord;
use axum::Extension;
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
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(alias) = app.registry.alias(&id) {
        return Ok(Json(model_object(&alias, app.started_unix)).into_response());
    }
    // The id as the client wrote it (percent-encoded), under whichever
    // mount it came (`/v1/models/…`, Azure's `/openai/models/…`).
    let raw = uri
        .path()
        .rsplit_once("/models/")
        .map_or(id.as_str(), |(_, raw)| raw);
    let path = format!("models/{raw}");
    let forwarded = Forwarded {
        method: Method::GET,
        path: &path,
        query: uri.query(),
        headers: &headers,
        provider: None,
    };
    let nothing = futures_util::stream::empty();
    forward(&app, &caller, forwarded, Box::pin(nothing)).await
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
