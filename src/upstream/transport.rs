//! The connection behind the requests Flywheel relays to a provider (chat
//! completions, pass-through): hyper's pooled client straight to the
//! provider — reqwest's layers (URL parsing, redirect and retry policies,
//! header merging) cost more CPU per request than the rest of the proxy
//! together — or, when the environment names a proxy for the provider
//! (`HTTPS_PROXY`, `NO_PROXY` …), reqwest, which knows how to go through
//! one.
//!
//! Both ways keep the pool idle for 90 s, set `TCP_NODELAY`, bound the
//! connect (TCP and TLS) by `connect_timeout_s` and offer HTTP/2 and
//! HTTP/1.1 to https providers, with rustls and the webpki roots.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body::Frame;
use http_body_util::{Either, Full, StreamBody};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Body bytes as they come: an upload streamed to the provider
/// (pass-through), or an answer read through reqwest.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// What a request carries.
pub enum Payload {
    Full(Bytes),
    Stream(ByteStream),
}

type Frames = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send>>;
type OutBody = Either<Full<Bytes>, StreamBody<Frames>>;
type Direct = Client<ConnectTimeout<HttpsConnector<HttpConnector>>, OutBody>;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per host: as many as requests may be in flight.
const POOL_MAX_IDLE: usize = 4096;

#[expect(
    clippy::large_enum_variant,
    reason = "one per provider, built once at start-up"
)]
pub enum Transport {
    Direct(Direct),
    /// Through the proxy the environment names, with the provider's
    /// reqwest client (which reads the same variables).
    Proxied(reqwest::Client),
}

impl Transport {
    /// hyper's client to `base` unless `proxies` (the environment's, in
    /// the same reading as reqwest's) route it through a proxy; then
    /// `proxied`.
    pub fn new(
        base: &Uri,
        connect_timeout: Duration,
        proxies: &Matcher,
        proxied: &reqwest::Client,
    ) -> Result<Self, String> {
        if proxies.intercept(base).is_some() {
            return Ok(Transport::Proxied(proxied.clone()));
        }
        Ok(Transport::Direct(direct(connect_timeout)?))
    }

    /// Sends the request; the answer's body is read as it comes.
    pub async fn send(
        &self,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        payload: Payload,
    ) -> Result<Response<BodyStream>, TransportError> {
        match self {
            Transport::Direct(client) => {
                let body = match payload {
                    Payload::Full(bytes) => Either::Left(Full::new(bytes)),
                    Payload::Stream(stream) => {
                        let frames: Frames = Box::pin(stream.map(|chunk| chunk.map(Frame::data)));
                        Either::Right(StreamBody::new(frames))
                    }
                };
                let mut request = Request::new(body);
                *request.method_mut() = method;
                *request.uri_mut() = uri;
                *request.headers_mut() = headers;
                let response = client
                    .request(request)
                    .await
                    .map_err(TransportError::Direct)?;
                Ok(response.map(|body| BodyStream(Inner::Direct(body))))
            }
            Transport::Proxied(client) => {
                let url = reqwest::Url::parse(&uri.to_string())
                    .map_err(|e| TransportError::Address(e.to_string()))?;
                let body = match payload {
                    Payload::Full(bytes) => reqwest::Body::from(bytes),
                    Payload::Stream(stream) => reqwest::Body::wrap_stream(stream),
                };
                let response = client
                    .request(method, url)
                    .headers(headers)
                    .body(body)
                    .send()
                    .await
                    .map_err(TransportError::Proxied)?;
                let mut out = Response::new(());
                *out.status_mut() = response.status();
                *out.version_mut() = response.version();
                *out.headers_mut() = response.headers().clone();
                let stream: ByteStream = Box::pin(
                    response
                        .bytes_stream()
                        .map(|r| r.map_err(std::io::Error::other)),
                );
                Ok(out.map(|()| BodyStream(Inner::Proxied(stream))))
            }
        }
    }
}

fn direct(connect_timeout: Duration) -> Result<Direct, String> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    // The TLS layer takes the https URLs.
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let connector = ConnectTimeout {
        inner: https,
        limit: connect_timeout,
    };
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .build(connector))
}

/// A connector whose whole connect — TCP, then TLS — must finish within
/// `limit`; a connect that does not fails with [`ConnectTimedOut`].
#[derive(Clone)]
pub struct ConnectTimeout<C> {
    inner: C,
    limit: Duration,
}

impl<C> tower::Service<Uri> for ConnectTimeout<C>
where
    C: tower::Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
    C::Response: 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(Box::new(ConnectTimedOut(limit.as_secs())) as BoxError),
            }
        })
    }
}

/// The connect did not finish within `connect_timeout_s`.
#[derive(Debug, thiserror::Error)]
#[error("connecting took longer than {0} s")]
pub struct ConnectTimedOut(u64);

/// Why a request got no answer.
#[derive(Debug)]
pub enum TransportError {
    Direct(hyper_util::client::legacy::Error),
    Proxied(reqwest::Error),
    /// The URL could not be handed to reqwest.
    Address(String),
    /// Our credentials for the provider are not to be had (an Entra ID
    /// token that could not be renewed): nothing was sent.
    Credentials(String),
}

impl TransportError {
    /// The connection could not be made: nothing was sent.
    pub fn is_connect(&self) -> bool {
        match self {
            TransportError::Direct(e) => e.is_connect(),
            TransportError::Proxied(e) => e.is_connect(),
            TransportError::Address(_) => false,
            // Retried as a refused connection is: a renewal may come.
            TransportError::Credentials(_) => true,
        }
    }

    /// The connection was not made within `connect_timeout_s`.
    pub fn is_timeout(&self) -> bool {
        match self {
            TransportError::Direct(e) => {
                let mut source: Option<&(dyn StdError + 'static)> = Some(e);
                while let Some(s) = source {
                    if s.is::<ConnectTimedOut>() {
                        return true;
                    }
                    source = s.source();
                }
                false
            }
            TransportError::Proxied(e) => e.is_timeout(),
            TransportError::Address(_) | TransportError::Credentials(_) => false,
        }
    }

    /// What went wrong, cause by cause, without the URL.
    pub fn causes(&self) -> String {
        let mut out = String::new();
        let mut source: Option<&(dyn StdError + 'static)> = match self {
            TransportError::Direct(e) => Some(e),
            // reqwest's own Display would add the URL; its causes do not.
            TransportError::Proxied(e) => e.source(),
            TransportError::Address(detail) | TransportError::Credentials(detail) => {
                return format!(": {detail}");
            }
        };
        while let Some(s) = source {
            out.push_str(": ");
            out.push_str(&s.to_string());
            source = s.source();
        }
        out
    }
}

/// An answer's body as it arrives, chunk by chunk. Dropping it before its
/// end closes the connection it came on.
pub struct BodyStream(Inner);

enum Inner {
    Direct(Incoming),
    Proxied(ByteStream),
}

impl Stream for BodyStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.0 {
            Inner::Direct(body) => loop {
                let frame = match std::task::ready!(http_body::Body::poll_frame(
                    Pin::new(&mut *body),
                    cx
                )) {
                    None => return Poll::Ready(None),
                    Some(Err(e)) => return Poll::Ready(Some(Err(std::io::Error::other(e)))),
                    Some(Ok(frame)) => frame,
                };
                // Trailers carry no bytes for the client.
                if let Ok(data) = frame.into_data() {
                    return Poll::Ready(Some(Ok(data)));
                }
            },
            Inner::Proxied(stream) => stream.as_mut().poll_next(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_proxy_in_the_environment_routes_through_reqwest() {
        let reqwest = reqwest::Client::new();
        let base: Uri = "http://upstream.example/v1/chat/completions"
            .parse()
            .unwrap();
        let proxies = Matcher::builder().http("http://127.0.0.1:3128").build();
        let through = Transport::new(&base, Duration::from_secs(1), &proxies, &reqwest).unwrap();
        assert!(matches!(through, Transport::Proxied(_)));
        let none = Matcher::builder().build();
        let direct = Transport::new(&base, Duration::from_secs(1), &none, &reqwest).unwrap();
        assert!(matches!(direct, Transport::Direct(_)));
        let exempt = Matcher::builder()
            .http("http://127.0.0.1:3128")
            .no("upstream.example")
            .build();
        let direct = Transport::new(&base, Duration::from_secs(1), &exempt, &reqwest).unwrap();
        assert!(matches!(direct, Transport::Direct(_)));
    }

    #[tokio::test]
    async fn a_proxied_request_reaches_the_proxy_and_its_answer_comes_back() {
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = proxy.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            let (mut socket, _) = proxy.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") || !head.ends_with(b"{}") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early");
                head.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nx-up: 1\r\n\r\n{\"ok\":true}")
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let client = reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(format!("http://{address}")).unwrap())
            .build()
            .unwrap();
        let transport = Transport::Proxied(client);
        let mut headers = HeaderMap::new();
        headers.insert("x-client", "yes".parse().unwrap());
        let response = transport
            .send(
                Method::POST,
                "http://upstream.example/v1/chat/completions"
                    .parse()
                    .unwrap(),
                headers,
                Payload::Full(Bytes::from_static(b"{}")),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-up"], "1");
        let body: Vec<Bytes> = response.into_body().map(Result::unwrap).collect().await;
        assert_eq!(body.concat(), b"{\"ok\":true}");
        let head = seen.await.unwrap();
        assert!(
            head.starts_with("POST http://upstream.example/v1/chat/completions HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("x-client: yes"), "{head}");
    }

    #[tokio::test]
    async fn https_providers_are_spoken_to_in_tls_offering_http2_and_http1() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        let hello = tokio::spawn(async move {
            let (mut socket, _) = server.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = socket.read(&mut buf).await.unwrap();
            buf.truncate(n);
            buf
        });
        let transport = Transport::Direct(direct(Duration::from_secs(5)).unwrap());
        let uri: Uri = format!("https://127.0.0.1:{port}/v1/chat/completions")
            .parse()
            .unwrap();
        let sent = transport.send(
            Method::POST,
            uri,
            HeaderMap::new(),
            Payload::Full(Bytes::new()),
        );
        let (hello, sent) = tokio::join!(hello, sent);
        let hello = hello.unwrap();
        // A TLS handshake record whose ClientHello offers both protocols by ALPN.
        assert_eq!(hello[0], 0x16, "{hello:?}");
        let offers = |p: &[u8]| hello.windows(p.len()).any(|w| w == p);
        assert!(offers(b"\x02h2") && offers(b"\x08http/1.1"));
        assert!(sent.err().is_some_and(|e| e.is_connect()));
    }

    #[tokio::test]
    async fn a_connect_that_hangs_fails_at_the_connect_timeout() {
        let hanging = tower::service_fn(|_: Uri| std::future::pending::<Result<(), BoxError>>());
        let mut connector = ConnectTimeout {
            inner: hanging,
            limit: Duration::from_millis(50),
        };
        let error = tower::Service::call(&mut connector, Uri::from_static("http://x"))
            .await
            .unwrap_err();
        assert!(error.is::<ConnectTimedOut>(), "{error}");
    }
}
