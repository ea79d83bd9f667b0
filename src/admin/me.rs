//! `GET /admin/api/me`: who the caller is and the vocabulary the review
//! screens offer, so the admin UI neither guesses the role from a 403 nor
//! hard-codes the taxonomy.

use crate::auth::{Caller, Role};
use crate::openai::ApiError;
use crate::state::AppState;
use axum::Extension;
use axum::extract::State;
use axum::response::Json;
use serde_json::{Value, json};
use std::sync::Arc;

pub async fn me(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Analyst)?;
    let taxonomy = &app.config.taxonomy;
    Ok(Json(json!({
        "object": "caller",
        "id": &*caller.id,
        "role": caller.role.as_str(),
        "taxonomy": {
            "threat_types": taxonomy.threat_types,
            "severities": taxonomy.severities,
        },
        "evaluation_targets": app.config.evaluation.targets,
    })))
}
