//! The embedded sled implementation of [`Store`].
//!
//! What capture writes at a high rate is laid out for sled's strength,
//! appending in key order, and against its cost, a page rewrite per small
//! entry at a random place: an inference is one compressed record
//! (`codec`), eight to a sled value under a key of their own (`groups`),
//! or alone under its 16-byte ULID; a conversation one compressed record under
//! its slot (its own ULID, or for a client-named conversation its first
//! inference's, found through `conversation_slots`); listings are blocks
//! of entries per capture batch (`postings`); lookups by random keys
//! (follow-ups' history keys, completion ids, text hashes) are sorted runs
//! (`runs`). A capture batch is one transaction. The rest — keys, audit,
//! feedback, registry, datasets, jobs, evaluations — is small and written
//! as JSON, one tree per record kind.
//!
//! A store written before this layout is migrated in place when it is
//! first opened (`migrate`).

mod capture;
mod codec;
mod conversations;
mod datasets;
mod evaluations;
mod groups;
mod jobs;
mod migrate;
mod models;
mod owners;
mod postings;
mod runs;
mod tallies;

use super::{
    AlertRecord, ApiKeyRecord, AuditRecord, CapturedTurn, ConversationPage, ConversationRecord,
    ConversationScan, ConversationTallies, DatasetRecord, DatasetSplit, EvaluationRecord,
    ExampleResult, FeedbackRecord, FineTuneJobRecord, InferenceRecord, Lookup, ModelAliasRecord,
    ModelHistoryRecord, PerformanceRecord, QueuedWebhook, Store, StoreError, TallyKey, ThreadPoint,
    VersionTally,
};
use conversations::{Changes, Tree};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// sled's page cache: the working set is recent records; memory must stay
/// flat however much is stored.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

pub struct SledStore {
    db: sled::Db,
    keys: sled::Tree,
    audit: sled::Tree,
    /// Group key → up to eight compressed records, and inference id key
    /// (`codec::id_key`) → a compressed record kept alone (see `groups`).
    inferences: sled::Tree,
    /// `live_inference_id/shadow_inference_id` → nothing: a shadow
    /// version's answers to each live inference.
    shadows: sled::Tree,
    /// Conversation slot → compressed record.
    conversations: sled::Tree,
    /// A client-named conversation's id → its slot.
    slots: sled::Tree,
    /// Listing blocks (see `postings`).
    postings: sled::Tree,
    /// Lookups by history key, completion id and text hash.
    runs: Arc<runs::Runs>,
    /// `inference_id/feedback_id` → feedback.
    feedback: sled::Tree,
    /// Idempotency key → `inference_id/feedback_id`.
    idempotency: sled::Tree,
    /// Maintained figures such as the conversation tallies; the layout
    /// version.
    meta: sled::Tree,
    /// Alias → its registry record (versions, traffic, buckets).
    model_aliases: sled::Tree,
    /// `alias␟history_id` → one change to the alias.
    model_history: sled::Tree,
    alerts: sled::Tree,
    /// Alert id → its queued webhook delivery.
    webhooks: sled::Tree,
    /// `alias␟version␟live|shadow` → the version's experiment tally.
    experiment: sled::Tree,
    datasets: sled::Tree,
    /// `dataset_id/train|validation` → the JSONL file.
    dataset_files: sled::Tree,
    fine_tuning_jobs: sled::Tree,
    /// Ids of the fine-tuning jobs not finished yet → nothing.
    jobs_in_flight: sled::Tree,
    /// Evaluation runs by id.
    evaluations: sled::Tree,
    /// Each example's result in each run (see `evaluations`).
    evaluation_examples: sled::Tree,
    /// Model-performance figures by alias, oldest first.
    performance: sled::Tree,
    /// Held while tallies are read, merged and written.
    tally_lock: parking_lot::Mutex<()>,
    /// Held while a conversation, its listings and the tallies change
    /// together; only capture, feedback and review take it, never a request.
    conversation_lock: parking_lot::Mutex<conversations::Held>,
    /// The last capture batch id handed out (see `postings`).
    last_batch: AtomicU64,
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            // sled's default page cache is 1 GiB; the working set here is
            // recent records, and memory must stay flat under load.
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| open_error(dir, e))?;
        let tree = |name: &str| db.open_tree(name).map_err(io);
        let store = Self {
            keys: tree("keys")?,
            audit: tree("audit")?,
            inferences: tree("inference_records")?,
            shadows: tree("inference_shadows")?,
            conversations: tree("conversation_records")?,
            slots: tree("conversation_slots")?,
            postings: tree("conversation_postings")?,
            runs: runs::Runs::open(&db)?,
            feedback: tree("feedback")?,
            idempotency: tree("feedback_idempotency")?,
            meta: tree("meta")?,
            model_aliases: tree("model_aliases")?,
            model_history: tree("model_history")?,
            alerts: tree("alerts")?,
            webhooks: tree("alert_webhooks")?,
            experiment: tree("experiment_tallies")?,
            datasets: tree("datasets")?,
            dataset_files: tree("dataset_files")?,
            fine_tuning_jobs: tree("fine_tuning_jobs")?,
            jobs_in_flight: tree("fine_tuning_jobs_in_flight")?,
            evaluations: tree("evaluations")?,
            evaluation_examples: tree("evaluation_examples")?,
            performance: tree("model_performance")?,
            tally_lock: parking_lot::Mutex::new(()),
            conversation_lock: parking_lot::Mutex::new(conversations::Held::default()),
            last_batch: AtomicU64::new(0),
            db,
        };
        store.migrate(dir)?;
        store.lock()?.stored_through = store.stored_through()?;
        Ok(store)
    }

    /// A capture batch id after every one handed out before: its time in
    /// milliseconds, shifted, plus a sequence within the millisecond.
    fn next_batch(&self) -> u64 {
        let now = postings::batch_at(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        );
        let mut last = self.last_batch.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last_batch
                .compare_exchange(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}

fn open_error(dir: &Path, e: sled::Error) -> StoreError {
    match &e {
        // sled reports a held lock file as an I/O error that names the lock.
        sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock") =>
        {
            StoreError::Locked {
                path: dir.display().to_string(),
            }
        }
        _ => StoreError::Io(format!("cannot open {}: {e}", dir.display())),
    }
}

/// The longest a store call waits for one of the store's locks.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn busy(what: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "the store's {what} stayed locked for {} s; retry shortly",
        LOCK_WAIT.as_secs()
    ))
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Io(format!("cannot encode record: {e}")))
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

impl Store for SledStore {
    fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.keys
            .insert(key.id.as_bytes(), encode(key)?)
            .map_err(io)?;
        self.keys.flush().map_err(io)?;
        Ok(())
    }

    fn keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.keys
            .iter()
            .values()
            .map(|v| decode("key", &v.map_err(io)?))
            .collect()
    }

    fn revoke_key(&self, id: &str, at: &str) -> Result<ApiKeyRecord, StoreError> {
        let Some(bytes) = self.keys.get(id.as_bytes()).map_err(io)? else {
            return Err(StoreError::NotFound);
        };
        let mut record: ApiKeyRecord = decode("key", &bytes)?;
        if record.revoked_at.is_none() {
            record.revoked_at = Some(at.to_string());
            self.keys
                .insert(id.as_bytes(), encode(&record)?)
                .map_err(io)?;
            self.keys.flush().map_err(io)?;
        }
        Ok(record)
    }

    fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.audit
            .insert(record.id.as_bytes(), encode(record)?)
            .map_err(io)?;
        Ok(())
    }

    fn audit(&self, cursor: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let range = match cursor {
            Some(c) => self.audit.range(..c.as_bytes().to_vec()),
            None => self.audit.range::<Vec<u8>, _>(..),
        };
        range
            .rev()
            .take(limit)
            .map(|kv| decode("audit", &kv.map_err(io)?.1))
            .collect()
    }

    fn store_captured(&self, batch: &mut [CapturedTurn]) -> Result<(), StoreError> {
        self.write_captured(batch)
    }

    fn inference(&self, id: &str) -> Result<Option<InferenceRecord>, StoreError> {
        self.inference_at(&codec::id_key(id))
    }

    fn inferences_between(
        &self,
        after: Option<&str>,
        before: &str,
        limit: usize,
    ) -> Result<Vec<InferenceRecord>, StoreError> {
        let after = after.map(codec::id_key);
        self.records_between(after.as_deref(), &codec::id_key(before), limit)?
            .iter()
            .map(|bytes| codec::decode("inference", bytes))
            .collect()
    }

    fn delete_inference(
        &self,
        record: &InferenceRecord,
        forget: &mut dyn FnMut(&mut ConversationRecord, &[FeedbackRecord]),
    ) -> Result<(), StoreError> {
        self.delete_inference_in_conversation(record, forget)
    }

    fn shadows_of(&self, inference_id: &str) -> Result<Vec<InferenceRecord>, StoreError> {
        let mut out = Vec::new();
        for key in self
            .shadows
            .scan_prefix(format!("{inference_id}/").as_bytes())
            .keys()
        {
            let key = key.map_err(io)?;
            let id = String::from_utf8_lossy(&key[inference_id.len() + 1..]).to_string();
            out.extend(self.inference(&id)?);
        }
        Ok(out)
    }

    fn inference_by_completion(
        &self,
        completion_id: &str,
    ) -> Result<Option<InferenceRecord>, StoreError> {
        let key = capture::hashed(completion_id);
        let Some(at) = self.runs.get(runs::Kind::Completion, &key)? else {
            return Ok(None);
        };
        Ok(self
            .inference_at(&at)?
            .filter(|r| r.completion_id.as_deref() == Some(completion_id)))
    }

    fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        self.conversation_record(id)
    }

    fn update_conversation(
        &self,
        id: &str,
        edit: &mut dyn FnMut(&mut ConversationRecord),
    ) -> Result<Option<ConversationRecord>, StoreError> {
        self.edit_conversation(id, edit, Changes::default())
    }

    fn delete_conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        let deleted = self.delete_whole_conversation(id)?;
        self.flush()?;
        Ok(deleted)
    }

    fn list_conversations(
        &self,
        scan: &ConversationScan,
        keep: &dyn Fn(&ConversationRecord) -> bool,
    ) -> Result<ConversationPage, StoreError> {
        self.walk_conversations(scan, keep)
    }

    fn tallies(&self) -> Result<ConversationTallies, StoreError> {
        self.current_tallies()
    }

    fn for_each_conversation(
        &self,
        visit: &mut dyn FnMut(ConversationRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // The listing of every conversation, oldest first: it also holds
        // those kept as their first turn's record alone.
        let all = postings::prefix(&postings::all());
        for block in self.postings.scan_prefix(all).values() {
            for entry in postings::decode_block(&block.map_err(io)?) {
                if let Some(c) = self.conversation_at(&entry.slot)? {
                    visit(c)?;
                }
            }
        }
        Ok(())
    }

    fn thread(&self, key: &str) -> Result<Option<ThreadPoint>, StoreError> {
        let Some(key) = capture::thread_key(key) else {
            return Ok(None);
        };
        let Some(at) = self.runs.get(runs::Kind::Thread, &key)? else {
            return Ok(None);
        };
        Ok(self.inference_at(&at)?.and_then(|r| {
            Some(ThreadPoint {
                turn: r.turn?,
                conversation_id: r.conversation_id,
                sticky: r.sticky,
            })
        }))
    }

    fn for_each_lookup(
        &self,
        visit: &mut dyn FnMut(Lookup) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.runs.for_each(runs::Kind::Thread, &mut |key, at| {
            // The record names its id; one whose batch a crash lost is
            // no turn to continue.
            match self.inference_at(at)? {
                Some(r) => visit(Lookup::Thread {
                    key: hex::encode(key),
                    inference_id: r.id,
                }),
                None => Ok(()),
            }
        })?;
        for entry in self.idempotency.iter() {
            let (key, value) = entry.map_err(io)?;
            // `{inference id}/{feedback id}`, the feedback's own key.
            let value = String::from_utf8_lossy(&value);
            let Some((_, feedback_id)) = value.split_once('/') else {
                continue;
            };
            visit(Lookup::Idempotency {
                key: String::from_utf8_lossy(&key).into_owned(),
                feedback_id: feedback_id.to_string(),
            })?;
        }
        Ok(())
    }

    fn insert_feedback(
        &self,
        feedback: &FeedbackRecord,
        idempotency: Option<&str>,
        review: &mut dyn FnMut(&mut ConversationRecord),
        tally: Option<&(TallyKey, VersionTally)>,
    ) -> Result<(), StoreError> {
        let key = format!("{}/{}", feedback.inference_id, feedback.id);
        let mut changes = Changes::default();
        let _held = self.lock_tallies()?;
        if let Some((k, delta)) = tally {
            let (row, value) = self.tally_row(k, delta)?;
            changes.put(Tree::Experiment, &row, value);
        }
        changes.put(Tree::Feedback, key.as_bytes(), encode(feedback)?);
        if let Some(idem) = idempotency {
            changes.put(Tree::Idempotency, idem.as_bytes(), key.as_bytes().to_vec());
        }
        self.edit_conversation(&feedback.conversation_id, review, changes)?;
        self.db.flush().map(drop).map_err(io)
    }

    fn feedback_by_idempotency(
        &self,
        idempotency: &str,
    ) -> Result<Option<FeedbackRecord>, StoreError> {
        let Some(key) = self.idempotency.get(idempotency.as_bytes()).map_err(io)? else {
            return Ok(None);
        };
        self.feedback
            .get(key)
            .map_err(io)?
            .map(|v| decode("feedback", &v))
            .transpose()
    }

    fn feedback_for(&self, inference_id: &str) -> Result<Vec<FeedbackRecord>, StoreError> {
        self.feedback
            .scan_prefix(format!("{inference_id}/").as_bytes())
            .values()
            .map(|v| decode("feedback", &v.map_err(io)?))
            .collect()
    }

    fn version_tallies(&self, alias: &str) -> Result<Vec<(TallyKey, VersionTally)>, StoreError> {
        self.tallies_of(alias)
    }

    fn model_aliases(&self) -> Result<Vec<ModelAliasRecord>, StoreError> {
        self.all_model_aliases()
    }

    fn put_model_alias(
        &self,
        record: &ModelAliasRecord,
        history: &ModelHistoryRecord,
    ) -> Result<(), StoreError> {
        self.write_model_alias(record, history)
    }

    fn model_history(
        &self,
        alias: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ModelHistoryRecord>, StoreError> {
        self.alias_history(alias, cursor, limit)
    }

    fn put_alert(&self, alert: &AlertRecord) -> Result<(), StoreError> {
        self.write_alert(alert, None)
    }

    fn raise_alert(
        &self,
        alert: &AlertRecord,
        webhook: Option<&QueuedWebhook>,
    ) -> Result<(), StoreError> {
        self.write_alert(alert, webhook)
    }

    fn queued_webhooks(&self, limit: usize) -> Result<Vec<QueuedWebhook>, StoreError> {
        self.list_webhooks(limit)
    }

    fn requeue_webhook(&self, webhook: &QueuedWebhook) -> Result<(), StoreError> {
        self.write_webhook(webhook)
    }

    fn dequeue_webhook(&self, alert_id: &str) -> Result<(), StoreError> {
        self.remove_webhook(alert_id)
    }

    fn alert(&self, id: &str) -> Result<Option<AlertRecord>, StoreError> {
        self.read_alert(id)
    }

    fn alerts(
        &self,
        cursor: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&AlertRecord) -> bool,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        self.list_alerts(cursor, limit, keep)
    }

    fn insert_dataset(
        &self,
        record: &DatasetRecord,
        train: &[u8],
        validation: &[u8],
    ) -> Result<(), StoreError> {
        self.write_dataset(record, train, validation)
    }

    fn dataset(&self, id: &str) -> Result<Option<DatasetRecord>, StoreError> {
        self.read_dataset(id)
    }

    fn datasets(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DatasetRecord>, StoreError> {
        self.list_datasets(cursor, limit)
    }

    fn dataset_file(&self, id: &str, split: DatasetSplit) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_dataset_file(id, split)
    }

    fn put_job(&self, record: &FineTuneJobRecord) -> Result<(), StoreError> {
        self.write_job(record)
    }

    fn job(&self, id: &str) -> Result<Option<FineTuneJobRecord>, StoreError> {
        self.read_job(id)
    }

    fn jobs(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FineTuneJobRecord>, StoreError> {
        self.list_jobs(cursor, limit)
    }

    fn jobs_in_flight(&self) -> Result<Vec<FineTuneJobRecord>, StoreError> {
        self.jobs_not_finished()
    }

    fn put_evaluation(&self, record: &EvaluationRecord) -> Result<(), StoreError> {
        self.write_evaluation(record)
    }

    fn evaluation(&self, id: &str) -> Result<Option<EvaluationRecord>, StoreError> {
        self.read_evaluation(id)
    }

    fn evaluations(
        &self,
        cursor: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&EvaluationRecord) -> bool,
    ) -> Result<Vec<EvaluationRecord>, StoreError> {
        self.list_evaluations(cursor, limit, keep)
    }

    fn put_example_result(
        &self,
        result: &ExampleResult,
        progress: &EvaluationRecord,
    ) -> Result<(), StoreError> {
        self.write_example_result(result, progress)
    }

    fn example_results(&self, evaluation_id: &str) -> Result<Vec<ExampleResult>, StoreError> {
        self.read_example_results(evaluation_id)
    }

    fn finish_evaluation(
        &self,
        record: &EvaluationRecord,
        performance: &[PerformanceRecord],
    ) -> Result<(), StoreError> {
        self.write_finished_evaluation(record, performance)
    }

    fn performance(&self, alias: &str) -> Result<Vec<PerformanceRecord>, StoreError> {
        self.read_performance(alias)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(io)
    }

    /// sled reports a failure on the write that meets it, and
    /// [`super::Resilient`] keeps track from there: an open sled store is
    /// healthy.
    fn is_healthy(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens a store just dropped in this process: sled's background
    /// flusher may hold the directory's lock for a moment after the drop.
    pub(crate) fn reopen(dir: &Path) -> SledStore {
        for _ in 0..100 {
            match SledStore::open(dir) {
                Err(StoreError::Locked { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                opened => return opened.unwrap(),
            }
        }
        panic!("the store stayed locked after it was dropped");
    }

    fn key(id: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            id: id.into(),
            name: "n".into(),
            role: "client".into(),
            hash: format!("h{id}"),
            created_at: "2026-01-01T00:00:00Z".into(),
            revoked_at: None,
        }
    }

    #[test]
    fn keys_survive_reopen_and_revoke_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.insert_key(&key("key_1")).unwrap();
            s.insert_key(&key("key_2")).unwrap();
            let r = s.revoke_key("key_1", "2026-01-02T00:00:00Z").unwrap();
            assert_eq!(r.revoked_at.as_deref(), Some("2026-01-02T00:00:00Z"));
            assert!(matches!(
                s.revoke_key("nope", "x"),
                Err(StoreError::NotFound)
            ));
        }
        let s = reopen(dir.path());
        let keys = s.keys().unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys[0].revoked_at.is_some() && keys[1].revoked_at.is_none());
    }

    #[test]
    fn audit_lists_newest_first_with_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        for i in 1..=3 {
            s.append_audit(&AuditRecord {
                id: format!("audit_{i}"),
                at: "t".into(),
                actor: "a".into(),
                action: "x".into(),
                target: "y".into(),
                details: serde_json::Value::Null,
            })
            .unwrap();
        }
        let all = s.audit(None, 10).unwrap();
        assert_eq!(
            all.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
            ["audit_3", "audit_2", "audit_1"]
        );
        let after = s.audit(Some("audit_3"), 1).unwrap();
        assert_eq!(after[0].id, "audit_2");
    }
}
