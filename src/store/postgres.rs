//! The PostgreSQL implementation of [`Store`], for several Flywheel
//! replicas sharing one state.
//!
//! The trait is synchronous and is called from blocking threads (the
//! capture writer, `spawn_blocking` in handlers), so the store owns a small
//! tokio runtime of its own (two threads) that holds the connection pool:
//! each call is a task on that runtime, and the caller waits for its answer
//! on a channel, bounded by `store.statement_timeout_ms` (plus the pool's
//! wait for a connection, bounded the same). Nothing here ever blocks a
//! thread of the runtime it runs on.
//!
//! Every record is kept whole as `json` beside the columns lookups and
//! listings filter on (see `migrations/`); conversations change under a
//! transaction-scoped advisory lock, so capture batches, feedback and
//! review edits from every replica apply one at a time, each with its
//! tallies, as the sled store's conversation lock does within one process.
//! Edits that run application code on a conversation (a review, feedback)
//! read it first, apply the edit on the caller's thread and write it back
//! only if its revision did not move meanwhile, else read again.
//!
//! While the database cannot be reached, calls fail with
//! [`StoreError::Unavailable`] (503 for clients, a retry for the capture
//! writer) and [`Store::is_healthy`] turns false; a probe every
//! [`PROBE_EVERY`] turns it true again once the database answers. The pool
//! reconnects by itself: no restart is needed.

mod conversations;
mod feed;
mod import;
mod migrate;
mod records;
mod tls;

pub use feed::{Change, ChangeFeed};
pub use import::Counts;
pub use migrate::migrate;

use super::{
    AlertRecord, ApiKeyRecord, AuditRecord, CapturedTurn, ConversationPage, ConversationRecord,
    ConversationScan, ConversationTallies, DatasetRecord, DatasetSplit, EvaluationRecord,
    ExampleResult, FeedbackRecord, FineTuneJobRecord, InferenceRecord, Lookup, ModelAliasRecord,
    ModelHistoryRecord, PerformanceRecord, QueuedWebhook, Store, StoreError, TallyKey, ThreadPoint,
    VersionTally,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the store checks that the database answers.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// What a PostgreSQL store needs to open.
#[derive(Clone)]
pub struct PgOptions {
    /// The connection URL (from the variable `store.url_env` names).
    pub url: String,
    pub pool_size: usize,
    pub statement_timeout: Duration,
    /// Certificates (PEM) of CAs trusted besides the public roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// Shared by every task of the store's runtime.
pub(crate) struct Ctx {
    pool: Pool,
    healthy: AtomicBool,
    /// The LISTEN/NOTIFY channel of this database and schema.
    channel: String,
}

pub struct PgStore {
    _runtime: OwnedRuntime,
    handle: tokio::runtime::Handle,
    ctx: Arc<Ctx>,
    limit: Duration,
    endpoint: Endpoint,
}

/// The store's runtime, shut down without waiting when dropped: a store
/// (or one that failed to open) may be dropped on an async thread, where
/// waiting is not allowed.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A start-up problem with the database, naming the config key.
fn config_error(problem: impl Into<String>) -> StoreError {
    StoreError::Config {
        key: "store.url_env",
        problem: problem.into(),
    }
}

/// Where a connection goes, without its password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

/// Where the database is and how to reach it: the URL's settings and
/// the TLS they ask for (see `tls`).
#[derive(Clone)]
pub(crate) struct Endpoint {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl Endpoint {
    /// Parses the URL, adds the statement timeout to its options and sets
    /// up its TLS.
    pub(crate) fn of(options: &PgOptions) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| config_error(format!("the URL cannot be read: {e}")))?;
        let timeout = format!(
            "-c statement_timeout={}",
            options.statement_timeout.as_millis()
        );
        let joined = match config.get_options() {
            Some(existing) if !existing.trim().is_empty() => format!("{existing} {timeout}"),
            _ => timeout,
        };
        config.options(joined);
        config.application_name("flywheel");
        config.connect_timeout(options.statement_timeout);
        let tls = tls::connector(&mut config, options.ca_file.as_deref())?;
        Ok(Self { config, tls })
    }

    /// One connection of its own, outside the pool; its driver is the
    /// caller's to poll.
    pub(crate) async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                impl tokio_postgres::tls::TlsStream + Unpin + use<>,
            >,
        ),
        tokio_postgres::Error,
    > {
        self.config.connect(self.tls.clone()).await
    }

    /// Where connections go, without the password.
    pub(crate) fn describe(&self) -> String {
        describe(&self.config)
    }

    /// Why the database cannot be used, for a start-up message.
    fn unusable(&self, error: impl std::fmt::Display) -> StoreError {
        self.refused("use", error)
    }

    /// Why the database cannot be put to `use` (a verb), naming the key.
    pub(crate) fn refused(&self, doing: &str, error: impl std::fmt::Display) -> StoreError {
        let error = error.to_string();
        config_error(format!(
            "cannot {doing} the database at {}: {error}{}",
            self.describe(),
            tls::hint(&error)
        ))
    }
}

impl PgStore {
    /// Connects, runs the migrations and starts the health probe. A bad
    /// URL or a database that cannot be reached is a
    /// [`StoreError::Config`] naming `store.url_env`.
    pub fn open(options: &PgOptions) -> Result<Self, StoreError> {
        let endpoint = Endpoint::of(options)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flywheel-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(format!("cannot start the database runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let runtime = OwnedRuntime(Some(runtime));
        let where_to = endpoint.describe();
        let limit = options.statement_timeout;
        // Migrations first, on a connection of their own: they may take a
        // lock the pool's connections would wait on.
        let migrated = run_on(&handle, limit * 4, migrate::run(endpoint.clone()));
        match migrated {
            Ok(()) => {}
            Err(StoreError::Unavailable(e)) | Err(StoreError::Io(e)) => {
                return Err(endpoint.unusable(e));
            }
            Err(e) => return Err(e),
        }
        let pool = {
            let _entered = handle.enter();
            let manager = Manager::from_config(
                endpoint.config.clone(),
                endpoint.tls.clone(),
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(manager)
                .max_size(options.pool_size)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(limit))
                .create_timeout(Some(limit))
                .recycle_timeout(Some(limit))
                .build()
                .map_err(|e| config_error(format!("cannot build the connection pool: {e}")))?
        };
        let probe_pool = pool.clone();
        let channel = run_on(&handle, limit, async move {
            let client = probe_pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one("SELECT current_database() || '.' || current_schema()", &[])
                .await
                .map_err(db_error)?;
            let name: String = row.get(0);
            Ok(feed::channel_name(&name))
        })
        .map_err(|e| endpoint.unusable(e))?;
        let ctx = Arc::new(Ctx {
            pool,
            healthy: AtomicBool::new(true),
            channel,
        });
        handle.spawn(probe(Arc::downgrade(&ctx), limit));
        tracing::info!(database = %where_to, "the PostgreSQL store is open");
        Ok(Self {
            _runtime: runtime,
            handle,
            ctx,
            limit,
            endpoint,
        })
    }

    /// Runs `work` on the store's runtime and waits for its answer, at
    /// most the statement timeout (plus a margin for the connection).
    pub(crate) fn call<T, F, Fut>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Ctx>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        // Health is the probe's to say: a call that waited too long for a
        // busy pool says nothing of the database.
        run_on(&self.handle, self.limit * 2, work(self.ctx.clone()))
    }

    /// The records one query selects (`record::text` first), by at most
    /// one text parameter.
    pub(crate) fn select_records<T: DeserializeOwned + Send + 'static>(
        &self,
        what: &'static str,
        sql: &'static str,
        param: Option<String>,
    ) -> Result<Vec<T>, StoreError> {
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            let rows = match &param {
                Some(param) => client.query(sql, &[param]).await,
                None => client.query(sql, &[]).await,
            }
            .map_err(db_error)?;
            records(what, &rows)
        })
    }
}

/// Runs a future on `handle` from a thread outside it and waits for it at
/// most `limit`.
fn run_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    limit: Duration,
    work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let out = tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| Err(timed_out(limit)));
        // The caller may have stopped waiting.
        let _ = tx.send(out);
    });
    rx.recv_timeout(limit + Duration::from_secs(1))
        .unwrap_or_else(|_| Err(timed_out(limit)))
}

fn timed_out(limit: Duration) -> StoreError {
    StoreError::Unavailable(format!(
        "the database did not answer within {} ms",
        limit.as_millis()
    ))
}

/// Keeps `healthy` true exactly while the database answers.
async fn probe(ctx: std::sync::Weak<Ctx>, limit: Duration) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(ctx) = ctx.upgrade() else { return };
        let answered = tokio::time::timeout(limit, async {
            let client = ctx.pool.get().await.ok()?;
            client.simple_query("SELECT 1").await.ok()
        })
        .await
        .ok()
        .flatten()
        .is_some();
        let was = ctx.healthy.swap(answered, Ordering::AcqRel);
        if was != answered {
            metrics::gauge!("flywheel_store_writable").set(if answered { 1.0 } else { 0.0 });
            if answered {
                tracing::info!("the database answers again");
            } else {
                tracing::error!("the database does not answer; writes fail until it does");
            }
        }
    }
}

/// A database error: unavailable when it says nothing of the request
/// itself (the connection, the server shutting down or overloaded, a
/// timeout, a conflict worth retrying), else an I/O error.
pub(crate) fn db_error(e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    let Some(db) = e.as_db_error() else {
        let connection = e.is_closed()
            || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        // The driver's own words are only the kind ("error performing TLS
        // handshake"); what went wrong is in the causes.
        let mut said = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            said.push_str(&format!(": {c}"));
            cause = c.source();
        }
        return if connection {
            StoreError::Unavailable(format!("the database cannot be reached: {said}"))
        } else {
            StoreError::Io(format!("database call failed: {said}"))
        };
    };
    let code = db.code();
    let transient = code.code().starts_with("08")
        || code.code().starts_with("53")
        || code.code().starts_with("57")
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED;
    let said = format!("{} ({})", db.message(), code.code());
    if transient {
        StoreError::Unavailable(format!("the database refused the call for now: {said}"))
    } else {
        StoreError::Io(format!("database error: {said}"))
    }
}

pub(crate) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("no database connection: {e}"))
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(encoding_error)
}

pub(crate) fn encoding_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("cannot encode record: {e}"))
}

pub(crate) fn from_json<T: DeserializeOwned>(
    what: &'static str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

/// Decodes the first column of every row as a record.
pub(crate) fn records<T: DeserializeOwned>(
    what: &'static str,
    rows: &[tokio_postgres::Row],
) -> Result<Vec<T>, StoreError> {
    rows.iter()
        .map(|row| from_json(what, row.get::<_, &str>(0)))
        .collect()
}

impl Store for PgStore {
    fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.write_key(key)
    }

    fn keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.read_keys()
    }

    fn revoke_key(&self, id: &str, at: &str) -> Result<ApiKeyRecord, StoreError> {
        self.write_revocation(id, at)
    }

    fn append_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.write_audit(record)
    }

    fn audit(&self, cursor: Option<&str>, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.read_audit(cursor, limit)
    }

    fn store_captured(&self, batch: &mut [CapturedTurn]) -> Result<(), StoreError> {
        self.write_captured(batch)
    }

    fn inference(&self, id: &str) -> Result<Option<InferenceRecord>, StoreError> {
        self.read_inference(id)
    }

    fn inferences_between(
        &self,
        after: Option<&str>,
        before: &str,
        limit: usize,
    ) -> Result<Vec<InferenceRecord>, StoreError> {
        self.read_inferences_between(after, before, limit)
    }

    fn delete_inference(
        &self,
        record: &InferenceRecord,
        forget: &mut dyn FnMut(&mut ConversationRecord, &[FeedbackRecord]),
    ) -> Result<(), StoreError> {
        self.remove_inference(record, forget)
    }

    fn inference_by_completion(
        &self,
        completion_id: &str,
    ) -> Result<Option<InferenceRecord>, StoreError> {
        self.read_inference_by_completion(completion_id)
    }

    fn shadows_of(&self, inference_id: &str) -> Result<Vec<InferenceRecord>, StoreError> {
        self.read_shadows(inference_id)
    }

    fn conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        Ok(self.read_conversation(id)?.map(|(_, c)| c))
    }

    fn update_conversation(
        &self,
        id: &str,
        edit: &mut dyn FnMut(&mut ConversationRecord),
    ) -> Result<Option<ConversationRecord>, StoreError> {
        self.edit_conversation(id, edit)
    }

    fn delete_conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        self.remove_conversation(id)
    }

    fn list_conversations(
        &self,
        scan: &ConversationScan,
        keep: &dyn Fn(&ConversationRecord) -> bool,
    ) -> Result<ConversationPage, StoreError> {
        self.walk_conversations(scan, keep)
    }

    fn tallies(&self) -> Result<ConversationTallies, StoreError> {
        self.read_tallies()
    }

    fn for_each_conversation(
        &self,
        visit: &mut dyn FnMut(ConversationRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.visit_conversations(visit)
    }

    fn thread(&self, key: &str) -> Result<Option<ThreadPoint>, StoreError> {
        self.read_thread(key)
    }

    fn for_each_lookup(
        &self,
        visit: &mut dyn FnMut(Lookup) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.read_lookups(visit)
    }

    fn insert_feedback(
        &self,
        feedback: &FeedbackRecord,
        idempotency: Option<&str>,
        review: &mut dyn FnMut(&mut ConversationRecord),
        tally: Option<&(TallyKey, VersionTally)>,
    ) -> Result<(), StoreError> {
        self.write_feedback(feedback, idempotency, review, tally)
    }

    fn feedback_by_idempotency(
        &self,
        idempotency: &str,
    ) -> Result<Option<FeedbackRecord>, StoreError> {
        self.read_feedback_by_idempotency(idempotency)
    }

    fn feedback_for(&self, inference_id: &str) -> Result<Vec<FeedbackRecord>, StoreError> {
        self.read_feedback_for(inference_id)
    }

    fn version_tallies(&self, alias: &str) -> Result<Vec<(TallyKey, VersionTally)>, StoreError> {
        self.read_version_tallies(alias)
    }

    fn model_aliases(&self) -> Result<Vec<ModelAliasRecord>, StoreError> {
        self.read_model_aliases()
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
        self.read_model_history(alias, cursor, limit)
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
        self.read_webhooks(limit)
    }

    fn requeue_webhook(&self, webhook: &QueuedWebhook) -> Result<(), StoreError> {
        self.write_webhook(webhook)
    }

    fn dequeue_webhook(&self, alert_id: &str) -> Result<(), StoreError> {
        self.delete_webhook(alert_id)
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
        self.newest_kept("alerts", "alert", cursor, limit, keep)
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
        self.read_by_id("datasets", "dataset", id)
    }

    fn datasets(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DatasetRecord>, StoreError> {
        self.newest_kept("datasets", "dataset", cursor, limit, &|_| true)
    }

    fn dataset_file(&self, id: &str, split: DatasetSplit) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_dataset_file(id, split)
    }

    fn put_job(&self, record: &FineTuneJobRecord) -> Result<(), StoreError> {
        self.write_job(record)
    }

    fn job(&self, id: &str) -> Result<Option<FineTuneJobRecord>, StoreError> {
        self.read_by_id("fine_tuning_jobs", "fine-tuning job", id)
    }

    fn jobs(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FineTuneJobRecord>, StoreError> {
        self.newest_kept(
            "fine_tuning_jobs",
            "fine-tuning job",
            cursor,
            limit,
            &|_| true,
        )
    }

    fn jobs_in_flight(&self) -> Result<Vec<FineTuneJobRecord>, StoreError> {
        self.read_jobs_in_flight()
    }

    fn put_evaluation(&self, record: &EvaluationRecord) -> Result<(), StoreError> {
        self.write_evaluation(record)
    }

    fn evaluation(&self, id: &str) -> Result<Option<EvaluationRecord>, StoreError> {
        self.read_by_id("evaluations", "evaluation", id)
    }

    fn evaluations(
        &self,
        cursor: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&EvaluationRecord) -> bool,
    ) -> Result<Vec<EvaluationRecord>, StoreError> {
        self.newest_kept("evaluations", "evaluation", cursor, limit, keep)
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

    /// Every write is committed before its call returns.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn is_healthy(&self) -> bool {
        self.ctx.healthy.load(Ordering::Acquire)
    }

    fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.take_lease(name, holder, ttl)
    }

    fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.give_up_lease(name, holder)
    }

    fn change_feed(&self) -> Option<ChangeFeed> {
        Some(ChangeFeed::new(
            self.handle.clone(),
            self.endpoint.clone(),
            self.ctx.channel.clone(),
        ))
    }
}
