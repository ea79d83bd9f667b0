//! The route table and the middleware around it: request ids, CORS, request
//! metrics and logs, authentication and rate limits. `connections` accepts
//! the connections and holds each to its limits.

mod connections;

pub use connections::{BodyTimedOut, ConnectionLimits, serve};

use crate::admin;
use crate::app::AppState;
use crate::auth::{Role, authenticate};
use crate::config::RequestLog;
use crate::health;
use crate::openai::{ApiError, BodyLimit};
use crate::proxy::{self, RouteLabels};
use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, delete, get, post, put};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub fn router(state: Arc<AppState>) -> Router {
    let client_api = Router::new()
        .route("/v1/chat/completions", post(proxy::chat_completions))
        .route("/v1/feedback", post(crate::feedback::post_feedback))
        .route("/v1/models", get(proxy::list_models))
        .route("/v1/models/{id}", get(proxy::get_model))
        .route("/v1/{*rest}", any(proxy::passthrough))
        .route_layer(from_fn_with_state(state.clone(), require_client));
    let admin_api = Router::new()
        .route(
            "/admin/api/keys",
            post(admin::create_key).get(admin::list_keys),
        )
        .route("/admin/api/keys/{id}", delete(admin::revoke_key))
        .route("/admin/api/audit", get(admin::list_audit))
        .route("/admin/api/me", get(admin::me))
        .route("/admin/api/stats", get(admin::get_stats))
        .route("/admin/api/conversations", get(admin::list_conversations))
        .route("/admin/api/conversations/bulk", post(admin::bulk_review))
        .route(
            "/admin/api/conversations/{id}",
            get(admin::get_conversation)
                .patch(admin::patch_conversation)
                .delete(admin::delete_conversation),
        )
        .route("/admin/api/models", get(admin::list_models))
        .route("/admin/api/models/{alias}", get(admin::get_model))
        .route(
            "/admin/api/models/{alias}/versions",
            post(admin::register_version),
        )
        .route("/admin/api/models/{alias}/traffic", put(admin::set_traffic))
        .route("/admin/api/models/{alias}/promote", post(admin::promote))
        .route("/admin/api/models/{alias}/gate", get(admin::promotion_gate))
        .route("/admin/api/models/{alias}/rollback", post(admin::rollback))
        .route(
            "/admin/api/models/{alias}/history",
            get(admin::model_history),
        )
        .route(
            "/admin/api/models/{alias}/experiment",
            get(admin::experiment),
        )
        .route(
            "/admin/api/datasets",
            post(admin::post_dataset).get(admin::list_datasets),
        )
        .route("/admin/api/datasets/{id}", get(admin::get_dataset))
        .route(
            "/admin/api/datasets/{id}/train.jsonl",
            get(admin::train_file),
        )
        .route(
            "/admin/api/datasets/{id}/validation.jsonl",
            get(admin::validation_file),
        )
        .route(
            "/admin/api/fine-tuning/jobs",
            post(admin::create_job).get(admin::list_jobs),
        )
        .route("/admin/api/fine-tuning/jobs/{id}", get(admin::get_job))
        .route(
            "/admin/api/fine-tuning/jobs/{id}/cancel",
            post(admin::cancel_job),
        )
        .route(
            "/admin/api/evaluations",
            post(admin::create_evaluation).get(admin::list_evaluations),
        )
        .route("/admin/api/evaluations/{id}", get(admin::get_evaluation))
        .route(
            "/admin/api/evaluations/{id}/examples",
            get(admin::evaluation_examples),
        )
        .route("/admin/api/performance", get(admin::performance))
        .route("/admin/api/alerts", get(admin::list_alerts))
        .route("/admin/api/alerts/{id}/ack", post(admin::acknowledge_alert))
        .route("/admin/api/{*rest}", any(not_found))
        .route_layer(from_fn_with_state(state.clone(), require_analyst));
    Router::new()
        .merge(client_api)
        .merge(admin_api)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/admin/", get(admin::ui_index))
        .route("/admin/{*path}", get(admin::ui_asset))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.config.server.request_log, observe))
        .layer(cors(&state.config.server.cors_allow_origins))
        .layer(from_fn(request_id))
        .with_state(state)
}

async fn require_client(state: State<Arc<AppState>>, req: Request, next: Next) -> Response {
    guard(state, req, next, Role::Client).await
}

async fn require_analyst(state: State<Arc<AppState>>, req: Request, next: Next) -> Response {
    guard(state, req, next, Role::Analyst).await
}

/// Authenticates, checks the role, takes a rate-limit token and tells the
/// client how many remain.
async fn guard(
    State(app): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
    min: Role,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let caller = match authenticate(&app.auth, req.headers(), peer)
        .and_then(|c| c.require(min).map(|()| c))
    {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let allowance = match app.limits.check(&caller.id) {
        Ok(a) => a,
        Err(e) => {
            metrics::counter!("flywheel_rate_limited_total").increment(1);
            return e.into_response();
        }
    };
    // Feedback riding on any request is applied first: a bad one rejects
    // the request before anything goes upstream, so none is lost silently.
    let feedback_id = match req.headers().get("x-flywheel-feedback") {
        Some(value) => match apply_feedback_header(&app, &caller, value.as_bytes()).await {
            Ok(id) => Some(id),
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    req.extensions_mut().insert(caller);
    req.extensions_mut()
        .insert(BodyLimit(app.config.server.max_body_bytes));
    let mut response = next.run(req).await;
    if let Some(id) = feedback_id.and_then(|id| HeaderValue::try_from(id).ok()) {
        response.headers_mut().insert("x-flywheel-feedback-id", id);
    }
    if let Some(a) = allowance {
        crate::limits::write_headers(response.headers_mut(), a.limit, a.remaining, a.reset);
    }
    response
}

async fn apply_feedback_header(
    app: &AppState,
    caller: &crate::auth::Caller,
    value: &[u8],
) -> Result<String, ApiError> {
    let request = crate::feedback::parse_header(value)?;
    Ok(crate::feedback::submit(app, caller, request, None)
        .await?
        .id)
}

/// Request count and latency by route, status, alias and version, and one
/// log line per request at `level` — never with message contents.
async fn observe(State(level): State<RequestLog>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.0.to_str().ok())
        .unwrap_or("")
        .to_string();
    let response = next.run(req).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let labels = response
        .extensions()
        .get::<RouteLabels>()
        .cloned()
        .unwrap_or_default();
    let alias = labels.alias.as_deref().unwrap_or("").to_string();
    let version = labels.version.as_deref().unwrap_or("").to_string();
    metrics::counter!("flywheel_requests_total",
        "route" => route.clone(), "status" => status.to_string(),
        "alias" => alias.clone(), "version" => version.clone())
    .increment(1);
    metrics::histogram!("flywheel_request_duration_seconds",
        "route" => route.clone(), "alias" => alias.clone(), "version" => version.clone())
    .record(elapsed.as_secs_f64());
    let ms = rounded_ms(elapsed);
    match level {
        RequestLog::Info => tracing::info!(
            %method, %route, status, alias, version, request_id, ms, "request"
        ),
        RequestLog::Debug => tracing::debug!(
            %method, %route, status, alias, version, request_id, ms, "request"
        ),
    }
    response
}

/// Milliseconds to one decimal: enough to read a latency, and a log line
/// shows `ms=1.3` rather than every digit of a float.
fn rounded_ms(elapsed: std::time::Duration) -> f64 {
    (elapsed.as_secs_f64() * 10_000.0).round() / 10.0
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-flywheel-inference-id"),
            HeaderName::from_static("x-flywheel-variant"),
            HeaderName::from_static("x-flywheel-conversation-id"),
            HeaderName::from_static("x-flywheel-feedback-id"),
            header::ETAG,
            header::RETRY_AFTER,
        ])
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound {
        message: format!("Unknown route {}", uri.path()),
        param: None,
        code: "unknown_url",
    }
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

/// The request's id, as the client sees it in `x-request-id`.
#[derive(Clone)]
struct RequestId(HeaderValue);

/// Gives every request an id: the client's `x-request-id` when it sent
/// one (echoed back and forwarded upstream as is), else `req_` + a ULID,
/// the form of every Flywheel id. Upstream, a generated id travels as the
/// same 128 bits written as a UUID: servers such as llama.cpp's reject
/// any other form.
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = match req.headers().get("x-request-id") {
        Some(theirs) => theirs.clone(),
        None => {
            let ulid = ulid::Ulid::new();
            if let Ok(upstream) = HeaderValue::try_from(uuid_form(ulid.0)) {
                req.headers_mut().insert("x-request-id", upstream);
            }
            HeaderValue::try_from(format!("req_{ulid}"))
                .unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
        }
    };
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(req).await;
    response.headers_mut().insert("x-request-id", id);
    response
}

/// 128 bits as a UUID: `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
fn uuid_form(bits: u128) -> String {
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::rounded_ms;
    use std::time::Duration;

    #[test]
    fn a_generated_request_id_goes_upstream_as_a_uuid() {
        assert_eq!(
            super::uuid_form(0x0190_f2a4_5b6c_7d8e_9fa0_b1c2_d3e4_f506),
            "0190f2a4-5b6c-7d8e-9fa0-b1c2d3e4f506"
        );
    }

    #[test]
    fn durations_are_logged_as_milliseconds_to_one_decimal() {
        assert_eq!(rounded_ms(Duration::from_nanos(1_282_431)), 1.3);
        assert_eq!(rounded_ms(Duration::from_micros(40)), 0.0);
        assert_eq!(rounded_ms(Duration::from_millis(1500)), 1500.0);
        assert_eq!(
            format!("{}", rounded_ms(Duration::from_nanos(1_282_431))),
            "1.3"
        );
    }
}
