//! The floor for a reverse proxy built on Flywheel's stack.
//!
//! Forwards every request to one upstream over hyper's pooled keep-alive
//! client and streams the answer back, bodies and headers untouched: no
//! parsing, routing, auth, metrics, logging or capture. Flywheel runs on
//! the same runtime, server and client, so what this costs per request
//! is what no change inside Flywheel can win back; the benchmarks run it
//! beside nginx and Flywheel to split the gap between the two.
//!
//! `floor LISTEN_ADDR UPSTREAM_ADDR`, e.g. `floor 127.0.0.1:8090 127.0.0.1:8091`.
//! Like Flywheel, it runs one runtime worker per core it may use and sets
//! TCP_NODELAY on both sides.

use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper::header::HOST;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, hyper::Error>;

struct Upstream {
    client: Client<HttpConnector, Incoming>,
    authority: hyper::http::uri::Authority,
}

#[tokio::main]
async fn main() {
    if let Err(message) = serve().await {
        eprintln!("floor: {message}");
        std::process::exit(2);
    }
}

async fn serve() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), None) = (args.next(), args.next(), args.next()) else {
        return Err("usage: floor LISTEN_ADDR UPSTREAM_ADDR".into());
    };
    let listen: SocketAddr = listen.parse().map_err(|e| format!("LISTEN_ADDR: {e}"))?;
    let authority = upstream
        .parse()
        .map_err(|e| format!("UPSTREAM_ADDR: {e}"))?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let upstream = Arc::new(Upstream {
        client: Client::builder(TokioExecutor::new()).build(connector),
        authority,
    });
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| forward(upstream.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    upstream: Arc<Upstream>,
    request: Request<Incoming>,
) -> Result<Response<Body>, hyper::Error> {
    let (mut parts, body) = request.into_parts();
    let mut uri = Uri::builder()
        .scheme("http")
        .authority(upstream.authority.clone());
    if let Some(path) = parts.uri.path_and_query() {
        uri = uri.path_and_query(path.clone());
    }
    parts.uri = match uri.build() {
        Ok(uri) => uri,
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    parts.headers.remove(HOST);
    match upstream
        .client
        .request(Request::from_parts(parts, body))
        .await
    {
        Ok(answer) => Ok(answer.map(BodyExt::boxed)),
        Err(_) => Ok(status(StatusCode::BAD_GATEWAY)),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = code;
    response
}
