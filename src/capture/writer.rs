//! The capture writer: drains the exchange queue, turns each exchange into
//! an inference record (redacted) and stores them in batches, at least
//! every `capture.flush_every_ms`: each record's turn in its conversation,
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
//! use CPU the request path leaves over. Threading does not depend on it:
//! a follow-up turn finds its predecessor in [`super::RecentThreads`].

use super::priority::Priority;
use super::threading::message_text;
use super::{Redactor, build_record};
use crate::config::WriterPriority;
use crate::exchange::{Exchange, InFlight};
use crate::ids::now_rfc3339;
use crate::store::{InferenceRecord, NewTurn, SharedStore, StoreError, ThreadPoint};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A batch is written early once it holds this many records.
const MAX_BATCH: usize = 512;
/// The longest wait between two attempts at a batch the store refused.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// At shutdown, how long a refused batch is still retried.
const LAST_TRIES: Duration = Duration::from_secs(3);

/// What the writer needs, given once at start.
pub struct WriterSetup {
    pub store: SharedStore,
    pub redactor: Arc<Redactor>,
    pub in_flight: InFlight,
    pub flush_every: Duration,
    pub priority: WriterPriority,
    /// Records held at most while the store refuses them.
    pub max_pending: usize,
}

/// Starts the writer on its own thread; the future completes once it has
/// drained the queue and stopped.
pub fn start_writer(
    setup: WriterSetup,
    rx: mpsc::Receiver<Exchange>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> {
    let (stopped, on_stop) = tokio::sync::oneshot::channel::<()>();
    let priority = Priority::new(setup.priority);
    let writer_priority = priority.clone();
    let flush_every = setup.flush_every.max(Duration::from_millis(1));
    let spawned = std::thread::Builder::new()
        .name("flywheel-capture".into())
        .spawn(move || {
            writer_priority.enter();
            match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(runtime) => {
                    let writer = Writer::new(setup);
                    runtime.block_on(writer.run(rx, flush_every, &writer_priority, shutdown));
                }
                Err(e) => tracing::error!(error = %e, "the capture writer could not start; nothing will be captured"),
            }
            drop(stopped);
        });
    async move {
        match spawned {
            Ok(_) => {
                priority
                    .watch(flush_every, async {
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
    in_flight: InFlight,
    max_pending: usize,
    records: Vec<InferenceRecord>,
    threads: Vec<Threading>,
    failures: Failures,
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
    fn new(setup: WriterSetup) -> Self {
        Self {
            store: setup.store,
            redactor: setup.redactor,
            in_flight: setup.in_flight,
            max_pending: setup.max_pending.max(MAX_BATCH),
            records: Vec::new(),
            threads: Vec::new(),
            failures: Failures::default(),
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Exchange>,
        flush_every: Duration,
        priority: &Priority,
        shutdown: CancellationToken,
    ) {
        let capacity = rx.max_capacity();
        let mut tick = tokio::time::interval(flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let room = self.records.len() < self.max_pending;
            tokio::select! {
                next = rx.recv(), if room => match next {
                    Some(exchange) => {
                        priority.follow(rx.len(), capacity);
                        self.take(&exchange);
                        if self.records.len() >= MAX_BATCH && self.failures.may_try() {
                            self.write();
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    priority.follow(rx.len(), capacity);
                    if self.failures.may_try() {
                        self.write();
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
        rx.close();
        while let Some(exchange) = rx.recv().await {
            self.take(&exchange);
        }
        self.write_before_stopping().await;
    }

    /// Adds the exchange's record to the batch; one that is not captured
    /// is done with at once.
    fn take(&mut self, exchange: &Exchange) {
        match prepare(exchange, &self.redactor) {
            Some((record, threading)) => {
                self.records.push(record);
                self.threads.push(threading);
            }
            None => self.in_flight.done(1),
        }
    }

    /// Stores what is held; on failure keeps it for the next attempt.
    fn write(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let retry = self.failures.count > 0;
        match store_batch(&self.store, &self.records, &self.threads, retry) {
            Ok(()) => {
                let count = self.records.len();
                metrics::counter!("flywheel_captured_total").increment(count as u64);
                self.in_flight.done(count);
                self.records.clear();
                self.threads.clear();
                self.failures.recovered();
            }
            Err(e) => self.failures.failed(&e, self.records.len()),
        }
    }

    /// At shutdown: a few more attempts, then what is still refused is
    /// counted as lost.
    async fn write_before_stopping(&mut self) {
        let deadline = Instant::now() + LAST_TRIES;
        self.failures.next_try = None;
        loop {
            self.write();
            if self.records.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !self.records.is_empty() {
            let count = self.records.len();
            metrics::counter!("flywheel_capture_lost_total").increment(count as u64);
            tracing::error!(
                count,
                "captured records the store refused until shutdown are lost"
            );
            self.in_flight.done(count);
        }
    }
}

/// Writes the records (with their tallies), threads each into its
/// conversation and flushes. After a failed attempt (`retry`) the records
/// the store already holds are skipped, so their tallies count once;
/// threading a turn twice is a no-op in the store.
fn store_batch(
    store: &SharedStore,
    records: &[InferenceRecord],
    threads: &[Threading],
    retry: bool,
) -> Result<(), StoreError> {
    let unstored: Vec<InferenceRecord>;
    let to_insert = if retry {
        unstored = records
            .iter()
            .filter_map(|r| match store.inference(&r.id) {
                Ok(Some(_)) => None,
                Ok(None) => Some(Ok(r.clone())),
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
        &unstored[..]
    } else {
        records
    };
    // Turns first: feedback waits for an inference's record, and must then
    // find the inference in its conversation.
    for (record, threading) in records.iter().zip(threads) {
        thread(store, record, threading)?;
    }
    if !to_insert.is_empty() {
        store.insert_inferences(to_insert, &crate::experiment::tally::of_batch(to_insert))?;
    }
    store.flush()
}

/// What threading a record needs beyond the record.
struct Threading {
    parent_id: Option<String>,
    /// The key a follow-up turn will present.
    continuation: Option<String>,
    /// What the version was assigned by, for the follow-up turns.
    sticky: Option<String>,
    preview: String,
}

/// The record to store for one exchange, redacted; `None` when capture is
/// off for it (its tokens are still counted).
fn prepare(exchange: &Exchange, redactor: &Redactor) -> Option<(InferenceRecord, Threading)> {
    let mut record = build_record(exchange, now_rfc3339());
    count_tokens(&record);
    if !exchange.meta.enabled {
        return None;
    }
    // Nothing reaches the store before redaction.
    redactor.redact_value(&mut record.request);
    redactor.redact_value(&mut record.response);
    let threading = Threading {
        parent_id: exchange.meta.parent_id.clone(),
        continuation: exchange.meta.continuation.clone(),
        sticky: exchange.meta.sticky.clone(),
        preview: preview(&record.request["messages"]),
    };
    Some((record, threading))
}

/// Appends the inference to its conversation and leaves the key a
/// follow-up turn will present.
fn thread(
    store: &SharedStore,
    record: &InferenceRecord,
    threading: &Threading,
) -> Result<(), StoreError> {
    // A shadow's answer was never returned: it is no turn of anything.
    if record.shadow_of.is_some() {
        return Ok(());
    }
    let turn = store.append_turn(&NewTurn {
        conversation_id: &record.conversation_id,
        inference_id: &record.id,
        parent_id: threading.parent_id.as_deref(),
        at: &record.created_at,
        alias: record.alias.as_deref(),
        version: record.version.as_deref(),
        user: record.user.as_deref(),
        preview: &threading.preview,
        // OpenAI names fine-tuned models `ft:<base>:…`; compatible
        // providers (and the simulator) follow it.
        fine_tuned: record.provider_model.starts_with("ft:"),
        signals: crate::curation::turn_signals(record),
    })?;
    if let Some(key) = &threading.continuation {
        let point = ThreadPoint {
            conversation_id: record.conversation_id.clone(),
            turn,
            sticky: threading.sticky.clone(),
        };
        store.put_thread(key, &point)?;
    }
    Ok(())
}

/// How much of the first user message a conversation's summary keeps.
const PREVIEW_CHARS: usize = 280;

/// The start of the first user message, on one line.
fn preview(messages: &serde_json::Value) -> String {
    let first_user = messages
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "user"))
        .map(|m| message_text(&m["content"]))
        .unwrap_or_default();
    first_user
        .split_whitespace()
        .flat_map(|word| [" ", word])
        .skip(1)
        .collect::<String>()
        .chars()
        .take(PREVIEW_CHARS)
        .collect()
}

fn count_tokens(record: &InferenceRecord) {
    let usage = &record.response["usage"];
    let alias = record.alias.clone().unwrap_or_default();
    let version = record.version.clone().unwrap_or_default();
    for kind in ["prompt", "completion"] {
        if let Some(n) = usage[format!("{kind}_tokens")].as_u64() {
            metrics::counter!("flywheel_tokens_total", "alias" => alias.clone(), "version" => version.clone(), "kind" => kind)
                .increment(n);
        }
    }
}
