//! `GET /admin/api/sign-in` (no authentication): how the admin UI may
//! sign a person in. Always with a key; with `[auth.entra]
//! admin_ui_client_id`, also with a Microsoft account, through the
//! authorization code flow with PKCE that the page runs against the
//! identity platform (a single-page app redeems its code from the
//! browser).

use crate::config::Config;
use crate::state::AppState;
use axum::extract::State;
use axum::response::Json;
use serde_json::{Value, json};
use std::sync::Arc;

pub async fn sign_in(State(app): State<Arc<AppState>>) -> Json<Value> {
    Json(sign_in_methods(&app.config))
}

fn sign_in_methods(config: &Config) -> Value {
    let entra = config
        .auth
        .entra
        .as_ref()
        .and_then(|e| Some((e, e.admin_ui_client_id.as_deref()?)));
    match entra {
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
    let entra = config.auth.entra.as_ref()?;
    entra.admin_ui_client_id.as_ref()?;
    Some(entra.authority_origin())
}
