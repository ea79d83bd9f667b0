//! `/healthz` (the process answers), `/readyz` (it can serve: store open,
//! providers configured) and `/metrics` (Prometheus text).

use crate::state::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;
use std::sync::Arc;

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let store = app.store.is_healthy();
    let providers = !app.upstreams.is_empty();
    let shutting_down = app.shutdown.is_cancelled();
    let ready = store && providers && !shutting_down;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": {"store": store, "providers": providers, "accepting": !shutting_down},
    });
    (status, Json(body)).into_response()
}

pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}
