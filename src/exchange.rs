//! What happened in one proxied chat completion, handed off the hot path.
//!
//! The proxy forwards bytes and keeps a reference-counted copy; a bounded
//! queue carries the finished [`Exchange`] to the capture writer
//! (`capture::run_writer`), which parses and stores it away from any
//! client. A full queue drops the record — counted and logged — rather
//! than slow a response. The queue is bounded twice: by exchanges
//! (`capture.queue_capacity`) and by the bytes they hold until stored
//! (`capture.queue_max_bytes`), so memory stays bounded when the bodies are
//! large, not only when they are many.

use crate::capture::{CaptureMeta, tokens};
use crate::config::QueueFullPolicy;
use crate::routing::Route;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc};

/// The most exchanges the writer takes from the queue before it stores
/// them; the queue wakes it once this many wait (see [`ExchangeSink`]).
pub const FULL_BATCH: usize = 512;

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

/// What the queue carries: an exchange and the bytes it holds of the
/// queue's budget.
pub type Queued = (Exchange, Room);

/// Bytes of request and answer held by exchanges handed to capture and not
/// yet stored (queued, parked, or prepared and waiting for the store):
/// each [`Room`] gives its bytes back when it drops.
#[derive(Clone)]
struct Budget {
    used: Arc<AtomicUsize>,
    max: usize,
}

impl Budget {
    /// Room for `bytes`, if that many are left.
    fn take(&self, bytes: usize) -> Option<Room> {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.max {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return None;
        }
        Some(Room {
            bytes,
            used: Some(self.used.clone()),
        })
    }
}

/// The bytes one exchange, or a batch of them, holds of capture's budget
/// while it lives.
#[derive(Debug, Default)]
pub struct Room {
    bytes: usize,
    used: Option<Arc<AtomicUsize>>,
}

impl Room {
    /// Holds `other`'s bytes too, so that a batch gives them back at once.
    pub fn absorb(&mut self, mut other: Room) {
        self.bytes += std::mem::take(&mut other.bytes);
        if self.used.is_none() {
            self.used = other.used.take();
        }
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if let Some(used) = &self.used {
            used.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

#[derive(Clone)]
pub struct ExchangeSink {
    tx: mpsc::Sender<Queued>,
    budget: Budget,
    in_flight: InFlight,
    policy: QueueFullPolicy,
    wait: Duration,
    /// With `wait`: room for as many parked exchanges as the queue holds;
    /// past that they are dropped, so memory stays bounded under overload.
    waiting_room: Arc<Semaphore>,
    /// Wakes the writer before its next tick once `wake_at` exchanges
    /// wait. The writer otherwise sleeps a whole flush interval, and at a
    /// few thousand requests a second the queue would fill past what its
    /// priority counts as a backlog (an eighth) between two ticks.
    batch_ready: Arc<Notify>,
    wake_at: usize,
}

impl ExchangeSink {
    /// A queue of `capacity` exchanges holding `max_bytes` of bodies at most.
    pub fn new(
        capacity: usize,
        max_bytes: usize,
        policy: QueueFullPolicy,
        wait: Duration,
    ) -> (Self, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(capacity);
        let waiting_room = Arc::new(Semaphore::new(capacity));
        (
            Self {
                tx,
                budget: Budget {
                    used: Arc::default(),
                    max: max_bytes,
                },
                in_flight: InFlight::default(),
                policy,
                wait,
                waiting_room,
                batch_ready: Arc::default(),
                wake_at: (capacity / 16).clamp(1, FULL_BATCH),
            },
            rx,
        )
    }

    /// Never blocks the caller: a full queue drops the exchange, or with the
    /// `wait` policy parks it in a task until there is room. An exchange
    /// capture leaves alone whose answer reports its usage is counted here
    /// and not queued: that count is all the writer would do with it, and
    /// queued, it would compete with captured exchanges for the queue,
    /// which at saturation dropped it uncounted.
    pub fn submit(&self, exchange: Exchange) {
        if !exchange.meta.enabled
            && let Some(counted) = tokens::reported(
                exchange.wire,
                exchange.streamed,
                exchange.outcome,
                &exchange.response,
            )
        {
            tokens::add(&exchange.route, counted);
            return;
        }
        self.in_flight.add();
        let drop_one = |reason| {
            self.in_flight.done(1);
            dropped(reason);
        };
        let Some(room) = self
            .budget
            .take(exchange.request.len() + exchange.response.len())
        else {
            return drop_one("the exchanges waiting hold capture.queue_max_bytes");
        };
        match self.tx.try_send((exchange, room)) {
            Ok(()) => {
                if waiting(&self.tx) >= self.wake_at {
                    self.batch_ready.notify_one();
                }
            }
            Err(mpsc::error::TrySendError::Full(queued))
                if self.policy == QueueFullPolicy::Wait =>
            {
                let Ok(seat) = self.waiting_room.clone().try_acquire_owned() else {
                    return drop_one("the queue and the waiting room are full");
                };
                let (tx, wait, in_flight) = (self.tx.clone(), self.wait, self.in_flight.clone());
                tokio::spawn(async move {
                    if tx.send_timeout(queued, wait).await.is_err() {
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

    /// Whether the writer has let go of the queue: at shutdown, or when a
    /// bug stopped it, after which nothing more is captured.
    pub fn writer_stopped(&self) -> bool {
        self.tx.is_closed()
    }

    /// The count of exchanges on their way to the store.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    /// Notified once a batch waits in the queue.
    pub fn batch_ready(&self) -> Arc<Notify> {
        self.batch_ready.clone()
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
pub struct QueueDepth(mpsc::WeakSender<Queued>);

impl QueueDepth {
    /// Exchanges waiting and the queue's capacity; `(0, 0)` once it is closed.
    pub fn get(&self) -> (usize, usize) {
        self.0
            .upgrade()
            .map_or((0, 0), |tx| (waiting(&tx), tx.max_capacity()))
    }
}

/// How many exchanges wait in the queue.
fn waiting(tx: &mpsc::Sender<Queued>) -> usize {
    tx.max_capacity() - tx.capacity()
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
        let (sink, mut rx) =
            ExchangeSink::new(4, 1 << 20, QueueFullPolicy::Drop, Duration::from_secs(1));
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
    async fn a_writer_stopped_by_a_panic_is_seen_and_nothing_more_queues() {
        let (sink, rx) =
            ExchangeSink::new(4, 1 << 20, QueueFullPolicy::Drop, Duration::from_secs(1));
        assert!(!sink.writer_stopped());
        #[allow(clippy::panic, reason = "the bug under test")]
        let writer = std::thread::spawn(move || {
            let _queue = rx;
            panic!("a bug in the writer");
        });
        assert!(writer.join().is_err());
        assert!(sink.writer_stopped());
        sink.submit(exchange(0));
        assert_eq!(sink.in_flight().count(), 0, "dropped and counted, not held");
    }

    #[tokio::test]
    async fn the_writer_is_woken_once_a_batch_waits_and_not_before() {
        use futures_util::FutureExt;
        // A sixteenth of the queue is a batch here.
        let (sink, mut rx) =
            ExchangeSink::new(64, 1 << 20, QueueFullPolicy::Drop, Duration::from_secs(1));
        let ready = sink.batch_ready();
        (0..3).for_each(|n| sink.submit(exchange(n)));
        assert!(ready.notified().now_or_never().is_none(), "3 of 4");
        sink.submit(exchange(3));
        assert!(ready.notified().now_or_never().is_some(), "a batch waits");
        assert!(ready.notified().now_or_never().is_none(), "woken once");
        while rx.try_recv().is_ok() {}
        sink.submit(exchange(4));
        assert!(ready.notified().now_or_never().is_none(), "taken, then 1");
    }

    #[tokio::test]
    async fn a_full_queue_drops_with_the_drop_policy() {
        let (sink, mut rx) =
            ExchangeSink::new(1, 1 << 20, QueueFullPolicy::Drop, Duration::from_secs(1));
        (0..3).for_each(|n| sink.submit(exchange(n)));
        drop(sink);
        let mut got = Vec::new();
        while let Some((e, _)) = rx.recv().await {
            got.push(e.inference_id);
        }
        assert_eq!(got, ["inf_0"]);
    }

    #[tokio::test]
    async fn a_full_queue_parks_as_many_exchanges_as_it_holds_with_the_wait_policy() {
        let (sink, mut rx) =
            ExchangeSink::new(2, 1 << 20, QueueFullPolicy::Wait, Duration::from_secs(5));
        // Two queued, two parked, the fifth dropped: memory stays bounded.
        (0..5).for_each(|n| sink.submit(exchange(n)));
        drop(sink);
        let mut got = Vec::new();
        while let Some((e, _)) = rx.recv().await {
            got.push(e.inference_id);
        }
        got.sort();
        assert_eq!(got, ["inf_0", "inf_1", "inf_2", "inf_3"]);
    }

    fn sized(n: usize, bytes: usize) -> Exchange {
        Exchange {
            request: Bytes::from(vec![b'x'; bytes / 2]),
            response: Bytes::from(vec![b'y'; bytes - bytes / 2]),
            ..exchange(n)
        }
    }

    #[tokio::test]
    async fn the_queue_holds_bytes_up_to_its_budget_until_they_are_stored() {
        let (sink, mut rx) =
            ExchangeSink::new(64, 1000, QueueFullPolicy::Drop, Duration::from_secs(1));
        // 400 + 400 fit; the third would pass 1000 and is dropped, as is
        // one larger than the whole budget.
        [(0, 400), (1, 400), (2, 400), (3, 1001)]
            .into_iter()
            .for_each(|(n, bytes)| sink.submit(sized(n, bytes)));
        let (first, room) = rx.recv().await.unwrap();
        assert_eq!(first.inference_id, "inf_0");
        // Taken by the writer but not stored: its bytes are still held.
        let mut batch = Room::default();
        batch.absorb(room);
        sink.submit(sized(4, 300));
        // Stored: the batch's bytes come back.
        drop(batch);
        sink.submit(sized(5, 500));
        drop(sink);
        let mut got = Vec::new();
        while let Some((e, _)) = rx.recv().await {
            got.push(e.inference_id);
        }
        assert_eq!(got, ["inf_1", "inf_5"]);
    }

    #[tokio::test]
    async fn parked_exchanges_hold_their_bytes_too() {
        let (sink, mut rx) =
            ExchangeSink::new(2, 1000, QueueFullPolicy::Wait, Duration::from_secs(5));
        // Two queued and one parked hold 900: the fourth finds a seat in
        // the waiting room but no bytes.
        (0..4).for_each(|n| sink.submit(sized(n, 300)));
        drop(sink);
        let mut got = Vec::new();
        while let Some((e, _)) = rx.recv().await {
            got.push(e.inference_id);
        }
        got.sort();
        assert_eq!(got, ["inf_0", "inf_1", "inf_2"]);
    }
}
