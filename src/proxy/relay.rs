//! Relaying a streamed reply: every upstream chunk goes to the client the
//! moment it arrives (chunks that arrive together, in one write: [`burst`]),
//! a copy is kept for the exchange record, and a failure after the 200 ends
//! the stream with an SSE error event.

use super::thread::TurnThreading;
use crate::capture::CaptureMeta;
use crate::exchange::{Exchange, ExchangeSink, Outcome, Wire};
use crate::openai::{ApiError, sse};
use crate::routing::Route;
use crate::upstream::{BodyStream, Reply, headers};
use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, timeout_at};

mod burst;

/// An exchange under way; finishing it hands the record to the sink.
pub struct Pending {
    pub inference_id: String,
    pub caller_id: Arc<str>,
    pub route: Route,
    pub wire: Wire,
    pub streamed: bool,
    pub request: Bytes,
    pub started: Instant,
    pub sink: ExchangeSink,
    pub meta: CaptureMeta,
    /// Set when the exchange is captured: registers the turn for its
    /// follow-up as it completes.
    pub threading: Option<TurnThreading>,
}

impl Pending {
    pub fn finish(
        mut self,
        outcome: Outcome,
        status: u16,
        response: Bytes,
        first_byte: Option<Duration>,
    ) {
        let total = self.started.elapsed();
        if let Some(threading) = self.threading.take() {
            let answered = (outcome == Outcome::Ok && (200..300).contains(&status))
                .then_some((&response[..], self.streamed));
            self.meta.continuations = threading.complete(
                &self.meta.conversation_id,
                &self.inference_id,
                self.meta.sticky.as_deref(),
                answered,
            );
        }
        self.sink.submit(Exchange {
            inference_id: self.inference_id,
            caller_id: self.caller_id,
            route: self.route,
            wire: self.wire,
            streamed: self.streamed,
            request: self.request,
            response,
            outcome,
            status,
            first_byte,
            total,
            meta: self.meta,
        });
    }

    /// An exchange that ended before anything reached the client.
    pub fn finish_failed(self, error: &ApiError) {
        let body = crate::openai::error_json(&error.body());
        self.finish(Outcome::UpstreamError, error.status().as_u16(), body, None);
    }
}

struct Relay {
    first: Option<Bytes>,
    rest: BodyStream,
    deadline: Instant,
    boundary: sse::Boundary,
    /// The stream as relayed, for capture: at most `max_copy` bytes.
    copy: BytesMut,
    max_copy: usize,
    /// The stream passed `max_copy`: capture keeps its beginning only.
    copy_cut: bool,
    status: u16,
    first_byte: Duration,
    /// Taken when the exchange is finished; still here on drop means the
    /// client went away first.
    pending: Option<Pending>,
    /// Set once nothing more may be sent (the upstream ended, or an error
    /// event went out). Not set by `[DONE]`: the upstream body is still
    /// read to its end, so its connection goes back to the pool.
    ended: bool,
    provider: Arc<str>,
    timeout_s: u64,
}

impl Relay {
    fn forward(&mut self, chunk: Bytes) -> Bytes {
        self.boundary.observe(&chunk);
        self.keep(&chunk);
        // The stream is complete with its `[DONE]` event: hand the
        // exchange to capture before the client can read it and send the
        // next turn, which then finds this one threaded.
        let wire = self.pending.as_ref().map(|p| p.wire);
        if wire.is_some_and(|wire| completes(wire, &chunk, &self.copy)) {
            self.finish(Outcome::Ok);
        }
        chunk
    }

    /// Adds `chunk` to the copy for capture while it stays within the
    /// provider's `max_answer_bytes`: a stream is relayed whole however
    /// long, but what it holds in memory is bounded.
    fn keep(&mut self, chunk: &[u8]) {
        if self.copy_cut {
            return;
        }
        if self.copy.len() + chunk.len() <= self.max_copy {
            self.copy.extend_from_slice(chunk);
            return;
        }
        self.copy_cut = true;
        metrics::counter!("flywheel_capture_incomplete_total").increment(1);
        tracing::warn!(provider = %self.provider, limit = self.max_copy,
            "a stream passed the provider's max_answer_bytes: relayed whole, captured in part");
    }

    fn finish(&mut self, outcome: Outcome) {
        // What capture has of a stream it could not keep whole is partial.
        let outcome = if self.copy_cut {
            Outcome::Partial
        } else {
            outcome
        };
        if let Some(p) = self.pending.take() {
            let copy = std::mem::take(&mut self.copy).freeze();
            p.finish(outcome, self.status, copy, Some(self.first_byte));
        }
    }

    /// The bytes that end a stream that failed after it began.
    fn fail(&mut self, error: ApiError) -> Bytes {
        tracing::warn!(provider = %self.provider, error = %error, "stream failed after it began");
        metrics::counter!("flywheel_upstream_errors_total", "provider" => self.provider.to_string(), "kind" => "mid_stream")
            .increment(1);
        let event = sse::error_event(&self.boundary, &error.body());
        let event = self.forward(event);
        self.finish(Outcome::Partial);
        self.ended = true;
        event
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        metrics::gauge!("flywheel_streams_in_flight").decrement(1.0);
        if self.pending.is_some() {
            metrics::counter!("flywheel_streams_cancelled_total").increment(1);
            self.finish(Outcome::ClientCancelled);
        }
    }
}

/// The streaming response. Dropping it (the client left) drops the upstream
/// body, which closes the upstream connection at once.
pub fn relay_stream(
    reply: Reply,
    pending: Pending,
    deadline: Instant,
    provider: Arc<str>,
) -> Response {
    metrics::gauge!("flywheel_streams_in_flight").increment(1.0);
    let mut out_headers = headers::relayed(&reply.headers, false);
    out_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells a buffering reverse proxy in front of Flywheel to pass events on.
    out_headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    let relay = Relay {
        first: reply.first,
        rest: reply.rest,
        deadline,
        boundary: sse::Boundary::default(),
        copy: BytesMut::new(),
        max_copy: reply.max_bytes,
        copy_cut: false,
        status: reply.status.as_u16(),
        first_byte: pending.started.elapsed(),
        timeout_s: deadline
            .saturating_duration_since(pending.started)
            .as_secs(),
        provider,
        pending: Some(pending),
        ended: false,
    };
    let stream = Box::pin(futures_util::stream::unfold(relay, next_chunk));
    let mut response = Response::new(Body::from_stream(burst::Bursts::new(stream)));
    *response.status_mut() = reply.status;
    *response.headers_mut() = out_headers;
    response
}

async fn next_chunk(mut relay: Relay) -> Option<(Result<Bytes, std::io::Error>, Relay)> {
    if relay.ended {
        return None;
    }
    if let Some(first) = relay.first.take() {
        let chunk = relay.forward(first);
        return Some((Ok(chunk), relay));
    }
    let next = timeout_at(relay.deadline, relay.rest.next()).await;
    // After `[DONE]` the client has the whole answer: whatever the
    // upstream does with the rest of its body is no failure of the stream.
    if relay.pending.is_none() && !matches!(next, Ok(Some(Ok(_)))) {
        relay.ended = true;
        return None;
    }
    match next {
        Ok(Some(Ok(chunk))) => {
            let chunk = relay.forward(chunk);
            Some((Ok(chunk), relay))
        }
        Ok(None) => {
            relay.finish(Outcome::Ok);
            relay.ended = true;
            None
        }
        Ok(Some(Err(e))) => {
            let error = ApiError::UpstreamUnreachable {
                provider: relay.provider.to_string(),
                detail: format!("the stream broke off: {e}"),
            };
            let event = relay.fail(error);
            Some((Ok(event), relay))
        }
        Err(_) => {
            let error = ApiError::UpstreamTimeout {
                provider: relay.provider.to_string(),
                phase: "streaming the response",
                seconds: relay.timeout_s,
            };
            let event = relay.fail(error);
            Some((Ok(event), relay))
        }
    }
}

/// Whether the stream is complete with `chunk`: chat's `[DONE]` event, or
/// an event that ends the response (`so_far`, the whole stream, names it).
pub(crate) fn completes(wire: Wire, chunk: &[u8], so_far: &[u8]) -> bool {
    match wire {
        // The stream so far too: the upstream's chunks may split the event.
        Wire::Chat => ends_with_done(chunk) || ends_with_done(so_far),
        Wire::Responses => ends_with_final_event(so_far),
    }
}

/// Whether a chunk ends with the `data: [DONE]` event.
fn ends_with_done(chunk: &[u8]) -> bool {
    let end = chunk
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    chunk[..end].ends_with(b"data: [DONE]") || chunk[..end].ends_with(b"data:[DONE]")
}

/// Whether the stream so far ends with a Responses-API event that ends the
/// response (`response.completed`, `.incomplete` or `.failed`), named on
/// its `event:` line.
fn ends_with_final_event(stream: &[u8]) -> bool {
    let Some(body) = stream
        .strip_suffix(b"\n\n")
        .or_else(|| stream.strip_suffix(b"\r\n\r\n"))
    else {
        return false;
    };
    let start = body
        .windows(2)
        .rposition(|w| w == b"\n\n")
        .map_or(0, |i| i + 2);
    let event = body[start..].trim_ascii_start();
    [
        &b"event: response.completed"[..],
        b"event: response.incomplete",
        b"event: response.failed",
    ]
    .iter()
    .any(|name| {
        event
            .strip_prefix(*name)
            .is_some_and(|rest| rest.first().is_some_and(|b| matches!(b, b'\n' | b'\r')))
    })
}

#[cfg(test)]
mod tests {
    use super::{completes, ends_with_final_event};
    use crate::exchange::Wire;

    #[test]
    fn a_chat_stream_completes_at_its_done_wherever_the_upstream_split_it() {
        let stream = "data: {\"choices\":[]}\n\ndata: [DONE]\n\n";
        let done_at = stream
            .find("data: [DONE]")
            .map_or(0, |i| i + "data: [DONE]".len());
        for cut in 1..stream.len() {
            let (first, second) = stream.split_at(cut);
            let at_first = completes(Wire::Chat, first.as_bytes(), first.as_bytes());
            assert_eq!(at_first, cut >= done_at, "cut at {cut}");
            if !at_first {
                assert!(
                    completes(Wire::Chat, second.as_bytes(), stream.as_bytes()),
                    "cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn a_responses_stream_ends_with_its_final_event_only() {
        let delta = "event: response.output_text.delta\ndata: {\"delta\":\"event: response.completed\"}\n\n";
        let done = "event: response.completed\ndata: {\"type\":\"response.completed\"}\n\n";
        assert!(!ends_with_final_event(delta.as_bytes()));
        assert!(ends_with_final_event([delta, done].concat().as_bytes()));
        // Half an event is not the end yet.
        assert!(!ends_with_final_event(
            [delta, &done[..done.len() - 1]].concat().as_bytes()
        ));
        assert!(!ends_with_final_event(
            b"event: response.completed_not\ndata: {}\n\n"
        ));
    }
}
