//! The capture writer: drains the exchange queue, turns each exchange into
//! an inference record and writes them to the store in batches, at least
//! every `capture.flush_every_ms`, after redacting credentials. On shutdown
//! it drains the queue first.
//!
//! It runs on a thread of its own, by default at background priority
//! (`SCHED_IDLE` on Linux): parsing, redaction and store writes then only
//! use CPU the request path leaves over, so capture never shows in the
//! proxy's latency; under sustained saturation the queue absorbs the
//! backlog and `capture.on_queue_full` decides what happens past it.

use super::priority::Priority;
use super::threading::{continuation_key, message_text};
use super::{Redactor, build_record};
use crate::config::WriterPriority;
use crate::exchange::{Exchange, InFlight};
use crate::ids::now_rfc3339;
use crate::store::{InferenceRecord, NewTurn, SharedStore, ThreadPoint};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A batch is written early once it holds this many records.
const MAX_BATCH: usize = 512;

/// Starts the writer on its own thread; the future completes once it has
/// drained the queue and stopped.
pub fn start_writer(
    rx: mpsc::Receiver<Exchange>,
    in_flight: InFlight,
    store: SharedStore,
    redactor: Arc<Redactor>,
    flush_every: Duration,
    priority: WriterPriority,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> {
    let (stopped, on_stop) = tokio::sync::oneshot::channel::<()>();
    let priority = Priority::new(priority);
    let writer_priority = priority.clone();
    let spawned = std::thread::Builder::new()
        .name("flywheel-capture".into())
        .spawn(move || {
            writer_priority.enter();
            match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(runtime) => runtime.block_on(run_writer(Writer { store, redactor, in_flight }, rx, flush_every, &writer_priority, shutdown)),
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

/// Where the writer's records go, and the count it keeps current.
struct Writer {
    store: SharedStore,
    redactor: Arc<Redactor>,
    in_flight: InFlight,
}

impl Writer {
    /// Adds the exchange's record to the batch; one that is not captured
    /// is done with at once.
    fn take(&self, exchange: &Exchange, batch: &mut Vec<InferenceRecord>) {
        match prepare(exchange, &self.redactor) {
            Some(p) => batch.push(thread_now(&self.store, p)),
            None => self.in_flight.done(1),
        }
        self.in_flight.settle();
    }

    fn write(&self, batch: &mut Vec<InferenceRecord>) {
        let count = batch.len();
        write(&self.store, batch);
        self.in_flight.done(count);
    }
}

async fn run_writer(
    writer: Writer,
    mut rx: mpsc::Receiver<Exchange>,
    flush_every: Duration,
    priority: &Priority,
    shutdown: CancellationToken,
) {
    let capacity = rx.max_capacity();
    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(flush_every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some(exchange) => {
                    priority.follow(rx.len(), capacity);
                    writer.take(&exchange, &mut batch);
                    if batch.len() >= MAX_BATCH {
                        writer.write(&mut batch);
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                priority.follow(rx.len(), capacity);
                writer.write(&mut batch);
            }
            () = shutdown.cancelled() => break,
        }
    }
    rx.close();
    while let Some(exchange) = rx.recv().await {
        writer.take(&exchange, &mut batch);
    }
    writer.write(&mut batch);
}

/// Threads the record at once, so a follow-up turn sent the moment the
/// answer ends already finds its conversation.
fn thread_now(store: &SharedStore, p: Prepared) -> InferenceRecord {
    // A shadow's answer was never returned: it is no turn of anything.
    if p.record.shadow_of.is_some() {
        return p.record;
    }
    if let Err(e) = thread(
        store,
        &p.record,
        p.parent_id.as_deref(),
        p.continuation,
        p.sticky.as_deref(),
    ) {
        tracing::error!(error = %e, inference_id = %p.record.id, "could not thread the inference");
    }
    p.record
}

/// Writes and flushes the batch; on failure the records are logged as
/// lost (by count, never by content) and counted.
fn write(store: &SharedStore, batch: &mut Vec<InferenceRecord>) {
    if batch.is_empty() {
        return;
    }
    let records = std::mem::take(batch);
    let count = records.len();
    match store
        .insert_inferences(&records, &crate::experiment::tally::of_batch(&records))
        .and_then(|()| store.flush())
    {
        Ok(()) => metrics::counter!("flywheel_captured_total").increment(count as u64),
        Err(e) => {
            metrics::counter!("flywheel_capture_lost_total").increment(count as u64);
            tracing::error!(error = %e, count, "capture batch could not be stored");
        }
    }
}

/// A record ready for the store, with what threading needs.
struct Prepared {
    record: InferenceRecord,
    parent_id: Option<String>,
    /// The key a follow-up turn will present.
    continuation: Option<String>,
    /// What the version was assigned by, for the follow-up turns.
    sticky: Option<String>,
}

/// The record to store for one exchange, redacted; `None` when capture is
/// off for it (its tokens are still counted).
fn prepare(exchange: &Exchange, redactor: &Redactor) -> Option<Prepared> {
    let mut record = build_record(exchange, now_rfc3339());
    count_tokens(&record);
    if !exchange.meta.enabled {
        return None;
    }
    // The key is over the text the client will resend, so it is taken
    // before redaction; only the key, a hash, is stored.
    let continuation = record.response["choices"][0]["message"]["content"]
        .as_str()
        .filter(|_| record.status == "ok")
        .and_then(|answer| continuation_key(&record.request["messages"], answer));
    // Nothing reaches the store before redaction.
    redactor.redact_value(&mut record.request);
    redactor.redact_value(&mut record.response);
    Some(Prepared {
        record,
        parent_id: exchange.meta.parent_id.clone(),
        continuation,
        sticky: exchange.meta.sticky.clone(),
    })
}

/// Appends the inference to its conversation and leaves the key a
/// follow-up turn will present.
fn thread(
    store: &SharedStore,
    record: &InferenceRecord,
    parent_id: Option<&str>,
    continuation: Option<String>,
    sticky: Option<&str>,
) -> Result<(), crate::store::StoreError> {
    let preview = preview(&record.request["messages"]);
    let turn = store.append_turn(&NewTurn {
        conversation_id: &record.conversation_id,
        inference_id: &record.id,
        parent_id,
        at: &record.created_at,
        alias: record.alias.as_deref(),
        version: record.version.as_deref(),
        user: record.user.as_deref(),
        preview: &preview,
        // OpenAI names fine-tuned models `ft:<base>:…`; compatible
        // providers (and the simulator) follow it.
        fine_tuned: record.provider_model.starts_with("ft:"),
        signals: crate::curation::turn_signals(record),
    })?;
    if let Some(key) = continuation {
        let point = ThreadPoint {
            conversation_id: record.conversation_id.clone(),
            turn,
            sticky: sticky.map(String::from),
        };
        store.put_thread(&key, &point)?;
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
