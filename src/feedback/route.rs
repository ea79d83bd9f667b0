//! `POST /v1/feedback`: the route's handler, over [`submit`].

use super::{FeedbackRequest, feedback_view, submit};
use crate::auth::Caller;
use crate::openai::{ApiError, ApiJson};
use crate::state::AppState;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use std::sync::Arc;

/// `POST /v1/feedback`.
pub async fn post_feedback(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<FeedbackRequest>,
) -> Result<Response, ApiError> {
    let idempotency = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "`Idempotency-Key` must be 1 to 255 characters of text",
                        None,
                    )
                })
        })
        .transpose()?;
    let record = submit(&app.feedback, &caller, request, idempotency).await?;
    Ok((StatusCode::CREATED, Json(feedback_view(&record))).into_response())
}
