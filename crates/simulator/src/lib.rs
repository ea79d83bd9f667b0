//! The simulator behind `flywheel simulate` and `flywheel demo`: an
//! OpenAI-compatible upstream for demos, tests and benchmarks, clearly a
//! simulator. Its models answer triage prompts with a threat type, a
//! severity and a rationale, deterministically; request headers inject
//! faults. The proxy reaches it over HTTP like any provider, so everything
//! it sends follows the OpenAI wire format the official SDKs parse.
//!
//! A crate of its own, depending on nothing of the proxy's: changing the
//! proxy does not recompile it, and only the proxy's command line and demo
//! start it (`tests/api/layout.rs` checks that).

mod azure;
mod chat;
mod classifier;
mod conversations;
mod dataset;
mod embeddings;
mod faults;
mod files;
mod fine_tuning;
mod job_request;
mod jobs;
mod kept;
mod lab;
mod lora;
mod models;
mod pagination;
mod request;
mod responses;
mod rules;
mod schema;
mod stream;
mod targets;
mod tokens;
mod tools;
mod training;
mod triage;
mod tuned;
mod wire;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
pub use azure::{AzureMode, EntraMode};
pub use faults::parse_fail_rate;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use wire::ApiError;

/// The base models it serves. The `-mini`/`small` ones know fewer
/// indicators than the others, so versions differ for honest reasons.
pub const MODELS: &[&str] = &[
    "gpt-4o-mini",
    "gpt-4o",
    "sim-triage-small",
    "sim-triage-large",
];

#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Pause before each generated token, streamed or not, so latency grows
    /// with the answer as a real model's does.
    pub token_delay: Duration,
    /// When set, every request must carry `Authorization: Bearer <it>`.
    pub api_key: Option<String>,
    /// Model → probability (0–1) that a chat completion for it answers 500;
    /// see `faults` for the per-request header that overrides it.
    pub fail_rates: HashMap<String, f64>,
    /// How long a fine-tuning job spends in each status (validating_files,
    /// queued, running) before it moves on.
    pub job_step: Duration,
    /// Azure mode: the Azure OpenAI paths, keys, deployments and
    /// management API in front of the models (see `azure`).
    pub azure: Option<AzureMode>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            token_delay: Duration::ZERO,
            api_key: None,
            fail_rates: HashMap::new(),
            job_step: DEFAULT_JOB_STEP,
            azure: None,
        }
    }
}

/// Long enough to watch a job move, short enough for a demo.
pub const DEFAULT_JOB_STEP: Duration = Duration::from_millis(1000);

/// Shared by every handler of one router.
#[derive(Clone)]
struct Sim {
    config: Arc<SimulatorConfig>,
    /// Fault id → failures served so far, for `x-sim-fail-times`.
    failures: Arc<Mutex<HashMap<String, u32>>>,
    /// Uploaded files, fine-tuning jobs and their models, in memory.
    lab: Arc<lab::Lab>,
    /// Stored Responses-API responses, for `previous_response_id`.
    responses: Arc<responses::Log>,
    /// Conversation objects, for a response's `conversation`.
    conversations: Arc<conversations::Conversations>,
}

pub fn router(config: SimulatorConfig) -> Router {
    let azure = config.azure.clone();
    let sim = Sim {
        failures: Arc::default(),
        lab: Arc::new(lab::Lab::new(config.job_step)),
        responses: Arc::default(),
        conversations: Arc::default(),
        config: Arc::new(config),
    };
    let openai = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/{id}", get(responses::retrieve))
        .route("/v1/conversations", post(conversations::create))
        .route(
            "/v1/conversations/{id}",
            get(conversations::retrieve).delete(conversations::delete),
        )
        .route(
            "/v1/conversations/{id}/items",
            post(conversations::add_items),
        )
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::retrieve))
        .route("/v1/embeddings", post(embeddings::create))
        .route("/v1/load_lora_adapter", post(lora::load))
        .route("/v1/unload_lora_adapter", post(lora::unload))
        .route(
            "/v1/files",
            post(files::upload)
                .get(files::list)
                .layer(DefaultBodyLimit::max(files::MAX_BYTES)),
        )
        .route("/v1/files/{id}", get(files::retrieve).delete(files::delete))
        .route("/v1/files/{id}/content", get(files::content))
        .route(
            "/v1/fine_tuning/jobs",
            post(fine_tuning::create).get(fine_tuning::list),
        )
        .route("/v1/fine_tuning/jobs/{id}", get(fine_tuning::retrieve))
        .route("/v1/fine_tuning/jobs/{id}/events", get(fine_tuning::events))
        .route(
            "/v1/fine_tuning/jobs/{id}/cancel",
            post(fine_tuning::cancel),
        )
        .route(
            "/v1/fine_tuning/jobs/{id}/checkpoints",
            get(fine_tuning::checkpoints),
        )
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        // Layers run outside in, last added first: stamp every response,
        // then refuse bad keys (as OpenAI does before anything else), then
        // inject the faults the request asks for.
        .layer(middleware::from_fn_with_state(sim.clone(), faults::inject))
        .layer(middleware::from_fn_with_state(sim.clone(), check_key))
        .layer(middleware::from_fn(stamp))
        .with_state(sim.clone());
    match azure {
        Some(mode) => azure::router(sim, mode, openai),
        None => openai,
    }
}

/// Serves until `shutdown` resolves, with TCP_NODELAY on every connection so
/// that one-token chunks leave at once instead of waiting for Nagle.
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

async fn unknown_route(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!(
            "Invalid URL ({} {})",
            request.method(),
            request.uri().path()
        ),
    )
    .code("unknown_url")
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        format!(
            "Method {} is not allowed on {}.",
            request.method(),
            request.uri().path()
        ),
    )
    .code("method_not_allowed")
}

/// Every response carries the ids OpenAI's do, whichever path made it.
async fn stamp(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::try_from(wire::random_id("req_")) {
        headers.insert("x-request-id", id);
    }
    headers.insert(
        "openai-processing-ms",
        HeaderValue::from(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
    );
    response
}

async fn check_key(State(sim): State<Sim>, request: Request, next: Next) -> Response {
    let Some(expected) = &sim.config.api_key else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim());
    let message = match presented {
        None => "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            .to_string(),
        // Constant time, so the simulator is no worse an example than a provider.
        Some(key) if bool::from(key.as_bytes().ct_eq(expected.as_bytes())) => {
            return next.run(request).await;
        }
        Some(key) => format!("Incorrect API key provided: {}.", redact(key)),
    };
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
        .code("invalid_api_key")
        .into_response()
}

/// Names a wrong key without echoing it, as OpenAI does (`sk-ab***yz`).
fn redact(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 8 {
        return "***".to_string();
    }
    let head: String = chars.iter().take(3).collect();
    let tail: String = chars.iter().skip(chars.len() - 2).collect();
    format!("{head}***{tail}")
}

#[cfg(test)]
mod accuracy;
#[cfg(test)]
mod tests;
