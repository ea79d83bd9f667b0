//! `POST /v1/chat/completions`: parse just enough to route, send upstream
//! with retries, then relay the reply as received — buffered when unary,
//! event by event when streamed.

use super::RouteLabels;
use super::relay::{Pending, relay_stream};
use super::request::ChatRequest;
use crate::app::AppState;
use crate::auth::{Caller, Credential};
use crate::capture::CaptureMeta;
use crate::exchange::Outcome;
use crate::ids::new_id;
use crate::openai::{ApiError, read_body};
use crate::upstream::{CHAT_PATH, Reply, UpstreamRequest, headers};
use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::time::{Instant, timeout_at};

pub async fn chat_completions(
    State(app): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    request_headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let body = read_body(body, app.config.server.max_body_bytes).await?;
    let request = ChatRequest::parse(&body)?;
    let route = app.routes.load().resolve(&request.model);
    let provider = app
        .upstreams
        .get(route.provider)
        .ok_or_else(|| ApiError::Internal("route names an unknown provider".into()))?;
    let client_key = match &caller.credential {
        Credential::Passthrough(key) => Some(key),
        _ => None,
    };
    let upstream_request = UpstreamRequest {
        method: Method::POST,
        path: CHAT_PATH,
        query: None,
        headers: headers::outgoing(&request_headers, false, client_key.is_some()),
        body: request.body_for(&body, &route.upstream_model),
        client_key,
    };
    let deadline = started + provider.total_timeout;
    let labels = RouteLabels {
        alias: route.alias.clone(),
        version: route.version.clone(),
    };
    let (conversation_id, parent_id) =
        resolve_conversation(&app, &request_headers, request.history_key.as_deref());
    let inference_id = new_id("inf");
    let pending = Pending {
        inference_id: inference_id.clone(),
        caller_id: caller.id.clone(),
        route,
        streamed: request.stream,
        request: body,
        started,
        sink: app.exchanges.clone(),
        meta: CaptureMeta {
            parent_id,
            ..capture_meta(
                &request_headers,
                conversation_id.clone(),
                app.config.capture.enabled,
            )
        },
    };
    let reply = match provider.send(upstream_request, deadline).await {
        Ok(reply) => reply,
        Err(error) => {
            pending.finish_failed(&error);
            return Ok(with_ids(
                error.into_response(),
                &inference_id,
                &conversation_id,
                labels,
            ));
        }
    };
    record_first_byte(&labels, started);
    let response = if request.stream {
        let is_sse = reply
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            // An empty 200 would read as a complete, empty answer.
            let error = ApiError::UpstreamInvalid {
                provider: provider.name.to_string(),
                detail: "a streamed request was answered without an event stream".into(),
            };
            pending.finish_failed(&error);
            return Ok(with_ids(
                error.into_response(),
                &inference_id,
                &conversation_id,
                labels,
            ));
        }
        relay_stream(reply, pending, deadline, provider.name.clone())
    } else {
        unary_response(reply, pending, deadline, &provider.name)
            .await
            .unwrap_or_else(IntoResponse::into_response)
    };
    Ok(with_ids(response, &inference_id, &conversation_id, labels))
}

/// Every answer, failures included, names its inference (for feedback),
/// the version that served it and the conversation.
fn with_ids(
    mut response: Response,
    inference_id: &str,
    conversation_id: &str,
    labels: RouteLabels,
) -> Response {
    let h = response.headers_mut();
    insert(h, "x-flywheel-inference-id", inference_id);
    if let Some(version) = &labels.version {
        insert(h, "x-flywheel-variant", version);
    }
    insert(h, "x-flywheel-conversation-id", conversation_id);
    response.extensions_mut().insert(labels);
    response
}

/// Reads the rest of a unary reply before answering: a body that breaks
/// half-way becomes a clean 502 instead of a truncated 200.
async fn unary_response(
    reply: Reply,
    pending: Pending,
    deadline: Instant,
    provider: &str,
) -> Result<Response, ApiError> {
    let Reply {
        status,
        headers: upstream_headers,
        first,
        mut rest,
        ..
    } = reply;
    let mut body = BytesMut::from(first.unwrap_or_default().as_ref());
    let failure = loop {
        match timeout_at(deadline, rest.next()).await {
            Ok(Some(Ok(chunk))) => body.extend_from_slice(&chunk),
            Ok(None) => break None,
            Ok(Some(Err(e))) => {
                break Some(ApiError::UpstreamInvalid {
                    provider: provider.to_string(),
                    detail: format!("the response body broke off: {e}"),
                });
            }
            Err(_) => {
                break Some(ApiError::UpstreamTimeout {
                    provider: provider.to_string(),
                    phase: "reading the response body",
                    seconds: deadline
                        .saturating_duration_since(pending.started)
                        .as_secs(),
                });
            }
        }
    };
    let body = body.freeze();
    let looks_like_json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let failure = failure.or_else(|| {
        (!looks_like_json).then(|| ApiError::UpstreamInvalid {
            provider: provider.to_string(),
            detail: "the response is not a JSON object".into(),
        })
    });
    if let Some(error) = failure {
        pending.finish_failed(&error);
        return Err(error);
    }
    let mut out_headers = headers::relayed(&upstream_headers, false);
    out_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let elapsed = pending.started.elapsed();
    pending.finish(Outcome::Ok, status.as_u16(), body.clone(), Some(elapsed));
    Ok((status, out_headers, body).into_response())
}

/// The optional request headers that describe the exchange for capture.
fn capture_meta(
    headers: &HeaderMap,
    conversation_id: String,
    capture_enabled: bool,
) -> CaptureMeta {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    CaptureMeta {
        conversation_id,
        parent_id: None,
        user: text("x-flywheel-user")
            .filter(|u| !u.is_empty())
            .map(|u| u.chars().take(256).collect()),
        tags: text("x-flywheel-tags")
            .map(CaptureMeta::parse_tags)
            .unwrap_or_default(),
        enabled: capture_enabled && text("x-flywheel-no-capture") != Some("1"),
    }
}

/// The conversation of this request and, for a branch, its parent: the
/// client's explicit id when it sent a usable one; else the conversation
/// whose latest turn this history continues; else a branch of one that has
/// moved on since (a regenerated or edited turn); else a new one.
fn resolve_conversation(
    app: &AppState,
    headers: &HeaderMap,
    history_key: Option<&str>,
) -> (String, Option<String>) {
    let explicit = headers
        .get("x-flywheel-conversation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128);
    if let Some(id) = explicit {
        return (id.to_string(), None);
    }
    let continued = history_key.and_then(|key| {
        let point = app.store.thread(key).ok()??;
        let conversation = app.store.conversation(&point.conversation_id).ok()??;
        Some((point, conversation.inference_ids.len()))
    });
    match continued {
        Some((point, turns)) if point.turn + 1 == turns => (point.conversation_id, None),
        Some((point, _)) => (new_id("conv"), Some(point.conversation_id)),
        None => (new_id("conv"), None),
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(name, v);
    }
}

fn record_first_byte(labels: &RouteLabels, started: Instant) {
    metrics::histogram!(
        "flywheel_time_to_first_byte_seconds",
        "alias" => labels.alias.as_deref().unwrap_or("").to_string(),
        "version" => labels.version.as_deref().unwrap_or("").to_string()
    )
    .record(started.elapsed().as_secs_f64());
}
