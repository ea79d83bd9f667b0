//! A store that survives its backend failing: a full disk, or any other
//! I/O error. sled keeps the first I/O error it meets and refuses every
//! later write until the database is opened again, so the first failure
//! marks the store unwritable — writes then fail at once with
//! [`StoreError::Unavailable`] (a 503 for clients, a retry for capture),
//! `/readyz` says so — and a recovery thread waits until the data
//! directory takes a test write again, closes the failed database on its
//! own thread (so nothing else can hang on it) and opens it anew. Nothing
//! committed before the failure is lost; no restart is needed.

use super::{
    AlertRecord, ApiKeyRecord, AuditRecord, CapturedTurn, ConversationPage, ConversationRecord,
    ConversationScan, ConversationTallies, DatasetRecord, DatasetSplit, EvaluationRecord,
    ExampleResult, FeedbackRecord, FineTuneJobRecord, InferenceRecord, Lookup, ModelAliasRecord,
    ModelHistoryRecord, PerformanceRecord, QueuedWebhook, Store, StoreError, TallyKey, ThreadPoint,
    VersionTally,
};
use arc_swap::ArcSwapOption;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// Opens the backend again after a failure.
pub type Reopen = Box<dyn Fn() -> Result<Arc<dyn Store>, StoreError> + Send + Sync>;

/// The first wait before a recovery attempt, and the longest.
const FIRST_WAIT: Duration = Duration::from_millis(250);
const LONGEST_WAIT: Duration = Duration::from_secs(5);
/// What the test write puts on disk: more than the backend needs to
/// start writing again, so a disk with less free space stays failed.
const PROBE_BYTES: usize = 1 << 20;
/// How long recovery lets calls still running on the failed backend finish.
const DRAIN: Duration = Duration::from_secs(30);

pub struct Resilient {
    shared: Arc<Shared>,
}

struct Shared {
    /// The open backend; `None` while it is being reopened.
    current: ArcSwapOption<Backend>,
    /// Set from the first I/O failure until the backend is open again.
    failed: AtomicBool,
    reason: Mutex<String>,
    recovering: AtomicBool,
    dir: PathBuf,
    reopen: Reopen,
}

impl Resilient {
    /// Wraps an open backend kept in `dir`; `reopen` opens it again.
    pub fn new(backend: Arc<dyn Store>, dir: PathBuf, reopen: Reopen) -> Self {
        Self {
            shared: Arc::new(Shared {
                current: ArcSwapOption::from(Some(Arc::new(Backend(backend)))),
                failed: AtomicBool::new(false),
                reason: Mutex::new(String::new()),
                recovering: AtomicBool::new(false),
                dir,
                reopen,
            }),
        }
    }

    fn unavailable(&self) -> StoreError {
        let reason = self
            .shared
            .reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        StoreError::Unavailable(format!(
            "the store cannot take writes until it recovers ({reason}); nothing already stored is lost — retry shortly"
        ))
    }

    /// A read: served while the backend is open, failed or not.
    fn read<T>(
        &self,
        call: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(backend) = self.shared.current.load_full() else {
            return Err(self.unavailable());
        };
        let result = call(backend.0.as_ref());
        self.observe(result)
    }

    /// A write: refused at once while the store is failed.
    fn write<T>(
        &self,
        call: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(self.unavailable());
        }
        self.read(call)
    }

    /// Turns an I/O failure into the failed state (and starts recovery).
    fn observe<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Err(StoreError::Io(detail)) => {
                self.fail(&detail);
                Err(self.unavailable())
            }
            other => other,
        }
    }

    fn fail(&self, detail: &str) {
        *self
            .shared
            .reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = detail.to_string();
        if !self.shared.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %detail, "the store failed; writes are refused until it recovers");
            metrics::counter!("flywheel_store_failures_total").increment(1);
            metrics::gauge!("flywheel_store_writable").set(0.0);
        }
        if !self.shared.recovering.swap(true, Ordering::AcqRel) {
            let shared = Arc::downgrade(&self.shared);
            let spawned = std::thread::Builder::new()
                .name("flywheel-store-recovery".into())
                .spawn(move || recover(&shared));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "the store recovery thread could not start");
                self.shared.recovering.store(false, Ordering::Release);
            }
        }
    }
}

/// Waits for the directory to take writes, closes the failed backend once
/// nothing uses it, and opens it again; repeats until that works or the
/// store is dropped.
fn recover(shared: &Weak<Shared>) {
    let mut wait = FIRST_WAIT;
    loop {
        std::thread::sleep(wait);
        wait = (wait * 2).min(LONGEST_WAIT);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(e) = probe(&shared.dir) {
            tracing::debug!(error = %e, "the data directory does not take writes yet");
            continue;
        }
        if let Some(old) = shared.current.swap(None) {
            let drained = Instant::now() + DRAIN;
            while Arc::strong_count(&old) > 1 && Instant::now() < drained {
                std::thread::sleep(Duration::from_millis(10));
            }
            // Closing a failed backend can block; it does so here, not
            // on a thread that serves requests.
            drop(old);
        }
        match (shared.reopen)() {
            Ok(backend) => {
                shared.current.store(Some(Arc::new(Backend(backend))));
                shared.failed.store(false, Ordering::Release);
                shared.recovering.store(false, Ordering::Release);
                metrics::gauge!("flywheel_store_writable").set(1.0);
                tracing::info!("the store recovered and takes writes again");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "the store could not be opened again yet"),
        }
    }
}

/// Writes, syncs and removes a test file in the data directory.
fn probe(dir: &std::path::Path) -> std::io::Result<()> {
    let path = dir.join(".flywheel-write-probe");
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&vec![0u8; PROBE_BYTES])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// The open backend, as the swap holds it.
struct Backend(Arc<dyn Store>);

impl Store for Resilient {
    fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.write(|s| s.insert_key(key))
    }
    fn keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.read(|s| s.keys())
    }
    fn revoke_key(&self, id: &str, at: &str) -> Result<ApiKeyRecord, StoreError> {
        self.write(|s| s.revoke_key(id, at))
    }
    fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.write(|s| s.append_audit(record))
    }
    fn audit(&self, cursor: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.read(|s| s.audit(cursor, limit))
    }
    fn store_captured(&self, batch: &mut [CapturedTurn]) -> Result<(), StoreError> {
        self.write(|s| s.store_captured(batch))
    }
    fn inference(&self, id: &str) -> Result<Option<InferenceRecord>, StoreError> {
        self.read(|s| s.inference(id))
    }
    fn inferences_between(
        &self,
        after: Option<&str>,
        before: &str,
        limit: usize,
    ) -> Result<Vec<InferenceRecord>, StoreError> {
        self.read(|s| s.inferences_between(after, before, limit))
    }
    fn delete_inference(
        &self,
        record: &InferenceRecord,
        forget: &mut dyn FnMut(&mut ConversationRecord, &[FeedbackRecord]),
    ) -> Result<(), StoreError> {
        self.write(|s| s.delete_inference(record, forget))
    }
    fn inference_by_completion(
        &self,
        completion_id: &str,
    ) -> Result<Option<InferenceRecord>, StoreError> {
        self.read(|s| s.inference_by_completion(completion_id))
    }
    fn shadows_of(&self, inference_id: &str) -> Result<Vec<InferenceRecord>, StoreError> {
        self.read(|s| s.shadows_of(inference_id))
    }
    fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        self.read(|s| s.conversation(id))
    }
    fn update_conversation(
        &self,
        id: &str,
        edit: &mut dyn FnMut(&mut ConversationRecord),
    ) -> Result<Option<ConversationRecord>, StoreError> {
        self.write(|s| s.update_conversation(id, edit))
    }
    fn delete_conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        self.write(|s| s.delete_conversation(id))
    }
    fn list_conversations(
        &self,
        scan: &ConversationScan,
        keep: &dyn Fn(&ConversationRecord) -> bool,
    ) -> Result<ConversationPage, StoreError> {
        self.read(|s| s.list_conversations(scan, keep))
    }
    fn tallies(&self) -> Result<ConversationTallies, StoreError> {
        self.read(|s| s.tallies())
    }
    fn for_each_conversation(
        &self,
        visit: &mut dyn FnMut(ConversationRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.read(|s| s.for_each_conversation(visit))
    }
    fn thread(&self, key: &str) -> Result<Option<ThreadPoint>, StoreError> {
        self.read(|s| s.thread(key))
    }
    fn for_each_lookup(
        &self,
        visit: &mut dyn FnMut(Lookup) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.read(|s| s.for_each_lookup(visit))
    }
    fn insert_feedback(
        &self,
        feedback: &FeedbackRecord,
        idempotency: Option<&str>,
        review: &mut dyn FnMut(&mut ConversationRecord),
        tally: Option<&(TallyKey, VersionTally)>,
    ) -> Result<(), StoreError> {
        self.write(|s| s.insert_feedback(feedback, idempotency, review, tally))
    }
    fn feedback_by_idempotency(
        &self,
        idempotency: &str,
    ) -> Result<Option<FeedbackRecord>, StoreError> {
        self.read(|s| s.feedback_by_idempotency(idempotency))
    }
    fn feedback_for(&self, inference_id: &str) -> Result<Vec<FeedbackRecord>, StoreError> {
        self.read(|s| s.feedback_for(inference_id))
    }
    fn version_tallies(&self, alias: &str) -> Result<Vec<(TallyKey, VersionTally)>, StoreError> {
        self.read(|s| s.version_tallies(alias))
    }
    fn model_aliases(&self) -> Result<Vec<ModelAliasRecord>, StoreError> {
        self.read(|s| s.model_aliases())
    }
    fn put_model_alias(
        &self,
        record: &ModelAliasRecord,
        history: &ModelHistoryRecord,
    ) -> Result<(), StoreError> {
        self.write(|s| s.put_model_alias(record, history))
    }
    fn model_history(
        &self,
        alias: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ModelHistoryRecord>, StoreError> {
        self.read(|s| s.model_history(alias, cursor, limit))
    }
    fn put_alert(&self, alert: &AlertRecord) -> Result<(), StoreError> {
        self.write(|s| s.put_alert(alert))
    }
    fn raise_alert(
        &self,
        alert: &AlertRecord,
        webhook: Option<&QueuedWebhook>,
    ) -> Result<(), StoreError> {
        self.write(|s| s.raise_alert(alert, webhook))
    }
    fn queued_webhooks(&self, limit: usize) -> Result<Vec<QueuedWebhook>, StoreError> {
        self.read(|s| s.queued_webhooks(limit))
    }
    fn requeue_webhook(&self, webhook: &QueuedWebhook) -> Result<(), StoreError> {
        self.write(|s| s.requeue_webhook(webhook))
    }
    fn dequeue_webhook(&self, alert_id: &str) -> Result<(), StoreError> {
        self.write(|s| s.dequeue_webhook(alert_id))
    }
    fn alert(&self, id: &str) -> Result<Option<AlertRecord>, StoreError> {
        self.read(|s| s.alert(id))
    }
    fn alerts(
        &self,
        cursor: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&AlertRecord) -> bool,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        self.read(|s| s.alerts(cursor, limit, keep))
    }
    fn insert_dataset(
        &self,
        record: &DatasetRecord,
        train: &[u8],
        validation: &[u8],
    ) -> Result<(), StoreError> {
        self.write(|s| s.insert_dataset(record, train, validation))
    }
    fn dataset(&self, id: &str) -> Result<Option<DatasetRecord>, StoreError> {
        self.read(|s| s.dataset(id))
    }
    fn datasets(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DatasetRecord>, StoreError> {
        self.read(|s| s.datasets(cursor, limit))
    }
    fn dataset_file(&self, id: &str, split: DatasetSplit) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|s| s.dataset_file(id, split))
    }
    fn put_job(&self, record: &FineTuneJobRecord) -> Result<(), StoreError> {
        self.write(|s| s.put_job(record))
    }
    fn job(&self, id: &str) -> Result<Option<FineTuneJobRecord>, StoreError> {
        self.read(|s| s.job(id))
    }
    fn jobs(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FineTuneJobRecord>, StoreError> {
        self.read(|s| s.jobs(cursor, limit))
    }
    fn jobs_in_flight(&self) -> Result<Vec<FineTuneJobRecord>, StoreError> {
        self.read(|s| s.jobs_in_flight())
    }
    fn put_evaluation(&self, record: &EvaluationRecord) -> Result<(), StoreError> {
        self.write(|s| s.put_evaluation(record))
    }
    fn evaluation(&self, id: &str) -> Result<Option<EvaluationRecord>, StoreError> {
        self.read(|s| s.evaluation(id))
    }
    fn evaluations(
        &self,
        cursor: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&EvaluationRecord) -> bool,
    ) -> Result<Vec<EvaluationRecord>, StoreError> {
        self.read(|s| s.evaluations(cursor, limit, keep))
    }
    fn put_example_result(
        &self,
        result: &ExampleResult,
        progress: &EvaluationRecord,
    ) -> Result<(), StoreError> {
        self.write(|s| s.put_example_result(result, progress))
    }
    fn example_results(&self, evaluation_id: &str) -> Result<Vec<ExampleResult>, StoreError> {
        self.read(|s| s.example_results(evaluation_id))
    }
    fn finish_evaluation(
        &self,
        record: &EvaluationRecord,
        performance: &[PerformanceRecord],
    ) -> Result<(), StoreError> {
        self.write(|s| s.finish_evaluation(record, performance))
    }
    fn performance(&self, alias: &str) -> Result<Vec<PerformanceRecord>, StoreError> {
        self.read(|s| s.performance(alias))
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.write(|s| s.flush())
    }
    fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.write(|s| s.try_lease(name, holder, ttl))
    }
    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.write(|s| s.release_lease(name, holder))
    }
    fn is_healthy(&self) -> bool {
        !self.shared.failed.load(Ordering::Acquire)
            && self
                .shared
                .current
                .load()
                .as_ref()
                .is_some_and(|b| b.0.is_healthy())
    }
}
