//! Azure OpenAI's request shapes, for apps written against Azure OpenAI
//! (the `AzureOpenAI` clients of the openai SDKs, LangChain's
//! `AzureChatOpenAI` …), which then change only their endpoint to
//! Flywheel's: `POST /openai/deployments/{deployment}/chat/completions`
//! and `…/embeddings`, the deployment naming what `model` names on the
//! `/v1/…` routes (an alias, or a provider's model). Azure's v1 API
//! (`/openai/v1/…`) is the `/v1/…` routes themselves, mounted twice (see
//! `server.rs`). The key comes as `api-key` (see `auth`); the
//! `api-version` a client sends is Azure's, and is not passed on.

use super::chat;
use super::passthrough::{self, Forwarded};
use crate::auth::Caller;
use crate::exchange::Wire;
use crate::openai::{ApiError, read_body};
use crate::state::AppState;
use axum::Extension;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;

/// `POST /openai/deployments/{deployment}/chat/completions`: a chat
/// completion for the alias or model the deployment names.
pub async fn chat_completions(
    State(app): State<Arc<AppState>>,
    Path(deployment): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    chat::handle(&app, request, Wire::Chat, Some(&deployment)).await
}

/// `POST /openai/deployments/{deployment}/embeddings`: passed through to
/// the default provider's embeddings with `model` set to the deployment.
pub async fn embeddings(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(deployment): Path<String>,
    uri: Uri,
    mut headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let body = named(
        read_body(body, app.config.server.max_body_bytes).await?,
        &deployment,
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let upload = futures_util::stream::once(async move { Ok(body) });
    let forwarded = Forwarded {
        method: Method::POST,
        path: "embeddings",
        query: uri.query(),
        headers: &headers,
        provider: None,
    };
    passthrough::forward(&app, &caller, forwarded, Box::pin(upload)).await
}

/// The body with `model` set to `deployment`. Azure reads the deployment
/// from the path, so its clients may send another `model` (ignored there)
/// or none. A body that is no JSON object is left for the route's parser
/// to refuse.
pub fn named(body: Bytes, deployment: &str) -> Bytes {
    #[derive(Deserialize)]
    struct ModelOf<'a> {
        // `null` counts as present: LangChain's Azure client sends it.
        #[serde(borrow, default, deserialize_with = "present")]
        model: Option<&'a RawValue>,
    }
    // Only an object (serde would read a struct from an array too).
    let Some(open) = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .filter(|&i| body[i] == b'{')
    else {
        return body;
    };
    let Ok(view) = serde_json::from_slice::<ModelOf<'_>>(&body) else {
        return body;
    };
    let quoted = serde_json::Value::from(deployment).to_string();
    let (start, end, insert) = match view.model {
        Some(raw) if raw.get() == quoted => return body,
        Some(raw) => {
            let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
            (start, start + raw.get().len(), quoted)
        }
        None => {
            let empty = body[open + 1..]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|&b| b == b'}');
            let member = format!("\"model\":{quoted}{}", if empty { "" } else { "," });
            (open + 1, open + 1, member)
        }
    };
    let mut out = BytesMut::with_capacity(body.len() + insert.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(insert.as_bytes());
    out.extend_from_slice(&body[end..]);
    out.freeze()
}

/// A member's raw value, `null` included (which `Option` would read as
/// absent).
fn present<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'a RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// The client's query without Azure's `api-version`, which is the
/// client's contract with Flywheel; an Azure provider gets its own.
pub fn without_api_version(query: Option<&str>) -> Option<std::borrow::Cow<'_, str>> {
    let query = query.filter(|q| !q.is_empty())?;
    if !query.split('&').any(is_api_version) {
        return Some(query.into());
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_api_version(p)).collect();
    (!kept.is_empty()).then(|| kept.join("&").into())
}

fn is_api_version(pair: &str) -> bool {
    pair.split('=').next() == Some("api-version")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named_str(body: &str, deployment: &str) -> String {
        String::from_utf8(named(Bytes::from(body.to_string()), deployment).to_vec()).unwrap()
    }

    #[test]
    fn the_deployment_becomes_the_model() {
        let body = r#"{"model": "gpt-4o", "messages": []}"#;
        assert_eq!(
            named_str(body, "triage"),
            r#"{"model": "triage", "messages": []}"#
        );
        assert_eq!(named_str(body, "gpt-4o"), body);
        assert_eq!(
            named_str(r#"{"messages": [], "model": null}"#, "triage"),
            r#"{"messages": [], "model": "triage"}"#
        );
        assert_eq!(
            named_str(r#" { "messages": [] }"#, "triage"),
            r#" {"model":"triage", "messages": [] }"#
        );
        assert_eq!(named_str("{ }", "a\"b"), r#"{"model":"a\"b" }"#);
        // Not an object: left for the parser's own error.
        assert_eq!(named_str("[1]", "triage"), "[1]");
        assert_eq!(named_str("not json", "triage"), "not json");
    }

    #[test]
    fn the_clients_api_version_is_not_passed_on() {
        let strip = |q: Option<&str>| without_api_version(q).map(|q| q.into_owned());
        assert_eq!(strip(Some("api-version=2024-10-21")), None);
        assert_eq!(
            strip(Some("api-version=2024-10-21&limit=5")).as_deref(),
            Some("limit=5")
        );
        assert_eq!(strip(Some("limit=5")).as_deref(), Some("limit=5"));
        assert_eq!(strip(Some("")), None);
        assert_eq!(strip(None), None);
    }
}
