//! One example put to one version: a chat completion sent straight to the
//! version's provider (with its retries), the answer's text read back.

use crate::routing::Route;
use crate::upstream::Upstreams;
use crate::upstream::{CHAT_PATH, UpstreamRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout_at};

/// The answer's text, or why there is none.
pub(super) async fn ask(
    upstreams: &Upstreams,
    route: &Route,
    messages: &[Value],
) -> Result<String, String> {
    let provider = upstreams
        .get(route.provider)
        .ok_or_else(|| "the version's provider is not configured".to_string())?;
    // Temperature 0: a score should not depend on sampling luck.
    let body = json!({
        "model": &*route.upstream_model,
        "messages": messages,
        "temperature": 0,
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let request = UpstreamRequest {
        method: Method::POST,
        path: CHAT_PATH,
        query: None,
        headers,
        body: Bytes::from(body.to_string()),
        client_key: None,
    };
    let deadline = Instant::now() + provider.total_timeout;
    let reply = provider
        .send(request, deadline)
        .await
        .map_err(|e| e.to_string())?;
    let mut all = BytesMut::from(reply.first.unwrap_or_default().as_ref());
    let mut rest = reply.rest;
    loop {
        match timeout_at(deadline, rest.next()).await {
            Ok(Some(Ok(chunk))) => all.extend_from_slice(&chunk),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(format!("the answer broke off: {e}")),
            Err(_) => return Err("the answer did not finish in time".into()),
        }
    }
    answer_text(&all)
}

fn answer_text(body: &[u8]) -> Result<String, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    value
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| "the answer has no message content".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_choice_is_the_answer() {
        let body =
            br#"{"choices":[{"message":{"role":"assistant","content":"Threat type: malware"}}]}"#;
        assert_eq!(answer_text(body).unwrap(), "Threat type: malware");
        assert!(answer_text(b"{}").is_err());
        assert!(answer_text(b"nope").is_err());
    }
}
