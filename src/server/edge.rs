//! What every request passes through, in one layer: its id
//! (`x-request-id`), CORS, and its metrics and log line. One hand-written
//! layer, because the three as separate middleware (two `from_fn` and
//! tower-http's CORS, which rebuilds its headers on every request) cost
//! more CPU per request than routing and the handler together.
//!
//! The order is that of the layers it replaces, outermost first: the
//! request id, then CORS (which answers every `OPTIONS` itself, as a
//! preflight, unseen by the metrics), then the metrics and the log line.

use crate::config::RequestLog;
use crate::openai::ApiError;
use crate::proxy::RouteLabels;
use crate::telemetry::Handles;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::IntoResponse;
use axum::response::Response;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

/// The layer, with its CORS answers prepared once and the level of the
/// per-request log line.
#[derive(Clone)]
pub struct EdgeLayer(Arc<Cors>, RequestLog);

impl EdgeLayer {
    /// `origins`: those allowed by CORS; `*` among them allows any.
    pub fn new(origins: &[String], log: RequestLog) -> Self {
        let allow_origin = if origins.iter().any(|o| o == "*") {
            AllowOrigin::Any
        } else {
            AllowOrigin::List(
                origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok())
                    .collect(),
            )
        };
        Self(
            Arc::new(Cors {
                allow_origin,
                allow_methods: HeaderValue::from_static("GET,POST,PUT,PATCH,DELETE"),
                expose_headers: HeaderValue::from_static(
                    "x-request-id,x-flywheel-inference-id,x-flywheel-variant,\
                 x-flywheel-conversation-id,x-flywheel-feedback-id,etag,retry-after",
                ),
                vary: HeaderValue::from_static(
                    "origin, access-control-request-method, access-control-request-headers",
                ),
            }),
            log,
        )
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            cors: self.0.clone(),
            log: self.1,
        }
    }
}

/// The headers CORS adds: those tower-http's `CorsLayer` added with
/// `allow_origin` from the config, the methods below, request headers
/// mirrored, and the response headers below exposed.
struct Cors {
    allow_origin: AllowOrigin,
    allow_methods: HeaderValue,
    expose_headers: HeaderValue,
    vary: HeaderValue,
}

enum AllowOrigin {
    Any,
    List(Vec<HeaderValue>),
}

impl Cors {
    /// `access-control-allow-origin` for a request from `origin`, if allowed.
    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match &self.allow_origin {
            AllowOrigin::Any => Some(HeaderValue::from_static("*")),
            AllowOrigin::List(list) => origin.filter(|o| list.contains(o)).cloned(),
        }
    }

    /// The answer to an `OPTIONS` request.
    fn preflight(&self, request: &Request) -> Response {
        let mut response = Response::default();
        let headers = response.headers_mut();
        headers.insert(header::VARY, self.vary.clone());
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        );
        if let Some(asked) = request
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        if let Some(origin) = self.allow_origin(request.headers().get(header::ORIGIN)) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        response
    }

    /// Adds to an answer what CORS adds to every one that is not a preflight.
    fn decorate(&self, response: &mut Response, allow_origin: Option<HeaderValue>) {
        let headers = response.headers_mut();
        // The answer's own `vary`, if any, stays.
        headers.append(header::VARY, self.vary.clone());
        if let Some(origin) = allow_origin {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            self.expose_headers.clone(),
        );
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    cors: Arc<Cors>,
    log: RequestLog,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let id = request_id(&mut request);
        if request.method() == Method::OPTIONS {
            let mut response = self.cors.preflight(&request);
            response.headers_mut().insert(X_REQUEST_ID, id);
            return EdgeFuture(State::Answered(Some(response)));
        }
        let seen = Seen {
            started: Instant::now(),
            method: request.method().clone(),
            route: request.extensions().get::<MatchedPath>().cloned(),
            allow_origin: self
                .cors
                .allow_origin(request.headers().get(header::ORIGIN)),
            cors: self.cors.clone(),
            id,
            log: self.log,
        };
        EdgeFuture(State::Running {
            inner: self.inner.call(request),
            seen: Some(seen),
        })
    }
}

pub struct EdgeFuture<F>(State<F>);

enum State<F> {
    Answered(Option<Response>),
    Running { inner: F, seen: Option<Seen> },
}

/// What the answer's way back needs from the request.
struct Seen {
    started: Instant,
    method: Method,
    route: Option<MatchedPath>,
    allow_origin: Option<HeaderValue>,
    cors: Arc<Cors>,
    id: HeaderValue,
    log: RequestLog,
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            State::Answered(response) => Poll::Ready(Ok(response.take().unwrap_or_default())),
            State::Running { inner, seen } => {
                let polled = catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx)));
                let mut response = match polled {
                    Ok(Poll::Ready(Ok(response))) => response,
                    Ok(Poll::Pending) => return Poll::Pending,
                    Err(_) => failed(seen.as_ref()),
                };
                if let Some(seen) = seen.take() {
                    observe(&seen, &response);
                    seen.cors.decorate(&mut response, seen.allow_origin);
                    response.headers_mut().insert(X_REQUEST_ID, seen.id);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

/// The answer to a request whose handler panicked (a bug): an OpenAI
/// error rather than a connection dropped without one, and a log line
/// with the request id the client is given. A handler is not polled again
/// after it panicked: the edge answers at once.
fn failed(seen: Option<&Seen>) -> Response {
    let id = seen.and_then(|s| s.id.to_str().ok()).unwrap_or("");
    tracing::error!(
        request_id = id,
        "the request's handler failed (a bug in Flywheel)"
    );
    ApiError::Internal("Flywheel failed on this request; its log has the request id".into())
        .into_response()
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id: the client's `x-request-id` when it sent one (echoed
/// back and forwarded upstream as is), else `req_` + a ULID, the form of
/// every Flywheel id. Upstream, a generated id travels as the same 128
/// bits written as a UUID: servers such as llama.cpp's reject any other
/// form. Written without `format!`, which showed in the profile.
fn request_id(request: &mut Request) -> HeaderValue {
    match request.headers().get(X_REQUEST_ID) {
        Some(theirs) => theirs.clone(),
        None => {
            let ulid = ulid::Ulid::new();
            if let Ok(upstream) = HeaderValue::from_bytes(&uuid_form(ulid.0)) {
                request.headers_mut().insert(X_REQUEST_ID, upstream);
            }
            let mut ours = [0u8; 4 + ulid::ULID_LEN];
            ours[..4].copy_from_slice(b"req_");
            let mut text = [0u8; ulid::ULID_LEN];
            ours[4..].copy_from_slice(ulid.array_to_str(&mut text).as_bytes());
            HeaderValue::from_bytes(&ours)
                .unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
        }
    }
}

/// 128 bits as a UUID: `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
fn uuid_form(bits: u128) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    let mut nibble = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        *slot = HEX[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
        nibble += 1;
    }
    out
}

/// Request count and latency by route, status, alias and version: the
/// handles, kept by their labels.
type RequestMetrics = (metrics::Counter, metrics::Histogram);
static REQUEST_METRICS: LazyLock<Handles<RequestMetrics>> = LazyLock::new(Handles::default);

/// Counts the request and writes its log line — never with message contents.
fn observe(seen: &Seen, response: &Response) {
    let elapsed = seen.started.elapsed();
    let route = seen.route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let status = response.status();
    let labels = response.extensions().get::<RouteLabels>();
    let alias = labels.and_then(|l| l.alias.as_deref()).unwrap_or("");
    let version = labels.and_then(|l| l.version.as_deref()).unwrap_or("");
    let (count, duration) = REQUEST_METRICS.get([route, status.as_str(), alias, version], || {
        (
            metrics::counter!("flywheel_requests_total",
                "route" => route.to_string(), "status" => status.as_str().to_string(),
                "alias" => alias.to_string(), "version" => version.to_string()),
            metrics::histogram!("flywheel_request_duration_seconds",
                "route" => route.to_string(), "alias" => alias.to_string(),
                "version" => version.to_string()),
        )
    });
    count.increment(1);
    duration.record(elapsed.as_secs_f64());
    let (method, id) = (&seen.method, seen.id.to_str().unwrap_or(""));
    let ms = rounded_ms(elapsed);
    let status = status.as_u16();
    match seen.log {
        RequestLog::Info => tracing::info!(
            %method, %route, status, alias, version, request_id = id, ms, "request"
        ),
        RequestLog::Debug => tracing::debug!(
            %method, %route, status, alias, version, request_id = id, ms, "request"
        ),
    }
}

/// Milliseconds to one decimal: enough to read a latency, and a log line
/// shows `ms=1.3` rather than every digit of a float.
fn rounded_ms(elapsed: std::time::Duration) -> f64 {
    (elapsed.as_secs_f64() * 10_000.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use tower::ServiceExt;

    /// The CORS layer Flywheel used before, configured as it was.
    fn tower_http_cors(origins: &[String]) -> tower_http::cors::CorsLayer {
        use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
        let allow = if origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        };
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("x-flywheel-inference-id"),
                HeaderName::from_static("x-flywheel-variant"),
                HeaderName::from_static("x-flywheel-conversation-id"),
                HeaderName::from_static("x-flywheel-feedback-id"),
                header::ETAG,
                header::RETRY_AFTER,
            ])
    }

    fn routes() -> Router {
        Router::new()
            .route("/plain", post(|| async { "ok" }))
            .route(
                "/varies",
                post(|| async { ([(header::VARY, "accept-encoding")], "ok") }),
            )
    }

    async fn answer(router: Router, request: Request) -> (u16, Vec<(String, String)>) {
        let response = router.oneshot(request).await.unwrap();
        let headers = response
            .headers()
            .iter()
            .filter(|(name, _)| *name != X_REQUEST_ID)
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        (response.status().as_u16(), headers)
    }

    #[tokio::test]
    async fn cors_answers_as_tower_http_did() {
        let requests = || {
            let build = |method: Method, path: &str, headers: &[(&str, &str)]| {
                let mut request = Request::new(Body::empty());
                *request.method_mut() = method;
                *request.uri_mut() = path.parse().unwrap();
                for (name, value) in headers {
                    request.headers_mut().append(
                        HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        value.parse().unwrap(),
                    );
                }
                request
            };
            let preflight = [
                ("origin", "https://soc.example"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization,x-flywheel-user",
                ),
            ];
            vec![
                build(Method::POST, "/plain", &[]),
                build(Method::POST, "/plain", &[("origin", "https://soc.example")]),
                build(
                    Method::POST,
                    "/plain",
                    &[("origin", "https://other.example")],
                ),
                build(
                    Method::POST,
                    "/varies",
                    &[("origin", "https://soc.example")],
                ),
                build(Method::GET, "/plain", &[("origin", "https://soc.example")]),
                build(
                    Method::POST,
                    "/nowhere",
                    &[("origin", "https://soc.example")],
                ),
                build(Method::OPTIONS, "/plain", &preflight),
                build(Method::OPTIONS, "/nowhere", &preflight),
                build(Method::OPTIONS, "/plain", &[]),
                build(
                    Method::OPTIONS,
                    "/plain",
                    &[("origin", "https://other.example")],
                ),
            ]
        };
        for origins in [
            vec!["*".to_string()],
            vec!["https://soc.example".to_string()],
            vec!["https://soc.example".to_string(), "*".to_string()],
            vec![],
        ] {
            for (theirs, ours) in requests().into_iter().zip(requests()) {
                let what = format!(
                    "{} {} {:?} with {origins:?}",
                    ours.method(),
                    ours.uri(),
                    ours.headers()
                );
                let expected = answer(routes().layer(tower_http_cors(&origins)), theirs).await;
                let got = answer(
                    routes().layer(EdgeLayer::new(&origins, RequestLog::Info)),
                    ours,
                )
                .await;
                assert_eq!(got, expected, "{what}");
            }
        }
    }

    #[tokio::test]
    async fn every_answer_carries_the_request_id_and_a_generated_one_goes_upstream() {
        let seen = Arc::new(parking_lot::Mutex::new(None));
        let upstream = seen.clone();
        let router = Router::new()
            .route(
                "/plain",
                post(move |request: Request| async move {
                    *upstream.lock() = request.headers().get(X_REQUEST_ID).cloned();
                    "ok"
                }),
            )
            .layer(EdgeLayer::new(&["*".to_string()], RequestLog::Info));
        let mut request = Request::new(Body::empty());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = "/plain".parse().unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let ours = response.headers()[X_REQUEST_ID]
            .to_str()
            .unwrap()
            .to_string();
        assert!(ours.starts_with("req_") && ours.len() == 30, "{ours}");
        let upstream_id = seen.lock().take().unwrap();
        let ulid = ulid::Ulid::from_string(&ours[4..]).unwrap();
        assert_eq!(
            upstream_id,
            HeaderValue::from_bytes(&uuid_form(ulid.0)).unwrap()
        );

        for method in [Method::POST, Method::OPTIONS] {
            let mut request = Request::new(Body::empty());
            *request.method_mut() = method;
            *request.uri_mut() = "/plain".parse().unwrap();
            request
                .headers_mut()
                .insert(X_REQUEST_ID, HeaderValue::from_static("theirs-1"));
            let response = router.clone().oneshot(request).await.unwrap();
            assert_eq!(response.headers()[X_REQUEST_ID], "theirs-1");
        }
    }

    /// A handler that panics (a bug) still answers: an OpenAI error with
    /// the request id, CORS headers, and the server carries on.
    #[tokio::test]
    async fn a_handler_that_panics_answers_an_openai_error() {
        #[allow(clippy::panic, reason = "the bug under test")]
        async fn broken() -> &'static str {
            panic!("a bug")
        }
        let router = Router::new()
            .route("/broken", post(broken))
            .layer(EdgeLayer::new(&["*".to_string()], RequestLog::Info));
        let mut request = Request::new(Body::empty());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = "/broken".parse().unwrap();
        let response = router.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 500);
        let headers = response.headers();
        assert!(headers[X_REQUEST_ID].to_str().unwrap().starts_with("req_"));
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["type"], "api_error");
        assert_eq!(body["error"]["code"], "internal_error");
        assert!(body["error"]["param"].is_null());
    }

    #[test]
    fn durations_are_logged_as_milliseconds_to_one_decimal() {
        use std::time::Duration;
        assert_eq!(rounded_ms(Duration::from_nanos(1_282_431)), 1.3);
        assert_eq!(rounded_ms(Duration::from_micros(40)), 0.0);
        assert_eq!(rounded_ms(Duration::from_millis(1500)), 1500.0);
        assert_eq!(
            format!("{}", rounded_ms(Duration::from_nanos(1_282_431))),
            "1.3"
        );
    }

    #[test]
    fn a_generated_request_id_goes_upstream_as_a_uuid() {
        assert_eq!(
            &uuid_form(0x0190_f2a4_5b6c_7d8e_9fa0_b1c2_d3e4_f506),
            b"0190f2a4-5b6c-7d8e-9fa0-b1c2d3e4f506"
        );
    }
}
