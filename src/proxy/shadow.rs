//! Shadow traffic: a copy of each live request of an alias (a chat
//! completion, or a Responses request that refers to nothing stored at
//! its provider) goes to its shadow versions in the background. Their answers are captured for
//! comparison and never returned; a shadow can neither slow nor fail the
//! live request — it runs on its own task, gets no retries, and when too
//! many shadow requests are already in flight the copy is skipped (and
//! counted) rather than queued.

use super::request::ChatRequest;
use crate::capture::CaptureMeta;
use crate::exchange::{Exchange, ExchangeSink, Outcome, Wire};
use crate::ids::new_id;
use crate::routing::Route;
use crate::upstream::{UpstreamRequest, Upstreams, headers};
use axum::http::HeaderMap;
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// Shadow requests in flight at once, over every alias.
const MAX_IN_FLIGHT: usize = 256;

pub struct Mirror {
    /// Where the copies are sent.
    upstreams: Arc<Upstreams>,
    /// Where their exchanges go to be captured.
    exchanges: ExchangeSink,
    slots: Arc<Semaphore>,
    /// Awaited at shutdown, so no shadow task outlives the server.
    tasks: TaskTracker,
}

impl Mirror {
    pub fn new(upstreams: Arc<Upstreams>, exchanges: ExchangeSink) -> Self {
        Self {
            upstreams,
            exchanges,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            tasks: TaskTracker::new(),
        }
    }

    /// Sends a copy of the live request to each shadow route.
    pub fn send(
        &self,
        shadows: Vec<Route>,
        request: &ChatRequest,
        body: &Bytes,
        request_headers: &HeaderMap,
        live_inference: &str,
        meta: &CaptureMeta,
    ) {
        for route in shadows {
            let Ok(seat) = self.slots.clone().try_acquire_owned() else {
                metrics::counter!("flywheel_shadow_skipped_total").increment(1);
                continue;
            };
            let copy = Copy {
                body: request.body_for(body, &route.upstream_model),
                original: body.clone(),
                wire: request.wire,
                streamed: request.stream,
                headers: headers::outgoing(request_headers, false, false),
                meta: CaptureMeta {
                    shadow_of: Some(live_inference.to_string()),
                    ..meta.clone()
                },
                route,
            };
            let (upstreams, exchanges) = (self.upstreams.clone(), self.exchanges.clone());
            self.tasks.spawn(async move {
                copy.run(&upstreams, &exchanges).await;
                drop(seat);
            });
        }
    }

    /// Waits for the shadow requests in flight.
    pub async fn drain(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

struct Copy {
    route: Route,
    body: Bytes,
    /// The client's body, as the record of the exchange keeps it.
    original: Bytes,
    wire: Wire,
    streamed: bool,
    headers: HeaderMap,
    meta: CaptureMeta,
}

impl Copy {
    async fn run(self, upstreams: &Upstreams, exchanges: &ExchangeSink) {
        let Some(provider) = upstreams.get(self.route.provider) else {
            return;
        };
        let started = Instant::now();
        let deadline = started + provider.total_timeout;
        let (headers, body) = (self.headers.clone(), self.body.clone());
        let request = match self.wire {
            Wire::Chat => UpstreamRequest::chat(headers, body, None),
            Wire::Responses => UpstreamRequest::responses(headers, body, None),
        }
        .for_model(&self.route.upstream_model);
        let (outcome, status, response, first_byte) =
            match provider.send_retrying(request, deadline, 0).await {
                Ok(reply) => {
                    let first_byte = started.elapsed();
                    let whole = reply.collect(deadline).await;
                    let outcome = match whole.cut {
                        Some(_) => Outcome::Partial,
                        None => Outcome::Ok,
                    };
                    (outcome, whole.status.as_u16(), whole.body, Some(first_byte))
                }
                Err(error) => (
                    Outcome::UpstreamError,
                    error.status().as_u16(),
                    crate::openai::error_json(&error.body()),
                    None,
                ),
            };
        metrics::counter!("flywheel_shadow_requests_total",
            "version" => self.route.version.as_deref().unwrap_or("").to_string(),
            "outcome" => outcome.as_str())
        .increment(1);
        exchanges.submit(Exchange {
            inference_id: new_id("inf"),
            caller_id: Arc::from("shadow"),
            route: self.route,
            wire: self.wire,
            streamed: self.streamed,
            request: self.original,
            response,
            outcome,
            status,
            first_byte,
            total: started.elapsed(),
            meta: self.meta,
        });
    }
}
