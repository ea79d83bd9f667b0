//! `flywheel simulate`: an OpenAI-compatible upstream for demos, tests and
//! benchmarks, clearly a simulator. Its models answer triage prompts with a
//! threat type, a severity and a rationale, deterministically; request
//! headers inject faults. The proxy reaches it over HTTP like any provider.

mod chat;
mod embeddings;
mod faults;
mod models;
mod triage;
mod wire;

pub use triage::{Verdict, classify};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// The base models it serves. The `-mini`/`small` ones know fewer
/// indicators than the others, so versions differ for honest reasons.
pub const MODELS: &[&str] = &[
    "gpt-4o-mini",
    "gpt-4o",
    "sim-triage-small",
    "sim-triage-large",
];

#[derive(Debug, Clone, Default)]
pub struct SimulatorConfig {
    /// Pause before each generated token (streamed or not).
    pub token_delay: Duration,
    /// When set, every request must carry `Authorization: Bearer <it>`.
    pub api_key: Option<String>,
}

#[derive(Clone)]
struct Sim {
    config: Arc<SimulatorConfig>,
    /// Fault id → failures served so far, for `x-sim-fail-times`.
    failures: Arc<Mutex<HashMap<String, u32>>>,
}

pub fn router(config: SimulatorConfig) -> Router {
    let sim = Sim {
        config: Arc::new(config),
        failures: Arc::default(),
    };
    Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get))
        .route("/v1/embeddings", post(embeddings::create))
        .fallback(|| async {
            wire::error(
                404,
                "invalid_request_error",
                "Unknown route",
                None,
                Some("unknown_url"),
            )
        })
        .layer(axum::middleware::from_fn_with_state(sim.clone(), check_key))
        .with_state(sim)
}

/// Serves until `shutdown` resolves, with TCP_NODELAY on every connection.
pub async fn serve(
    listener: TcpListener,
    config: SimulatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(config))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn check_key(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    if let Some(expected) = &sim.config.api_key {
        let presented = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(expected.as_str()) {
            return wire::error(
                401,
                "invalid_request_error",
                "Incorrect API key provided.",
                None,
                Some("invalid_api_key"),
            )
            .into_response();
        }
    }
    next.run(req).await
}
