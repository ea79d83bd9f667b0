//! Upstream failures as [`ApiError`]s: error statuses relayed with their
//! status in the OpenAI shape, transport failures as 502/504.

use super::transport::{BodyStream, TransportError};
use crate::openai::{ApiError, ErrorBody, UpstreamFailure, error_json};
use futures_util::StreamExt;
use http::{HeaderMap, Response};
use serde::Deserialize;
use tokio::time::{Instant, timeout_at};

/// How much of an error body is read; error bodies are small.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Headers of an upstream error worth passing on: they tell SDKs when to retry.
const RELAYED: [&str; 3] = ["retry-after", "retry-after-ms", "x-should-retry"];

pub async fn error_from_reply(
    provider: &str,
    response: Response<BodyStream>,
    deadline: Instant,
    verbatim: bool,
) -> ApiError {
    read_error(provider, response, deadline, verbatim).await.0
}

/// The error to relay, and the upstream's body as text (read within
/// bounds), for a caller that looks into it first. `verbatim`: an error
/// object is relayed as the provider sent it (Azure's).
pub async fn read_error(
    provider: &str,
    response: Response<BodyStream>,
    deadline: Instant,
    verbatim: bool,
) -> (ApiError, String) {
    let status = response.status();
    let mut headers = HeaderMap::new();
    for name in RELAYED {
        if let Some(v) = response.headers().get(name) {
            headers.insert(name, v.clone());
        }
    }
    if let Some(id) = response.headers().get("x-request-id") {
        headers.insert("x-upstream-request-id", id.clone());
    }
    let text = read_limited(response, deadline).await;
    // Azure's error objects carry more than OpenAI's (a content filter's
    // `innererror` with its verdicts): an error object is relayed as sent.
    let body = if verbatim && is_error_object(&text) {
        bytes::Bytes::from(text.clone())
    } else {
        error_json(&normalise(provider, status.as_u16(), &text))
    };
    let error = ApiError::UpstreamStatus(Box::new(UpstreamFailure {
        status,
        body,
        headers,
    }));
    (error, text)
}

/// Whether `text` is a JSON object with an `error` object in it.
fn is_error_object(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| v["error"].is_object())
}

async fn read_limited(response: Response<BodyStream>, deadline: Instant) -> String {
    let mut stream = response.into_body();
    let mut buf = Vec::new();
    while buf.len() < MAX_ERROR_BODY {
        match timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(MAX_ERROR_BODY);
    String::from_utf8_lossy(&buf).into_owned()
}

#[derive(Deserialize)]
struct Envelope {
    error: Lenient,
}

/// An upstream error object whose keys may be missing or oddly typed.
#[derive(Deserialize)]
struct Lenient {
    message: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    param: Option<serde_json::Value>,
    code: Option<serde_json::Value>,
}

fn as_text(v: Option<serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

/// An OpenAI-shaped body keeps its message, type, param and code; anything
/// else becomes a message that quotes (the start of) what the upstream said.
fn normalise(provider: &str, status: u16, text: &str) -> ErrorBody {
    let default_kind = if status >= 500 {
        "api_error"
    } else {
        "invalid_request_error"
    };
    match serde_json::from_str::<Envelope>(text) {
        Ok(Envelope { error }) => ErrorBody {
            message: as_text(error.message)
                .unwrap_or_else(|| format!("upstream `{provider}` answered {status}")),
            kind: as_text(error.kind).unwrap_or_else(|| default_kind.into()),
            param: as_text(error.param),
            code: as_text(error.code),
        },
        Err(_) => {
            let snippet: String = text.trim().chars().take(500).collect();
            ErrorBody {
                message: format!("upstream `{provider}` answered {status}: {snippet}"),
                kind: default_kind.into(),
                param: None,
                code: None,
            }
        }
    }
}

pub fn transport_error(provider: &str, e: &TransportError) -> ApiError {
    if e.is_timeout() {
        return ApiError::UpstreamTimeout {
            provider: provider.to_string(),
            phase: "connecting",
            seconds: 0,
        };
    }
    let kind = match e {
        TransportError::Credentials(_) => "not sent",
        _ if e.is_connect() => "connection failed",
        _ => "request failed",
    };
    ApiError::UpstreamUnreachable {
        provider: provider.to_string(),
        detail: format!("{kind}{}", e.causes()),
    }
}

/// [`transport_error`] for the calls made with reqwest (files, fine-tuning).
pub fn reqwest_error(provider: &str, e: &reqwest::Error) -> ApiError {
    if e.is_timeout() {
        return ApiError::UpstreamTimeout {
            provider: provider.to_string(),
            phase: "connecting",
            seconds: 0,
        };
    }
    // The source chain names the cause (refused, reset, DNS); reqwest's own
    // Display would add the URL, which is not the client's business.
    let mut detail = String::from(if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body failed"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    ApiError::UpstreamUnreachable {
        provider: provider.to_string(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shaped_bodies_keep_their_fields() {
        let b = normalise(
            "p",
            400,
            r#"{"error":{"message":"bad","type":"invalid_request_error","param":"n","code":null}}"#,
        );
        assert_eq!((b.message.as_str(), b.param.as_deref()), ("bad", Some("n")));
        let b = normalise("p", 429, r#"{"error":{"message":"slow down","code":429}}"#);
        assert_eq!(
            (b.kind.as_str(), b.code.as_deref()),
            ("invalid_request_error", Some("429"))
        );
    }

    #[test]
    fn other_bodies_are_quoted() {
        let b = normalise("sim", 503, "<html>Service Unavailable</html>");
        assert_eq!(b.kind, "api_error");
        assert!(
            b.message.contains("sim") && b.message.contains("Service Unavailable"),
            "{}",
            b.message
        );
    }
}
