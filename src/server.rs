//! The route table and the middleware around it: request ids, CORS, request
//! metrics and logs (`edge`), authentication and rate limits. `connections`
//! accepts the connections and holds each to its limits.

mod connections;
mod edge;

pub use connections::{BodyTimedOut, ConnectionLimits, serve};

use crate::admin;
use crate::app::AppState;
use crate::auth::{Role, authenticate};
use crate::health;
use crate::openai::{ApiError, BodyLimit};
use crate::proxy;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, delete, get, post, put};
use std::net::SocketAddr;
use std::sync::Arc;

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
        .layer(edge::EdgeLayer::new(
            &state.config.server.cors_allow_origins,
        ))
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
