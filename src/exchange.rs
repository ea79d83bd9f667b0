//! What happened in one proxied chat completion, handed off the hot path.
//!
//! The proxy forwards bytes and keeps a reference-counted copy; a bounded
//! queue carries the finished [`Exchange`] to the capture writer
//! (`capture::run_writer`), which parses and stores it away from any
//! client. A full queue drops the record — counted and logged — rather
//! than slow a response.

use crate::capture::CaptureMeta;
use crate::routing::Route;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    UpstreamError,
    ClientCancelled,
    /// The stream failed after it began; what arrived is kept.
    Partial,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientCancelled => "client_cancelled",
            Outcome::Partial => "partial",
        }
    }
}

#[derive(Debug)]
pub struct Exchange {
    pub inference_id: String,
    pub caller_id: Arc<str>,
    pub route: Route,
    pub streamed: bool,
    /// The body as the client sent it.
    pub request: Bytes,
    /// The body as the client received it (SSE bytes when streamed).
    pub response: Bytes,
    pub outcome: Outcome,
    pub status: u16,
    pub first_byte: Option<Duration>,
    pub total: Duration,
    pub meta: CaptureMeta,
}

#[derive(Clone)]
pub struct ExchangeSink {
    tx: mpsc::Sender<Exchange>,
}

impl ExchangeSink {
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Exchange>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    pub fn submit(&self, exchange: Exchange) {
        if let Err(e) = self.tx.try_send(exchange) {
            metrics::counter!("flywheel_exchange_dropped_total").increment(1);
            tracing::warn!(reason = %e, "exchange queue full or closed; record dropped");
        }
    }
}
