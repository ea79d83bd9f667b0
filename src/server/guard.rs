//! The door of the client and admin APIs: authenticates, checks the role,
//! takes a rate-limit token and tells the client how many remain; applies
//! an `x-flywheel-feedback` header before anything else. A hand-written
//! layer rather than a `from_fn` middleware: without a feedback header
//! (nearly every request) the route is called at once, with no boxed
//! future and no clone of the route.

use crate::auth::{Caller, Role, authenticate};
use crate::limits::Allowance;
use crate::openai::{ApiError, BodyLimit};
use crate::state::AppState;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

const FEEDBACK: HeaderName = HeaderName::from_static("x-flywheel-feedback");
const FEEDBACK_ID: HeaderName = HeaderName::from_static("x-flywheel-feedback-id");

/// Lets through callers with at least `min`.
#[derive(Clone)]
pub struct GuardLayer {
    app: Arc<AppState>,
    min: Role,
}

impl GuardLayer {
    pub fn new(app: Arc<AppState>, min: Role) -> Self {
        Self { app, min }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            app: self.app.clone(),
            min: self.min,
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    app: Arc<AppState>,
    min: Role,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Unpin + Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let caller = match authenticate(&self.app.auth, request.headers(), peer)
            .and_then(|c| c.require(self.min).map(|()| c))
        {
            Ok(caller) => caller,
            Err(e) => return GuardFuture(State::Answered(Some(e.into_response()))),
        };
        let allowance = match self.app.limits.check(&caller.id) {
            Ok(a) => a,
            Err(e) => {
                metrics::counter!("flywheel_rate_limited_total").increment(1);
                return GuardFuture(State::Answered(Some(e.into_response())));
            }
        };
        let limit = BodyLimit(self.app.config.server.max_body_bytes);
        // Feedback riding on any request is applied first: a bad one
        // rejects the request before anything goes upstream, so none is
        // lost silently.
        if let Some(value) = request.headers().get(FEEDBACK).cloned() {
            // The route that was polled ready serves this request later;
            // a clone stays for the next one.
            let clone = self.inner.clone();
            let mut route = std::mem::replace(&mut self.inner, clone);
            let app = self.app.clone();
            return GuardFuture(State::Feedback(Box::pin(async move {
                let id = match apply_feedback_header(&app, &caller, value.as_bytes()).await {
                    Ok(id) => id,
                    Err(e) => return e.into_response(),
                };
                request.extensions_mut().insert(caller);
                request.extensions_mut().insert(limit);
                let Ok(mut response) = route.call(request).await;
                if let Ok(id) = HeaderValue::try_from(id) {
                    response.headers_mut().insert(FEEDBACK_ID, id);
                }
                tell_allowance(&mut response, allowance);
                response
            })));
        }
        request.extensions_mut().insert(caller);
        request.extensions_mut().insert(limit);
        GuardFuture(State::Passed {
            route: self.inner.call(request),
            allowance,
        })
    }
}

pub struct GuardFuture<F>(State<F>);

enum State<F> {
    Answered(Option<Response>),
    Passed {
        route: F,
        allowance: Option<Allowance>,
    },
    Feedback(Pin<Box<dyn Future<Output = Response> + Send>>),
}

impl<F> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            State::Answered(response) => Poll::Ready(Ok(response.take().unwrap_or_default())),
            State::Passed { route, allowance } => {
                let Ok(mut response) = ready!(Pin::new(route).poll(cx));
                tell_allowance(&mut response, *allowance);
                Poll::Ready(Ok(response))
            }
            State::Feedback(answer) => answer.as_mut().poll(cx).map(Ok),
        }
    }
}

/// The `x-ratelimit-*` headers, when limits are on.
fn tell_allowance(response: &mut Response, allowance: Option<Allowance>) {
    if let Some(a) = allowance {
        crate::limits::write_headers(response.headers_mut(), a.limit, a.remaining, a.reset);
    }
}

async fn apply_feedback_header(
    app: &AppState,
    caller: &Caller,
    value: &[u8],
) -> Result<String, ApiError> {
    let request = crate::feedback::parse_header(value)?;
    Ok(
        crate::feedback::submit(&app.feedback, caller, request, None)
            .await?
            .id,
    )
}
