//! [`ApiError`]: one enum for every failure a client can see, whose variants
//! say whose fault it is, mapped once to `{"error":{message,type,param,code}}`.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    // The client's fault.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{message}")]
    NotFound {
        message: String,
        param: Option<String>,
        code: &'static str,
    },
    /// The change conflicts with the resource's current state (409).
    #[error("{message}")]
    Conflict { message: String, code: &'static str },
    /// A promotion evaluation gating refuses (409 `promotion_gated`);
    /// `failing` goes into the error object beside the usual fields.
    #[error("{message}")]
    PromotionGated {
        message: String,
        failing: serde_json::Value,
    },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The client did not send its request in time (408).
    #[error("{0}")]
    RequestTimeout(String),
    #[error("rate limit of {limit} requests per minute reached for this key; retry in {}s", retry_after_secs(*.retry_after))]
    RateLimited { limit: u32, retry_after: Duration },

    // The upstream's fault.
    /// An error status from the upstream, relayed with its status.
    #[error("upstream answered {}", .0.status)]
    UpstreamStatus(Box<UpstreamFailure>),
    #[error("upstream `{provider}` is unreachable: {detail}")]
    UpstreamUnreachable { provider: String, detail: String },
    #[error("upstream `{provider}` did not answer within {seconds}s ({phase})")]
    UpstreamTimeout {
        provider: String,
        phase: &'static str,
        seconds: u64,
    },
    #[error("upstream `{provider}` sent an invalid response: {detail}")]
    UpstreamInvalid { provider: String, detail: String },

    // Ours.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What an upstream said when it answered with an error status; `body` is
/// already in the OpenAI shape, `headers` are those worth passing on.
#[derive(Debug)]
pub struct UpstreamFailure {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: HeaderMap,
}

fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: param.map(String::from),
            code: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } | ApiError::PromotionGated { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UpstreamStatus(f) => f.status,
            ApiError::UpstreamUnreachable { .. } | ApiError::UpstreamInvalid { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ApiError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI `type` and `code` for this error.
    fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            ApiError::InvalidRequest { code, .. } => ("invalid_request_error", *code),
            ApiError::Unauthorized(_) => ("invalid_request_error", Some("invalid_api_key")),
            ApiError::Forbidden(_) => ("invalid_request_error", Some("insufficient_permissions")),
            ApiError::NotFound { code, .. } => ("invalid_request_error", Some(*code)),
            ApiError::MethodNotAllowed(_) => ("invalid_request_error", Some("method_not_allowed")),
            ApiError::Conflict { code, .. } => ("invalid_request_error", Some(*code)),
            ApiError::PromotionGated { .. } => ("invalid_request_error", Some("promotion_gated")),
            ApiError::PayloadTooLarge { .. } => {
                ("invalid_request_error", Some("request_too_large"))
            }
            ApiError::RequestTimeout(_) => ("invalid_request_error", Some("request_timeout")),
            ApiError::RateLimited { .. } => ("requests", Some("rate_limit_exceeded")),
            ApiError::UpstreamStatus(_) => ("api_error", None),
            ApiError::UpstreamUnreachable { .. } => ("api_error", Some("upstream_unreachable")),
            ApiError::UpstreamTimeout { .. } => ("api_error", Some("upstream_timeout")),
            ApiError::UpstreamInvalid { .. } => ("api_error", Some("upstream_invalid_response")),
            ApiError::Unavailable(_) => ("api_error", Some("unavailable")),
            ApiError::Internal(_) => ("api_error", Some("internal_error")),
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::InvalidRequest { param, .. } | ApiError::NotFound { param, .. } => {
                param.as_deref()
            }
            _ => None,
        }
    }

    /// The error as an OpenAI error object, for responses and SSE error events.
    pub fn body(&self) -> ErrorBody {
        let (kind, code) = self.kind();
        ErrorBody {
            message: self.to_string(),
            kind: kind.to_string(),
            param: self.param().map(String::from),
            code: code.map(String::from),
        }
    }

    /// Whether a client may usefully retry, for the SDKs' `x-should-retry`.
    fn should_retry(&self) -> Option<bool> {
        match self {
            ApiError::RateLimited { .. }
            | ApiError::UpstreamUnreachable { .. }
            | ApiError::UpstreamTimeout { .. }
            | ApiError::Unavailable(_) => Some(true),
            ApiError::InvalidRequest { .. }
            | ApiError::Unauthorized(_)
            | ApiError::Forbidden(_)
            | ApiError::NotFound { .. }
            | ApiError::MethodNotAllowed(_)
            | ApiError::Conflict { .. }
            | ApiError::PromotionGated { .. }
            | ApiError::PayloadTooLarge { .. } => Some(false),
            _ => None,
        }
    }
}

/// The inner object of `{"error": …}`, with all four keys always present.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: &'a ErrorBody,
}

/// `{"error": body}` as JSON bytes.
pub fn error_json(body: &ErrorBody) -> Bytes {
    serde_json::to_vec(&Envelope { error: body })
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from_static(br#"{"error":{"message":"internal error","type":"api_error","param":null,"code":null}}"#))
}

/// `{"error": body}` with the gate's `failing` metrics inside the error.
fn gated_json(body: &ErrorBody, failing: &serde_json::Value) -> Bytes {
    let mut error = serde_json::to_value(body).unwrap_or_default();
    if let Some(object) = error.as_object_mut() {
        object.insert("failing".into(), failing.clone());
    }
    Bytes::from(serde_json::json!({ "error": error }).to_string())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry = self.should_retry();
        let rate = match &self {
            ApiError::RateLimited { limit, retry_after } => Some((*limit, *retry_after)),
            _ => None,
        };
        let (body, mut headers) = match self {
            ApiError::UpstreamStatus(f) => (f.body, f.headers),
            ApiError::PromotionGated { ref failing, .. } => {
                (gated_json(&self.body(), failing), HeaderMap::new())
            }
            ref other => (error_json(&other.body()), HeaderMap::new()),
        };
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(retry) = retry {
            let value = if retry { "true" } else { "false" };
            headers.insert("x-should-retry", HeaderValue::from_static(value));
        }
        if let Some((limit, wait)) = rate {
            crate::limits::write_headers(&mut headers, limit, 0, wait);
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(wait)),
            );
            headers.insert("retry-after-ms", HeaderValue::from(wait.as_millis() as u64));
        }
        (status, headers, body).into_response()
    }
}

/// A blocking task (a store call) that panicked or was cancelled.
impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::Internal(format!("store task failed: {e}"))
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::NotFound => ApiError::NotFound {
                message: "not found".into(),
                param: None,
                code: "not_found",
            },
            crate::store::StoreError::Unavailable(why) => ApiError::Unavailable(why),
            other => ApiError::Internal(other.to_string()),
        }
    }
}
