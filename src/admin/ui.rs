//! The static admin UI from `admin-ui/`, embedded into the binary at build
//! time, so a single file is the whole deployment.

use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::RustEmbed;
use std::sync::Arc;

#[derive(RustEmbed)]
#[folder = "admin-ui/"]
struct Assets;

/// No inline script anywhere: captured chats carry attacker-controlled
/// text. Pages call only Flywheel and, when people sign in with a
/// Microsoft account, the identity platform's origin (`connect`).
fn content_security_policy(connect: Option<&str>) -> String {
    let extra = connect
        .map(|origin| format!(" {origin}"))
        .unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'{extra}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )
}

pub async fn ui_index(State(app): State<Arc<AppState>>) -> Response {
    serve("index.html", &app)
}

pub async fn ui_asset(State(app): State<Arc<AppState>>, Path(path): Path<String>) -> Response {
    serve(if path.is_empty() { "index.html" } else { &path }, &app)
}

fn serve(path: &str, app: &AppState) -> Response {
    let Some(file) = Assets::get(path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mime = mime_for(path);
    let origin = super::sign_in::sign_in_origin(&app.config);
    let csp = HeaderValue::from_str(&content_security_policy(origin.as_deref()))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
            (header::CONTENT_SECURITY_POLICY, csp),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        file.data.into_owned(),
    )
        .into_response()
}

fn mime_for(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}
