//! `GET /v1/models` and `GET /v1/models/{id}`: the base models the simulator
//! serves, in OpenAI's model-object shape.

use super::MODELS;
use super::wire::{self, ApiError};
use axum::Json;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use serde_json::{Value, json};

/// A fixed date, so listings are byte-for-byte stable across runs.
const CREATED: u64 = 1_715_367_049;

fn object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": CREATED, "owned_by": "flywheel-simulator"})
}

pub async fn list() -> Json<Value> {
    let data: Vec<Value> = MODELS.iter().map(|m| object(m)).collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn retrieve(id: Result<Path<String>, PathRejection>) -> Result<Json<Value>, ApiError> {
    // A rejected path (say, invalid percent-encoding) still answers in the
    // error envelope rather than axum's plain text.
    let Path(id) = id.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    if MODELS.contains(&id.as_str()) {
        Ok(Json(object(&id)))
    } else {
        Err(wire::model_not_found(&id))
    }
}
