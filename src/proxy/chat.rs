//! `POST /v1/chat/completions`: parse just enough to route, send upstream
//! with retries, then relay the reply as received — buffered when unary,
//! event by event when streamed.

use super::RouteLabels;
use super::relay::{Pending, relay_stream};
use super::request::ChatRequest;
use super::thread::{self, Thread, TurnThreading};
use crate::auth::{Caller, Credential, Role};
use crate::capture::CaptureMeta;
use crate::exchange::{Outcome, Wire};
use crate::ids::new_id;
use crate::openai::{ApiError, read_body};
use crate::routing::{Choice, Route, RouteError, RoutingTable};
use crate::state::AppState;
use crate::telemetry::Handles;
use crate::upstream::{Cut, Provider, Reply, UpstreamRequest, Upstreams, headers};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use std::sync::{Arc, LazyLock};
use tokio::time::Instant;

const USER: HeaderName = HeaderName::from_static("x-flywheel-user");
const TAGS: HeaderName = HeaderName::from_static("x-flywheel-tags");
const NO_CAPTURE: HeaderName = HeaderName::from_static("x-flywheel-no-capture");
const VARIANT: HeaderName = HeaderName::from_static("x-flywheel-variant");
const INFERENCE_ID: HeaderName = HeaderName::from_static("x-flywheel-inference-id");
const CONVERSATION_ID: HeaderName = HeaderName::from_static("x-flywheel-conversation-id");

/// The handler takes the request whole, so its headers and caller are
/// moved out of it rather than cloned by extractors. Three steps: route
/// (conversation, version, shadow copies), send (falling back to
/// production when a candidate fails), respond (relay the reply or the
/// error, and hand the exchange to capture as the answer completes).
pub async fn chat_completions(
    State(app): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    handle(&app, request, Wire::Chat, None).await
}

/// `POST /v1/responses`: routed, sent, relayed and captured as a chat
/// completion is; see `capture::responses` for how it is recorded.
pub async fn responses(
    State(app): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    handle(&app, request, Wire::Responses, None).await
}

/// One chat completion or response; with `deployment` (Azure's path),
/// the body's `model` is set to it first.
pub(super) async fn handle(
    app: &AppState,
    request: Request,
    wire: Wire,
    deployment: Option<&str>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let mut extensions = parts.extensions;
    let caller = extensions.remove::<Caller>().ok_or_else(|| {
        ApiError::Internal("the request reached the handler unauthenticated".into())
    })?;
    let mut body = read_body(body, app.config.server.max_body_bytes).await?;
    if let Some(deployment) = deployment {
        body = super::azure::named(body, deployment);
    }
    let request = match wire {
        Wire::Chat => ChatRequest::parse(&body)?,
        Wire::Responses => ChatRequest::parse_responses(&body)?,
    };
    let routed = route(app, &request, &body, &headers, &caller)?;
    let outgoing = Outgoing {
        upstreams: &app.upstreams,
        request: &request,
        body: &body,
        headers: &headers,
        caller: &caller,
        started,
    };
    let sent = send_with_fallback(&outgoing, routed.route.clone(), &routed.table).await;
    let asked = Asked {
        request: &request,
        body,
        caller: &caller,
        started,
    };
    respond(app, asked, routed, sent).await
}

/// What routing decided for one request.
struct Routed {
    inference_id: String,
    thread: Thread,
    /// One table for the whole request: a promotion while it runs changes
    /// neither its version nor its fallback.
    table: Arc<RoutingTable>,
    route: Route,
    meta: CaptureMeta,
}

/// The conversation, the version that serves the request, and the copies
/// for the alias's shadow versions (sent on their own tasks).
fn route(
    app: &AppState,
    request: &ChatRequest,
    body: &Bytes,
    headers: &HeaderMap,
    caller: &Caller,
) -> Result<Routed, ApiError> {
    let explicit = thread::explicit_conversation(headers)?;
    let forced = forced_variant(headers, caller)?;
    let inference_id = new_id("inf");
    let thread = thread::resolve(
        explicit,
        request.history_key.as_deref(),
        &inference_id,
        &app.recent,
        &app.store,
    );
    let sticky = sticky_key(headers, &thread, caller, request.user.as_deref());
    let table = app.registry.table();
    let choice = match forced {
        Some(version) => Choice::Forced(version),
        None => Choice::Sticky(&sticky),
    };
    let route = table.resolve(&request.model, choice)?;
    let meta = CaptureMeta {
        parent_id: thread.parent_id.clone(),
        sticky: Some(sticky),
        conversation_items: request
            .conversation_key
            .as_deref()
            .map(|key| app.conversation_items.take(key))
            .unwrap_or_default(),
        ..capture_meta(
            headers,
            thread.conversation_id.clone(),
            request.user.as_deref(),
            app.config.capture.enabled,
        )
    };
    // A request naming what only its provider stored gets no copies.
    if let Some(alias) = route.alias.as_ref().filter(|_| request.self_contained) {
        let shadows = table.shadows(alias);
        if !shadows.is_empty() {
            app.mirror
                .send(shadows, request, body, headers, &inference_id, &meta);
        }
    }
    Ok(Routed {
        inference_id,
        thread,
        table,
        route,
        meta,
    })
}

/// What came back, from which version, and the candidate that failed
/// before production served instead.
struct Sent {
    route: Route,
    reply: Result<Reply, ApiError>,
    fallback_from: Option<String>,
}

/// Sends to the routed version; a candidate that fails before the first
/// byte (in a way production would not) hands the request to production.
async fn send_with_fallback(outgoing: &Outgoing<'_>, route: Route, table: &RoutingTable) -> Sent {
    let error = match outgoing.send(&route).await {
        Ok(reply) => {
            return Sent {
                route,
                reply: Ok(reply),
                fallback_from: None,
            };
        }
        Err(error) => error,
    };
    let production = table
        .production(route.alias.as_deref().unwrap_or(""))
        .filter(|_| route.candidate && falls_back(&error));
    let Some(production) = production else {
        return Sent {
            route,
            reply: Err(error),
            fallback_from: None,
        };
    };
    let failed = route.version.as_deref().unwrap_or("").to_string();
    tracing::warn!(version = %failed, error = %error, "candidate failed before the first byte; production serves instead");
    metrics::counter!("flywheel_fallbacks_total",
        "alias" => route.alias.as_deref().unwrap_or("").to_string(), "version" => failed.clone())
    .increment(1);
    let reply = outgoing.send(&production).await;
    Sent {
        route: production,
        reply,
        fallback_from: Some(failed),
    }
}

/// The request as the client sent it, for the record of the exchange.
struct Asked<'a> {
    request: &'a ChatRequest,
    body: Bytes,
    caller: &'a Caller,
    started: Instant,
}

/// The reply relayed (or the error answered) with the inference,
/// version and conversation ids; the exchange goes to capture as the
/// answer completes.
async fn respond(
    app: &AppState,
    asked: Asked<'_>,
    routed: Routed,
    sent: Sent,
) -> Result<Response, ApiError> {
    let Asked {
        request,
        body,
        caller,
        started,
    } = asked;
    let labels = RouteLabels {
        alias: sent.route.alias.clone(),
        version: sent.route.version.clone(),
    };
    let threading = routed.meta.enabled.then(|| TurnThreading {
        wire: request.wire,
        prefix: request.thread_prefix.clone(),
        turn: routed.thread.turn,
        conversation_key: request.conversation_key.clone(),
        recent: app.recent.clone(),
    });
    let pending = Pending {
        inference_id: routed.inference_id.clone(),
        caller_id: caller.id.clone(),
        route: sent.route,
        wire: request.wire,
        streamed: request.stream,
        request: body,
        started,
        sink: app.exchanges.clone(),
        meta: CaptureMeta {
            fallback_from: sent.fallback_from,
            ..routed.meta
        },
        threading,
    };
    let provider = app
        .upstreams
        .get(pending.route.provider)
        .ok_or_else(|| ApiError::Internal("route names an unknown provider".into()))?;
    let response = match sent.reply {
        Ok(reply) => {
            record_first_byte(&labels, started);
            relay(reply, pending, provider).await
        }
        Err(error) => {
            let error = unsupported_route(error, request.wire, provider);
            pending.finish_failed(&error);
            error.into_response()
        }
    };
    let conversation_id = &routed.thread.conversation_id;
    Ok(with_ids(
        response,
        &routed.inference_id,
        conversation_id,
        labels,
    ))
}

/// A stream relayed event by event; a unary reply read whole first.
async fn relay(reply: Reply, pending: Pending, provider: &Provider) -> Response {
    let deadline = pending.started + provider.total_timeout;
    if !pending.streamed {
        return unary_response(reply, pending, deadline, &provider.name)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
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
        return error.into_response();
    }
    relay_stream(reply, pending, deadline, provider.name.clone())
}

/// What sending one chat request upstream needs, whichever version serves.
struct Outgoing<'a> {
    upstreams: &'a Upstreams,
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
            .upstreams
            .get(route.provider)
            .ok_or_else(|| ApiError::Internal("route names an unknown provider".into()))?;
        let client_key = match &self.caller.credential {
            Credential::Passthrough(key) => Some(key),
            _ => None,
        };
        let headers = headers::outgoing(self.headers, false, client_key.is_some());
        let body = self.request.body_for(self.body, &route.upstream_model);
        let upstream_request = match self.request.wire {
            Wire::Chat => UpstreamRequest::chat(headers, body, client_key),
            Wire::Responses => UpstreamRequest::responses(headers, body, client_key),
        }
        .for_model(&route.upstream_model);
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

/// A provider that does not serve the Responses API answers its path with
/// 404: said plainly, naming the route and the provider, rather than as
/// the provider's own "not found". A 404 that names a parameter (an
/// unknown `previous_response_id`) is the provider's answer to a route it
/// does serve, and is relayed as it is.
fn unsupported_route(error: ApiError, wire: Wire, provider: &Provider) -> ApiError {
    let names_no_param = |body: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(body)
            .map_or(true, |v| v["error"]["param"].is_null())
    };
    match error {
        ApiError::UpstreamStatus(f)
            if wire == Wire::Responses && f.status.as_u16() == 404 && names_no_param(&f.body) =>
        {
            ApiError::NotFound {
                message: format!(
                    "provider `{}` does not serve the Responses API (POST /v1/responses); \
                     send this model's requests to POST /v1/chat/completions",
                    provider.name
                ),
                param: None,
                code: "responses_unsupported",
            }
        }
        other => other,
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

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::UnknownVersion { .. } => ApiError::InvalidRequest {
                message: e.to_string(),
                param: Some("x-flywheel-variant".into()),
                code: Some("unknown_variant"),
            },
            RouteError::Unroutable(_) => ApiError::Unavailable(e.to_string()),
        }
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
    let whole = reply.collect(deadline).await;
    let failure = whole.cut.map(|cut| match cut {
        Cut::Broken(e) => ApiError::UpstreamInvalid {
            provider: provider.to_string(),
            detail: format!("the response body broke off: {e}"),
        },
        Cut::TimedOut => ApiError::UpstreamTimeout {
            provider: provider.to_string(),
            phase: "reading the response body",
            seconds: deadline
                .saturating_duration_since(pending.started)
                .as_secs(),
        },
        Cut::TooLarge(limit) => ApiError::UpstreamInvalid {
            provider: provider.to_string(),
            detail: format!(
                "the answer is larger than the provider's max_answer_bytes ({limit} bytes)"
            ),
        },
    });
    let body = whole.body;
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
    let mut out_headers = headers::relayed(&whole.headers, false);
    out_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let elapsed = pending.started.elapsed();
    let status = whole.status;
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
