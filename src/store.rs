//! Persistence behind the [`Store`] trait. Nothing outside `store/` sees a
//! sled or PostgreSQL type: [`open_configured`] opens the backend
//! `[store] kind` names — the embedded sled store (one process) or
//! PostgreSQL (`postgres`, several replicas sharing one state).

mod captured;
mod evaluation_records;
mod job_records;
mod model_records;
pub mod postgres;
mod records;
mod resilient;
#[allow(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "the one backend that names sled (clippy.toml)"
)]
mod sled_store;
pub mod transfer;

pub use captured::CapturedTurn;
pub use evaluation_records::{EvaluationRecord, ExampleResult, PerformanceRecord};
pub use job_records::{
    Attempts, DeploymentState, FineTuneJobRecord, Hyperparameters, JobDeployment, JobEvent,
    JobStatus, ProviderFiles, TrainerRun,
};
pub use model_records::{
    AlertRecord, DatasetRecord, DatasetSplit, ModelAliasRecord, ModelHistoryRecord,
    ModelVersionRecord, QueuedWebhook, TallyKey, VersionState, VersionTally,
};
pub use postgres::PgStore;
pub use records::{
    ApiKeyRecord, AuditRecord, ConversationRecord, ConversationSignals, ConversationTallies,
    FeedbackRecord, HIGH_QUALITY, InferenceRecord, Lookup, Opening, Position, Review, ReviewStatus,
    ThreadPoint, TurnHead, join_ascii_words, preview_of,
};
pub use resilient::Resilient;
pub use sled_store::SledStore;

use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the data directory {path} is in use by another Flywheel process (sled admits one per directory); stop it, or use the admin API (e.g. POST /admin/api/keys) of the running server"
    )]
    Locked { path: String },
    #[error("store I/O error: {0}")]
    Io(String),
    /// Written by a newer release, in a layout this one cannot read.
    #[error(
        "the data directory {path} was written by a newer release of Flywheel (store layout {layout}; this release reads layouts up to {known}): run that release or a later one, or restore a backup taken before the upgrade"
    )]
    NewerLayout {
        path: String,
        layout: String,
        known: &'static str,
    },
    #[error("store holds a record that cannot be read ({what}): {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("not found")]
    NotFound,
    /// The store cannot be used as configured (a bad database URL, a
    /// database that cannot be reached at start-up).
    #[error("config key `{key}`: {problem}")]
    Config { key: &'static str, problem: String },
    /// The store cannot serve this now (it failed and is recovering, or a
    /// call did not finish in time); retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The longest a request waits for a store call before it is answered
/// 503 `unavailable`; the call itself goes on on its blocking thread.
pub const CALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Everything Flywheel keeps. Methods are synchronous and short; callers on
/// the request path keep results in memory rather than calling per request.
pub trait Store: Send + Sync + 'static {
    fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    fn keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Marks the key revoked and returns it; [`StoreError::NotFound`] if unknown.
    fn revoke_key(&self, id: &str, at: &str) -> Result<ApiKeyRecord, StoreError>;

    fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError>;
    /// Newest first, starting after `cursor` (an audit id) when given.
    fn audit(&self, cursor: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>, StoreError>;

    /// Stores a capture batch in one atomic step: each turn threaded into
    /// its conversation (created, with its parent, when new; `turn` set on
    /// the record), the records, what they add to the versions' tallies
    /// and the lookups a follow-up or feedback by completion id needs.
    /// Turns already stored (a batch retried after a failed flush) are
    /// skipped, so nothing counts twice.
    fn store_captured(&self, batch: &mut [CapturedTurn]) -> Result<(), StoreError>;
    fn inference(&self, id: &str) -> Result<Option<InferenceRecord>, StoreError>;
    /// Up to `limit` inferences whose ids sort after `after` (when given) and
    /// before `before`, oldest first.
    fn inferences_between(
        &self,
        after: Option<&str>,
        before: &str,
        limit: usize,
    ) -> Result<Vec<InferenceRecord>, StoreError>;
    /// Deletes an inference with its feedback, its completion-id index entry
    /// and its place in its conversation (an emptied conversation goes too).
    /// `forget` adjusts the conversation's review for the feedback that goes.
    fn delete_inference(
        &self,
        record: &InferenceRecord,
        forget: &mut dyn FnMut(&mut ConversationRecord, &[FeedbackRecord]),
    ) -> Result<(), StoreError>;
    fn inference_by_completion(
        &self,
        completion_id: &str,
    ) -> Result<Option<InferenceRecord>, StoreError>;
    /// The shadow versions' answers to a live inference.
    fn shadows_of(&self, inference_id: &str) -> Result<Vec<InferenceRecord>, StoreError>;

    fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError>;
    /// Changes a conversation, its indexes and the tallies in one atomic
    /// step; `None` when there is no such conversation.
    fn update_conversation(
        &self,
        id: &str,
        edit: &mut dyn FnMut(&mut ConversationRecord),
    ) -> Result<Option<ConversationRecord>, StoreError>;
    /// Deletes a conversation with its inferences and their feedback;
    /// returns what was deleted. Durable once it returns.
    fn delete_conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError>;
    /// One page of conversations, newest first, walking the index `scan`
    /// names and keeping those `keep` accepts.
    fn list_conversations(
        &self,
        scan: &ConversationScan,
        keep: &dyn Fn(&ConversationRecord) -> bool,
    ) -> Result<ConversationPage, StoreError>;
    /// The dashboard counts over every conversation, as maintained.
    fn tallies(&self) -> Result<ConversationTallies, StoreError>;
    /// Visits every conversation, oldest first, without holding them all.
    fn for_each_conversation(
        &self,
        visit: &mut dyn FnMut(ConversationRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// Where the turn that left continuation key `key` (hex) sits.
    fn thread(&self, key: &str) -> Result<Option<ThreadPoint>, StoreError>;
    /// Visits every lookup entry kept beside the records (continuation
    /// and idempotency keys), for copying a store; a continuation key may
    /// come more than once, its newest entry first.
    fn for_each_lookup(
        &self,
        visit: &mut dyn FnMut(Lookup) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;

    /// Stores feedback, applies it to its conversation through `review`
    /// (in the same atomic step) and, with an idempotency key, remembers
    /// which feedback that key produced. Durable once it returns.
    fn insert_feedback(
        &self,
        feedback: &FeedbackRecord,
        idempotency: Option<&str>,
        review: &mut dyn FnMut(&mut ConversationRecord),
        tally: Option<&(TallyKey, VersionTally)>,
    ) -> Result<(), StoreError>;
    /// The feedback an idempotency key produced earlier, if any.
    fn feedback_by_idempotency(
        &self,
        idempotency: &str,
    ) -> Result<Option<FeedbackRecord>, StoreError>;
    /// Every feedback on an inference, oldest first.
    fn feedback_for(&self, inference_id: &str) -> Result<Vec<FeedbackRecord>, StoreError>;

    /// The tallies of every version of `alias` that has any.
    fn version_tallies(&self, alias: &str) -> Result<Vec<(TallyKey, VersionTally)>, StoreError>;

    /// Every alias the registry holds.
    fn model_aliases(&self) -> Result<Vec<ModelAliasRecord>, StoreError>;
    /// Replaces the alias's record and appends its history entry in one
    /// atomic step; durable once it returns.
    fn put_model_alias(
        &self,
        record: &ModelAliasRecord,
        history: &ModelHistoryRecord,
    ) -> Result<(), StoreError>;
    /// The alias's changes, newest first, after `cursor` (a history id).
    fn model_history(
        &self,
        alias: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ModelHistoryRecord>, StoreError>;

    /// Creates or replaces an alert; durable once it returns.
    fn put_alert(&self, alert: &AlertRecord) -> Result<(), StoreError>;
    /// Stores a new alert and, when `webhook` is given, queues its delivery,
    /// in one durable step: a process that dies once it returns cannot lose
    /// the delivery.
    fn raise_alert(
        &self,
        alert: &AlertRecord,
        webhook: Option<&QueuedWebhook>,
    ) -> Result<(), StoreError>;
    /// The queued webhook deliveries, oldest alert first, at most `limit`.
    fn queued_webhooks(&self, limit: usize) -> Result<Vec<QueuedWebhook>, StoreError>;
    /// Replaces a queued delivery (after a failed attempt); durable.
    fn requeue_webhook(&self, webhook: &QueuedWebhook) -> Result<(), StoreError>;
    /// Takes a delivery off the queue, delivered or given up; durable.
    fn dequeue_webhook(&self, alert_id: &str) -> Result<(), StoreError>;
    fn alert(&self, id: &str) -> Result<Option<AlertRecord>, StoreError>;
    /// Newest first, after `cursor` (an alert id), those `keep` accepts.
    fn alerts(
        &self,
        cursor: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&AlertRecord) -> bool,
    ) -> Result<Vec<AlertRecord>, StoreError>;

    /// Stores a dataset snapshot with its two JSONL files in one atomic,
    /// durable step.
    fn insert_dataset(
        &self,
        record: &DatasetRecord,
        train: &[u8],
        validation: &[u8],
    ) -> Result<(), StoreError>;
    fn dataset(&self, id: &str) -> Result<Option<DatasetRecord>, StoreError>;
    /// Newest first, after `cursor` (a dataset id).
    fn datasets(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DatasetRecord>, StoreError>;
    /// One JSONL file of a dataset.
    fn dataset_file(&self, id: &str, split: DatasetSplit) -> Result<Option<Vec<u8>>, StoreError>;

    /// Creates or replaces a fine-tuning job; durable once it returns.
    fn put_job(&self, record: &FineTuneJobRecord) -> Result<(), StoreError>;
    fn job(&self, id: &str) -> Result<Option<FineTuneJobRecord>, StoreError>;
    /// Newest first, after `cursor` (a job id).
    fn jobs(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FineTuneJobRecord>, StoreError>;
    /// Every job not finished yet, oldest first.
    fn jobs_in_flight(&self) -> Result<Vec<FineTuneJobRecord>, StoreError>;

    /// Creates or replaces an evaluation run; durable once it returns.
    fn put_evaluation(&self, record: &EvaluationRecord) -> Result<(), StoreError>;
    fn evaluation(&self, id: &str) -> Result<Option<EvaluationRecord>, StoreError>;
    /// Newest first, after `cursor` (an evaluation id), those `keep` accepts.
    fn evaluations(
        &self,
        cursor: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&EvaluationRecord) -> bool,
    ) -> Result<Vec<EvaluationRecord>, StoreError>;
    /// Stores one example's result with the run's new progress in one
    /// atomic step (made durable by the next flush).
    fn put_example_result(
        &self,
        result: &ExampleResult,
        progress: &EvaluationRecord,
    ) -> Result<(), StoreError>;
    /// Every result of a run, by version, then example.
    fn example_results(&self, evaluation_id: &str) -> Result<Vec<ExampleResult>, StoreError>;
    /// Stores the finished run with its performance figures in one atomic,
    /// durable step.
    fn finish_evaluation(
        &self,
        record: &EvaluationRecord,
        performance: &[PerformanceRecord],
    ) -> Result<(), StoreError>;
    /// The alias's performance figures, oldest first.
    fn performance(&self, alias: &str) -> Result<Vec<PerformanceRecord>, StoreError>;

    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// True while the store can serve reads and writes.
    fn is_healthy(&self) -> bool;

    /// The changes other processes sharing this store announce; `None`
    /// for a store only this process uses.
    fn change_feed(&self) -> Option<postgres::ChangeFeed> {
        None
    }

    /// Takes (or renews) the lease `name` for `holder` until `ttl` from
    /// now: true when `holder` holds it. Background work that must run on
    /// one replica at a time asks before each round. An embedded store
    /// serves one process, which always holds every lease.
    fn try_lease(
        &self,
        _name: &str,
        _holder: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Gives the lease `name` up if `holder` holds it, so another replica
    /// takes the work over at once instead of after its expiry (a replica
    /// stopping for an upgrade).
    fn release_lease(&self, _name: &str, _holder: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A conversation index a listing can walk; each holds every conversation
/// with that value, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexField {
    Status,
    ThreatType,
    Severity,
    Alias,
    Version,
    User,
}

/// What a conversation listing walks.
#[derive(Debug, Clone, Default)]
pub struct ConversationScan {
    /// The index and value to walk; every conversation when `None`. The
    /// other filters are the `keep` function's to check.
    pub index: Option<(IndexField, String)>,
    /// Created at or after this RFC 3339 time (seconds, UTC, `Z`).
    pub since: Option<String>,
    /// Created before this time.
    pub until: Option<String>,
    /// Where the previous page stopped.
    pub cursor: Option<String>,
    pub limit: usize,
    /// At most this many conversations are looked at for one page, so a
    /// filter that matches little still answers quickly; the page is then
    /// shorter than `limit` and has a cursor to go on from.
    pub budget: usize,
}

/// One page of a listing: `next_cursor` is set while more may follow.
#[derive(Debug, Clone, Default)]
pub struct ConversationPage {
    pub data: Vec<ConversationRecord>,
    pub next_cursor: Option<String>,
}

pub type SharedStore = Arc<dyn Store>;

/// Opens the store the config names: sled in `server.data_dir`, or the
/// PostgreSQL database whose URL `secrets` holds (migrated on the way).
pub fn open_configured(
    config: &crate::config::Config,
    secrets: &crate::config::Secrets,
) -> Result<SharedStore, StoreError> {
    match config.store.kind {
        crate::config::StoreKind::Sled => open(&config.server.data_dir),
        crate::config::StoreKind::Postgres => Ok(Arc::new(PgStore::open(&postgres_options(
            config, secrets,
        )?)?)),
    }
}

/// The PostgreSQL settings of the config, with the URL from the
/// environment.
pub fn postgres_options(
    config: &crate::config::Config,
    secrets: &crate::config::Secrets,
) -> Result<postgres::PgOptions, StoreError> {
    use secrecy::ExposeSecret;
    let url = secrets
        .database_url
        .as_ref()
        .ok_or_else(|| StoreError::Config {
            key: "store.url_env",
            problem: format!(
                "names the variable {}, which is not set",
                config.store.url_env
            ),
        })?;
    Ok(postgres::PgOptions {
        url: url.expose_secret().to_string(),
        pool_size: config.store.pool_size,
        statement_timeout: std::time::Duration::from_millis(config.store.statement_timeout_ms),
        ca_file: config.store.ca_file.clone(),
    })
}

/// Opens the default store in `dir`, recovering by itself from I/O
/// failures (see [`Resilient`]).
pub fn open(dir: &Path) -> Result<SharedStore, StoreError> {
    let backend = SledStore::open(dir)?;
    let reopen_dir = dir.to_path_buf();
    let reopen: resilient::Reopen =
        Box::new(move || Ok(Arc::new(SledStore::open(&reopen_dir)?) as Arc<dyn Store>));
    Ok(Arc::new(Resilient::new(
        Arc::new(backend),
        dir.to_path_buf(),
        reopen,
    )))
}
