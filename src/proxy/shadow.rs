//! Shadow traffic: a copy of each live request of an alias (a chat
//! completion, or a Responses request that refers to nothing stored at
//! its provider, sent with `store: false`) goes to its shadow versions in
//! the background. Their answers are captured for
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

/// A Responses copy asks its provider not to store the answer: nothing
/// can name a shadow's response later (it is never returned), so storing
/// it would only leave the alert with one more provider. A body that is
/// not an object goes as it came, for the provider to refuse.
fn unstored(body: &Bytes) -> Bytes {
    let Ok(mut fields) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
    else {
        return body.clone();
    };
    fields.insert("store".into(), serde_json::Value::Bool(false));
    serde_json::to_vec(&fields).map_or_else(|_| body.clone(), Bytes::from)
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
        let headers = self.headers.clone();
        let request = match self.wire {
            Wire::Chat => UpstreamRequest::chat(headers, self.body.clone(), None),
            Wire::Responses => UpstreamRequest::responses(headers, unstored(&self.body), None),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_responses_copy_is_not_stored_whatever_the_client_asked() {
        for body in [
            r#"{"model":"m","input":"alert"}"#,
            r#"{"model":"m","input":"alert","store":true}"#,
        ] {
            let sent: serde_json::Value =
                serde_json::from_slice(&unstored(&Bytes::from(body))).unwrap();
            assert_eq!(sent["store"], false, "{body}");
            assert_eq!(sent["input"], "alert");
        }
        let odd = Bytes::from_static(b"[1]");
        assert_eq!(unstored(&odd), odd);
    }
}
