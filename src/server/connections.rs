//! Accepting connections and keeping each one bounded: at most
//! `server.max_connections` at once (one more is answered 503 and closed),
//! and no connection held by a client that stops talking — a request head
//! must arrive within `server.header_read_timeout_s` of its first byte, a
//! body within `server.body_read_timeout_s` of its head, and a connection
//! may sit idle between requests for `server.idle_timeout_s`. A request
//! being answered is never cut by these: a long stream runs to its end.
//!
//! hyper answers a request it cannot parse by itself, with an empty body;
//! those answers are replaced here by OpenAI error objects, so every error
//! a client sees has the same shape.

use crate::openai::{ApiError, error_json};
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// The bounds every connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read: Duration,
    pub idle: Duration,
    pub body_read: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
}

impl ConnectionLimits {
    pub fn from_config(c: &crate::config::ServerConfig) -> Self {
        Self {
            header_read: Duration::from_secs(c.header_read_timeout_s),
            idle: Duration::from_secs(c.idle_timeout_s),
            body_read: Duration::from_secs(c.body_read_timeout_s),
            max_connections: c.max_connections,
            max_header_bytes: c.max_header_bytes,
        }
    }
}

/// Refusals written at once when connections are over the limit; past
/// this many the extra connection is closed without an answer.
const REFUSALS_IN_FLIGHT: usize = 64;

/// Serves `router` until `shutdown` is cancelled, then stops accepting and
/// lets every connection finish its request in flight; returns once all
/// have closed (the caller bounds how long it waits).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let seats = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors, most often: wait for some to
                // close rather than spin.
                tracing::warn!(error = %e, "could not accept a connection");
                metrics::counter!("flywheel_accept_errors_total").increment(1);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Without it, a kept-alive response written in two parts waits
        // for the client's delayed ACK (~40 ms).
        let _ = stream.set_nodelay(true);
        match seats.clone().try_acquire_owned() {
            Ok(seat) => {
                let (router, shutdown) = (router.clone(), shutdown.clone());
                connections.spawn(async move {
                    connection(stream, peer, router, limits, shutdown).await;
                    drop(seat);
                });
            }
            Err(_) => {
                metrics::counter!("flywheel_connections_refused_total").increment(1);
                if let Ok(seat) = refusals.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        refuse(stream, limits.max_connections).await;
                        drop(seat);
                    });
                }
            }
        }
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Answers a connection over the limit with a 503 and closes it.
async fn refuse(mut stream: TcpStream, limit: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let error = ApiError::Unavailable(format!(
        "the server is at its limit of {limit} connections (server.max_connections); retry shortly"
    ));
    let response = [
        automatic_head(503, "Service Unavailable", &error),
        b"retry-after: 1\r\n\r\n".to_vec(),
        error_json(&error.body()).to_vec(),
    ]
    .concat();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&response).await?;
        stream.shutdown().await?;
        // Read what the client sent, so closing does not reset the
        // connection before it has read the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    metrics::gauge!("flywheel_connections_open").increment(1.0);
    let state = Arc::new(Activity::new());
    let io = TokioIo::new(Watched::new(stream, state.clone()));
    let service_state = state.clone();
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let guard = service_state.request_started();
        let mut request = request.map(|body| Body::new(Deadline::new(body, limits.body_read)));
        request.extensions_mut().insert(ConnectInfo(peer));
        let answered = router.clone().call(request);
        async move {
            let response = answered.await?;
            Ok::<_, std::convert::Infallible>(response.map(|body| Answered {
                body,
                _guard: guard,
            }))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(io, service);
    tokio::pin!(connection);
    let watchdog = state.watchdog(limits);
    tokio::pin!(watchdog);
    tokio::select! {
        served = connection.as_mut() => log_end(served),
        timeout = &mut watchdog => note_timeout(timeout),
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                served = connection.as_mut() => log_end(served),
                timeout = &mut watchdog => note_timeout(timeout),
            }
        }
    }
    metrics::gauge!("flywheel_connections_open").decrement(1.0);
}

fn log_end(served: Result<(), hyper::Error>) {
    if let Err(e) = served {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

fn note_timeout(kind: &'static str) {
    metrics::counter!("flywheel_connections_timed_out_total", "phase" => kind).increment(1);
    tracing::debug!(
        phase = kind,
        "connection closed: the client stopped talking"
    );
}

/// What a connection is doing, shared by its socket, its requests and
/// its watchdog. Times are milliseconds since the connection opened.
struct Activity {
    opened: Instant,
    /// Requests whose answer has not finished.
    in_flight: AtomicU64,
    /// Requests handed to the router, ever: each gets one response head.
    dispatched: AtomicU64,
    /// When the first byte of a request head arrived; 0 = none pending.
    head_started_ms: AtomicU64,
    /// When the last answer finished (or the connection opened).
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicU64::new(0),
            dispatched: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }

    /// Milliseconds since the connection opened, never 0 (0 means "none").
    fn now_ms(&self) -> u64 {
        (self.opened.elapsed().as_millis() as u64).max(1)
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            self.head_started_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.dispatched.fetch_add(1, Ordering::AcqRel);
        self.head_started_ms.store(0, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// Resolves (with the phase) when the client has kept the connection
    /// waiting too long: idle between requests, or in a request head.
    async fn watchdog(self: &Arc<Self>, limits: ConnectionLimits) -> &'static str {
        let ms = |d: Duration| d.as_millis() as u64;
        loop {
            let now = self.now_ms();
            let (phase, deadline) = if self.in_flight.load(Ordering::Acquire) > 0 {
                // A request is being answered: look again later.
                ("request", None)
            } else {
                match self.head_started_ms.load(Ordering::Relaxed) {
                    0 => (
                        "idle",
                        Some(self.idle_since_ms.load(Ordering::Relaxed) + ms(limits.idle)),
                    ),
                    started => ("header", Some(started + ms(limits.header_read))),
                }
            };
            let wait = match deadline {
                Some(d) if d <= now => return phase,
                Some(d) => Duration::from_millis(d - now),
                None => limits.idle.min(limits.header_read),
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Held from a request's dispatch until its answer's body is done (or
/// dropped): the connection is busy, not idle, meanwhile.
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .idle_since_ms
            .store(activity.now_ms(), Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that marks its request finished when it is dropped.
struct Answered {
    body: Body,
    _guard: RequestGuard,
}

impl http_body::Body for Answered {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The request body did not arrive within `server.body_read_timeout_s`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0} s (server.body_read_timeout_s)")]
pub struct BodyTimedOut(pub u64);

/// A request body that must be complete by a deadline.
struct Deadline {
    body: Incoming,
    limit: Duration,
    deadline: Instant,
    /// Armed the first time the body is not ready at once.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    fn new(body: Incoming, limit: Duration) -> Self {
        Self {
            body,
            limit,
            deadline: Instant::now() + limit,
            timer: None,
        }
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(timer.as_mut().poll(cx));
        metrics::counter!("flywheel_connections_timed_out_total", "phase" => "body").increment(1);
        Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.limit.as_secs())))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, watched: reads mark a request head under way, and hyper's
/// own answers to requests it could not parse are replaced.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// Response heads written so far; one per dispatched request.
    heads: u64,
    /// Our replacement for an automatic answer, and how much of it is out.
    replacing: Option<(Vec<u8>, usize)>,
}

impl Watched {
    fn new(stream: TcpStream, activity: Arc<Activity>) -> Self {
        Self {
            stream,
            activity,
            heads: 0,
            replacing: None,
        }
    }

    /// True when `buf` starts a response head; false for body bytes.
    /// Counts heads so one that answers no dispatched request — hyper's
    /// automatic answer to a request it could not parse — is recognised.
    fn automatic_answer(&mut self, buf: &[u8]) -> Option<Vec<u8>> {
        if !buf.starts_with(b"HTTP/1.") {
            return None;
        }
        if self.heads < self.activity.dispatched.load(Ordering::Acquire) {
            self.heads += 1;
            return None;
        }
        replacement(buf)
    }

    fn poll_replacing(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, sent)) = &mut self.replacing {
            if *sent == bytes.len() {
                self.replacing = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &bytes[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut self.stream).poll_read(cx, buf));
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        Poll::Ready(result)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none()
            && let Some(ours) = this.automatic_answer(buf)
        {
            this.replacing = Some((ours, 0));
        }
        if this.replacing.is_some() {
            ready!(this.poll_replacing(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let first = bufs.iter().find(|b| !b.is_empty());
        if this.replacing.is_none()
            && let Some(ours) = first.and_then(|b| this.automatic_answer(b))
        {
            this.replacing = Some((ours, 0));
        }
        if this.replacing.is_some() {
            ready!(this.poll_replacing(cx))?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_replacing(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_replacing(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// An OpenAI-shaped answer in place of hyper's empty one, when `head` is
/// one: `HTTP/1.1 4xx …` with no body.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head.get(..head.len().min(512))?).ok()?;
    if !text.ends_with("\r\n\r\n")
        || !text
            .to_ascii_lowercase()
            .contains("\r\ncontent-length: 0\r\n")
    {
        return None;
    }
    let status: u16 = text.get(9..12)?.parse().ok()?;
    let (reason, error) = match status {
        400 => (
            "Bad Request",
            ApiError::invalid("the request is not valid HTTP/1.1", None),
        ),
        414 => (
            "URI Too Long",
            ApiError::invalid("the request URI is too long", None),
        ),
        431 => (
            "Request Header Fields Too Large",
            ApiError::InvalidRequest {
                message: "the request headers are larger than the server accepts (server.max_header_bytes)".into(),
                param: None,
                code: Some("request_header_fields_too_large"),
            },
        ),
        _ => return None,
    };
    Some(
        [
            automatic_head(status, reason, &error),
            b"\r\n".to_vec(),
            error_json(&error.body()).to_vec(),
        ]
        .concat(),
    )
}

/// A response head (without its final blank line) for an answer that
/// closes the connection.
fn automatic_head(status: u16, reason: &str, error: &ApiError) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        error_json(&error.body()).len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_empty_answers_become_error_objects() {
        let ours = replacement(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Fri, 04 Dec 2026 10:00:00 GMT\r\n\r\n",
        )
        .unwrap();
        let text = String::from_utf8(ours).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "request_header_fields_too_large");
        assert!(v["error"].get("param").is_some());
    }

    #[test]
    fn answers_with_a_body_are_left_alone() {
        assert!(replacement(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n").is_none());
        assert!(replacement(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
    }
}
