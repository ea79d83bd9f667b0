//! What happened in one proxied chat completion, handed off the hot path.
//!
//! The proxy forwards bytes and keeps a reference-counted copy; a bounded
//! queue carries the finished [`Exchange`] to the capture writer
//! (`capture::run_writer`), which parses and stores it away from any
//! client. A full queue drops the record — counted and logged — rather
//! than slow a response.

use crate::capture::CaptureMeta;
use crate::config::QueueFullPolicy;
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
    policy: QueueFullPolicy,
    wait: Duration,
}

impl ExchangeSink {
    pub fn new(
        capacity: usize,
        policy: QueueFullPolicy,
        wait: Duration,
    ) -> (Self, mpsc::Receiver<Exchange>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx, policy, wait }, rx)
    }

    /// Never blocks the caller: a full queue drops the exchange, or with the
    /// `wait` policy parks it in a task until there is room.
    pub fn submit(&self, exchange: Exchange) {
        match self.tx.try_send(exchange) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(exchange))
                if self.policy == QueueFullPolicy::Wait =>
            {
                let (tx, wait) = (self.tx.clone(), self.wait);
                tokio::spawn(async move {
                    if tx.send_timeout(exchange, wait).await.is_err() {
                        dropped("the queue stayed full");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Full(_)) => dropped("the queue is full"),
            Err(mpsc::error::TrySendError::Closed(_)) => dropped("the writer has stopped"),
        }
    }
}

fn dropped(reason: &'static str) {
    metrics::counter!("flywheel_exchange_dropped_total").increment(1);
    tracing::warn!(reason, "exchange dropped before capture");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(n: usize) -> Exchange {
        Exchange {
            inference_id: format!("inf_{n}"),
            caller_id: "k".into(),
            route: Route {
                alias: None,
                version: None,
                provider: 0,
                upstream_model: "m".into(),
            },
            streamed: false,
            request: Bytes::new(),
            response: Bytes::new(),
            outcome: Outcome::Ok,
            status: 200,
            first_byte: None,
            total: Duration::ZERO,
            meta: CaptureMeta::default(),
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_with_the_drop_policy() {
        let (sink, mut rx) = ExchangeSink::new(1, QueueFullPolicy::Drop, Duration::from_secs(1));
        (0..3).for_each(|n| sink.submit(exchange(n)));
        drop(sink);
        let mut got = Vec::new();
        while let Some(e) = rx.recv().await {
            got.push(e.inference_id);
        }
        assert_eq!(got, ["inf_0"]);
    }

    #[tokio::test]
    async fn a_full_queue_parks_exchanges_with_the_wait_policy() {
        let (sink, mut rx) = ExchangeSink::new(1, QueueFullPolicy::Wait, Duration::from_secs(5));
        (0..3).for_each(|n| sink.submit(exchange(n)));
        drop(sink);
        let mut got = Vec::new();
        while let Some(e) = rx.recv().await {
            got.push(e.inference_id);
        }
        got.sort();
        assert_eq!(got, ["inf_0", "inf_1", "inf_2"]);
    }
}
