//! `GET /v1/models` and `GET /v1/models/{id}`: the base models the simulator
//! serves, the models its fine-tuning jobs made and the LoRA adapters loaded,
//! in OpenAI's model-object shape.

use super::jobs::ORGANIZATION;
use super::tuned::Tuned;
use super::wire::{self, ApiError};
use super::{MODELS, Sim};
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde_json::{Value, json};

/// A fixed date, so listings are byte-for-byte stable across runs.
const CREATED: u64 = 1_715_367_049;

fn object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": CREATED, "owned_by": "flywheel-simulator"})
}

/// A fine-tuned model belongs to the organisation its name carries.
fn tuned_object(model: &Tuned) -> Value {
    json!({"id": model.name, "object": "model", "created": model.created, "owned_by": ORGANIZATION})
}

pub async fn list(State(sim): State<Sim>) -> Json<Value> {
    let mut data: Vec<Value> = MODELS.iter().map(|m| object(m)).collect();
    let state = sim.lab.state();
    data.extend(state.models.iter().map(|m| tuned_object(m)));
    data.extend(state.adapters.iter().map(|m| tuned_object(m)));
    Json(json!({"object": "list", "data": data}))
}

pub async fn retrieve(
    State(sim): State<Sim>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    // A rejected path (say, invalid percent-encoding) still answers in the
    // error envelope rather than axum's plain text.
    let Path(id) = id.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    if MODELS.contains(&id.as_str()) {
        return Ok(Json(object(&id)));
    }
    match sim.lab.state().model(&id) {
        Some(model) => Ok(Json(tuned_object(&model))),
        None => Err(wire::model_not_found(&id)),
    }
}
