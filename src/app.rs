//! The application: built once from the config — each service's context
//! holding only what that service uses, and the HTTP edge's state holding
//! those contexts — and the run loop with its background services and
//! graceful shutdown. `main` and the tests build it the same way.

use crate::auth::{AuthPolicy, KeyError, KeyService, hash_key};
use crate::capture::Redactor;
use crate::config::{Config, Secrets};
use crate::exchange::{self, ExchangeSink};
use crate::limits::RateLimits;
use crate::registry::Registry;
use crate::service::{Service, periodic};
use crate::store::{SharedStore, StoreError};
use crate::upstream::Upstreams;
use secrecy::ExposeSecret;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("{0}")]
    Upstream(String),
    #[error("config key `capture.redact[{0}]`: {1}")]
    Redaction(usize, String),
    #[error(transparent)]
    Extractor(#[from] crate::evaluation::extract::ExtractorError),
    #[error("cannot listen: {0}")]
    Listen(std::io::Error),
}

pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    exchange_rx: tokio::sync::mpsc::Receiver<exchange::Queued>,
}

impl Application {
    /// Opens the store in `config.server.data_dir` and builds everything.
    pub fn build(
        config: Config,
        secrets: Secrets,
        listener: TcpListener,
    ) -> Result<Self, StartError> {
        let store = crate::store::open_configured(&config, &secrets)?;
        Self::build_with_store(config, secrets, listener, store)
    }

    pub fn build_with_store(
        config: Config,
        secrets: Secrets,
        listener: TcpListener,
        store: SharedStore,
    ) -> Result<Self, StartError> {
        let keys = KeyService::open(store.clone())?;
        let auth = AuthPolicy {
            ring: keys.ring(),
            admin_token_hash: secrets
                .admin_token
                .as_ref()
                .map(|t| hash_key(t.expose_secret())),
            allow_anonymous: config.auth.allow_anonymous_clients,
            passthrough: config.auth.passthrough_client_keys,
            entra: match &config.auth.entra {
                Some(e) => Some(Arc::new(
                    crate::auth::EntraTokens::new(e).map_err(StartError::Upstream)?,
                )),
                None => None,
            },
        };
        let (exchanges, exchange_rx) = ExchangeSink::new(
            config.capture.queue_capacity,
            config.capture.queue_max_bytes,
            config.capture.on_queue_full,
            Duration::from_millis(config.capture.queue_wait_ms),
        );
        let redactor =
            Redactor::new(&config.capture.redact).map_err(|(i, e)| StartError::Redaction(i, e))?;
        let extractor = crate::evaluation::extract::Extractor::new(
            &config.evaluation.extractor,
            &config.taxonomy,
        )?;
        let alert_hook = Arc::new(
            crate::evaluation::AlertHook::new(&config.evaluation).map_err(StartError::Upstream)?,
        );
        let config = Arc::new(config);
        let registry = Arc::new(Registry::open(store.clone(), config.clone())?);
        let upstreams = Arc::new(Upstreams::new(&config, &secrets).map_err(StartError::Upstream)?);
        let extractor = Arc::new(extractor);
        let evaluation = Arc::new(crate::evaluation::Context {
            store: store.clone(),
            registry: registry.clone(),
            upstreams: upstreams.clone(),
            config: config.evaluation.clone(),
            threat_types: config.taxonomy.threat_types.clone(),
            extractor: extractor.clone(),
            runner: crate::evaluation::Runner::default(),
            alert_hook: alert_hook.clone(),
        });
        let fine_tuning = Arc::new(crate::finetune::Context {
            store: store.clone(),
            registry: registry.clone(),
            upstreams: upstreams.clone(),
            config: config.clone(),
            jobs: crate::finetune::Jobs::default(),
        });
        let guardrails = Arc::new(crate::experiment::Guardrails {
            store: store.clone(),
            registry: registry.clone(),
            config: config.clone(),
            alerts: alert_hook,
        });
        let feedback = Arc::new(crate::feedback::Context {
            store: store.clone(),
            taxonomy: config.taxonomy.clone(),
            flush_every: Duration::from_millis(config.capture.flush_every_ms),
            in_flight: exchanges.in_flight(),
            extractor,
        });
        let mirror = Arc::new(crate::proxy::Mirror::new(
            upstreams.clone(),
            exchanges.clone(),
        ));
        let state = AppState {
            registry,
            upstreams,
            limits: RateLimits::new(&config.limits),
            keys,
            auth,
            store,
            exchanges,
            // Above what capture can hold unwritten: its queue, as many
            // parked with the `wait` policy, and the writer's held batch.
            recent: Arc::new(crate::capture::RecentThreads::new(
                4 * config.capture.queue_capacity,
            )),
            conversation_items: Arc::default(),
            mirror,
            redactor: Arc::new(redactor),
            evaluation,
            fine_tuning,
            guardrails,
            feedback,
            metrics: crate::telemetry::metrics_handle(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            shutdown: CancellationToken::new(),
            config,
        };
        Ok(Self {
            listener,
            state: Arc::new(state),
            exchange_rx,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `stop` resolves (or the state's shutdown token is
    /// cancelled), then stops accepting, gives in-flight requests
    /// `server.shutdown_grace_s` to finish, drains the background services
    /// and flushes the store.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Self {
            listener,
            state,
            exchange_rx,
        } = self;
        let shutdown = state.shutdown.clone();
        let tasks = TaskTracker::new();
        // First, so the first token is asked for before the first request.
        tasks.spawn(state.upstreams.clone().renew_tokens(shutdown.clone()));
        if let Some(entra) = state.auth.entra.clone() {
            tasks.spawn(fetch_entra_keys(entra, shutdown.clone()));
        }
        let flush_every = Duration::from_millis(state.config.capture.flush_every_ms);
        tasks.spawn(crate::capture::start_writer(
            crate::capture::WriterSetup {
                store: state.store.clone(),
                redactor: state.redactor.clone(),
                in_flight: state.exchanges.in_flight(),
                queue: state.exchanges.depth(),
                batch_ready: state.exchanges.batch_ready(),
                flush_every,
                priority: state.config.capture.writer_priority,
                max_pending: state.config.capture.queue_capacity,
                background: Arc::new(crate::capture::BackgroundTasks::from_validated(
                    state.config.capture.background_tasks.enabled,
                    &state.config.capture.background_tasks.patterns,
                )),
            },
            exchange_rx,
            shutdown.clone(),
        ));
        tasks.spawn(prune_limits(state.clone(), shutdown.clone()));
        tasks.spawn(fold_metrics(state.clone(), shutdown.clone()));
        // Replicas sharing a database: reload what another one changed.
        crate::replication::follow_changes(
            &state.store,
            crate::replication::Followed {
                registry: state.registry.clone(),
                keys: state.keys.clone(),
            },
            shutdown.clone(),
        );
        // Background work runs once among replicas sharing a database; an
        // embedded store has one process, which needs no lease.
        let lease = (state.config.store.kind == crate::config::StoreKind::Postgres).then(|| {
            crate::service::Lease::new(
                state.store.clone(),
                crate::ids::new_id("replica"),
                Duration::from_secs(state.config.store.lease_ttl_s),
            )
        });
        tasks.spawn(crate::experiment::run_guardrails(
            state.guardrails.clone(),
            lease.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(crate::finetune::run_poller(
            state.fine_tuning.clone(),
            lease.clone(),
            shutdown.clone(),
        ));
        // Each replica loads the adapters for itself: it also remembers
        // them, to load one again when a server forgot it.
        tasks.spawn(crate::finetune::run_adapter_restore(
            state.fine_tuning.clone(),
            shutdown.clone(),
        ));
        if state.config.fine_tuning.continuous.enabled {
            tasks.spawn(crate::finetune::run_continuous(
                state.fine_tuning.clone(),
                lease.clone(),
                shutdown.clone(),
            ));
        }
        tasks.spawn(crate::evaluation::runner::run_evaluations(
            state.evaluation.clone(),
            lease.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(crate::evaluation::schedule::run_schedule(
            state.evaluation.clone(),
            lease.clone(),
            shutdown.clone(),
        ));
        if let Some(delivery) = state.evaluation.alert_hook.delivery() {
            tasks.spawn(delivery.run(state.store.clone(), lease.clone(), shutdown.clone()));
        }
        if let Some(days) = state.config.capture.retention_days {
            tasks.spawn(crate::capture::run_retention(
                state.store.clone(),
                days,
                lease.clone(),
                shutdown.clone(),
            ));
        }

        let trigger = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop => trigger.cancel(),
                () = trigger.cancelled() => {}
            }
        });

        let router = crate::server::router(state.clone());
        let limits = crate::server::ConnectionLimits::from_config(&state.config.server);
        let server = tokio::spawn(crate::server::serve(
            listener,
            router,
            limits,
            shutdown.clone(),
        ));
        let abort = server.abort_handle();
        shutdown.cancelled().await;
        tracing::info!("shutting down: no new connections; waiting for in-flight requests");
        let grace = Duration::from_secs(state.config.server.shutdown_grace_s);
        match tokio::time::timeout(grace, server).await {
            Ok(joined) => joined.map_err(std::io::Error::other)?,
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "in-flight requests outlived the grace period; closing them"
                );
                abort.abort();
            }
        }
        if tokio::time::timeout(grace, state.mirror.drain())
            .await
            .is_err()
        {
            tracing::warn!("shadow requests did not finish within the grace period");
        }
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!("background services did not stop within the grace period");
        }
        let store = state.store.clone();
        match tokio::time::timeout(grace, tokio::task::spawn_blocking(move || store.flush())).await
        {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "store flush at shutdown failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "store flush at shutdown failed"),
            Err(_) => tracing::error!(?grace, "store flush at shutdown did not finish in time"),
        }
        // The last handle on the store closes it, and sled's close flushes
        // once more with no bound of its own: with its directory removed
        // under load it was seen waiting forever, and the process with it.
        // What could be flushed was, above, so the close is given a short
        // bound and the process stops without it after that.
        let bound = grace.min(STORE_CLOSE);
        if !drop_within(bound, (state, lease)).await {
            tracing::error!(
                ?bound,
                "the store did not close in time; stopping without it"
            );
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// How long the store may take to close at shutdown, after its flush:
/// a close with nothing left to write takes milliseconds.
const STORE_CLOSE: Duration = Duration::from_secs(5);

/// Drops `value` on a blocking thread, waiting for it at most `bound`;
/// says whether it was dropped in time.
async fn drop_within<T: Send + 'static>(bound: Duration, value: T) -> bool {
    let dropped = tokio::task::spawn_blocking(move || drop(value));
    tokio::time::timeout(bound, dropped).await.is_ok()
}

/// Prunes the rate limits at start and once a minute.
/// Keeps the keys that sign accepted Entra ID tokens current: at start,
/// every hour, and when a token named a key not known yet.
async fn fetch_entra_keys(entra: Arc<crate::auth::EntraTokens>, shutdown: CancellationToken) {
    let service = Service::every("entra-keys", crate::auth::EntraTokens::REFRESH_EVERY)
        .woken_by(entra.wanted());
    periodic(service, shutdown, || {
        let entra = entra.clone();
        async move {
            let count = entra.refresh().await?;
            tracing::debug!(keys = count, "Entra ID signing keys are current");
            Ok::<_, String>(crate::service::Next::Wait)
        }
    })
    .await;
}

async fn prune_limits(state: Arc<AppState>, shutdown: CancellationToken) {
    let service = Service::every("rate-limit-pruning", Duration::from_secs(60));
    periodic(service, shutdown, || {
        std::future::ready(crate::limits::prune_step(&state.limits))
    })
    .await;
}

/// Folds the metrics' histogram samples into their buckets every 5 s,
/// whether or not anything scrapes `/metrics`.
async fn fold_metrics(state: Arc<AppState>, shutdown: CancellationToken) {
    let service = Service::every("metrics-upkeep", Duration::from_secs(5));
    periodic(service, shutdown, || {
        std::future::ready(crate::telemetry::upkeep_step(&state.metrics))
    })
    .await;
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed
/// when this is called, not when the future is first polled: a signal
/// that arrives as soon as the server answers must not find the default
/// action (termination) still in place.
#[cfg(unix)]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = interrupt.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds its thread in `drop` until its sender goes.
    struct SlowToDrop(std::sync::mpsc::Receiver<()>);

    impl Drop for SlowToDrop {
        fn drop(&mut self) {
            let _ = self.0.recv();
        }
    }

    #[tokio::test]
    async fn a_close_that_hangs_is_left_behind_after_its_bound() {
        let (release, held) = std::sync::mpsc::channel();
        assert!(!drop_within(Duration::from_millis(100), SlowToDrop(held)).await);
        drop(release);
        let (release, held) = std::sync::mpsc::channel();
        drop(release);
        assert!(drop_within(Duration::from_secs(5), SlowToDrop(held)).await);
    }
}
