//! One example put to one version: a chat completion sent straight to the
//! version's provider (with its retries), the answer's text read back.

use crate::routing::Route;
use crate::upstream::{Cut, UpstreamRequest, Upstreams};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use serde_json::{Value, json};
use tokio::time::Instant;

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
    let request = UpstreamRequest::chat(headers, Bytes::from(body.to_string()), None)
        .for_model(&route.upstream_model);
    let deadline = Instant::now() + provider.total_timeout;
    let reply = provider
        .send(request, deadline)
        .await
        .map_err(|e| e.to_string())?;
    let whole = reply.collect(deadline).await;
    match whole.cut {
        Some(Cut::Broken(e)) => Err(format!("the answer broke off: {e}")),
        Some(Cut::TimedOut) => Err("the answer did not finish in time".into()),
        Some(Cut::TooLarge(limit)) => Err(format!(
            "the answer is larger than the provider's max_answer_bytes ({limit} bytes)"
        )),
        None => answer_text(&whole.body),
    }
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
