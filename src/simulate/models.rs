//! `GET /v1/models` and `GET /v1/models/{id}`.

use super::{MODELS, wire};
use axum::extract::Path;
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};

/// A fixed date, so listings are stable.
const CREATED: u64 = 1_715_367_049;

fn object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": CREATED, "owned_by": "flywheel-simulator"})
}

pub async fn list() -> Response {
    let data: Vec<Value> = MODELS.iter().map(|m| object(m)).collect();
    wire::with_request_id(Json(json!({"object": "list", "data": data})).into_response())
}

pub async fn get(Path(id): Path<String>) -> Response {
    if MODELS.contains(&id.as_str()) {
        wire::with_request_id(Json(object(&id)).into_response())
    } else {
        model_not_found(&id)
    }
}

pub fn model_not_found(id: &str) -> Response {
    wire::error(
        404,
        "invalid_request_error",
        &format!("The model `{id}` does not exist or you do not have access to it."),
        None,
        Some("model_not_found"),
    )
}
