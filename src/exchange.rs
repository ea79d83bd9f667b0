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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

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

/// Which OpenAI route the exchange came through: its request and answer
/// are read in that route's shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Wire {
    /// `POST /v1/chat/completions`.
    #[default]
    Chat,
    /// `POST /v1/responses`: captured as the chat turn it amounts to.
    Responses,
}

#[derive(Debug)]
pub struct Exchange {
    pub inference_id: String,
    pub caller_id: Arc<str>,
    pub route: Route,
    pub wire: Wire,
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

/// How many exchanges handed to capture are not durably stored yet (nor
/// dropped): feedback on one of those, or a dataset built right after a
/// review, waits for them. A lock-free counter.
#[derive(Clone, Default)]
pub struct InFlight(Arc<AtomicU64>);

impl InFlight {
    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` exchanges were stored, or will never be.
    pub fn done(&self, n: usize) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n as u64))
            });
    }

    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Waits until every exchange handed over so far is stored (or
    /// `within` passes): what was answered before is then all readable.
    pub async fn settled(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[derive(Clone)]
pub struct ExchangeSink {
    tx: mpsc::Sender<Exchange>,
    in_flight: InFlight,
    policy: QueueFullPolicy,
    wait: Duration,
    /// With `wait`: room for as many parked exchanges as the queue holds;
    /// past that they are dropped, so memory stays bounded under overload.
    waiting_room: Arc<Semaphore>,
}

impl ExchangeSink {
    pub fn new(
        capacity: usize,
        policy: QueueFullPolicy,
        wait: Duration,
    ) -> (Self, mpsc::Receiver<Exchange>) {
        let (tx, rx) = mpsc::channel(capacity);
        let waiting_room = Arc::new(Semaphore::new(capacity));
        (
            Self {
                tx,
                in_flight: InFlight::default(),
                policy,
                wait,
                waiting_room,
            },
            rx,
        )
    }

    /// Never blocks the caller: a full queue drops the exchange, or with the
    /// `wait` policy parks it in a task until there is room.
    pub fn submit(&self, exchange: Exchange) {
        self.in_flight.add();
        let drop_one = |reason| {
            self.in_flight.done(1);
            dropped(reason);
        };
        match self.tx.try_send(exchange) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(exchange))
                if self.policy == QueueFullPolicy::Wait =>
            {
                let Ok(seat) = self.waiting_room.clone().try_acquire_owned() else {
                    return drop_one("the queue and the waiting room are full");
                };
                let (tx, wait, in_flight) = (self.tx.clone(), self.wait, self.in_flight.clone());
                tokio::spawn(async move {
                    if tx.send_timeout(exchange, wait).await.is_err() {
                        in_flight.done(1);
                        dropped("the queue stayed full");
                    }
                    drop(seat);
                });
            }
            Err(mpsc::error::TrySendError::Full(_)) => drop_one("the queue is full"),
            Err(mpsc::error::TrySendError::Closed(_)) => drop_one("the writer has stopped"),
        }
    }

    /// The count of exchanges on their way to the store.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    /// How full the queue is, for whoever watches the writer.
    pub fn depth(&self) -> QueueDepth {
        QueueDepth(self.tx.downgrade())
    }
}

/// How many exchanges wait in the queue, read from the sending side: the
/// writer's watchdog reads it while the writer itself may not get to run.
/// It does not keep the queue open.
#[derive(Clone)]
pub struct QueueDepth(mpsc::WeakSender<Exchange>);

impl QueueDepth {
    /// Exchanges waiting and the queue's capacity; `(0, 0)` once it is closed.
    pub fn get(&self) -> (usize, usize) {
        self.0.upgrade().map_or((0, 0), |tx| {
            (tx.max_capacity() - tx.capacity(), tx.max_capacity())
        })
    }
}

/// Counts every drop; logs at most once a second (with how many went
/// since the last line), so an overload does not also flood the log.
fn dropped(reason: &'static str) {
    static LAST_LOG_S: AtomicU64 = AtomicU64::new(0);
    static UNLOGGED: AtomicU64 = AtomicU64::new(0);
    metrics::counter!("flywheel_exchange_dropped_total").increment(1);
    UNLOGGED.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_LOG_S.load(Ordering::Relaxed);
    if now > last
        && LAST_LOG_S
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let count = UNLOGGED.swap(0, Ordering::Relaxed);
        tracing::warn!(reason, count, "exchanges dropped before capture");
    }
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
                candidate: false,
            },
            wire: Wire::Chat,
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
    async fn the_depth_counts_what_waits_and_does_not_keep_the_queue_open() {
        let (sink, mut rx) = ExchangeSink::new(4, QueueFullPolicy::Drop, Duration::from_secs(1));
        let depth = sink.depth();
        assert_eq!(depth.get(), (0, 4));
        (0..3).for_each(|n| sink.submit(exchange(n)));
        assert_eq!(depth.get(), (3, 4));
        assert!(rx.recv().await.is_some());
        assert_eq!(depth.get(), (2, 4));
        drop(sink);
        assert_eq!(depth.get(), (0, 0));
        assert!(rx.recv().await.is_some() && rx.recv().await.is_some());
        assert!(rx.recv().await.is_none(), "closed once the sink is gone");
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
    async fn a_full_queue_parks_as_many_exchanges_as_it_holds_with_the_wait_policy() {
        let (sink, mut rx) = ExchangeSink::new(2, QueueFullPolicy::Wait, Duration::from_secs(5));
        // Two queued, two parked, the fifth dropped: memory stays bounded.
        (0..5).for_each(|n| sink.submit(exchange(n)));
        drop(sink);
        let mut got = Vec::new();
        while let Some(e) = rx.recv().await {
            got.push(e.inference_id);
        }
        got.sort();
        assert_eq!(got, ["inf_0", "inf_1", "inf_2", "inf_3"]);
    }
}
