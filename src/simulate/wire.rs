//! Small helpers for OpenAI-shaped simulator responses.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An OpenAI error response.
pub fn error(
    status: u16,
    kind: &str,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    with_request_id((status, axum::Json(body)).into_response())
}

/// Every simulator response carries an `x-request-id`, as OpenAI's do.
pub fn with_request_id(mut response: Response) -> Response {
    if let Ok(v) = HeaderValue::try_from(format!(
        "req_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    )) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
