//! `GET /admin/api/providers`: each configured provider, what it is, and
//! whether its requests can be signed now — a missing key, or Entra ID
//! tokens that stopped renewing, show here before chats fail.

use crate::auth::{Caller, Role};
use crate::openai::ApiError;
use crate::state::AppState;
use axum::Extension;
use axum::extract::State;
use axum::response::Json;
use serde_json::{Value, json};
use std::sync::Arc;

pub async fn list_providers(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Role::Analyst)?;
    let default = app.config.default_provider().name.as_str();
    let data: Vec<Value> = app
        .config
        .providers
        .iter()
        .enumerate()
        .map(|(i, config)| {
            let provider = app.upstreams.get(i);
            json!({
                "object": "provider",
                "name": config.name,
                "kind": config.kind,
                "base_url": config.base_url,
                "default": config.name == default,
                "fine_tuning": config.fine_tuning,
                "signing": provider.map(|p| p.signing()),
                "management_signing": provider.and_then(|p| p.management_signing()),
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
