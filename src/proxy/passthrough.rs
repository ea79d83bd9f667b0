//! Every other `/v1/*` route (embeddings, moderations, files …) forwarded
//! byte-for-byte to the default provider, bodies streamed both ways, not
//! captured and not retried (a streamed body cannot be sent twice). A
//! stored response's routes (`responses/{id}…`) go to the provider that
//! answered it, when capture has stored it: with versions on several
//! providers, only that one holds it. Items put into a conversation the
//! provider keeps are kept for that conversation's next turn, which
//! capture stores with them.

use super::azure::without_api_version;
use crate::auth::{Caller, Credential};
use crate::openai::{ApiError, blocking};
use crate::state::AppState;
use crate::upstream::{ByteStream, UpstreamRequest, headers};
use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::TryStreamExt;
use std::sync::Arc;
use tokio::time::Instant;

/// `/v1/{path}` (and Azure's `/openai/{path}`, which names the same
/// routes) to `{path}` under the default provider's base URL, the body
/// streamed under `server.max_body_bytes`.
pub async fn passthrough(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    method: Method,
    uri: Uri,
    request_headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let path = ["/v1/", "/openai/"]
        .into_iter()
        .find_map(|prefix| uri.path().strip_prefix(prefix))
        .unwrap_or_default();
    let limit = app.config.server.max_body_bytes;
    let declared = request_headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let provider = match stored_response(path) {
        Some(id) => provider_of_response(&app, id).await?,
        None => None,
    };
    let into = items_into(&method, path);
    let forwarded = Forwarded {
        method,
        path,
        query: uri.query(),
        headers: &request_headers,
        provider,
    };
    match into {
        Some(into) => forward_items(&app, &caller, forwarded, body, into).await,
        None => forward(&app, &caller, forwarded, Box::pin(limited(body, limit))).await,
    }
}

/// A conversation the provider keeps, which a request puts items into.
enum ItemsInto<'a> {
    /// `POST conversations`: the conversation the answer names.
    New,
    /// `POST conversations/{id}/items`.
    Existing(&'a str),
}

fn items_into<'a>(method: &Method, path: &'a str) -> Option<ItemsInto<'a>> {
    if method != Method::POST {
        return None;
    }
    if path == "conversations" {
        return Some(ItemsInto::New);
    }
    let id = path
        .strip_prefix("conversations/")?
        .strip_suffix("/items")?;
    (!id.is_empty() && !id.contains('/')).then_some(ItemsInto::Existing(id))
}

/// The largest conversation object read to learn a new conversation's id.
const MAX_CONVERSATION_OBJECT: usize = 1024 * 1024;

/// Passes on a request that puts items into a conversation, and keeps
/// the items for the conversation's next turn (`capture::PendingItems`):
/// the model reads them in front of that turn's input.
async fn forward_items(
    app: &AppState,
    caller: &Caller,
    forwarded: Forwarded<'_>,
    body: Body,
    into: ItemsInto<'_>,
) -> Result<Response, ApiError> {
    let limit = app.config.server.max_body_bytes;
    let sent = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge { limit })?;
    let items = serde_json::from_slice::<serde_json::Value>(&sent)
        .ok()
        .and_then(|mut b| match b.get_mut("items")?.take() {
            serde_json::Value::Array(items) => Some(items),
            _ => None,
        })
        .unwrap_or_default();
    let upload = futures_util::stream::iter([Ok::<_, std::io::Error>(sent.clone())]);
    let response = forward(app, caller, forwarded, Box::pin(upload)).await?;
    if items.is_empty() || !response.status().is_success() {
        return Ok(response);
    }
    let (parts, answer) = response.into_parts();
    let object = match into {
        ItemsInto::Existing(id) => {
            keep_items(app, id, items, sent.len());
            return Ok(Response::from_parts(parts, answer));
        }
        ItemsInto::New => axum::body::to_bytes(answer, MAX_CONVERSATION_OBJECT)
            .await
            .map_err(|e| ApiError::UpstreamInvalid {
                provider: app.config.default_provider().name.clone(),
                detail: format!("the conversation object could not be read: {e}"),
            })?,
    };
    if let Some(id) = serde_json::from_slice::<serde_json::Value>(&object)
        .ok()
        .and_then(|c| c["id"].as_str().map(String::from))
    {
        keep_items(app, &id, items, sent.len());
    }
    Ok(Response::from_parts(parts, Body::from(object)))
}

fn keep_items(app: &AppState, conversation: &str, items: Vec<serde_json::Value>, bytes: usize) {
    let key = crate::capture::responses::conversation_key(conversation);
    app.conversation_items.add(key, items, bytes);
}

/// The response id of a stored response's route: `responses/{id}` and
/// what lies under it (`input_items`, `cancel`).
fn stored_response(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("responses/")?;
    let id = rest.split('/').next().unwrap_or_default();
    id.starts_with("resp_").then_some(id)
}

/// The provider that answered response `id`, by its captured inference's
/// version; `None` (the default provider) when capture has not stored it
/// or its version no longer routes anywhere.
async fn provider_of_response(app: &AppState, id: &str) -> Result<Option<usize>, ApiError> {
    let (store, id) = (app.store.clone(), id.to_string());
    let Some(inference) = blocking(move || store.inference_by_completion(&id)).await? else {
        return Ok(None);
    };
    let table = app.registry.table();
    let provider = inference
        .alias
        .as_deref()
        .and_then(|alias| table.alias(alias))
        .zip(inference.version.as_deref())
        .and_then(|(alias, version)| alias.version(version)?.provider);
    Ok(provider)
}

/// A request to pass on: `path` under the provider's base URL, the
/// client's query and headers.
pub struct Forwarded<'a> {
    pub method: Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The provider to send it to (its index); the default one when `None`.
    pub provider: Option<usize>,
}

/// Sends `forwarded` with `upload` as its body to its provider and relays
/// the answer as it comes.
pub async fn forward(
    app: &AppState,
    caller: &Caller,
    forwarded: Forwarded<'_>,
    upload: ByteStream,
) -> Result<Response, ApiError> {
    let provider = forwarded
        .provider
        .and_then(|index| app.upstreams.get(index))
        .or_else(|| app.upstreams.default_provider())
        .ok_or_else(|| ApiError::Unavailable("no provider is configured".into()))?;
    let client_key = match &caller.credential {
        Credential::Passthrough(key) => Some(key),
        _ => None,
    };
    let mut out_headers = headers::outgoing(forwarded.headers, true, client_key.is_some());
    if let Some(length) = forwarded.headers.get(header::CONTENT_LENGTH) {
        out_headers.insert(header::CONTENT_LENGTH, length.clone());
    }
    let query = without_api_version(forwarded.query);
    let request = UpstreamRequest {
        method: forwarded.method,
        path: forwarded.path,
        query: query.as_deref(),
        headers: out_headers,
        body: Bytes::new(),
        client_key,
        model: None,
    };
    let deadline = Instant::now() + provider.total_timeout;
    let (status, upstream_headers, stream) = provider.forward(request, upload, deadline).await?;
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    *response.headers_mut() = headers::relayed(&upstream_headers, true);
    Ok(response)
}

/// The body as a stream that fails once more than `limit` bytes went by,
/// for uploads that declare no length.
fn limited(
    body: Body,
    limit: usize,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let mut seen = 0usize;
    body.into_data_stream()
        .map_err(std::io::Error::other)
        .and_then(move |chunk| {
            seen += chunk.len();
            let result = if seen > limit {
                Err(std::io::Error::other(format!("body over {limit} bytes")))
            } else {
                Ok(chunk)
            };
            std::future::ready(result)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_responses_routes_are_told_by_their_id() {
        assert_eq!(stored_response("responses/resp_1"), Some("resp_1"));
        assert_eq!(
            stored_response("responses/resp_1/input_items"),
            Some("resp_1")
        );
        assert_eq!(stored_response("responses/resp_1/cancel"), Some("resp_1"));
        for other in [
            "responses",
            "responses/",
            "responses/input_items",
            "files/resp_1",
            "embeddings",
        ] {
            assert_eq!(stored_response(other), None, "{other}");
        }
    }
}
