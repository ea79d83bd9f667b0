//! `/healthz` (the process answers and captures), `/readyz` (it can serve: store open,
//! providers configured) and `/metrics` (Prometheus text).

use crate::state::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;
use std::sync::Arc;

/// Fails only for what a restart mends: the capture writer stopped by a
/// bug while the process goes on serving, capturing nothing.
pub async fn healthz(State(app): State<Arc<AppState>>) -> Response {
    let capture_writer = !app.exchanges.writer_stopped() || app.shutdown.is_cancelled();
    liveness(capture_writer).into_response()
}

fn liveness(capture_writer: bool) -> (StatusCode, Json<serde_json::Value>) {
    if capture_writer {
        (StatusCode::OK, Json(json!({"status": "ok"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failing", "checks": {"capture_writer": false}})),
        )
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_capture_writer_fails_the_liveness_check() {
        let (status, Json(body)) = liveness(true);
        assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
        let (status, Json(body)) = liveness(false);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["checks"]["capture_writer"], false);
    }
}
