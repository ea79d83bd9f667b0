//! What happened in one proxied chat completion, handed off the hot path.
//!
//! The proxy forwards bytes and keeps a reference-counted copy; a bounded
//! queue carries the finished [`Exchange`] to a worker that parses it
//! (usage, tokens) away from any client. A full queue drops the record and
//! counts the drop rather than slow a response.

use crate::routing::Route;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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

/// Drains the queue until shutdown, then whatever is left in it.
pub async fn run_worker(mut rx: mpsc::Receiver<Exchange>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some(exchange) => observe(&exchange).await,
                None => return,
            },
            () = shutdown.cancelled() => break,
        }
    }
    rx.close();
    while let Some(exchange) = rx.recv().await {
        observe(&exchange).await;
    }
}

async fn observe(ex: &Exchange) {
    let usage = if ex.streamed {
        stream_usage(&ex.response).await
    } else {
        serde_json::from_slice::<WithUsage>(&ex.response)
            .ok()
            .and_then(|w| w.usage)
    };
    let alias = ex.route.alias.as_deref().unwrap_or("").to_string();
    let version = ex.route.version.as_deref().unwrap_or("").to_string();
    if let Some(u) = usage {
        metrics::counter!("flywheel_tokens_total", "alias" => alias.clone(), "version" => version.clone(), "kind" => "prompt")
            .increment(u.prompt_tokens);
        metrics::counter!("flywheel_tokens_total", "alias" => alias, "version" => version, "kind" => "completion")
            .increment(u.completion_tokens);
    }
    tracing::debug!(
        inference_id = %ex.inference_id,
        caller = %ex.caller_id,
        model = %ex.route.upstream_model,
        outcome = ex.outcome.as_str(),
        status = ex.status,
        streamed = ex.streamed,
        request_bytes = ex.request.len(),
        response_bytes = ex.response.len(),
        first_byte_ms = ex.first_byte.map(|d| d.as_millis() as u64),
        total_ms = ex.total.as_millis() as u64,
        "exchange finished"
    );
}

#[derive(Deserialize)]
struct WithUsage {
    usage: Option<Usage>,
}

#[derive(Deserialize, Debug, PartialEq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The usage chunk of a stream (present with `stream_options.include_usage`).
async fn stream_usage(sse: &Bytes) -> Option<Usage> {
    use eventsource_stream::Eventsource;
    let source = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(sse.clone())]);
    let mut events = source.eventsource();
    let mut usage = None;
    while let Some(Ok(event)) = events.next().await {
        if let Ok(WithUsage { usage: Some(u) }) = serde_json::from_str(&event.data) {
            usage = Some(u);
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn usage_is_found_in_the_stream_usage_chunk() {
        let sse = Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\ndata: [DONE]\n\n",
        );
        assert_eq!(
            stream_usage(&sse).await,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 2
            })
        );
        assert_eq!(
            stream_usage(&Bytes::from_static(b"data: [DONE]\n\n")).await,
            None
        );
    }
}
