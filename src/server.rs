//! The route table and the middleware around it: request ids, CORS, request
//! metrics and logs (`edge`), authentication and rate limits (`guard`).
//! `connections` accepts the connections and holds each to its limits.

mod connections;
mod edge;
mod guard;

pub use connections::{BodyTimedOut, ConnectionLimits, serve};

use crate::admin;
use crate::auth::Role;
use crate::health;
use crate::openai::ApiError;
use crate::proxy;
use crate::state::AppState;
use axum::Router;
use axum::http::Method;
use axum::response::Redirect;
use axum::routing::{any, delete, get, post, put};
use guard::GuardLayer;
use std::sync::Arc;

pub fn router(state: Arc<AppState>) -> Router {
    let openai = Router::new()
        .route("/v1/chat/completions", post(proxy::chat_completions))
        .route("/v1/responses", post(proxy::responses))
        .route("/v1/feedback", post(crate::feedback::post_feedback))
        .route("/v1/models", get(proxy::list_models))
        .route("/v1/models/{id}", get(proxy::get_model))
        .route("/v1/{*rest}", any(proxy::passthrough));
    // Apps written against Azure OpenAI change only their endpoint: its v1
    // API is the same routes under `/openai`, its dated API names the
    // deployment (the alias) in the path.
    let client_api = openai
        .clone()
        .nest("/openai", openai)
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(proxy::azure_chat_completions),
        )
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(proxy::azure_embeddings),
        )
        .route("/openai/responses", post(proxy::responses))
        .route("/openai/models", get(proxy::list_models))
        .route("/openai/models/{id}", get(proxy::get_model))
        .route("/openai/{*rest}", any(proxy::passthrough))
        .route_layer(GuardLayer::new(state.clone(), Role::Client));
    let admin_api = Router::new()
        .route(
            "/admin/api/keys",
            post(admin::create_key).get(admin::list_keys),
        )
        .route("/admin/api/keys/{id}", delete(admin::revoke_key))
        .route("/admin/api/audit", get(admin::list_audit))
        .route("/admin/api/me", get(admin::me))
        .route("/admin/api/stats", get(admin::get_stats))
        .route("/admin/api/providers", get(admin::list_providers))
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
            "/admin/api/fine-tuning/jobs/{id}/deployment",
            post(admin::register_job_deployment).delete(admin::delete_job_deployment),
        )
        .route(
            "/admin/api/fine-tuning/jobs/{id}/unload-adapter",
            post(admin::unload_adapter),
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
        .route_layer(GuardLayer::new(state.clone(), Role::Analyst));
    Router::new()
        .merge(client_api)
        .merge(admin_api)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        // Before any key: how the admin UI may sign a person in.
        .route("/admin/api/sign-in", get(admin::sign_in))
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/admin/", get(admin::ui_index))
        .route("/admin/{*path}", get(admin::ui_asset))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(edge::EdgeLayer::new(
            &state.config.server.cors_allow_origins,
            state.config.server.request_log,
        ))
        .with_state(state)
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
