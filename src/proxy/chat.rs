//! `POST /v1/chat/completions`: parse just enough to route, send upstream
//! with retries, then relay the reply as received — buffered when unary,
//! event by event when streamed.

use super::RouteLabels;
use super::relay::{Pending, relay_stream};
use super::request::ChatRequest;
use super::thread::{self, Thread, TurnThreading};
use crate::auth::{Caller, Credential, Role};
use crate::capture::CaptureMeta;
use crate::exchange::Outcome;
use crate::ids::new_id;
use crate::openai::{ApiError, read_body};
use crate::routing::{Choice, Route, RouteError};
use crate::state::AppState;
use crate::telemetry::Handles;
use crate::upstream::{CHAT_PATH, Reply, UpstreamRequest, headers};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::sync::{Arc, LazyLock};
use tokio::time::{Instant, timeout_at};

const USER: HeaderName = HeaderName::from_static("x-flywheel-user");
const TAGS: HeaderName = HeaderName::from_static("x-flywheel-tags");
const NO_CAPTURE: HeaderName = HeaderName::from_static("x-flywheel-no-capture");
const VARIANT: HeaderName = HeaderName::from_static("x-flywheel-variant");
const INFERENCE_ID: HeaderName = HeaderName::from_static("x-flywheel-inference-id");
const CONVERSATION_ID: HeaderName = HeaderName::from_static("x-flywheel-conversation-id");

/// The handler takes the request whole, so its headers and caller are
/// moved out of it rather than cloned by extractors.
pub async fn chat_completions(
    State(app): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let request_headers = parts.headers;
    let mut extensions = parts.extensions;
    let caller = extensions.remove::<Caller>().ok_or_else(|| {
        ApiError::Internal("the request reached the handler unauthenticated".into())
    })?;
    let body = read_body(body, app.config.server.max_body_bytes).await?;
    let request = ChatRequest::parse(&body)?;
    let explicit = thread::explicit_conversation(&request_headers)?;
    let forced = forced_variant(&request_headers, &caller)?;
    let inference_id = new_id("inf");
    let thread = thread::resolve(
        explicit,
        request.history_key.as_deref(),
        &inference_id,
        &app.recent,
        &app.store,
    );
    let sticky = sticky_key(&request_headers, &thread, &caller, request.user.as_deref());
    // One table for the whole request: a promotion while it runs changes
    // neither its version nor its fallback.
    let table = app.registry.table();
    let choice = match forced {
        Some(version) => Choice::Forced(version),
        None => Choice::Sticky(&sticky),
    };
    let route = table.resolve(&request.model, choice).map_err(route_error)?;
    let meta = CaptureMeta {
        parent_id: thread.parent_id.clone(),
        sticky: Some(sticky.clone()),
        ..capture_meta(
            &request_headers,
            thread.conversation_id.clone(),
            request.user.as_deref(),
            app.config.capture.enabled,
        )
    };
    if let Some(alias) = &route.alias {
        let shadows = table.shadows(alias);
        if !shadows.is_empty() {
            app.mirror.send(
                shadows,
                &request,
                &body,
                &request_headers,
                &inference_id,
                &meta,
            );
        }
    }
    let outgoing = Outgoing {
        app: &app,
        request: &request,
        body: &body,
        headers: &request_headers,
        caller: &caller,
        started,
    };
    let (route, reply, fallback_from) = match outgoing.send(&route).await {
        Ok(reply) => (route, Ok(reply), None),
        Err(error) => match table
            .production(route.alias.as_deref().unwrap_or(""))
            .filter(|_| route.candidate && falls_back(&error))
        {
            Some(production) => {
                let failed = route.version.as_deref().unwrap_or("").to_string();
                tracing::warn!(version = %failed, error = %error, "candidate failed before the first byte; production serves instead");
                metrics::counter!("flywheel_fallbacks_total",
                    "alias" => route.alias.as_deref().unwrap_or("").to_string(), "version" => failed.clone())
                .increment(1);
                let reply = outgoing.send(&production).await;
                (production, reply, Some(failed))
            }
            None => (route, Err(error), None),
        },
    };
    let labels = RouteLabels {
        alias: route.alias.clone(),
        version: route.version.clone(),
    };
    let threading = meta.enabled.then(|| TurnThreading {
        prefix: request.thread_prefix.clone(),
        turn: thread.turn,
        recent: app.recent.clone(),
    });
    let conversation_id = thread.conversation_id;
    let pending = Pending {
        inference_id: inference_id.clone(),
        caller_id: caller.id.clone(),
        route,
        streamed: request.stream,
        request: body,
        started,
        sink: app.exchanges.clone(),
        meta: CaptureMeta {
            fallback_from,
            ..meta
        },
        threading,
    };
    let provider = app
        .upstreams
        .get(pending.route.provider)
        .ok_or_else(|| ApiError::Internal("route names an unknown provider".into()))?;
    let reply = match reply {
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
    let deadline = started + provider.total_timeout;
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

/// What sending one chat request upstream needs, whichever version serves.
struct Outgoing<'a> {
    app: &'a AppState,
    request: &'a ChatRequest,
    body: &'a Bytes,
    headers: &'a HeaderMap,
    caller: &'a Caller,
    started: Instant,
}

impl Outgoing<'_> {
    /// Sends to the route's provider; a candidate that may fall back gets
    /// no retries of its own, so production takes over at once.
    async fn send(&self, route: &Route) -> Result<Reply, ApiError> {
        let provider = self
            .app
            .upstreams
            .get(route.provider)
            .ok_or_else(|| ApiError::Internal("route names an unknown provider".into()))?;
        let client_key = match &self.caller.credential {
            Credential::Passthrough(key) => Some(key),
            _ => None,
        };
        let upstream_request = UpstreamRequest {
            method: Method::POST,
            path: CHAT_PATH,
            query: None,
            headers: headers::outgoing(self.headers, false, client_key.is_some()),
            body: self.request.body_for(self.body, &route.upstream_model),
            client_key,
        };
        let deadline = self.started + provider.total_timeout;
        let retries = if route.candidate {
            0
        } else {
            provider.max_retries
        };
        provider
            .send_retrying(upstream_request, deadline, retries)
            .await
    }
}

/// A candidate's failure worth trying production for: anything but a
/// request the upstream judged invalid, which production would refuse too.
fn falls_back(error: &ApiError) -> bool {
    match error {
        ApiError::UpstreamStatus(f) => !matches!(f.status.as_u16(), 400 | 413 | 422),
        ApiError::UpstreamUnreachable { .. }
        | ApiError::UpstreamTimeout { .. }
        | ApiError::UpstreamInvalid { .. } => true,
        _ => false,
    }
}

fn route_error(e: RouteError) -> ApiError {
    match e {
        RouteError::UnknownVersion { .. } => ApiError::InvalidRequest {
            message: e.to_string(),
            param: Some("x-flywheel-variant".into()),
            code: Some("unknown_variant"),
        },
        RouteError::Unroutable(_) => ApiError::Unavailable(e.to_string()),
    }
}

/// `x-flywheel-variant`: a version to force, for analyst and admin keys.
fn forced_variant<'h>(
    headers: &'h HeaderMap,
    caller: &Caller,
) -> Result<Option<&'h str>, ApiError> {
    let Some(value) = headers.get(VARIANT) else {
        return Ok(None);
    };
    caller.require(Role::Analyst).map_err(|_| {
        ApiError::Forbidden("`x-flywheel-variant` needs an analyst or admin key".into())
    })?;
    let name = value.to_str().map(str::trim).unwrap_or("");
    if name.is_empty() {
        return Err(ApiError::invalid(
            "`x-flywheel-variant` must name a version",
            Some("x-flywheel-variant"),
        ));
    }
    Ok(Some(name))
}

/// What keeps a request on its version while the weights stand: its
/// conversation (explicit, or the key its first turn was assigned by when
/// threaded implicitly), else its end user, else its API key.
fn sticky_key(
    headers: &HeaderMap,
    thread: &Thread,
    caller: &Caller,
    body_user: Option<&str>,
) -> String {
    if thread.explicit {
        return ["conv:", &thread.conversation_id].concat();
    }
    if let Some(inherited) = &thread.sticky {
        return inherited.clone();
    }
    let user = headers
        .get(USER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .or(body_user);
    match user {
        Some(u) => ["user:", u].concat(),
        None => ["key:", &caller.id].concat(),
    }
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
    insert(h, INFERENCE_ID, inference_id);
    if let Some(version) = &labels.version {
        insert(h, VARIANT, version);
    }
    insert(h, CONVERSATION_ID, conversation_id);
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
    // Built in place: as a (status, headers, body) tuple the headers would
    // be copied into another map.
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = out_headers;
    Ok(response)
}

/// The optional request headers that describe the exchange for capture.
fn capture_meta(
    headers: &HeaderMap,
    conversation_id: String,
    body_user: Option<&str>,
    capture_enabled: bool,
) -> CaptureMeta {
    let text = |name: HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    CaptureMeta {
        conversation_id,
        parent_id: None,
        user: text(USER)
            .filter(|u| !u.is_empty())
            .or(body_user)
            .map(|u| u.chars().take(256).collect()),
        tags: text(TAGS).map(CaptureMeta::parse_tags).unwrap_or_default(),
        enabled: capture_enabled && text(NO_CAPTURE) != Some("1"),
        ..CaptureMeta::default()
    }
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(name, v);
    }
}

/// Time to first byte by alias and version: the handles, kept by their labels.
static FIRST_BYTE: LazyLock<Handles<metrics::Histogram>> = LazyLock::new(Handles::default);

fn record_first_byte(labels: &RouteLabels, started: Instant) {
    let alias = labels.alias.as_deref().unwrap_or("");
    let version = labels.version.as_deref().unwrap_or("");
    FIRST_BYTE
        .get([alias, version], || {
            metrics::histogram!("flywheel_time_to_first_byte_seconds",
                "alias" => alias.to_string(), "version" => version.to_string())
        })
        .record(started.elapsed().as_secs_f64());
}
