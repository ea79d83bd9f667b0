//! The capture writer: drains the exchange queue, turns each exchange into
//! an inference record (redacted) and stores them in batches: every
//! `capture.flush_every_ms`, and as soon as a full batch waits in the
//! queue. Each batch: every record's turn in its conversation,
//! then the records, then a flush. On shutdown it drains the queue first.
//!
//! A batch the store refuses (a full disk, any I/O error) is kept and
//! retried with backoff until the store takes it; every step is
//! idempotent, so a retry never counts or threads a record twice. While
//! a batch waits, the writer keeps taking exchanges up to the queue's
//! capacity, then stops, and the full queue drops and counts the rest.
//!
//! It runs on a thread of its own, by default at background priority
//! (`SCHED_IDLE` on Linux): parsing, redaction and store writes then only
//! use CPU the request path leaves over, and it yields every 100 µs there
//! (see [`Pacer`]). Threading does not depend on it:
//! a follow-up turn finds its predecessor in [`super::RecentThreads`].
//!
//! A bug that stops the writer (an exchange it cannot read is only lost
//! on its own) lets go of the queue, which then drops and counts, and
//! `/healthz` fails so that a supervisor restarts the process.

use super::background::{BACKGROUND_TASK, ORIGIN_TAG};
use super::priority::Priority;
use super::record::read_content;
use super::tokens::{self, Tokens};
use super::{BackgroundTasks, Redactor, build_record};
use crate::config::WriterPriority;
use crate::exchange::{Exchange, FULL_BATCH, InFlight, QueueDepth, Queued, Room};
use crate::ids::now_rfc3339;
use crate::store::{CapturedTurn, SharedStore, StoreError};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The longest wait between two attempts at a batch the store refused.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// At shutdown, how long a refused batch is still retried.
const LAST_TRIES: Duration = Duration::from_secs(3);
/// The longest the writer computes before it gives the CPU back.
const SLICE: Duration = Duration::from_micros(100);

/// What the writer needs, given once at start.
pub struct WriterSetup {
    pub store: SharedStore,
    pub redactor: Arc<Redactor>,
    pub in_flight: InFlight,
    pub flush_every: Duration,
    pub priority: WriterPriority,
    /// Records held at most while the store refuses them.
    pub max_pending: usize,
    /// Recognises chat apps' housekeeping requests, to tag them.
    pub background: Arc<BackgroundTasks>,
    /// The queue's depth, for the watchdog of the writer's priority.
    pub queue: QueueDepth,
    /// Notified when a full batch waits: the writer need not wait for
    /// its tick.
    pub batch_ready: Arc<tokio::sync::Notify>,
}

/// Starts the writer on its own thread; the future completes once it has
/// drained the queue and stopped.
pub fn start_writer(
    setup: WriterSetup,
    rx: mpsc::Receiver<Queued>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> {
    let (stopped, on_stop) = tokio::sync::oneshot::channel::<()>();
    let priority = Priority::new(setup.priority);
    let writer_priority = priority.clone();
    let flush_every = setup.flush_every.max(Duration::from_millis(1));
    let queue = setup.queue.clone();
    let spawned = std::thread::Builder::new()
        .name("flywheel-capture".into())
        .spawn(move || {
            writer_priority.enter();
            match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(runtime) => {
                    let writer = Writer::new(setup, writer_priority);
                    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        runtime.block_on(writer.run(rx, flush_every, shutdown));
                    }));
                    if ran.is_err() {
                        tracing::error!(
                            "the capture writer stopped on a bug; nothing more is captured until Flywheel restarts, and /healthz answers 503 meanwhile"
                        );
                    }
                }
                Err(e) => tracing::error!(error = %e, "the capture writer could not start; nothing will be captured"),
            }
            drop(stopped);
        });
    async move {
        match spawned {
            Ok(_) => {
                priority
                    .watch(flush_every, move || queue.get(), async {
                        let _ = on_stop.await;
                    })
                    .await;
            }
            Err(e) => {
                tracing::error!(error = %e, "the capture writer thread could not start; nothing will be captured")
            }
        }
    }
}

/// The writer's state: records taken from the queue and not yet durably
/// stored, and how the store has been answering.
struct Writer {
    store: SharedStore,
    redactor: Arc<Redactor>,
    background: Arc<BackgroundTasks>,
    in_flight: InFlight,
    max_pending: usize,
    /// Taken from the queue, not durably stored yet.
    held: Vec<CapturedTurn>,
    /// The bytes the held records' exchanges hold of the queue's budget.
    held_room: Room,
    failures: Failures,
    priority: Arc<Priority>,
    pacer: Pacer,
    batch_ready: Arc<tokio::sync::Notify>,
}

/// In the background, gives the CPU back at least every [`SLICE`] of the
/// writer's work.
///
/// At background priority the writer should be preempted the moment a
/// request thread wakes, but not every kernel does so at once: on the
/// benchmark machine (Linux 6.18 in a KVM guest) a request thread woken
/// while the writer computed waited for the writer's next system call or
/// the next timer tick, up to 4 ms. A yield is such a call, and costs
/// well under a microsecond when nothing else waits. At normal priority
/// (catching up on a backlog) the writer does not yield: it must get its
/// fair share of the CPU, or the queue fills and drops.
struct Pacer(Instant);

impl Pacer {
    fn pause_if_due(&mut self, priority: &Priority) {
        if self.0.elapsed() >= SLICE && priority.in_background() {
            std::thread::yield_now();
            self.0 = Instant::now();
        }
    }
}

/// The store's refusals since it last took a batch.
#[derive(Default)]
struct Failures {
    count: u32,
    next_try: Option<Instant>,
    last_logged: Option<Instant>,
}

impl Failures {
    fn may_try(&self) -> bool {
        self.next_try.is_none_or(|t| Instant::now() >= t)
    }

    fn failed(&mut self, error: &StoreError, count: usize) {
        self.count += 1;
        metrics::counter!("flywheel_capture_retries_total").increment(1);
        let backoff = Duration::from_millis(100 * 2u64.saturating_pow(self.count.min(16)));
        self.next_try = Some(Instant::now() + backoff.min(MAX_BACKOFF));
        // Once when it starts, then every half minute: a full disk must not
        // also flood the log.
        if self
            .last_logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
        {
            self.last_logged = Some(Instant::now());
            tracing::error!(error = %error, held = count, attempts = self.count,
                "the store refuses captured records; they are kept and retried");
        }
    }

    fn recovered(&mut self) {
        if self.count > 0 {
            tracing::info!(
                attempts = self.count,
                "the store takes captured records again"
            );
        }
        *self = Self::default();
    }
}

impl Writer {
    fn new(setup: WriterSetup, priority: Arc<Priority>) -> Self {
        Self {
            store: setup.store,
            redactor: setup.redactor,
            background: setup.background,
            in_flight: setup.in_flight,
            max_pending: setup.max_pending.max(FULL_BATCH),
            held: Vec::new(),
            held_room: Room::default(),
            failures: Failures::default(),
            priority,
            pacer: Pacer(Instant::now()),
            batch_ready: setup.batch_ready,
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Queued>,
        flush_every: Duration,
        shutdown: CancellationToken,
    ) {
        let capacity = rx.max_capacity();
        // The first tick a whole interval after start, not at once: a
        // writer thread that starts late (it runs in the background) would
        // otherwise take the first exchanges of a batch alone, leaving the
        // rest short of the batch that wakes it until the tick.
        let first = tokio::time::Instant::now() + flush_every;
        let mut tick = tokio::time::interval_at(first, flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The writer wakes once per tick, or once a full batch waits, and
        // takes what queued meanwhile, not once per exchange: a wake-up per
        // request cost more CPU than storing the request. A queue still
        // filling faster than the writer drains it is taken again at once.
        'running: loop {
            let can_take = self.held.len() < self.max_pending;
            // A refused batch is tried again when its backoff ends, not
            // only at the next tick: `flush_every_ms` may be minutes.
            let retry = self.failures.next_try.filter(|_| !self.held.is_empty());
            tokio::select! {
                _ = tick.tick() => {}
                () = self.batch_ready.notified(), if can_take => {}
                () = until(retry), if retry.is_some() => {}
                () = shutdown.cancelled() => break,
            }
            loop {
                self.priority.follow(rx.len(), capacity);
                let (taken, open) = self.drain(&mut rx);
                if self.failures.may_try() {
                    self.write();
                }
                if !open {
                    break 'running;
                }
                if taken < FULL_BATCH || self.held.len() >= self.max_pending {
                    break;
                }
            }
            // Caught up: back to the background if the queue is nearly empty.
            self.priority.follow(rx.len(), capacity);
        }
        rx.close();
        while let Some((exchange, room)) = rx.recv().await {
            self.take(exchange, room);
        }
        self.write_before_stopping().await;
    }

    /// Takes what the queue holds, up to a batch and within the room left
    /// for held records, writing each full batch; says how many it took
    /// and whether the queue is still open.
    fn drain(&mut self, rx: &mut mpsc::Receiver<Queued>) -> (usize, bool) {
        let mut taken = 0;
        while taken < FULL_BATCH && self.held.len() < self.max_pending {
            match rx.try_recv() {
                Ok((exchange, room)) => {
                    self.take(exchange, room);
                    self.pacer.pause_if_due(&self.priority);
                    taken += 1;
                }
                Err(mpsc::error::TryRecvError::Empty) => return (taken, true),
                Err(mpsc::error::TryRecvError::Disconnected) => return (taken, false),
            }
        }
        (taken, true)
    }

    /// Adds the exchange's record to the batch, which holds its bytes of
    /// the queue's budget until stored; one that is not captured is done
    /// with at once, as is one capture could not read.
    fn take(&mut self, exchange: Exchange, room: Room) {
        let inference_id = exchange.inference_id.clone();
        let prepared = unless_it_panics(&inference_id, || {
            prepare(exchange, &self.redactor, &self.background)
        });
        match prepared {
            Some(turn) => {
                self.held.push(turn);
                self.held_room.absorb(room);
            }
            None => self.in_flight.done(1),
        }
    }

    /// Stores what is held; on failure keeps it for the next attempt.
    fn write(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let stored = self
            .store
            .store_captured(&mut self.held)
            .and_then(|()| self.store.flush());
        match stored {
            Ok(()) => {
                let count = self.held.len();
                metrics::counter!("flywheel_captured_total").increment(count as u64);
                self.in_flight.done(count);
                self.held.clear();
                self.held_room = Room::default();
                self.failures.recovered();
            }
            Err(e) => self.failures.failed(&e, self.held.len()),
        }
    }

    /// At shutdown: a few more attempts, then what is still refused is
    /// counted as lost.
    async fn write_before_stopping(&mut self) {
        let deadline = Instant::now() + LAST_TRIES;
        self.failures.next_try = None;
        loop {
            self.write();
            if self.held.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !self.held.is_empty() {
            let count = self.held.len();
            metrics::counter!("flywheel_capture_lost_total").increment(count as u64);
            tracing::error!(
                count,
                "captured records the store refused until shutdown are lost"
            );
            self.in_flight.done(count);
        }
    }
}

/// Sleeps until `at`, if any.
async fn until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

/// What `prepare` gives, or `None` when it panicked on an exchange's
/// bytes (a bug): that exchange is lost alone, logged by id and counted,
/// and the writer, and with it capture, carries on.
fn unless_it_panics<T>(inference_id: &str, prepare: impl FnOnce() -> Option<T>) -> Option<T> {
    std::panic::catch_unwind(AssertUnwindSafe(prepare)).unwrap_or_else(|_| {
        tracing::error!(%inference_id, "capture could not read this exchange (a bug in Flywheel): it is not stored");
        metrics::counter!("flywheel_capture_failed_total").increment(1);
        None
    })
}

/// The turn to store for one exchange, redacted; `None` when capture is
/// off for it (its tokens are still counted).
pub(crate) fn prepare(
    mut exchange: Exchange,
    redactor: &Redactor,
    background: &BackgroundTasks,
) -> Option<CapturedTurn> {
    if !exchange.meta.enabled {
        tokens::add(&exchange.route, uncaptured_tokens(&exchange));
        return None;
    }
    let route = exchange.route.clone();
    let parent_id = exchange.meta.parent_id.take();
    let continuations = std::mem::take(&mut exchange.meta.continuations);
    let mut record = build_record(exchange, now_rfc3339());
    if background.matches(&record.request["messages"]) {
        record
            .tags
            .insert(ORIGIN_TAG.to_string(), BACKGROUND_TASK.to_string());
    }
    tokens::add(&route, tokens::of_record(&record.response));
    // Nothing reaches the store before redaction.
    redactor.redact_value(&mut record.request);
    redactor.redact_value(&mut record.response);
    let preview = record.preview();
    let signals = crate::curation::turn_signals(&record);
    let tally = crate::experiment::tally::of_inference(&record);
    let inference_id = record.id.clone();
    let mut turn = CapturedTurn::new(record)
        .inspect_err(|error| {
            tracing::error!(%inference_id, %error, "capture could not write this record out: it is not stored");
            metrics::counter!("flywheel_capture_failed_total").increment(1);
        })
        .ok()?;
    (turn.parent_id, turn.continuations) = (parent_id, continuations);
    (turn.preview, turn.signals, turn.tally) = (preview, signals, tally);
    Some(turn)
}

/// The tokens of an exchange that is not captured: what its answer
/// reports, else what its record would count (an estimate, for an answer
/// without usage). The queue counts what the answer reports instead of
/// queueing it (`ExchangeSink::submit`), so what reaches the writer is
/// mostly the rest; one rule for both keeps their counts alike.
fn uncaptured_tokens(exchange: &Exchange) -> Tokens {
    tokens::reported(
        exchange.wire,
        exchange.streamed,
        exchange.outcome,
        &exchange.response,
    )
    .unwrap_or_else(|| tokens::of_record(&read_content(exchange).response))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::Outcome;
    use crate::routing::Route;
    use bytes::Bytes;
    use std::time::Instant;

    /// A finished unary chat exchange of these bodies; its meta leaves
    /// it uncaptured.
    fn unary(request: &str, response: &str) -> Exchange {
        Exchange {
            inference_id: crate::ids::new_id("inf"),
            caller_id: "key_1".into(),
            route: Route {
                alias: Some("triage".into()),
                version: Some("base".into()),
                provider: 0,
                upstream_model: "gpt-4o-mini".into(),
                candidate: false,
            },
            wire: crate::exchange::Wire::Chat,
            streamed: false,
            request: Bytes::from(request.to_string()),
            response: Bytes::from(response.to_string()),
            outcome: Outcome::Ok,
            status: 200,
            first_byte: None,
            total: std::time::Duration::from_millis(9),
            meta: crate::capture::CaptureMeta::default(),
        }
    }

    #[test]
    fn an_exchange_capture_cannot_read_is_lost_alone() {
        #[allow(clippy::panic, reason = "the bug under test")]
        let broken = || -> Option<u8> { panic!("a bug") };
        assert_eq!(unless_it_panics("inf_1", broken), None);
        assert_eq!(unless_it_panics("inf_2", || Some(7)), Some(7));
        assert_eq!(unless_it_panics("inf_3", || None::<u8>), None);
    }

    #[test]
    fn an_uncaptured_exchange_counts_the_tokens_its_record_would() {
        let request = r#"{"model": "triage", "messages": [{"role": "user", "content": "Classify: powershell -enc on WS-1"}]}"#;
        let answer = |usage: &str| {
            format!(
                r#"{{"id": "chatcmpl-1", "choices": [{{"index": 0, "message": {{"role": "assistant", "content": "Threat type: execution"}}, "finish_reason": "stop"}}]{usage}}}"#
            )
        };
        let mut cases: Vec<(&str, Exchange)> = [
            ("usage", r#", "usage": {"prompt_tokens": 118, "completion_tokens": 61, "total_tokens": 179}"#),
            ("no usage: estimated", ""),
            ("null usage: estimated", r#", "usage": null"#),
            ("one count missing", r#", "usage": {"completion_tokens": 61}"#),
            ("a count as a float", r#", "usage": {"prompt_tokens": 118.0, "completion_tokens": 61}"#),
            ("a negative count", r#", "usage": {"prompt_tokens": -1, "completion_tokens": 61}"#),
            ("usage not an object", r#", "usage": 7"#),
            ("usage twice", r#", "usage": {"prompt_tokens": 1}, "usage": {"prompt_tokens": 2}"#),
            ("a lone surrogate", r#", "usage": {"prompt_tokens": 5, "completion_tokens": 6}, "note": "\ud800""#),
        ]
        .map(|(name, usage)| (name, unary(request, &answer(usage))))
        .into();
        let mut streamed = unary(
            request,
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Threat\"}}],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n",
        );
        streamed.streamed = true;
        cases.push(("streamed", streamed));
        let mut failed = unary(
            request,
            r#"{"error": {"message": "overloaded", "type": "server_error"}, "usage": {"prompt_tokens": 3}}"#,
        );
        failed.outcome = Outcome::UpstreamError;
        cases.push(("an upstream error", failed));
        cases.push(("not JSON", unary(request, "<html>bad gateway</html>")));
        let mut responses = unary(
            r#"{"model": "triage", "input": "Classify: powershell -enc on WS-1"}"#,
            r#"{"id": "resp_1", "object": "response", "status": "completed", "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Threat type: execution"}]}], "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}}"#,
        );
        responses.wire = crate::exchange::Wire::Responses;
        cases.push(("the Responses API", responses));
        let counted: Vec<(&str, Tokens)> = cases
            .into_iter()
            .map(|(name, exchange)| {
                let uncaptured = uncaptured_tokens(&exchange);
                let record = build_record(exchange, String::new());
                assert_eq!(uncaptured, tokens::of_record(&record.response), "{name}");
                (name, uncaptured)
            })
            .collect();
        let tokens_of = |case: &str| {
            let (_, tokens) = counted.iter().find(|(name, _)| *name == case).unwrap();
            *tokens
        };
        assert_eq!(tokens_of("usage"), [Some(118), Some(61)]);
        let [prompt, completion] = tokens_of("no usage: estimated");
        assert!(prompt.is_some_and(|n| n > 0) && completion.is_some_and(|n| n > 0));
        assert_eq!(tokens_of("streamed"), [Some(9), Some(1)]);
        assert_eq!(tokens_of("the Responses API"), [Some(5), Some(2)]);
    }

    /// Capture's cost per inference, stage by stage, on this machine:
    /// `cargo test --release --lib capture_cost -- --ignored --nocapture`.
    /// Exchanges like the benchmark's (bench/request.json's shape, a real
    /// alert each, a triage answer), each a new conversation.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn capture_cost() {
        let alerts: Vec<serde_json::Value> = include_str!("../demo/alerts.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let n = 20_000;
        let exchange = |i: usize| -> Exchange {
            let alert = &alerts[i % alerts.len()];
            let request = serde_json::json!({"model": "triage", "messages": [
                {"role": "system", "content": "You are a SOC analyst. Classify the alert: give the threat type, the severity and a short rationale."},
                {"role": "user", "content": format!("{} Host WS-{i}.", alert["alert"].as_str().unwrap())}]});
            let response = serde_json::json!({"id": format!("chatcmpl-{i:016x}"), "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("Threat type: {}\nSeverity: {}\nRationale: {} seen on WS-{i}.", alert["threat_type"].as_str().unwrap(), alert["severity"].as_str().unwrap(), alert["title"].as_str().unwrap()), "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 118, "completion_tokens": 61, "total_tokens": 179}});
            let mut exchange = unary(&request.to_string(), &response.to_string());
            // As the proxy names a new conversation: after its first turn.
            let conversation_id = format!("conv_{}", &exchange.inference_id[4..]);
            exchange.first_byte = Some(std::time::Duration::from_millis(3));
            exchange.meta = crate::capture::CaptureMeta {
                conversation_id,
                enabled: true,
                sticky: Some("key:key_1".into()),
                continuations: vec![format!("{:032x}", i as u128 * 0x9e37_79b9_7f4a_7c15)],
                ..Default::default()
            };
            exchange
        };
        // Each stage takes exchanges of its own: a record is built from
        // the exchange it consumes.
        let exchanges = || -> Vec<Exchange> { (0..n).map(&exchange).collect() };
        let route = unary("", "").route;
        let redactor = Redactor::new(&["credentials".to_string()]).unwrap();
        let stage = |name: &str, f: &mut dyn FnMut()| {
            let cpu = thread_cpu_ns();
            f();
            println!(
                "  {name}: {:.1} µs CPU per inference",
                (thread_cpu_ns() - cpu) as f64 / 1e3 / n as f64
            );
        };
        let mut records: Vec<crate::store::InferenceRecord> = Vec::new();
        let mut owned = exchanges();
        stage("build_record", &mut || {
            records = std::mem::take(&mut owned)
                .into_iter()
                .map(|e| build_record(e, now_rfc3339()))
                .collect();
        });
        // The same answers streamed as the simulator streams them: a chunk
        // a word, then the finish reason, the usage and `[DONE]`.
        let mut streamed: Vec<Exchange> = (0..n)
            .map(|i| {
                let mut e = exchange(i);
                e.streamed = true;
                e.response = Bytes::from(as_stream(&e.response));
                e
            })
            .collect();
        stage("build_record, streamed", &mut || {
            std::mem::take(&mut streamed)
                .into_iter()
                .for_each(|e| drop(build_record(e, now_rfc3339())));
        });
        stage("count_tokens", &mut || {
            records
                .iter()
                .for_each(|r| tokens::add(&route, tokens::of_record(&r.response)))
        });
        stage("redact", &mut || {
            for r in &mut records {
                redactor.redact_value(&mut r.request);
                redactor.redact_value(&mut r.response);
            }
        });
        stage("preview", &mut || {
            records.iter().for_each(|r| drop(r.preview()));
        });
        stage("turn_signals", &mut || {
            records
                .iter()
                .for_each(|r| drop(crate::curation::turn_signals(r)));
        });
        stage("tally", &mut || {
            records
                .iter()
                .for_each(|r| drop(crate::experiment::tally::of_inference(r)));
        });
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path()).unwrap();
        let owned = exchanges();
        let (wall, cpu) = (Instant::now(), thread_cpu_ns());
        let mut turns: Vec<CapturedTurn> = owned
            .into_iter()
            .filter_map(|e| prepare(e, &redactor, &BackgroundTasks::from_validated(false, &[])))
            .collect();
        let prepared = (wall.elapsed(), thread_cpu_ns() - cpu);
        let (wall, cpu) = (Instant::now(), thread_cpu_ns());
        for batch in turns.chunks_mut(FULL_BATCH) {
            store.store_captured(batch).unwrap();
        }
        let stored = (wall.elapsed(), thread_cpu_ns() - cpu);
        let (wall, cpu) = (Instant::now(), thread_cpu_ns());
        store.flush().unwrap();
        let flushed = (wall.elapsed(), thread_cpu_ns() - cpu);
        let size = du(dir.path());
        let per = |(wall, cpu): (std::time::Duration, u64)| {
            format!(
                "{:.1} µs CPU ({:.1} wall)",
                cpu as f64 / 1e3 / n as f64,
                wall.as_secs_f64() * 1e6 / n as f64
            )
        };
        println!(
            "{n} inferences, per inference on the writer's thread: prepare {}, store {}, final flush {}; {:.0} bytes on disk each",
            per(prepared),
            per(stored),
            per(flushed),
            size as f64 / n as f64
        );
    }

    /// A unary completion's body as the chunks of its stream.
    fn as_stream(body: &[u8]) -> String {
        let body: serde_json::Value = serde_json::from_slice(body).unwrap();
        let head = serde_json::json!({"id": body["id"], "object": "chat.completion.chunk",
            "created": body["created"], "model": body["model"], "system_fingerprint": "fp_1"});
        let chunk = |choices: serde_json::Value, usage: serde_json::Value| {
            let mut c = head.clone();
            c["choices"] = choices;
            c["usage"] = usage;
            format!("data: {c}\n\n")
        };
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        let mut sse = chunk(
            serde_json::json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
            serde_json::Value::Null,
        );
        for word in content.split_inclusive(' ') {
            sse += &chunk(
                serde_json::json!([{"index": 0, "delta": {"content": word}, "logprobs": null, "finish_reason": null}]),
                serde_json::Value::Null,
            );
        }
        sse += &chunk(
            serde_json::json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]),
            serde_json::Value::Null,
        );
        sse += &chunk(serde_json::json!([]), body["usage"].clone());
        sse + "data: [DONE]\n\n"
    }

    /// Nanoseconds this thread has run on a CPU (Linux schedstat).
    fn thread_cpu_ns() -> u64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    fn du(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                if m.is_dir() { du(&e.path()) } else { m.len() }
            })
            .sum()
    }
}
