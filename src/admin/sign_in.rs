//! `GET /admin/api/sign-in` (no authentication): how the admin UI may
//! sign a person in. Always with a key; with `[auth.entra]
//! admin_ui_client_id`, also with a Microsoft account, through the
//! authorization code flow with PKCE that the page runs against the
//! identity platform (a single-page app redeems its code from the
//! browser).

use crate::config::{Config, EntraAuthConfig};
use crate::state::AppState;
use axum::extract::State;
use axum::response::Json;
use serde_json::{Value, json};
use std::sync::Arc;

pub async fn sign_in(State(app): State<Arc<AppState>>) -> Json<Value> {
    Json(sign_in_methods(&app.config))
}

/// Flywheel's Entra ID settings and the admin UI's client id, when
/// people sign in to the UI with a Microsoft account.
fn microsoft_sign_in(config: &Config) -> Option<(&EntraAuthConfig, &str)> {
    let entra = config.auth.entra.as_ref()?;
    Some((entra, entra.admin_ui_client_id.as_deref()?))
}

fn sign_in_methods(config: &Config) -> Value {
    match microsoft_sign_in(config) {
        Some((e, client_id)) => json!({
            "object": "sign_in",
            "methods": ["key", "entra"],
            "entra": {
                "authorize_url": e.authorize_url(),
                "token_url": e.token_url(),
                "client_id": client_id,
                "scope": e.admin_ui_scope(),
            },
        }),
        None => json!({"object": "sign_in", "methods": ["key"]}),
    }
}

/// The identity platform the admin UI's pages call to redeem a sign-in
/// code, when people sign in with a Microsoft account.
pub fn sign_in_origin(config: &Config) -> Option<String> {
    microsoft_sign_in(config).map(|(entra, _)| entra.authority_origin())
}
